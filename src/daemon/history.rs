//! The recent past of usage that `status --watch` draws: a point every
//! [`STEP`] for the worst destinations and namespaces of the live view,
//! bounded by [`live::HISTORY_POINTS`] and [`live::HISTORY_SERIES`], kept in
//! memory and published in the live view (live.rs). Points come from the
//! view the poll already built: no read of its own.
//!
//! `PORTD_HISTORY_STEP` (seconds, 0.1 to 3600) sets another spacing, for
//! tests that cannot wait ten minutes for a history; it is an environment
//! variable, not an option, so that neither help nor completions offer it.

use std::time::{Duration, Instant};

use crate::publish::live::{self, HistorySeries, Live, UsageHistory};

/// The spacing of the points: 60 of them cover the last 10 minutes.
pub(super) const STEP: Duration = Duration::from_secs(10);

/// The history and when its last point was taken.
pub(super) struct HistoryKeeper {
    step: Duration,
    last: Option<Instant>,
    history: UsageHistory,
}

impl Default for HistoryKeeper {
    fn default() -> Self {
        let step = std::env::var("PORTD_HISTORY_STEP")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| (0.1..=3600.0).contains(s))
            .map_or(STEP, Duration::from_secs_f64);
        HistoryKeeper {
            step,
            last: None,
            history: UsageHistory::default(),
        }
    }
}

impl HistoryKeeper {
    /// Whether a point is due at `now` (`record` takes it).
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|at| now.duration_since(at) >= self.step)
    }

    /// Takes a point of `view` when a step has passed since the last one,
    /// and puts the history in it. Between points the view carries the
    /// same history, so it does not count as a change (report.rs).
    pub fn record(&mut self, view: &mut Live, now: Instant) {
        let at = view.written_at;
        self.take_point(view, at, now);
        if !(self.history.destinations.is_empty() && self.history.namespaces.is_empty()) {
            view.history = Some(self.history.clone());
        }
    }

    /// Takes a point of what `view` says, written at `at` (Unix seconds),
    /// when one is due: a poll that builds no view takes it from the one
    /// last written, which says the same (report.rs, `Unchanged`).
    pub fn take_point(&mut self, view: &Live, at: f64, now: Instant) {
        if !self.due(now) {
            return;
        }
        self.last = Some(now);
        let h = &mut self.history;
        h.step_seconds = self.step.as_secs_f64();
        h.last_at = at;
        let targets = view.forecast.iter().flat_map(|o| &o.targets);
        let destinations = targets.map(|t| (t.target.as_str(), t.used, t.capacity));
        h.destinations = advance(std::mem::take(&mut h.destinations), destinations);
        let namespaces = view.namespaces.iter().filter_map(|n| {
            let head = n.headline.as_ref()?;
            Some((n.label.as_str(), head.used, head.capacity))
        });
        h.namespaces = advance(std::mem::take(&mut h.namespaces), namespaces);
    }
}

