//! The fast path (docs/DESIGN.md): between full censuses, O(1) kernel counters
//! bound what any destination can hold. While those bounds stay below the
//! warning level the census is skipped, up to the policy's maximum
//! staleness. A pure function of the last census, the counters and the
//! policy and alert state, so it is tested without root.

use std::time::{Duration, Instant};

use crate::base::ports::Ratio;
use crate::judge::level::Level;
use crate::judge::planner::AlertState;
use crate::observe::census::KernelSettings;
use crate::observe::census::sockstat::Totals;
use crate::observe::usage::Usage;
use crate::policy::Policy;

/// What the fast path needs from the last full census.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Baseline<'a> {
    pub settings: &'a KernelSettings,
    /// Ports held towards the busiest destination.
    pub worst: u64,
    /// Ports `connect()` can hand out towards one destination.
    pub capacity: u64,
    pub udp_capacity: u64,
    pub tcp_capacity: u64,
    /// `Tcp: ActiveOpens` read before that census began.
    pub active_opens: Option<u64>,
    /// Time since that census began.
    pub age: Duration,
}

impl<'a> Baseline<'a> {
    /// A baseline for unit tests: 1000 ports in every pool.
    #[cfg(test)]
    pub(crate) fn for_tests(
        settings: &'a KernelSettings,
        worst: u64,
        active_opens: Option<u64>,
        age: Duration,
    ) -> Self {
        Baseline {
            settings,
            worst,
            capacity: 1000,
            udp_capacity: 1000,
            tcp_capacity: 1000,
            active_opens,
            age,
        }
    }

    pub fn of(usage: &'a Usage, active_opens: Option<u64>, age: Duration) -> Self {
        Baseline {
            settings: &usage.settings,
            worst: usage.destinations.first().map_or(0, |d| d.used),
            capacity: usage.capacity,
            udp_capacity: usage.pools.udp.capacity,
            tcp_capacity: usage.pools.tcp.capacity,
            active_opens,
            age,
        }
    }
}

/// What this poll read in O(1): the kernel settings and the counters
/// (`None` when they could not be read).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counters<'a> {
    pub settings: &'a KernelSettings,
    pub totals: Option<Totals>,
    pub active_opens: Option<u64>,
    /// `connect()`s per second since an earlier poll ([`Pace`]): the
    /// namespace's rate now, where the count since the last census is its
    /// mean over what may be a long time (a rising load outruns a mean).
    pub pace: Option<f64>,
}

/// The namespace's `connect()` rate between polls, from `ActiveOpens`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pace {
    last: Option<(Instant, u64)>,
}

impl Pace {
    /// Polls closer than this give no rate: the reading is kept and the
    /// next poll is measured against it.
    const MIN_SPAN: Duration = Duration::from_millis(500);

    /// Takes this poll's `ActiveOpens`, read at `now`; the rate since the
    /// reading it is measured against. `None` without two readings, or when
    /// the counter went back (a new namespace).
    pub fn update(&mut self, now: Instant, opens: Option<u64>) -> Option<f64> {
        let Some(opens) = opens else {
            self.last = None;
            return None;
        };
        let Some((then, before)) = self.last else {
            self.last = Some((now, opens));
            return None;
        };
        let span = now.saturating_duration_since(then);
        let rate = opens
            .checked_sub(before)
            .map(|n| n as f64 / span.as_secs_f64().max(Self::MIN_SPAN.as_secs_f64()));
        if span >= Self::MIN_SPAN || rate.is_none() {
            self.last = Some((now, opens));
        }
        rate
    }
}

/// Why this poll takes a full census.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// There is no census yet to bound from.
    FirstCensus,
    /// The range, the reserved ports or another setting changed.
    SettingsChanged,
    /// A warning or critical is confirmed: its usage is followed exactly.
    AlertRaised,
    /// A level change waits for its hold time.
    AlertPending,
    /// The last census is older than the policy's `max_staleness`.
    Stale,
    /// The socket counters could not be read.
    NoCounters,
    /// A bound reaches the warning level: some destination may be there.
    BoundAtWarning,
    /// At the rate of `connect()`s since the last census (`ActiveOpens`, a
    /// per-namespace total: an upper bound of any one destination's rate),
    /// a destination could reach critical within the hold plus one poll:
    /// the census measures its own rate (forecast.rs).
    Growing,
}

