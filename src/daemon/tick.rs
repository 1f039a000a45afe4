//! The cheap part of a poll: the settings, the pending record, the admin's
//! changes, the drop-in and the counters are read, and the fast path and
//! the CPU budget say whether a census runs now (on the blocking pool) or
//! the poll ends with the last census's line. Also the daemon's clock, which
//! times every poll.

use std::time::{Duration, Instant, SystemTime};

use super::census_task::{CensusInFlight, ProcessLookup};
use super::report::{Skipped, Unchanged};
use super::{Daemon, Tasks, act};
use crate::judge::assess::{self, Look};
use crate::judge::authority::Authority;
use crate::judge::budget;
use crate::judge::fastpath::{self, Baseline};
use crate::observe::census::KernelSettings;
use crate::observe::census::sockstat::{self, Totals};
use crate::observe::usage::UsageOptions;
use crate::publish::notify;

/// How long the settings besides the range are taken as read: a poll reads
/// them again once their last read is this old, and before every census
/// (docs/DESIGN.md, "Reading the settings").
pub(super) const SETTINGS_WHOLE: std::time::Duration = std::time::Duration::from_secs(5);

/// A reading of `Tcp: ActiveOpens` (`/proc/net/snmp`), kept by the polls
/// whose socket totals did not move (tick.rs, `read_opens`).
#[derive(Clone, Copy, Debug)]
pub(super) struct OpensRead {
    /// The socket totals of the poll that read it.
    totals: Option<Totals>,
    at: Instant,
    pub opens: Option<u64>,
    /// The `connect()` rate since the reading before (fastpath.rs, `Pace`).
    pub pace: Option<f64>,
}

impl OpensRead {
    /// Whether a poll that read `totals` at `now` keeps this reading: every
    /// poll since it read the same totals (one that did not read again), and
    /// it is younger than [`SETTINGS_WHOLE`]. Sockets that opened and
    /// closed in equal numbers between two polls are counted at most that
    /// much later; no socket counted in the bounds is missed (the totals
    /// bound every destination).
    fn still(&self, totals: Option<Totals>, now: Instant) -> bool {
        totals.is_some()
            && self.totals == totals
            && self.opens.is_some()
            && now.saturating_duration_since(self.at) < SETTINGS_WHOLE
    }
}

