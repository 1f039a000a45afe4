//! What the daemon tells the world at the end of a poll: the STATUS line
//! (sd_notify), the journal events that remember what was reported (with
//! the "report once" rule of journal.rs), the metrics file and the live
//! view.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

#[path = "said.rs"]
mod said;

use self::said::{MetricsSaid, due, set_aside};
pub(super) use self::said::{Skipped, Unchanged};
use super::LastCensus;
use super::journal::Once;
use super::live_view::{self, Poll, PollCounters};
use crate::act::actuator::ActuateError;
use crate::base::ports::PortRange;
use crate::judge::assess::Assessment;
use crate::judge::authority::Authority;
use crate::judge::planner::{Blocked, Plan};
use crate::observe::census::KernelSettings;
use crate::observe::usage::{self, Usage};
use crate::publish::events::{Entry, Kind, note};
use crate::publish::live::{self, Live};
use crate::publish::metrics;
use crate::publish::notify;

/// The reporting half of the daemon: counters and what was reported.
#[derive(Default)]
pub(super) struct Report {
    /// READY=1 was sent (after the first census).
    pub ready: bool,
    pub counters: PollCounters,
    /// Why widening is held, or the last write error.
    pub blocked: Once,
    pub persist_error: Once,
    pub census_error: Once,
    pub metrics_error: Once,
    pub live_error: Once,
    /// The configuration hazards (same parity, listeners inside the range)
    /// of the last census, each reported once when it appears.
    hazards: Vec<String>,
    /// What the metrics file and the live view last said, and when they
    /// were written (see [`REFRESH`]).
    metrics_written: Option<(MetricsSaid, Instant)>,
    live_written: Option<(Live, Instant)>,
    /// What the last poll that skipped the census told, when all of it was
    /// reported (see [`Unchanged`]), and its STATUS= line.
    unchanged: Option<Unchanged>,
    status_said: String,
    /// The recent usage the live view carries (history.rs).
    history: super::history::HistoryKeeper,
    /// The entries of a census whose level entry waits for the processes
    /// that hold its sockets (census_task.rs): written in order, the level
    /// entry first, once the lookup ends.
    held_back: Option<Vec<Entry>>,
}

/// One line: headline usage, the assessment's time to exhaustion, range,
/// mode (sd_notify STATUS), and why a widening the usage calls for is held
/// (advise mode says so already).
pub(super) fn status_line(
    usage: &Usage,
    widened: Option<PortRange>,
    authority: &Authority,
    assessment: &Assessment,
    held: Option<&str>,
) -> String {
    format!(
        "usage {} ({}/{}) {}{}; range {}{}; mode {}{}",
        usage.headline.usage,
        usage.headline.used,
        usage.headline.capacity,
        usage.headline.cause,
        (assessment.time_to_exhaustion)
            .map_or_else(String::new, |t| format!("; runs out in {t:.0}s")),
        usage.settings.port_range,
        widened.map_or_else(String::new, |to| format!(" widened to {to}")),
        authority.describe(),
        held.filter(|h| *h != "advise")
            .map_or_else(String::new, |h| format!("; widening held: {h}")),
    )
}

/// The STATUS= line of a poll that skipped the census: the last census's
/// line, with why.
pub(super) fn skipped_line(last: &LastCensus, why: &Skipped, poll: &Poll<'_>) -> String {
    format!(
        "{} ({why})",
        status_line(
            &last.usage,
            None,
            poll.authority,
            &last.assessment,
            last.blocked,
        )
    )
}

/// A stable short name for why widening is held (metrics label, dedup key).
pub(super) fn blocked_kind(reason: &Blocked) -> &'static str {
    match reason {
        Blocked::Advise => "advise",
        Blocked::AtBound => "at-bound",
        Blocked::OutsideBounds => "outside-bounds",
        Blocked::Cooldown { .. } => "cooldown",
        Blocked::ChangeCap { .. } => "change-cap",
        Blocked::Yielded { .. } => "yielded",
        Blocked::PinnedBy { .. } => "pinned",
        Blocked::ForeignDropin { .. } => "foreign-dropin",
        Blocked::StateUnreadable { .. } => "state-unreadable",
        Blocked::FewerUsablePorts { .. } => "fewer-usable-ports",
    }
}

impl Report {
    /// The journal entry for a change of the confirmed level, if any.
    pub fn level(&mut self, usage: &Usage, a: &Assessment, processes: Option<&str>) {
        if let Some(entry) = Entry::level(usage, a, processes) {
            self.emit(entry);
        }
    }