/// The next point of the worst [`live::HISTORY_SERIES`] of `now` (name,
/// used, capacity), each after its own earlier points in `old`; a series
/// that leaves the worst is dropped, one that enters starts with this point.
fn advance<'a>(
    mut old: Vec<HistorySeries>,
    now: impl Iterator<Item = (&'a str, u64, u64)>,
) -> Vec<HistorySeries> {
    let mut now: Vec<(&str, u64, f64)> = now
        .map(|(name, used, capacity)| {
            let ratio = if capacity == 0 {
                0.0
            } else {
                used as f64 / capacity as f64
            };
            (name, used, (ratio * 1000.0).round() / 1000.0)
        })
        .collect();
    now.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    now.dedup_by(|a, b| a.0 == b.0);
    now.truncate(live::HISTORY_SERIES);
    now.into_iter()
        .map(|(name, used, usage)| {
            let mut series = match old.iter().position(|s| s.name == name) {
                Some(i) => old.swap_remove(i),
                None => HistorySeries {
                    name: name.to_owned(),
                    ..HistorySeries::default()
                },
            };
            series.usage.push(usage);
            series.used.push(used);
            live::keep_last(&mut series.usage);
            live::keep_last(&mut series.used);
            series
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::live::{HISTORY_POINTS, HISTORY_SERIES, Outlook, TargetView};

    fn view(targets: &[(&str, u64)], at: f64) -> Live {
        Live {
            written_at: at,
            forecast: Some(Outlook {
                targets: targets
                    .iter()
                    .map(|(t, used)| TargetView {
                        target: (*t).into(),
                        used: *used,
                        capacity: 100,
                        ..TargetView::default()
                    })
                    .collect(),
                ..Outlook::default()
            }),
            ..Live::default()
        }
    }

    #[test]
    fn the_history_keeps_the_last_sixty_points_of_the_worst_ten() {
        let mut r = HistoryKeeper {
            step: STEP,
            last: None,
            history: UsageHistory::default(),
        };
        let names: Vec<String> = (0..15).map(|i| format!("destination {i}")).collect();
        let t0 = Instant::now();
        let mut last = Live::default();
        for step in 0..100u32 {
            let targets: Vec<(&str, u64)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i as u64 + u64::from(step % 7)))
                .collect();
            last = view(&targets, f64::from(step) * 10.0);
            r.record(&mut last, t0 + STEP * step);
        }
        let h = last.history.expect("a history");
        assert_eq!(h.step_seconds, 10.0);
        assert_eq!(h.last_at, 990.0);
        assert_eq!(h.destinations.len(), HISTORY_SERIES);
        assert_eq!(h.destinations[0].name, "destination 14", "worst first");
        for s in &h.destinations {
            assert_eq!(s.usage.len(), HISTORY_POINTS, "{}", s.name);
            assert_eq!(s.used.len(), HISTORY_POINTS, "{}", s.name);
        }
        assert_eq!(h.destinations[0].used[HISTORY_POINTS - 1], 14 + 99 % 7);
        assert_eq!(h.destinations[0].usage[HISTORY_POINTS - 1], 0.15);
        assert!(h.namespaces.is_empty());
    }

    #[test]
    fn a_point_is_taken_once_a_step_and_the_view_carries_the_history_between() {
        let mut r = HistoryKeeper {
            step: STEP,
            ..HistoryKeeper::default()
        };
        let t0 = Instant::now();
        for (i, after) in [0u32, 3, 9, 10, 12].into_iter().enumerate() {
            let mut v = view(&[("destination a", 5 + i as u64)], f64::from(after));
            r.record(&mut v, t0 + Duration::from_secs(after.into()));
            let h = v.history.expect("a history");
            let points = if after < 10 { 1 } else { 2 };
            assert_eq!(h.destinations[0].used.len(), points, "after {after}s");
        }
        let mut none = HistoryKeeper::default();
        let mut v = Live::default();
        none.record(&mut v, t0);
        assert_eq!(v.history, None, "nothing to keep, nothing in the view");
    }

    #[test]
    fn a_view_without_a_history_still_reads_and_a_long_one_is_capped() {
        let old: Live = serde_json::from_str(r#"{"format_version": 1, "pid": 7}"#).unwrap();
        assert_eq!((old.pid, old.history), (7, None));
        let long = HistorySeries {
            name: "d".into(),
            usage: (0..100).map(f64::from).collect(),
            used: (0..100).collect(),
        };
        let mut h = UsageHistory {
            destinations: vec![long; 12],
            ..UsageHistory::default()
        };
        h.cap();
        assert_eq!(h.destinations.len(), HISTORY_SERIES);
        assert_eq!(h.destinations[0].used.len(), HISTORY_POINTS);
        assert_eq!(h.destinations[0].used[0], 40, "the newest kept");
    }

    #[test]
    fn a_series_that_leaves_the_worst_is_dropped_and_one_that_enters_starts_anew() {
        let first = advance(Vec::new(), [("a", 9, 10), ("b", 1, 10)].into_iter());
        let names: Vec<&str> = first.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let second = advance(first, [("c", 5, 10), ("a", 8, 10)].into_iter());
        assert_eq!(second[0].name, "a");
        assert_eq!(second[0].usage, [0.9, 0.8]);
        assert_eq!(second[1].name, "c");
        assert_eq!(second[1].used, [5]);
        assert_eq!(second.len(), 2);
    }
}
