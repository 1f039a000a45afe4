//! Exhaustion as its own event: a destination or pool with every
//! port taken means `connect()` (or `bind(0)`) fails now. It is reported at
//! once in every mode, whatever the hold; while it lasts it is repeated at
//! most once a minute, and at once when it worsens; its end is reported
//! once. One entry names every exhausted target: never one per destination
//! per poll. Pure: the daemon keeps an [`Exhaustion`] and reports what
//! [`Exhaustion::next`] returns.

use std::time::{Duration, SystemTime};

use crate::observe::usage::{Cause, Usage};

/// Least time between two entries of an exhaustion that neither worsened
/// nor ended.
pub const REPEAT: Duration = Duration::from_secs(60);

/// What is exhausted on one census: each target as `"what (used/capacity)"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exhausted {
    pub targets: Vec<String>,
}

impl Exhausted {
    /// The destinations and pools of `usage` with no port left; the TCP
    /// `bind(0)` pool only when it counts towards alerts.
    pub fn of(usage: &Usage, tcp_pool: bool) -> Exhausted {
        let mut targets = Vec::new();
        if let Cause::NoUsablePorts { .. } = usage.headline.cause {
            targets.push(usage.headline.cause.to_string());
        }
        for d in usage
            .destinations
            .iter()
            .filter(|d| usage.capacity > 0 && d.used >= usage.capacity)
        {
            targets.push(format!("{} ({}/{})", d.key, d.used, usage.capacity));
        }
        let pools = &usage.pools;
        let mut pool = |name: &str, used: u64, capacity: u64| {
            if capacity > 0 && used >= capacity {
                targets.push(format!("{name} ({used}/{capacity})"));
            }
        };
        pool("UDP pool", pools.udp.used, pools.udp.capacity);
        if tcp_pool {
            pool("TCP bind(0) pool", pools.tcp.used, pools.tcp.capacity);
        }
        Exhausted { targets }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Exhaustion began (`first`), worsened, or goes on (a repeat).
    Exhausted {
        targets: Vec<String>,
        first: bool,
        worsened: bool,
    },
    /// Nothing is exhausted any more.
    Recovered,
}

/// What was reported last.
#[derive(Clone, Debug, Default)]
pub struct Exhaustion {
    reported: Option<(SystemTime, Vec<String>)>,
}

impl Exhaustion {
    #[cfg(test)]
    pub fn is_raised(&self) -> bool {
        self.reported.is_some()
    }

    /// The entry this census calls for, if any.
    pub fn next(&mut self, now: &Exhausted, at: SystemTime) -> Option<Event> {
        let Some((when, before)) = &self.reported else {
            if now.is_empty() {
                return None;
            }
            self.reported = Some((at, now.targets.clone()));
            return Some(Event::Exhausted {
                targets: now.targets.clone(),
                first: true,
                worsened: false,
            });
        };
        if now.is_empty() {
            self.reported = None;
            return Some(Event::Recovered);
        }
        // Worse: a target that was not exhausted, or more in use of one
        // that was (another count in its "(used/capacity)").
        let worsened = now.targets.iter().any(|t| !before.contains(t)) && {
            let names = |v: &[String]| -> Vec<String> {
                v.iter()
                    .map(|t| {
                        t.rsplit_once(" (")
                            .map_or(t.as_str(), |(n, _)| n)
                            .to_string()
                    })
                    .collect()
            };
            let (old, new) = (names(before), names(&now.targets));
            new.iter().any(|n| !old.contains(n)) || worse_counts(before, &now.targets)
        };
        let due = at.duration_since(*when).is_ok_and(|d| d >= REPEAT);
        if !worsened && !due {
            return None;
        }
        self.reported = Some((at, now.targets.clone()));
        Some(Event::Exhausted {
            targets: now.targets.clone(),
            first: false,
            worsened,
        })
    }
}

/// Whether a target of `now` holds more than the same target did `before`.
fn worse_counts(before: &[String], now: &[String]) -> bool {
    let used = |t: &str| -> Option<(String, u64)> {
        let (name, rest) = t.rsplit_once(" (")?;
        let used = rest.split('/').next()?.parse().ok()?;
        Some((name.to_string(), used))
    };
    now.iter().filter_map(|t| used(t)).any(|(name, n)| {
        before
            .iter()
            .filter_map(|t| used(t))
            .any(|(old, m)| old == name && n > m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(targets: &[&str]) -> Exhausted {
        Exhausted {
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn first(e: &Option<Event>) -> Option<(bool, bool)> {
        match e {
            Some(Event::Exhausted {
                first, worsened, ..
            }) => Some((*first, *worsened)),
            _ => None,
        }
    }

    #[test]
    fn exhaustion_is_reported_at_once_then_at_most_once_a_minute() {
        let mut x = Exhaustion::default();
        let a = ex(&["a (100/100)"]);
        assert_eq!(x.next(&Exhausted::default(), t(0)), None);
        assert_eq!(first(&x.next(&a, t(1))), Some((true, false)));
        for s in 2..61 {
            assert_eq!(x.next(&a, t(s)), None, "{s}s");
        }
        assert_eq!(first(&x.next(&a, t(61))), Some((false, false)));
        assert_eq!(x.next(&a, t(62)), None);
    }

    #[test]
    fn a_worse_exhaustion_is_reported_at_once_and_its_end_once() {
        let mut x = Exhaustion::default();
        x.next(&ex(&["a (100/100)"]), t(0));
        assert_eq!(
            first(&x.next(&ex(&["a (100/100)", "b (100/100)"]), t(5))),
            Some((false, true)),
            "another destination"
        );
        assert_eq!(
            first(&x.next(&ex(&["a (101/100)", "b (100/100)"]), t(6))),
            Some((false, true)),
            "more in use than capacity (a range that shrank)"
        );
        assert_eq!(
            x.next(&ex(&["b (100/100)"]), t(7)),
            None,
            "better is not news"
        );
        assert_eq!(x.next(&Exhausted::default(), t(8)), Some(Event::Recovered));
        assert_eq!(x.next(&Exhausted::default(), t(9)), None);
        assert!(!x.is_raised());
    }

    #[test]
    fn every_exhausted_destination_and_pool_is_named_in_one_entry() {
        let u = crate::judge::forecast::tests::census(&[(1, 1000, 0), (2, 999, 1), (3, 10, 0)]);
        let e = Exhausted::of(&u, false);
        assert_eq!(e.targets.len(), 2, "{e:?}");
        assert!(e.targets[0].contains("(1000/1000)"), "{e:?}");
    }
}