    /// The census's level entry waits for its holders: its other entries
    /// wait behind it.
    pub fn hold_back(&mut self) {
        self.held_back.get_or_insert_with(Vec::new);
    }

    /// The holders are known (or the lookup is over): the level entry
    /// (`Report::level`'s), then what waited behind it.
    pub fn release(&mut self, usage: &Usage, a: &Assessment, processes: Option<&str>) {
        let waiting = self.held_back.take();
        if waiting.is_none() {
            return;
        }
        self.level(usage, a, processes);
        for entry in waiting.into_iter().flatten() {
            entry.emit();
        }
    }

    fn emit(&mut self, entry: Entry) {
        match &mut self.held_back {
            Some(waiting) => waiting.push(entry),
            None => entry.emit(),
        }
    }

    /// Reports each configuration hazard once, when a census first finds
    /// it: ends of the same parity, or services listening inside the range
    /// on unreserved ports (usage past the 50 % mark is the usage alerts').
    pub fn hazards(&mut self, usage: &Usage) {
        let now: Vec<String> = usage
            .hazards
            .iter()
            .filter(|h| !matches!(h, usage::Hazard::SlowdownMark { .. }))
            .map(ToString::to_string)
            .collect();
        let new: Vec<&String> = now.iter().filter(|h| !self.hazards.contains(h)).collect();
        for hazard in new {
            self.emit(Entry::hazard(usage, hazard));
        }
        self.hazards = now;
    }

    pub fn held(&mut self, usage: &Usage, plan: Option<&Plan>, reason: &Blocked) {
        if self.blocked.is_new(blocked_kind(reason)) {
            self.emit(Entry::held(usage, plan, reason));
        }
    }

    pub fn widened(&mut self, usage: &Usage, plan: &Plan, reason: &str) {
        self.blocked.clear();
        self.counters.changes += 1;
        self.emit(Entry::widened(usage, plan, reason));
    }

    /// Reported once per distinct error, not on every poll.
    pub fn write_failed(&mut self, usage: &Usage, plan: &Plan, e: &ActuateError) {
        if self.blocked.is_new(&format!("write failed: {e}")) {
            self.emit(Entry::write_failed(usage, plan, &e.to_string()));
        }
    }

    /// The drop-in is written (again); `removed`: an old one it replaced.
    pub fn persisted(&mut self, range: PortRange, dropin: &Path, removed: Option<&Path>) {
        if self.persist_error.clear() {
            note(
                Kind::Restored,
                &format!(
                    "the drop-in {} is written again: the range {range} survives a reboot",
                    dropin.display()
                ),
            );
        }
        if let Some(old) = removed {
            note(
                Kind::Restored,
                &format!(
                    "removed portd's previous drop-in {} now that persist.file names {}",
                    old.display(),
                    dropin.display()
                ),
            );
        }
    }

    /// `was_persisted`: an earlier drop-in holds the range already.
    pub fn persist_failed(&mut self, range: PortRange, was_persisted: bool, error: &str) {
        if self.persist_error.is_new(error) {
            self.emit(Entry::persist_failed(range, was_persisted, error));
        }
    }

    pub fn external_change(reason: &str, written: Option<PortRange>, live: &KernelSettings) {
        Entry::external_change(reason, written, live.port_range).emit();
    }

    pub fn census_ok(&mut self) {
        self.counters.censuses += 1;
        if self.census_error.clear() {
            note(Kind::Restored, "census works again");
        }
    }

    pub fn census_failed(&mut self, error: &str, poll: &Poll<'_>) {
        self.counters.failed += 1;
        if self.census_error.is_new(error) {
            note(
                Kind::DaemonFailed,
                &format!("census failed, will retry: {error}"),
            );
        }
        notify::status(&format!("census failed, will retry: {error}"));
        self.publish(poll);
    }

    pub fn census_abandoned(&mut self, took: Duration, limit: Duration, poll: &Poll<'_>) {
        self.counters.abandoned += 1;
        let text = format!(
            "census abandoned after {:.1}s (limit {:.1}s, the watchdog interval if set); \
             the next one starts when it ends",
            took.as_secs_f64(),
            limit.as_secs_f64()
        );
        note(Kind::DaemonFailed, &text);
        notify::status(&text);
        self.publish(poll);
    }

