//! Pure bookkeeping over successive [`Reading`]s (each what is new since the
//! one before): totals since start, the last minute, which destinations (or
//! pools) failed for the first time, and which keys the metrics file shows.
//!
//! Bounded whatever fails: at most [`MAX_SERIES`] keys are kept (beyond, the
//! least recently failing are folded into their family's total), at most
//! [`MAX_TARGETS`] destinations and pools are remembered as journaled (one
//! forgotten and failing again is journaled again), and each metric family
//! shows at most [`TOP_SERIES`] keys plus one `other` row.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{FailureKey, FailureKind, Reading};

pub const WINDOW: Duration = Duration::from_secs(60);

/// Keys kept with their own figures.
pub const MAX_SERIES: usize = 4096;

/// Destinations and pools remembered as journaled.
pub const MAX_TARGETS: usize = 4096;

/// Keys shown per metric family; the rest are summed in its `other` row.
pub const TOP_SERIES: usize = 20;

/// The metric families: TCP connect, bind(0), UDP autobind.
pub const FAMILIES: usize = 3;

pub fn family(kind: FailureKind) -> usize {
    match kind {
        FailureKind::TcpConnect => 0,
        FailureKind::Bind0 => 1,
        FailureKind::UdpAutobind => 2,
    }
}

#[derive(Debug)]
struct Series {
    total: u64,
    /// (time, total) at each read where the total changed, oldest first;
    /// starts at zero when the key first appears.
    samples: VecDeque<(Instant, u64)>,
    /// The last process counted.
    pid: Option<u32>,
    process: String,
    /// The read that last brought failures.
    last: Instant,
}

/// One key's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: FailureKey,
    pub total: u64,
    pub last_minute: u64,
    /// The last process counted under the key: its pid (None when not
    /// visible from portd) and name.
    pub pid: Option<u32>,
    pub process: String,
}

/// What a read brought that was not there before.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Failures counted since the previous read.
    pub new_failures: u64,
    /// Keys whose destination (TCP) or pool failed for the first time, one
    /// per destination/pool and namespace, with the failures of this read:
    /// the alert names their process.
    pub first_per_target: Vec<Row>,
}

/// One metric family's samples: the keys shown, each with the failures
/// since it was first shown, and the rest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Family {
    pub shown: Vec<(FailureKey, u64)>,
    /// Every failure of the family not in `shown` (never decreases).
    pub other: u64,
}

#[derive(Debug, Default)]
pub struct Tally {
    series: BTreeMap<FailureKey, Series>,
    /// Destinations and pools journaled, with their last failure.
    targets: BTreeMap<(u64, String), Instant>,
    /// Totals of the keys folded away, per family.
    folded: [u64; FAMILIES],
    /// The keys the metrics show, per family, each with its total when it
    /// was first shown (what came before is in `other`).
    shown: [BTreeMap<FailureKey, u64>; FAMILIES],
    pub dropped: u64,
}

impl Tally {
    pub fn observe(&mut self, reading: &Reading, now: Instant) -> Update {
        let mut update = Update::default();
        let mut round: BTreeMap<&FailureKey, u64> = BTreeMap::new();
        for c in &reading.counts {
            let s = self.series.entry(c.key.clone()).or_insert_with(|| Series {
                total: 0,
                samples: VecDeque::from([(now, 0)]),
                pid: None,
                process: String::new(),
                last: now,
            });
            s.total += c.new;
            match s.samples.back_mut() {
                Some(last) if last.0 == now => last.1 = s.total,
                _ => s.samples.push_back((now, s.total)),
            }
            s.pid = c.pid;
            s.process.clone_from(&c.process);
            s.last = now;
            update.new_failures += c.new;
            *round.entry(&c.key).or_default() += c.new;
            if self
                .targets
                .insert((c.key.netns, c.key.target()), now)
                .is_none()
            {
                update.first_per_target.push(Row {
                    key: c.key.clone(),
                    total: c.new,
                    last_minute: c.new,
                    pid: c.pid,
                    process: c.process.clone(),
                });
            }
        }
        for s in self.series.values_mut() {
            // Keep the newest sample at or before the window's start.
            while s.samples.len() > 1 && s.samples[1].0 + WINDOW <= now {
                s.samples.pop_front();
            }
        }
        self.fold();
        if self.targets.len() > MAX_TARGETS {
            let mut by_age: Vec<(Instant, (u64, String))> = self
                .targets
                .iter()
                .map(|(t, at)| (*at, t.clone()))
                .collect();
            by_age.sort();
            for (_, t) in by_age.into_iter().take(self.targets.len() - MAX_TARGETS) {
                self.targets.remove(&t);
            }
        }
        let round: BTreeMap<FailureKey, u64> =
            round.into_iter().map(|(k, n)| (k.clone(), n)).collect();
        self.promote(now, &round);
        self.dropped = reading.dropped;
        update
    }

