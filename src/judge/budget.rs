//! Work the daemon repeats while a load lasts (a census, the sweep over the
//! other namespaces) is paced to a share of one core: after a run that
//! took `took`, the next one that could wait does so until that run is at
//! most `share` of the time since it began. Cheap runs are never held back
//! (a census of a few thousand sockets takes milliseconds); a census of
//! 300k sockets (about 0.2 s, docs/benchmarks.md) runs at most every 4 s at
//! 5 %. Only work the counters merely suggest, and the censuses that follow
//! a raised alert, wait: a census for a pending alert, the first census, changed settings, a stale census or
//! a witnessed failure never does (fastpath.rs, `Due::may_wait`). In
//! another namespace the same holds for each namespace's census. The look
//! that finds a namespace that comes, goes or climbs (discovery and the
//! O(1) counters) waits for its 5 % only while no alert is raised or
//! pending there and no census that cannot wait was left over; the sweep
//! that reads every namespace's settings again, with the censuses that can
//! wait (stale, missing counters), for its 1 % (judge/netns/pacing.rs).

use std::time::{Duration, Instant};

/// Censuses taken because usage might be high or growing (in portd's own
/// namespace, and in each other one).
pub(crate) const CENSUS_SHARE: f64 = 0.05;
/// Sweeps over the other network namespaces' settings, with the censuses
/// there that can wait.
pub(crate) const NETNS_SHARE: f64 = 0.01;
/// Looks at the other network namespaces (discovery, their O(1) counters)
/// while none has an alert raised or pending: with one, every poll looks.
pub(crate) const NETNS_LOOK_SHARE: f64 = 0.05;

/// One run of the work: when it began and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spent {
    pub started: Instant,
    pub took: Duration,
}

impl Spent {
    /// How long the next run still waits at `now` to keep this one within
    /// `share` of the time since it began; `None` when it may run.
    pub fn wait(&self, now: Instant, share: f64) -> Option<Duration> {
        let rested = self.took.div_f64(share);
        let since = now.saturating_duration_since(self.started);
        rested.checked_sub(since).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_waits_until_it_is_its_share_of_the_time_since() {
        let t0 = Instant::now();
        let big = Spent {
            started: t0,
            took: Duration::from_millis(200),
        };
        // 200 ms at 5 %: 4 s from its start.
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(big.wait(at(1000), 0.05), Some(Duration::from_secs(3)));
        assert_eq!(big.wait(at(4000), 0.05), None);
        assert_eq!(big.wait(at(9000), 0.05), None);
        // A census of a few milliseconds never holds back a poll a second
        // later.
        let small = Spent {
            started: t0,
            took: Duration::from_millis(3),
        };
        assert_eq!(small.wait(at(1000), 0.05), None);
        assert_eq!(small.wait(at(1000), 0.01), None);
    }
}