    /// A poll that skipped the census: the last census's line, with why.
    /// Nothing is built when what it tells is `unchanged` since the last
    /// such poll and no output is due for its time alone (a refresh); a
    /// point of the history is then taken from the view last written.
    pub fn census_skipped(&mut self, why: &Skipped, unchanged: Option<Unchanged>, poll: &Poll<'_>) {
        self.counters.skipped += 1;
        let now = Instant::now();
        if unchanged.is_some() && unchanged == self.unchanged && !self.refresh_due(poll, now) {
            #[cfg(debug_assertions)]
            self.check_unchanged(why, poll);
            tracing::debug!("poll: {}", self.status_said);
            if let (true, Some((said, _))) = (poll.publishes, &self.live_written) {
                // The view last written says what this poll's would.
                let at = live::unix_seconds(SystemTime::now());
                self.history.take_point(said, at, now);
            }
            return;
        }
        if let Some(last) = poll.last {
            let line = skipped_line(last, why, poll);
            tracing::debug!("poll: {line}");
            notify::status(&line);
            self.status_said = line;
        }
        self.publish(poll);
        self.unchanged = unchanged;
    }

    /// The end of a poll with a census: metrics first, so whoever reacts to
    /// READY or STATUS finds them.
    pub fn censused(&mut self, line: &str, poll: &Poll<'_>) {
        self.publish(poll);
        // STATUS= goes out only when it changes (notify.rs): each poll's
        // line is on the debug log.
        tracing::debug!("poll: {line}");
        if self.ready {
            notify::status(line);
        } else {
            notify::ready(line);
            self.ready = true;
            note(Kind::Started, &format!("ready: {line}"));
        }
    }

    /// The end of every poll: the metrics file and the live view. After
    /// SIGTERM neither is written: each is a write that can stall as long
    /// as the disk does, and both are rebuilt by the next run.
    pub fn publish(&mut self, poll: &Poll<'_>) {
        // Whatever reports besides a poll that skipped the census (a census,
        // a failure) makes the next such poll report in full.
        self.unchanged = None;
        if crate::base::shutdown::requested() {
            return;
        }
        self.metrics(poll);
        self.live(poll);
    }

    /// `/run/portd/live.json` (live.rs), for `status` and `check`: by the
    /// writer-lock holder only, when it changes or after [`REFRESH`].
    pub fn live(&mut self, poll: &Poll<'_>) {
        if !poll.publishes {
            return;
        }
        let mut said = live_view::snapshot(&self.counters, poll, SystemTime::now());
        let now = Instant::now();
        self.history.record(&mut said, now);
        // What it says, aside from what advances by itself with time (see
        // [`REFRESH`]: the time, the polls that skipped the census, the
        // history's points), set aside until it is written.
        let (written_at, skipped_total, history) = set_aside(&mut said);
        if !due(self.live_written.as_ref(), &said, now) {
            return;
        }
        self.live_written = None;
        let mut view = said.clone();
        view.written_at = written_at;
        view.census.skipped_total = skipped_total;
        view.history = history;
        match live::write(poll.host, &view) {
            Ok(()) => {
                self.live_written = Some((said, now));
                if self.live_error.clear() {
                    note(Kind::Restored, "the live view is written again");
                }
            }
            Err(e) => {
                let text = format!(
                    "cannot write the live view {}: {e}; status and check will say the daemon is not running",
                    live::path(poll.host).display()
                );
                if self.live_error.is_new(&text) {
                    note(Kind::Degraded, &text);
                }
            }
        }
    }

