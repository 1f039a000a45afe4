//! The write and record steps of a poll: the actuator carries out the
//! planner's decision, and the state records what was done (saved before
//! the kernel write and after it; `actuator::apply_plan`).

use std::time::SystemTime;

use super::Daemon;
use super::report::{self, Report};
use crate::act::actuator;
use crate::act::state::Values;
use crate::base::host::Host;
use crate::base::ports::PortRange;
use crate::base::shutdown;
use crate::judge::level::Level;
use crate::judge::planner::{self, Action, Decision};
use crate::observe::census::KernelSettings;
use crate::observe::sysctld::{self, Scan};
use crate::observe::usage::Usage;
use crate::publish::events::{self, Kind};

/// One sysctl.d scan a poll: read on the poll's first question (a poll
/// that persists nothing and plans nothing reads no directory) and kept
/// until the next poll starts.
#[derive(Default)]
pub(super) struct PollScan(Option<Result<Scan, String>>);

impl PollScan {
    pub(super) fn get(&mut self, host: &Host) -> Result<&Scan, &str> {
        self.0
            .get_or_insert_with(|| sysctld::scan(host).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }
}

impl Daemon {
    /// Carries out the decision: the range it widened to, or why widening
    /// was held although usage called for it.
    pub(super) fn act(
        &mut self,
        usage: &Usage,
        decision: &Decision,
        now: SystemTime,
    ) -> (Option<PortRange>, Option<&'static str>) {
        match &decision.action {
            Action::Nothing => {
                // While an alert is raised, usage dipping below the warning
                // level and back must not repeat the same "blocked" entry.
                if decision.alert.level == Level::Ok {
                    self.report.blocked.clear();
                }
                (None, None)
            }
            Action::Apply { plan } => {
                if self.apply(usage, plan, now, &forecast_note(decision)) {
                    (Some(plan.to), None)
                } else {
                    (None, Some("write-failed"))
                }
            }
            Action::Hold { plan, reason } => {
                self.report.held(usage, plan.as_ref(), reason);
                (None, Some(report::blocked_kind(reason)))
            }
        }
    }

    /// Applies a plan; true when the range was changed.
    pub(super) fn apply(
        &mut self,
        usage: &Usage,
        plan: &planner::Plan,
        now: SystemTime,
        note: &str,
    ) -> bool {
        if shutdown::requested() {
            return false;
        }
        let reason = format!(
            "{} at {} ({}/{}){note}",
            usage.headline.cause,
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity
        );
        match actuator::apply_plan(
            &self.host,
            &mut self.state,
            &usage.settings,
            plan,
            now,
            &reason,
        ) {
            Ok(()) => {
                self.report.widened(usage, plan, &reason);
                self.save_state();
                true
            }
            Err(actuator::ActuateError::Stopped) => {
                events::note(
                    Kind::Stopping,
                    &format!(
                        "stopping: the widening {plan} was interrupted between two writes; the next start settles it"
                    ),
                );
                false
            }
            Err(e) => {
                self.report.write_failed(usage, plan, &e);
                false
            }
        }
    }

    pub(super) fn retry_persist(&mut self, now: SystemTime) {
        // After a yield the admin's values are the baseline: the drop-in is
        // left as it is, not rewritten with them.
        if self.dry_run
            || !self.policy.persist
            || self.state.yielded.is_some()
            || shutdown::requested()
        {
            return;
        }
        let Some(written) = &self.state.last_written else {
            return;
        };
        let (range, was_persisted) = (written.values.range, written.persisted);
        let scan = match self.sysctld.get(&self.host) {
            Ok(scan) => scan,
            Err(e) => {
                let e = e.to_owned();
                return self.report.persist_failed(range, was_persisted, &e);
            }
        };
        match actuator::persist(&self.host, scan, &self.policy.dropin_name, &self.state, now) {
            Ok(outcome) => {
                let dropin = self
                    .host
                    .path(sysctld::DROPIN_DIR)
                    .join(&self.policy.dropin_name);
                let removed = match &outcome {
                    actuator::Persisted::Written { removed } => removed.as_deref(),
                    actuator::Persisted::Unchanged => None,
                };
                self.report.persisted(range, &dropin, removed);
                let rewritten = outcome != actuator::Persisted::Unchanged;
                if self
                    .state
                    .mark_persisted(&self.policy.dropin_name, rewritten)
                {
                    self.save_state();
                }
            }
            Err(e) => self
                .report
                .persist_failed(range, was_persisted, &e.to_string()),
        }
    }

    /// A write recorded before portd was killed: settled against the live
    /// values before anything compares them with what portd wrote.
    pub(super) fn settle_pending(&mut self, live: &KernelSettings) {
        if self.state_unreadable.is_some() || self.state.pending.is_none() {
            return;
        }
        if let Some(what) = actuator::settle_pending(&mut self.state, live) {
            events::note(Kind::Degraded, &what);
            self.save_state();
        }
    }

    pub(super) fn check_external_change(&mut self, live: &KernelSettings) {
        if self.state.yielded.is_some() {
            return;
        }
        // Only a changed range is traced to the file that sets it: a poll
        // reads sysctl.d for it then only.
        let range_changed =
            (self.state.last_written.as_ref()).is_some_and(|w| w.values.range != live.port_range);
        let scan = if range_changed {
            self.sysctld.get(&self.host).ok()
        } else {
            None
        };
        let Some(reason) = actuator::external_change(scan, &self.state, live) else {
            return;
        };
        let written = self.state.last_written.as_ref().map(|w| w.values.range);
        Report::external_change(&reason, written, live);
        let values = Values {
            range: live.port_range,
            reserved: live.reserved_ports.clone(),
        };
        self.state.yield_to(values, reason, self.clock.now());
        self.save_state();
    }

    /// After SIGTERM no save starts: what it would record is either in the
    /// saved record of the write (settled at the next start) or found again.
    pub(super) fn save_state(&mut self) {
        if self.dry_run || self.state_unreadable.is_some() || shutdown::requested() {
            return;
        }
        if let Err(e) = self.state.save(&self.host) {
            events::note(Kind::DaemonFailed, &format!("cannot save state: {e}"));
        }
    }
}

/// What the forecast adds to the reason of a widening: that it came before
/// the hold, and what it overrode.
pub(super) fn forecast_note(decision: &Decision) -> String {
    let mut note = String::new();
    if let Some(f) = &decision.urgent {
        note.push_str(&format!(
            "; forecast: {}",
            crate::publish::events::gains(f, ",")
        ));
    }
    if let Some(o) = &decision.overrode {
        note.push_str("; ");
        note.push_str(o);
    }
    note
}