    /// Beyond [`MAX_SERIES`] keys, folds the least recently failing into
    /// their family's total (and out of the metrics' shown keys).
    fn fold(&mut self) {
        let Some(excess) = self.series.len().checked_sub(MAX_SERIES) else {
            return;
        };
        let mut order: Vec<(Instant, u64, FailureKey)> = self
            .series
            .iter()
            .map(|(k, s)| (s.last, s.total, k.clone()))
            .collect();
        order.sort();
        for (_, _, key) in order.into_iter().take(excess) {
            if let Some(s) = self.series.remove(&key) {
                let f = family(key.kind);
                self.folded[f] += s.total;
                self.shown[f].remove(&key);
            }
        }
    }

    /// Shows keys that failed in the last minute while a family has room,
    /// or in place of a shown key that has not (the longest idle first):
    /// destinations and pools not shown yet first, then the most failures
    /// in the last minute. A key shown counts from its failures of this
    /// read on; a key no longer shown adds its count to `other`.
    fn promote(&mut self, now: Instant, round: &BTreeMap<FailureKey, u64>) {
        for f in 0..FAMILIES {
            let shown = &mut self.shown[f];
            let mut targets: BTreeSet<(u64, String)> =
                shown.keys().map(|k| (k.netns, k.target())).collect();
            let mut candidates: Vec<(&FailureKey, u64)> = self
                .series
                .iter()
                .filter(|(k, _)| family(k.kind) == f && !shown.contains_key(*k))
                .map(|(k, s)| (k, s.total - baseline(s, now)))
                .filter(|(_, last_minute)| *last_minute > 0)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            // The busiest key of each destination or pool not shown yet
            // first, then the rest.
            let (mut order, rest): (Vec<_>, Vec<_>) = candidates
                .into_iter()
                .partition(|(k, _)| targets.insert((k.netns, k.target())));
            order.extend(rest);
            let mut idle: Vec<(Instant, FailureKey)> = shown
                .keys()
                .filter_map(|k| self.series.get(k).map(|s| (s, k)))
                .filter(|(s, _)| s.total == baseline(s, now))
                .map(|(s, k)| (s.last, k.clone()))
                .collect();
            idle.sort();
            let mut idle = idle.into_iter();
            for (key, _) in order {
                if shown.len() >= TOP_SERIES {
                    let Some((_, victim)) = idle.next() else {
                        break;
                    };
                    shown.remove(&victim);
                }
                let total = self.series.get(key).map_or(0, |s| s.total);
                let base = total - round.get(key).copied().unwrap_or(0);
                shown.insert(key.clone(), base);
            }
        }
    }

    /// Every key, with totals since start and over the last minute.
    pub fn rows(&self, now: Instant) -> Vec<Row> {
        self.series
            .iter()
            .map(|(key, s)| Row {
                key: key.clone(),
                total: s.total,
                last_minute: s.total - baseline(s, now),
                pid: s.pid,
                process: s.process.clone(),
            })
            .collect()
    }