    /// What the metrics file shows after this poll.
    fn metrics_snapshot<'a>(
        &self,
        poll: &Poll<'a>,
        last: &'a LastCensus,
        witness: &'a metrics::WitnessRows,
    ) -> metrics::Snapshot<'a> {
        metrics::Snapshot {
            usage: &last.usage,
            level: last.assessment.level(),
            changes_total: self.counters.changes,
            census_duration: last.took,
            census_at: last.at,
            polled_at: SystemTime::now(),
            censuses_total: self.counters.censuses,
            census_skipped_total: self.counters.skipped,
            census_failed_total: self.counters.failed,
            census_abandoned_total: self.counters.abandoned,
            last_change_at: poll.last_change.map(|c| c.at),
            widening_blocked: last.blocked,
            authority: poll.authority,
            witness,
            netns: &poll.netns.metrics,
            time_to_exhaustion: last.assessment.time_to_exhaustion,
            connect_attempts_total: poll.connect_attempts,
        }
    }

    fn metrics(&mut self, poll: &Poll<'_>) {
        let (Some(path), Some(last)) = (poll.metrics_file, poll.last) else {
            return;
        };
        let witness = poll.witness.metrics();
        let snapshot = self.metrics_snapshot(poll, last, &witness);
        let said = MetricsSaid::of(path, &snapshot);
        let now = Instant::now();
        if !due(self.metrics_written.as_ref(), &said, now) {
            return;
        }
        self.metrics_written = None;
        match metrics::write(path, &metrics::render(&snapshot)) {
            Ok(()) => {
                self.metrics_written = Some((said, now));
                if self.metrics_error.clear() {
                    note(
                        Kind::Restored,
                        &format!("metrics are written to {} again", path.display()),
                    );
                }
            }
            Err(e) => {
                let text = format!("cannot write metrics to {}: {e}", path.display());
                if self.metrics_error.is_new(&text) {
                    note(Kind::Degraded, &text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::judge::planner::Unfit;
    use crate::judge::remedy;
    use crate::publish::events::unfit_text;

    /// The journal's text for `u`, with the remedies the assessment names
    /// for it.
    fn unfit_journal(usage: &Usage, u: &Unfit) -> (String, Option<String>) {
        let situation = remedy::situation(&u.forecast, u.demand, u.room, usage, None);
        unfit_text(u, &remedy::remedies(&situation))
    }

    /// 900 TIME_WAIT of 950 ports towards 10.0.0.1:80, forecast to hold
    /// `demand` where the bounds allow 2000 ports, 1000 below critical.
    fn time_wait_heading_for(demand: u64) -> (Usage, Unfit) {
        let usage = crate::judge::forecast::tests::census(&[(1, 900, 50)]);
        let forecast = crate::judge::forecast::Forecast::flat(
            crate::judge::forecast::Target::Destination {
                destination: usage.destinations[0].key,
            },
            950,
            900,
            1000,
        );
        let u = Unfit {
            forecast,
            demand,
            capacity_at_bounds: 2000,
            room: 1000,
        };
        (usage, u)
    }

    #[test]
    fn a_load_beyond_the_bounds_names_its_remedies_first_that_closes_the_gap_first() {
        // Forecast 1500 where the bounds allow 2000 ports.
        let (usage, u) = time_wait_heading_for(1500);
        let (text, ids) = unfit_journal(&usage, &u);
        assert!(
            text.contains(
                "does not fit below the critical level: forecast 1500 ports, 1000 of the 2000"
            ) && text.contains("remedy connection-reuse: ")
                && text.contains("no owning process"),
            "{text}"
        );
        assert_eq!(
            ids.as_deref(),
            Some("connection-reuse,tcp-tw-reuse,source-addresses,lower-floor")
        );
    }

    #[test]
    fn reuse_is_judged_by_the_time_wait_the_load_leads_to() {
        // Early in a TIME_WAIT ramp: heading for 30 000. Today's 900
        // TIME_WAIT would not close the gap; the ~29 950 of the steady state
        // do.
        let (usage, u) = time_wait_heading_for(30_000);
        let (text, ids) = unfit_journal(&usage, &u);
        assert!(
            text.contains("remedy connection-reuse: ") && text.contains("29950 ports held"),
            "{text}"
        );
        assert!(ids.unwrap().starts_with("connection-reuse,"));
        // The same demand from live connections (no TIME_WAIT, no steady
        // state): reuse frees nothing; more addresses help.
        let live = crate::judge::forecast::Forecast::flat(u.forecast.target, 950, 0, 1000);
        let (_, ids) = unfit_journal(
            &usage,
            &Unfit {
                forecast: live,
                ..u
            },
        );
        let ids = ids.unwrap();
        assert!(
            !ids.contains("connection-reuse") && ids.starts_with("source-addresses"),
            "{ids}"
        );
    }

    #[test]
    fn the_journal_the_status_line_and_the_live_view_give_one_time_to_exhaustion() {
        use crate::judge::assess::tests::CensusSeries;
        // 100, 170, 240 of 1000 ports: runs out in 10.9 s, critical in
        // 3.7 s, so the warning is confirmed before the hold (a journal
        // entry).
        let mut series = CensusSeries::new(crate::policy::Policy::default());
        let (usage, a) = series.ramp(70, 3);
        let t = a.time_to_exhaustion.expect("a time to exhaustion");
        let line = status_line(&usage, None, &series.authority, &a, None);
        assert!(line.contains(&format!("; runs out in {t:.0}s;")), "{line}");
        let entry = Entry::level(&usage, &a, None).expect("a journal entry");
        assert_eq!(entry.kind, Kind::UsageWarning);
        assert_eq!(entry.fields.time_to_exhaustion, Some(t.ceil() as u64));
        let outlook = super::live_view::outlook(&a, None);
        assert_eq!(outlook.time_to_exhaustion_seconds, Some(t));
        // The metrics file takes the same field of the same assessment
        // (`Report::metrics`).
    }
}
