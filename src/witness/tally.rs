//! Pure bookkeeping over successive [`Reading`]s: totals since start, the
//! last minute, and which destinations (or pools) failed for the first time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{FailureKey, Reading};

pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Series {
    total: u64,
    /// (time, total) at each read where the total changed, oldest first;
    /// starts at zero when the key first appears.
    samples: VecDeque<(Instant, u64)>,
}

/// One key's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: FailureKey,
    pub total: u64,
    pub last_minute: u64,
}

/// What a read brought that was not there before.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Failures counted since the previous read.
    pub new_failures: u64,
    /// Keys whose destination (TCP) or pool failed for the first time, one
    /// per destination/pool and namespace: the alert names their process.
    pub first_per_target: Vec<(FailureKey, u64)>,
}

#[derive(Debug, Default)]
pub struct Tally {
    series: BTreeMap<FailureKey, Series>,
    targets: BTreeSet<(u64, String)>,
    pub dropped: u64,
}

impl Tally {
    pub fn observe(&mut self, reading: &Reading, now: Instant) -> Update {
        let mut update = Update::default();
        for (key, count) in &reading.counts {
            let s = self.series.entry(key.clone()).or_insert_with(|| Series {
                total: 0,
                samples: VecDeque::from([(now, 0)]),
            });
            if *count > s.total {
                update.new_failures += count - s.total;
                s.total = *count;
                s.samples.push_back((now, *count));
            }
            if self.targets.insert((key.netns, key.target())) {
                update.first_per_target.push((key.clone(), *count));
            }
        }
        for s in self.series.values_mut() {
            // Keep the newest sample at or before the window's start.
            while s.samples.len() > 1 && s.samples[1].0 + WINDOW <= now {
                s.samples.pop_front();
            }
        }
        self.dropped = reading.dropped;
        update
    }

    /// Every key, with totals since start and over the last minute.
    pub fn rows(&self, now: Instant) -> Vec<Row> {
        self.series
            .iter()
            .map(|(key, s)| Row {
                key: key.clone(),
                total: s.total,
                last_minute: s.total - baseline(s, now),
            })
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.series.values().map(|s| s.total).sum()
    }
}

/// The total as it was one window ago (zero before the key appeared).
fn baseline(s: &Series, now: Instant) -> u64 {
    s.samples
        .iter()
        .rev()
        .find(|(t, _)| *t + WINDOW <= now)
        .map_or(0, |&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::Kind;

    fn key(dest: &str, comm: &str) -> FailureKey {
        FailureKey {
            netns: 1,
            kind: Kind::TcpConnect,
            local: "0.0.0.0".parse().expect("addr"),
            destination: Some(dest.parse().expect("addr")),
            pid: Some(7),
            comm: comm.into(),
            protocol: "tcp",
        }
    }

    fn reading(counts: &[(&FailureKey, u64)]) -> Reading {
        Reading {
            counts: counts.iter().map(|(k, c)| ((*k).clone(), *c)).collect(),
            ..Reading::default()
        }
    }

    #[test]
    fn totals_last_minute_and_first_per_destination() {
        let t0 = Instant::now();
        let a = key("10.0.0.1:80", "curl");
        let a2 = key("10.0.0.1:80", "wget");
        let b = key("10.0.0.2:80", "curl");
        let mut t = Tally::default();
        let u = t.observe(&reading(&[(&a, 3)]), t0);
        assert_eq!(u.new_failures, 3);
        assert_eq!(u.first_per_target, vec![(a.clone(), 3)]);

        let u = t.observe(
            &reading(&[(&a, 5), (&a2, 1), (&b, 2)]),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(u.new_failures, 5);
        // wget to the same destination is no new destination.
        assert_eq!(u.first_per_target, vec![(b.clone(), 2)]);

        let rows = t.rows(t0 + Duration::from_secs(30));
        assert_eq!(rows.iter().map(|r| r.last_minute).sum::<u64>(), 8);
        assert_eq!(t.total(), 8);

        // 70 s in: a's first 3 (at t0) left the window, the 2 at 30 s did not.
        let u = t.observe(
            &reading(&[(&a, 5), (&a2, 1), (&b, 2)]),
            t0 + Duration::from_secs(70),
        );
        assert_eq!(u, Update::default());
        let rows = t.rows(t0 + Duration::from_secs(70));
        let ra = rows.iter().find(|r| r.key == a).expect("row a");
        assert_eq!((ra.total, ra.last_minute), (5, 2));
        // 100 s in: nothing in the last minute, totals kept.
        let rows = t.rows(t0 + Duration::from_secs(100));
        assert!(rows.iter().all(|r| r.last_minute == 0), "{rows:?}");
        assert_eq!(t.total(), 8);
    }
}