impl Due {
    /// Whether the census may wait for its share of the CPU (budget.rs):
    /// it is taken because the counters say usage *might* be high or
    /// growing. A pending alert is followed at every poll (its hold is
    /// timed by the censuses), a raised one as often as the budget allows
    /// (judge/assess.rs, `Memory::look`), and what portd does not know yet
    /// is never put off.
    pub fn may_wait(self) -> bool {
        matches!(self, Due::BoundAtWarning | Due::Growing)
    }
}

/// The census is skipped: at most `bound` of `capacity` ports towards any
/// destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Skip {
    pub bound: u64,
    pub capacity: u64,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "census skipped: at most {} of {} ports towards any destination",
            self.bound, self.capacity
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Census(Due),
    Skip(Skip),
}

/// docs/DESIGN.md: no destination can hold more than `TCP inuse + TCP6 inuse +
/// tw` ports, nor more than its count at the last census plus the
/// `connect()`s since (`ActiveOpens`); the UDP pool no more than the UDP
/// sockets, the TCP pool no more than the TCP sockets. Raised or pending
/// alerts always take a census.
pub(crate) fn next(
    last: Option<&Baseline<'_>>,
    now: &Counters<'_>,
    policy: &Policy,
    alert: &AlertState,
) -> Next {
    let Some(last) = last else {
        return Next::Census(Due::FirstCensus);
    };
    let due = if last.settings != now.settings {
        Some(Due::SettingsChanged)
    } else if alert.level != Level::Ok {
        Some(Due::AlertRaised)
    } else if alert.pending.is_some() {
        Some(Due::AlertPending)
    } else if last.age >= policy.max_staleness {
        Some(Due::Stale)
    } else {
        None
    };
    if let Some(due) = due {
        return Next::Census(due);
    }
    let Some(totals) = now.totals else {
        return Next::Census(Due::NoCounters);
    };
    let opened_since = match (last.active_opens, now.active_opens) {
        (Some(then), Some(now)) => now.checked_sub(then),
        _ => None,
    };
    let destination = opened_since.map_or(totals.tcp_bound(), |n| {
        totals.tcp_bound().min(last.worst.saturating_add(n))
    });
    let mut bounds = vec![
        (destination, last.capacity),
        (totals.udp_inuse, last.udp_capacity),
    ];
    if policy.tcp_pool_alerts {
        // bind(0) takes ports without connect(): only sockstat bounds it.
        bounds.push((totals.tcp_bound(), last.tcp_capacity));
    }
    let below = |&(used, capacity): &(u64, u64)| {
        Level::of(
            Ratio::of(used, capacity),
            policy.thresholds.warning(),
            policy.thresholds.critical(),
        ) == Level::Ok
    };
    if !bounds.iter().all(below) {
        return Next::Census(Due::BoundAtWarning);
    }
    if let Some(n) = opened_since {
        // No destination gained more ports than there were connect()s, nor
        // more than the sockets there are now; at that rate it goes on
        // gaining for the hold and a poll counted from now (what it gained
        // since the last census is already held: TIME_WAIT lasts 60 s). The
        // rate is the mean since the last census or the pace since the last
        // poll, whichever is higher: a rising rate outruns its mean.
        let gained = n.min(totals.tcp_bound()) as f64;
        let age = last.age.as_secs_f64().max(1.0);
        let rate = (gained / age).max(now.pace.unwrap_or(0.0));
        let ahead = crate::judge::forecast::horizon(policy).as_secs_f64();
        let projected = last.worst as f64 + gained + rate * ahead;
        if projected >= policy.thresholds.critical().fraction() * last.capacity as f64 {
            return Next::Census(Due::Growing);
        }
    }
    Next::Skip(Skip {
        bound: destination,
        capacity: last.capacity,
    })
}

#[cfg(test)]
#[path = "fastpath_tests.rs"]
mod tests;
