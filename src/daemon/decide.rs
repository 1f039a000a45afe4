//! A poll after its census: observe (the census's result) → decide (the
//! planner) → write and record (act.rs) → report (report.rs).

use std::time::{Instant, SystemTime};

use super::census_task::{CensusOutput, CensusResult};
use super::{Daemon, LastCensus, journal, report};
use crate::act::actuator;
use crate::judge::authority::Authority;
use crate::judge::exhausted::Exhausted;
use crate::judge::forecast::{self, Forecast};
use crate::judge::planner::{self, Decision, Inputs, Observation};
use crate::judge::remedy;
use crate::observe::usage::Usage;

impl Daemon {
    /// observe (the census's result) → decide → write → record → report.
    pub(super) fn after_census(
        &mut self,
        result: CensusResult,
        started: Instant,
        active_opens: Option<u64>,
    ) {
        let CensusOutput {
            usage,
            took,
            cpu,
            processes,
        } = match result {
            Ok(r) => r,
            Err(e) => return self.census_failed(&e),
        };
        self.report.census_ok();
        let now = self.clock.now();
        if self.state.initial_range.is_none() {
            self.state.initial_range = Some(usage.settings.port_range);
            self.save_state();
        }
        let authority = self.authority();
        self.tracker.update(&usage, now);
        let forecast = self.tracker.forecast(&usage);
        self.hurried = forecast::hurry(
            &forecast,
            self.policy.thresholds.critical(),
            (self.policy.hold + self.policy.interval) * 4,
        );
        let decision = self.decide(&usage, &authority, now, &forecast);
        self.witnessed = false;
        let exhausted = Exhausted::of(&usage, self.policy.tcp_pool_alerts);
        if let Some(event) = self.exhaustion.next(&exhausted, now) {
            journal::exhaustion(&usage, &event);
        }
        self.report.level(&usage, &decision, processes.as_deref());
        self.report.hazards(&usage);
        let alert_changed = self.state.alert != decision.alert;
        self.state.alert = decision.alert.clone();
        let (widened, blocked) = self.act(&usage, &decision, now);
        self.retry_persist(now);
        if alert_changed && !self.dry_run {
            self.save_state();
        }
        let time_to_exhaustion =
            forecast::soonest_exhaustion(&forecast, self.policy.tcp_pool_alerts);
        let line = report::status_line(&usage, widened, &authority, time_to_exhaustion, blocked);
        let remedies = decision.unfit.as_ref().map_or_else(Vec::new, |u| {
            remedy::remedies(&remedy::situation(
                &u.forecast,
                u.demand,
                u.room,
                &usage,
                processes.as_deref(),
            ))
        });
        self.last = Some(LastCensus {
            usage,
            started,
            active_opens,
            // Wall clock, like `polled_at`: a scraper compares it with its own.
            at: SystemTime::now(),
            took,
            cpu,
            level: decision.alert.level,
            blocked,
            time_to_exhaustion,
            remedies,
            forecast,
        });
        self.report_with(&authority, |r, p| r.censused(&line, p));
    }

    /// The planner, pure: the census, the policy, the history, a pin and
    /// the poll's authority in, a decision out.
    pub(super) fn decide(
        &mut self,
        usage: &Usage,
        authority: &Authority,
        now: SystemTime,
        forecast: &[Forecast],
    ) -> Decision {
        let pin = match self.sysctld.get(&self.host) {
            Ok(scan) => actuator::pin(scan, &self.policy.dropin_name),
            Err(e) => {
                tracing::warn!("cannot read sysctl.d files: {e}");
                None
            }
        };
        let observation = Observation {
            foreign_dropin: actuator::foreign_dropin(
                &self.host,
                self.policy.persist,
                &self.policy.dropin_name,
            ),
            ..Observation::from_usage(usage)
        };
        planner::plan(&Inputs {
            observation: &observation,
            policy: &self.policy,
            history: &self.state.history(),
            pin: pin.as_ref(),
            now,
            authority,
            witnessed_failure: self.witnessed,
            forecast,
        })
    }
}