/// The daemon's time: the wall clock read once at start, advanced by the
/// monotonic clock. A step of the wall clock during a run (NTP, an admin,
/// a VM resumed from a snapshot) then neither stretches nor cuts a hold, a
/// cooldown or the hourly cap; times stored by an earlier run that lie
/// ahead of it are clamped when the state is loaded (State::clamp_future).
pub(super) struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Clock {
    pub(super) fn start() -> Self {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}

impl Daemon {
    /// The poll timer fired: a poll, unless an abandoned census still runs.
    pub(super) fn poll(&mut self, tasks: &mut Tasks, limit: Duration) {
        // Not an event (serve counts every turn of its loop as one): a
        // census, a look, a lookup, a reload are; whatever they bring makes
        // the next poll report in full (report.rs, `Unchanged`).
        self.events -= 1;
        match &tasks.abandoned {
            Some(stuck) => {
                notify::status(&format!(
                    "census stuck: the census abandoned after {:.1}s is still running ({:.0}s); no new census until it ends",
                    limit.as_secs_f64(),
                    stuck.started.elapsed().as_secs_f64()
                ));
                // Still running: the live view stays fresh.
                let authority = self.authority();
                self.report_with(&authority, |r, p| r.live(p));
            }
            None => tasks.census = self.tick(),
        }
        if tasks.netns.is_none() {
            tasks.netns = self
                .netns
                .start(&self.host, &self.policy, &mut self.witness);
        }
    }

    /// One poll: cheap checks, then a census unless the bounds prove no
    /// destination can have reached the warning level.
    pub(super) fn tick(&mut self) -> Option<CensusInFlight> {
        self.sysctld = act::PollScan::default();
        let (settings, whole) = self.read_settings(Instant::now())?;
        self.settle_pending(&settings);
        self.check_external_change(&settings);
        // The drop-in is brought up to date every poll, not only after a
        // full census (which the fast path may skip for long): a failed
        // write is retried, and the reserved ports follow the other files.
        self.retry_persist(self.clock.now());
        let polled = Instant::now();
        let totals = sockstat::read_totals(&self.host, self.proc.as_mut()).ok();
        let opens = self.read_opens(totals, polled);
        let counters = fastpath::Counters {
            settings: &settings,
            totals,
            active_opens: opens.opens,
            pace: opens.pace,
        };
        let active_opens = counters.active_opens;
        self.active_opens = active_opens;
        let baseline = self
            .last
            .as_ref()
            .map(|l| Baseline::of(&l.usage, l.active_opens, l.started.elapsed()));
        let next = fastpath::next(
            baseline.as_ref(),
            &counters,
            &self.policy,
            &self.state.alert,
        );
        // The witness is read once per poll; a failure it saw is a reason
        // to census (and act) now, whatever the fast path's bounds say.
        if self.witness.poll(Instant::now()) > 0 {
            self.judgement.witnessed();
        }
        let skipped = match self.judgement.look(next) {
            Look::Skip(skip) => Some(Skipped::Bounded(skip)),
            Look::MayWait => self.census_waits().map(Skipped::Deferred),
            Look::Census => None,
        };
        if let Some(why) = skipped {
            if self.revise_forecast(&counters) {
                self.revisions += 1;
            }
            let authority = self.authority();
            let unchanged = self.unchanged(&why, &authority, polled);
            self.report_with(&authority, |r, p| r.census_skipped(&why, unchanged, p));
            return None;
        }
        // A census (and any write after it) starts from every setting as
        // read now, and a foreign change of any is seen before it.
        let settings = if whole {
            settings
        } else {
            let fresh = self.read_all_settings(Instant::now())?;
            if fresh != settings {
                self.settle_pending(&fresh);
                self.check_external_change(&fresh);
            }
            fresh
        };
        // The census's baseline is the count as of its own poll.
        let active_opens = if opens.at == polled {
            active_opens
        } else {
            self.read_opens_now(totals, polled).opens
        };
        self.active_opens = active_opens;
        let options = UsageOptions {
            tcp_pool_in_headline: self.policy.tcp_pool_alerts,
        };
        Some(CensusInFlight::spawn(
            self.host.clone(),
            settings,
            options,
            active_opens,
        ))
    }

    /// `Tcp: ActiveOpens` for this poll: read when the socket totals moved
    /// since the last reading or that reading is [`SETTINGS_WHOLE`] old;
    /// otherwise the last reading and the pace it gave are kept
    /// (docs/DESIGN.md, "Reading the counters"). `/proc/net/snmp` is the
    /// costliest file an idle poll read: the kernel sums and prints every
    /// protocol's counters to give this one.
    fn read_opens(&mut self, totals: Option<Totals>, now: Instant) -> OpensRead {
        match self.opens_read {
            Some(kept) if kept.still(totals, now) => kept,
            _ => self.read_opens_now(totals, now),
        }
    }

    /// `Tcp: ActiveOpens` read now (a census's baseline is the count as of
    /// its own poll).
    fn read_opens_now(&mut self, totals: Option<Totals>, now: Instant) -> OpensRead {
        let opens = sockstat::read_active_opens(&self.host, self.proc.as_mut()).ok();
        let read = OpensRead {
            totals,
            at: now,
            opens,
            pace: self.judgement.pace(now, opens),
        };
        self.opens_read = Some(read);
        read
    }

    /// The kernel settings for this poll, and whether all of them were read
    /// now: the range every poll, the others when their last read is
    /// [`SETTINGS_WHOLE`] old (docs/DESIGN.md, "Reading the settings"). A
    /// failure is reported as a failed census.
    fn read_settings(&mut self, now: Instant) -> Option<(KernelSettings, bool)> {
        let Some((kept, _)) = self
            .settings
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) < SETTINGS_WHOLE)
        else {
            return self.read_all_settings(now).map(|s| (s, true));
        };
        match KernelSettings::read_range_with(&self.host, self.proc.as_mut()) {
            Ok(range) if range == kept.port_range => Some((kept.clone(), false)),
            // A changed range: the others may have changed with it.
            Ok(_) => self.read_all_settings(now).map(|s| (s, true)),
            Err(e) => {
                self.settings = None;
                self.census_failed(&e.to_string());
                None
            }
        }
    }

    /// Every setting, read now and kept for the polls that read the range
    /// alone.
    fn read_all_settings(&mut self, now: Instant) -> Option<KernelSettings> {
        match KernelSettings::read_with(&self.host, self.proc.as_mut()) {
            Ok(s) => {
                self.settings = Some((s.clone(), now));
                Some(s)
            }
            Err(e) => {
                self.settings = None;
                self.census_failed(&e.to_string());
                None
            }
        }
    }

    /// What this poll that skipped the census tells depends on, when that
    /// does not move with time alone (report.rs, [`Unchanged`]).
    fn unchanged(&self, why: &Skipped, authority: &Authority, now: Instant) -> Option<Unchanged> {
        let Skipped::Bounded(skip) = why else {
            return None;
        };
        Some(Unchanged {
            events: self.events,
            revisions: self.revisions,
            skip: *skip,
            authority: authority.clone(),
            last_change: self.state.changes.last().map(|c| c.at),
            connect_attempts: self.active_opens,
            witness: self.witness.settled(now)?,
        })
    }

    /// A poll without a census: the last census's forecast brought up to
    /// now from the counters, so no channel shows a forecast that stays
    /// fixed while time passes (judge/assess.rs, `revise`). Whether the
    /// revision changed it.
    fn revise_forecast(&mut self, counters: &fastpath::Counters<'_>) -> bool {
        let Some(last) = self.last.as_mut() else {
            return false;
        };
        let since = assess::Since {
            age: last.started.elapsed(),
            opened: match (last.active_opens, counters.active_opens) {
                (Some(then), Some(now)) => now.checked_sub(then),
                _ => None,
            },
            pace: counters.pace,
            totals: counters.totals,
        };
        let revised = assess::revise(&last.judged, &self.policy, &since);
        let changed = revised != last.assessment;
        last.assessment = revised;
        changed
    }

    pub(super) fn process_lookup(&self) -> ProcessLookup {
        let alert = &self.state.alert;
        ProcessLookup {
            warning: self.policy.thresholds.warning(),
            critical: self.policy.thresholds.critical(),
            confirmed: alert.level,
            reminder_due: alert.announced.is_some_and(|t| {
                self.clock
                    .now()
                    .duration_since(t)
                    .is_ok_and(|d| d >= self.policy.reminder)
            }),
        }
    }

    /// Why a census that may wait for its share of the CPU (budget.rs)
    /// waits on this poll; `None` when it is taken.
    pub(super) fn census_waits(&self) -> Option<String> {
        let last = self.last.as_ref()?;
        let spent = budget::Spent {
            started: last.started,
            took: last.cpu,
        };
        let wait = spent.wait(Instant::now(), budget::CENSUS_SHARE)?;
        Some(format!(
            "census deferred {:.1}s: the last one took {:.0}ms of CPU, and censuses use at most {:.0}% of a core",
            wait.as_secs_f64(),
            last.cpu.as_secs_f64() * 1000.0,
            budget::CENSUS_SHARE * 100.0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(tcp_inuse: u64) -> Option<Totals> {
        Some(Totals {
            tcp_inuse,
            tcp_tw: 3,
            udp_inuse: 1,
        })
    }

    #[test]
    fn a_reading_of_active_opens_is_kept_while_the_totals_stand_still_and_for_at_most_5s() {
        let t0 = Instant::now();
        let read = OpensRead {
            totals: totals(10),
            at: t0,
            opens: Some(500),
            pace: Some(0.0),
        };
        assert!(read.still(totals(10), t0 + Duration::from_secs(1)));
        assert!(read.still(totals(10), t0 + SETTINGS_WHOLE - Duration::from_millis(1)));
        assert!(
            !read.still(totals(10), t0 + SETTINGS_WHOLE),
            "read again after 5 s"
        );
        assert!(
            !read.still(totals(11), t0 + Duration::from_secs(1)),
            "a socket more"
        );
        assert!(
            !read.still(None, t0),
            "no totals: nothing proves them unmoved"
        );
        let failed = OpensRead {
            opens: None,
            ..read
        };
        assert!(
            !failed.still(totals(10), t0),
            "a failed read is tried again"
        );
    }
}