    /// The metric families' samples, bounded (see [`Tally::promote`]).
    pub fn families(&self) -> [Family; FAMILIES] {
        let mut out: [Family; FAMILIES] = Default::default();
        let mut totals = self.folded;
        for (key, s) in &self.series {
            totals[family(key.kind)] += s.total;
        }
        for f in 0..FAMILIES {
            let mut shown_sum = 0;
            for (key, base) in &self.shown[f] {
                let v = self.series.get(key).map_or(0, |s| s.total - base);
                shown_sum += v;
                out[f].shown.push((key.clone(), v));
            }
            out[f].other = totals[f] - shown_sum;
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.series.values().map(|s| s.total).sum::<u64>() + self.folded.iter().sum::<u64>()
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
    use crate::observe::witness::{FailureCount, FailureKind};

    fn key(dest: &str, comm: &str) -> FailureKey {
        FailureKey {
            netns: 1,
            kind: FailureKind::TcpConnect,
            local: "0.0.0.0".parse().expect("addr"),
            destination: Some(dest.parse().expect("addr")),
            comm: Some(comm.into()),
            protocol: "tcp",
        }
    }

    /// A read bringing `new` failures per key.
    fn reading(counts: &[(&FailureKey, u64)]) -> Reading {
        Reading {
            counts: counts
                .iter()
                .map(|(k, n)| FailureCount {
                    key: (*k).clone(),
                    new: *n,
                    pid: Some(7),
                    process: k.comm.clone().unwrap_or_default(),
                })
                .collect(),
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
        assert_eq!(
            u.first_per_target
                .iter()
                .map(|r| (&r.key, r.total))
                .collect::<Vec<_>>(),
            [(&a, 3)]
        );

        let u = t.observe(
            &reading(&[(&a, 2), (&a2, 1), (&b, 2)]),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(u.new_failures, 5);
        // wget to the same destination is no new destination.
        assert_eq!(
            u.first_per_target
                .iter()
                .map(|r| (&r.key, r.total))
                .collect::<Vec<_>>(),
            [(&b, 2)]
        );

        let rows = t.rows(t0 + Duration::from_secs(30));
        assert_eq!(rows.iter().map(|r| r.last_minute).sum::<u64>(), 8);
        assert_eq!(t.total(), 8);

        // 70 s in: a's first 3 (at t0) left the window, the 2 at 30 s did not.
        let u = t.observe(&reading(&[]), t0 + Duration::from_secs(70));
        assert_eq!(u, Update::default());
        let rows = t.rows(t0 + Duration::from_secs(70));
        let ra = rows.iter().find(|r| r.key == a).expect("row a");
        assert_eq!((ra.total, ra.last_minute), (5, 2));
        // 100 s in: nothing in the last minute, totals kept.
        let rows = t.rows(t0 + Duration::from_secs(100));
        assert!(rows.iter().all(|r| r.last_minute == 0), "{rows:?}");
        assert_eq!(t.total(), 8);
    }

    /// The sum of a family's samples: what the metrics file adds up to.
    fn family_sum(f: &Family) -> u64 {
        f.shown.iter().map(|(_, v)| v).sum::<u64>() + f.other
    }

    #[test]
    fn the_metrics_show_at_most_the_top_keys_and_a_new_destination_first() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        // 4200 process names towards one destination, in one read.
        let names: Vec<FailureKey> = (0..4200)
            .map(|i| key("10.0.0.1:80", &format!("wb-{i:04}")))
            .collect();
        let counts: Vec<(&FailureKey, u64)> = names.iter().map(|k| (k, 1)).collect();
        t.observe(&reading(&counts), t0);
        assert_eq!(t.series.len(), MAX_SERIES, "the least recent folded");
        assert_eq!(t.total(), 4200, "folded, not lost");
        let f = &t.families()[0];
        assert_eq!(f.shown.len(), TOP_SERIES);
        assert_eq!(family_sum(f), 4200);
        let other = f.other;

        // A new destination while every shown key failed within the
        // minute: none is replaced, its failure is in `other` meanwhile.
        let new = key("10.0.0.9:443", "wnewdest");
        let later = t0 + Duration::from_secs(5);
        t.observe(&reading(&[(&new, 1), (&names[0], 1)]), later);
        let f = &t.families()[0];
        assert_eq!(family_sum(f), 4202);
        assert!(f.other >= other, "other never decreases");
        assert!(f.shown.len() <= TOP_SERIES);

        // A minute on, the burst is idle: the new destination is shown.
        let idle = t0 + Duration::from_secs(70);
        t.observe(&reading(&[(&new, 1)]), idle);
        let f = &t.families()[0];
        assert!(f.shown.len() <= TOP_SERIES);
        assert!(
            f.shown
                .iter()
                .any(|(k, _)| k.destination == new.destination),
            "{:?}",
            f.shown
        );
        assert_eq!(family_sum(f), 4203);
    }

    #[test]
    fn a_new_destination_takes_the_first_free_place() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        let busy: Vec<FailureKey> = (0..TOP_SERIES - 1)
            .map(|i| key("10.0.0.1:80", &format!("w{i}")))
            .collect();
        let mut counts: Vec<(&FailureKey, u64)> = busy.iter().map(|k| (k, 5)).collect();
        let late = key("10.0.0.1:80", "wlate");
        let new = key("10.0.0.2:80", "wnew");
        counts.push((&late, 9));
        counts.push((&new, 1));
        t.observe(&reading(&counts), t0);
        let f = &t.families()[0];
        assert_eq!(f.shown.len(), TOP_SERIES);
        assert!(
            f.shown.iter().any(|(k, v)| *k == new && *v == 1),
            "a destination not shown yet goes first: {:?}",
            f.shown
        );
        assert_eq!(f.other, 5, "one key of the busy destination left out");
        assert_eq!(family_sum(f), 5 * (TOP_SERIES as u64 - 1) + 9 + 1);
    }

    proptest::proptest! {
        /// Whatever fails, in whatever order: each family shows at most
        /// TOP_SERIES keys, adds up to every failure counted, and no
        /// sample it shows ever decreases while it is shown (`other`
        /// included): Prometheus sees counters, never resets.
        #[test]
        fn the_metric_families_are_bounded_counters_that_add_up(
            reads in proptest::collection::vec(
                proptest::collection::vec((0u8..40, 0u8..6, 1u64..5), 0..30),
                1..25,
            ),
            seconds in proptest::collection::vec(1u64..40, 25),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = Tally::default();
            let mut counted = 0;
            let mut before: BTreeMap<FailureKey, u64> = BTreeMap::new();
            let mut other_before = 0;
            for (i, read) in reads.iter().enumerate() {
                now += Duration::from_secs(seconds[i]);
                let keys: Vec<(FailureKey, u64)> = read
                    .iter()
                    .map(|(comm, dest, n)| {
                        (key(&format!("10.0.0.{dest}:80"), &format!("w{comm}")), *n)
                    })
                    .collect();
                let counts: Vec<(&FailureKey, u64)> = keys.iter().map(|(k, n)| (k, *n)).collect();
                counted += keys.iter().map(|(_, n)| n).sum::<u64>();
                t.observe(&reading(&counts), now);
                let f = &t.families()[0];
                proptest::prop_assert!(f.shown.len() <= TOP_SERIES);
                proptest::prop_assert_eq!(family_sum(f), counted);
                proptest::prop_assert!(f.other >= other_before);
                for (k, v) in &f.shown {
                    if let Some(b) = before.get(k) {
                        proptest::prop_assert!(v >= b, "{:?} went from {} to {}", k, b, v);
                    }
                }
                other_before = f.other;
                before = f.shown.iter().cloned().collect();
            }
        }
    }
}
