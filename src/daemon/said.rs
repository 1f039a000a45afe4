//! What the reporter last said, and whether a poll must say it again
//! (report.rs): the metrics file's content as compared, the live view's
//! fields that advance with time alone, and the key of a poll that skipped
//! the census ([`Unchanged`]): equal keys, the same outputs, so such a poll
//! builds none of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::super::live_view::{Poll, REFRESH};
use super::Report;
#[cfg(debug_assertions)]
use super::{super::live_view, skipped_line};
use crate::judge::authority::Authority;
use crate::judge::fastpath::Skip;
use crate::judge::level::Level;
use crate::publish::live::{Live, UsageHistory};
use crate::publish::metrics;

/// What the metrics file says, aside from what advances every poll by
/// itself (`polled_at`, `census_skipped_total`; see [`REFRESH`]): the
/// fields of the snapshot `metrics::render` renders, a function of that
/// snapshot alone. Compared instead of the rendered text, so a poll whose
/// metrics say nothing new renders nothing. Taken field by field: a field
/// added to the snapshot does not build until it is added here. The
/// census's usage is known by its time and duration (a new census makes a
/// new one).
#[derive(PartialEq)]
pub(super) struct MetricsSaid {
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
    pub(super) fn of(file: &Path, s: &metrics::Snapshot<'_>) -> Self {
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
pub(super) fn due<T: PartialEq>(last: Option<&(T, Instant)>, new: &T, now: Instant) -> bool {
    last.is_none_or(|(old, at)| old != new || now.duration_since(*at) >= REFRESH)
}

/// Why a poll skipped the census (its STATUS= line says it).
#[derive(Clone, Debug, PartialEq)]
pub(in crate::daemon) enum Skipped {
    /// The fast path's bounds prove no destination at the warning level.
    Bounded(Skip),
    /// The census waits for its share of the CPU (budget.rs): its text
    /// counts the wait down.
    Deferred(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::Bounded(skip) => skip.fmt(f),
            Skipped::Deferred(text) => f.write_str(text),
        }
    }
}

/// What a poll that skipped the census tells is a function of these,
/// besides what advances with time by itself (see [`REFRESH`]; the
/// history's points): while they stay equal from poll to poll, so do
/// STATUS=, the live view and the metrics, and the poll builds none of them
/// (`Report::census_skipped`). tick.rs builds it; `None` when what the poll
/// tells moves with time alone (a deferred census counts down, the
/// witness's count of the last minute falls). Debug builds check on every
/// such poll that each output would indeed be the same.
#[derive(Clone, Debug, PartialEq)]
pub(in crate::daemon) struct Unchanged {
    /// Events of the loop besides the poll timer (a census ended, a look at
    /// the other namespaces, a lookup, a reload): whatever they bring.
    pub events: u64,
    /// Revisions of the forecast between censuses that changed it.
    pub revisions: u64,
    pub skip: Skip,
    pub authority: Authority,
    /// When the last change of the range recorded was made.
    pub last_change: Option<SystemTime>,
    pub connect_attempts: Option<u64>,
    /// The witness's readings that brought something
    /// (`witness::Running::settled`).
    pub witness: u64,
}

/// The live view's fields that advance with time by themselves (see
/// [`REFRESH`]), taken out of `view`: what is left is what it says.
pub(super) fn set_aside(view: &mut Live) -> (f64, u64, Option<UsageHistory>) {
    (
        std::mem::take(&mut view.written_at),
        std::mem::take(&mut view.census.skipped_total),
        view.history.take(),
    )
}

impl Report {
    /// Whether an output is due for time alone: a refresh of the live view
    /// or the metrics file, or a write that failed, to retry.
    pub(super) fn refresh_due(&self, poll: &Poll<'_>, now: Instant) -> bool {
        let stale = |at: Option<Instant>| at.is_none_or(|at| now.duration_since(at) >= REFRESH);
        let live = poll.publishes && stale(self.live_written.as_ref().map(|w| w.1));
        let metrics = poll.metrics_file.is_some()
            && poll.last.is_some()
            && stale(self.metrics_written.as_ref().map(|w| w.1));
        live || metrics
    }

    /// Debug builds: a poll that reported nothing because its inputs were
    /// unchanged would have reported exactly what was last reported.
    #[cfg(debug_assertions)]
    pub(super) fn check_unchanged(&self, why: &Skipped, poll: &Poll<'_>) {
        if let Some(last) = poll.last {
            let line = skipped_line(last, why, poll);
            assert_eq!(
                line, self.status_said,
                "an unchanged poll's STATUS= line changed"
            );
        }
        if let Some((said, _)) = &self.live_written {
            let mut now = live_view::snapshot(&self.counters, poll, SystemTime::now());
            set_aside(&mut now);
            assert!(
                now == *said,
                "an unchanged poll's live view changed:\n{said:?}\n{now:?}"
            );
        }
        if let (Some((said, _)), Some(path), Some(last)) =
            (&self.metrics_written, poll.metrics_file, poll.last)
        {
            let witness = poll.witness.metrics();
            let now = MetricsSaid::of(path, &self.metrics_snapshot(poll, last, &witness));
            assert!(now == *said, "an unchanged poll's metrics changed");
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
}
