//! A poll after its census: observe (the census's result) → assess
//! (judge/assess.rs, pure) → act and record (act.rs) → publish (report.rs).

use std::time::{Instant, SystemTime};

use super::census_task::{CensusOutput, CensusResult, Lookup};
use super::{Daemon, LastCensus, journal, report};
use crate::act::actuator;
use crate::judge::assess::{self, Assessment};
use crate::judge::authority::Authority;
use crate::observe::usage::Usage;
use crate::publish::events::{Kind, note};

impl Daemon {
    /// observe (the census's result) → assess → act → record → publish.
    /// True when the range was widened: the next census then comes at
    /// once, so STATUS and the metrics show the usage of the new range.
    pub(super) fn after_census(
        &mut self,
        result: CensusResult,
        started: Instant,
        active_opens: Option<u64>,
    ) -> bool {
        let CensusOutput { usage, took, cpu } = match result {
            Ok(r) => r,
            Err(e) => {
                self.census_failed(&e);
                return false;
            }
        };
        self.report.census_ok();
        let now = self.clock.now();
        if self.state.initial_range.is_none() {
            self.state.initial_range = Some(usage.settings.port_range);
            self.save_state();
        }
        let authority = self.authority();
        // The judgement takes the holders a lookup already found, and never
        // waits for one: the lookup this census may call for runs after it,
        // and the entries of this census wait for it (census_task.rs).
        self.lookup_due = self.process_lookup().wanted(usage.headline.usage);
        let processes = self.holders.known(&usage).map(str::to_string);
        let assessment = self.assess(&usage, processes.as_deref(), &authority, now);
        // benches/attribution.sh reads this: the census-to-decision latency.
        tracing::debug!(
            "census judged {:.1} ms after it began",
            started.elapsed().as_secs_f64() * 1000.0
        );
        if let Some(event) = &assessment.exhausted {
            journal::exhaustion(&usage, event);
        }
        if self.lookup_due {
            self.report.hold_back();
        } else {
            self.report.level(&usage, &assessment, processes.as_deref());
        }
        self.report.hazards(&usage);
        let decision = &assessment.decision;
        let alert_changed = self.state.alert != decision.alert;
        self.state.alert = decision.alert.clone();
        let (widened, blocked) = self.act(&usage, decision, now);
        self.retry_persist(now);
        if alert_changed && !self.dry_run {
            self.save_state();
        }
        let line = report::status_line(&usage, widened, &authority, &assessment, blocked);
        self.last = Some(LastCensus {
            usage,
            started,
            active_opens,
            // Wall clock, like `polled_at`: a scraper compares it with its own.
            at: SystemTime::now(),
            took,
            cpu,
            blocked,
            judged: assessment.clone(),
            assessment,
        });
        self.report_with(&authority, |r, p| r.censused(&line, p));
        widened.is_some()
    }

    /// The lookup of the holders ended (`None`: it failed, or there is
    /// none): the entries it held back are written, the level entry naming
    /// the holders found; its CPU counts in the census budget.
    pub(super) fn lookup_ended(&mut self, lookup: Option<Lookup>) {
        if let (Some(l), Some(last)) = (&lookup, &mut self.last) {
            last.cpu += l.cpu;
        }
        let found = self.holders.ended(lookup).map(str::to_string);
        if let Some(last) = &self.last {
            self.report
                .release(&last.usage, &last.assessment, found.as_deref());
        }
    }

    /// The judgement, pure (judge/assess.rs): the census, the policy, the
    /// history, a pin and the poll's authority in, the assessment out.
    fn assess(
        &mut self,
        usage: &Usage,
        processes: Option<&str>,
        authority: &Authority,
        now: SystemTime,
    ) -> Assessment {
        let pin = match self.sysctld.get(&self.host) {
            Ok(scan) => actuator::pin(scan, &self.policy.dropin_name),
            Err(e) => {
                note(Kind::Degraded, &format!("cannot read sysctl.d files: {e}"));
                None
            }
        };
        let foreign_dropin =
            actuator::foreign_dropin(&self.host, self.policy.persist, &self.policy.dropin_name);
        assess::assess(
            &mut self.judgement,
            &assess::Evidence {
                usage,
                processes,
                policy: &self.policy,
                history: &self.state.history(),
                pin: pin.as_ref(),
                foreign_dropin,
                now,
                authority,
                single: false,
            },
        )
    }
}
