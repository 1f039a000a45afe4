//! What the daemon tells the world at the end of a poll: the STATUS line
//! (sd_notify), the journal events that remember what was reported (with
//! the "report once" rule of journal.rs), the metrics file and the live
//! view.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::journal::Once;
use super::live_view::{self, Poll, PollCounters, REFRESH};
use crate::act::actuator::ActuateError;
use crate::base::ports::PortRange;
use crate::judge::assess::Assessment;
use crate::judge::authority::Authority;
use crate::judge::level::Level;
use crate::judge::planner::{Blocked, Plan};
use crate::observe::census::KernelSettings;
use crate::observe::usage::{self, Usage};
use crate::publish::events::{Entry, Kind, note};
use crate::publish::live;
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
    live_written: Option<(live::Live, Instant)>,
    /// The recent usage the live view carries (history.rs).
    history: super::history::HistoryKeeper,
    /// The entries of a census whose level entry waits for the processes
    /// that hold its sockets (census_task.rs): written in order, the level
    /// entry first, once the lookup ends.
    held_back: Option<Vec<Entry>>,
}

/// What the metrics file says, aside from what advances every poll by
/// itself (`polled_at`, `census_skipped_total`; see [`REFRESH`]): the
/// fields of the snapshot `metrics::render` renders, a function of that
/// snapshot alone. Compared instead of the rendered text, so a poll whose
/// metrics say nothing new renders nothing. Taken field by field: a field
/// added to the snapshot does not build until it is added here. The
/// census's usage is known by its time and duration (a new census makes a
/// new one).
#[derive(PartialEq)]
struct MetricsSaid {
    file: PathBuf,
    census: (SystemTime, Duration),
    level: Level,
    /// Changes, censuses, failed and abandoned censuses.
    totals: [u64; 4],
    last_change_at: Option<SystemTime>,
    widening_blocked: Option<String>,
    authority: Authority,
    witness: metrics::WitnessRows,
    netns: Option<metrics::NetnsRows>,
    time_to_exhaustion: Option<f64>,
    connect_attempts_total: Option<u64>,
}

impl MetricsSaid {
    fn of(file: &Path, s: &metrics::Snapshot<'_>) -> Self {
        let metrics::Snapshot {
            usage: _,
            level,
            changes_total,
            census_duration,
            census_at,
            polled_at: _,
            censuses_total,
            census_skipped_total: _,
            census_failed_total,
            census_abandoned_total,
            last_change_at,
            widening_blocked,
            authority,
            witness,
            netns,
            time_to_exhaustion,
            connect_attempts_total,
        } = s;
        MetricsSaid {
            file: file.to_owned(),
            census: (*census_at, *census_duration),
            level: *level,
            totals: [
                *changes_total,
                *censuses_total,
                *census_failed_total,
                *census_abandoned_total,
            ],
            last_change_at: *last_change_at,
            widening_blocked: widening_blocked.map(str::to_owned),
            authority: (*authority).clone(),
            witness: (*witness).clone(),
            netns: (*netns).clone(),
            time_to_exhaustion: *time_to_exhaustion,
            connect_attempts_total: *connect_attempts_total,
        }
    }
}

/// Whether content `new` is to be written, given what was last written and
/// when: when it differs, or after [`REFRESH`].
fn due<T: PartialEq>(last: Option<&(T, Instant)>, new: &T, now: Instant) -> bool {
    last.is_none_or(|(old, at)| old != new || now.duration_since(*at) >= REFRESH)
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
    pub fn census_skipped(&mut self, why: &str, poll: &Poll<'_>) {
        self.counters.skipped += 1;
        if let Some(last) = poll.last {
            let line = format!(
                "{} ({why})",
                status_line(
                    &last.usage,
                    None,
                    poll.authority,
                    &last.assessment,
                    last.blocked,
                )
            );
            tracing::debug!("poll: {line}");
            notify::status(&line);
        }
        self.publish(poll);
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
        let written_at = std::mem::take(&mut said.written_at);
        let skipped_total = std::mem::take(&mut said.census.skipped_total);
        let history = said.history.take();
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

    fn metrics(&mut self, poll: &Poll<'_>) {
        let (Some(path), Some(last)) = (poll.metrics_file, poll.last) else {
            return;
        };
        let witness = poll.witness.metrics();
        let snapshot = metrics::Snapshot {
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
            witness: &witness,
            netns: &poll.netns.metrics,
            time_to_exhaustion: last.assessment.time_to_exhaustion,
            connect_attempts_total: poll.connect_attempts,
        };
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

    #[test]
    fn an_unchanged_output_is_rewritten_only_after_the_refresh_period() {
        let t0 = Instant::now();
        assert!(due(None, &"a", t0), "the first is written");
        let last = ("a", t0);
        assert!(!due(Some(&last), &"a", t0 + REFRESH / 2));
        assert!(due(Some(&last), &"b", t0 + REFRESH / 2), "a change at once");
        assert!(due(Some(&last), &"a", t0 + REFRESH));
    }
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
