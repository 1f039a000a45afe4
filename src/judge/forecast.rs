//! The forecast (docs/DESIGN.md, "Acting in time"): growth rates per destination and per pool from
//! successive censuses, the steady state they lead to and the time until a
//! level is reached. Pure: the daemon carries a [`Tracker`] between
//! censuses and hands [`Tracker::forecast`]'s result to the planner.
//!
//! The per-namespace totals (`ActiveOpens`, sockstat) are never one
//! destination's rate: they only bound usage and schedule the next census
//! (daemon/fastpath.rs).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::base::ports::Ratio;
use crate::observe::usage::{DestKey, Usage};
use crate::policy::Policy;

/// How long a TIME_WAIT socket holds its port (`TCP_TIMEWAIT_LEN`, docs/kernel.md §3.4).
pub const TIME_WAIT_SECS: f64 = 60.0;
/// Two censuses closer than this give no rate.
pub const MIN_SPAN: Duration = Duration::from_secs(1);
/// A rate decays with this time constant once growth stops.
pub const DECAY_SECS: f64 = 20.0;
/// Destinations followed per census: the top by usage and the top by growth.
pub const TOP: usize = 4;
/// Destinations remembered between censuses (the busiest); one that was not
/// among them counts as having held nothing.
const REMEMBERED: usize = 256;

/// What a forecast is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Destination {
        #[serde(flatten)]
        destination: DestKey,
    },
    UdpPool,
    TcpPool,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Destination { destination } => write!(f, "destination {destination}"),
            Target::UdpPool => f.write_str("UDP pool"),
            Target::TcpPool => f.write_str("TCP bind(0) pool"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Count {
    used: u64,
    time_wait: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rate {
    /// Growth of the ports held, per second (smoothed, never below 0).
    growth: f64,
    /// New TIME_WAIT sockets per second: the rate of closed connections.
    closes: f64,
    /// Censuses in a row that saw this target grow.
    growing: u32,
    /// The growth per second between the last two censuses: what
    /// [`Rate::sustained`] takes.
    latest: f64,
}

impl Rate {
    /// The rate of growth seen on two censuses in a row: the last one's
    /// (at most the smoothed rate), or `None` before two censuses in a row
    /// have seen growth. A pool opened at once and kept grows on one span
    /// only; the port or two it then gains by churn is not the burst's
    /// rate, which the smoothed rate still remembers for [`DECAY_SECS`]. A
    /// load that slows is forecast at its slower rate, and one that has
    /// just begun at its rate, not at that of the span it began in.
    fn sustained(&self) -> Option<f64> {
        (self.growing >= 2).then(|| self.growth.min(self.latest))
    }
}

/// What the daemon remembers between censuses.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    last: Option<(SystemTime, HashMap<Target, Count>)>,
    rates: HashMap<Target, Rate>,
}

/// Where one target is heading.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Forecast {
    #[serde(flatten)]
    pub target: Target,
    pub used: u64,
    pub capacity: u64,
    pub usage: Ratio,
    /// Ports gained per second (0 when not growing): when `sustained`, the
    /// growth since the census before; otherwise the smoothed rate, which
    /// rises at once and decays over [`DECAY_SECS`].
    pub growth_per_second: f64,
    /// Connections closed per second towards it (new TIME_WAIT), a lower
    /// bound of its connection rate.
    pub connection_rate: f64,
    /// TIME_WAIT sockets among `used`.
    pub time_wait: u64,
    /// Where usage levels off: TIME_WAIT-dominated, about the close rate ×
    /// 60 s plus the live connections; concurrency-dominated, `None` (the
    /// trend goes on).
    pub steady_state: Option<u64>,
    /// Seconds until every port is taken; `None` when it never will be at
    /// the present trend.
    pub time_to_exhaustion: Option<f64>,
    /// Growth seen on the last two censuses in a row: not a burst that
    /// already ended.
    pub sustained: bool,
}

impl Forecast {
    /// A target as one census sees it: no rate.
    pub fn flat(target: Target, used: u64, time_wait: u64, capacity: u64) -> Forecast {
        Tracker::default().one(target, used, time_wait, capacity)
    }

    /// Seconds until `level` of the capacity is reached (0 when it is);
    /// `None` when the trend never reaches it.
    pub fn time_to(&self, level: Ratio) -> Option<f64> {
        let goal = (level.fraction() * self.capacity as f64).ceil();
        let used = self.used as f64;
        if used >= goal {
            return Some(0.0);
        }
        if self.growth_per_second <= f64::EPSILON {
            return None;
        }
        if self.steady_state.is_some_and(|s| (s as f64) < goal) {
            return None;
        }
        Some((goal - used) / self.growth_per_second)
    }

    /// The ports it will hold `horizon` from now, on the trend.
    pub fn expected(&self, horizon: Duration) -> u64 {
        let trend = self.used as f64 + self.growth_per_second * horizon.as_secs_f64();
        let trend = match self.steady_state {
            Some(s) => trend.min(s as f64).max(self.used as f64),
            None => trend,
        };
        trend.ceil() as u64
    }
}

fn counts(usage: &Usage) -> HashMap<Target, Count> {
    let mut m: HashMap<Target, Count> = usage
        .destinations
        .iter()
        .take(REMEMBERED)
        .map(|d| {
            let time_wait = d.states.get("TIME_WAIT").copied().unwrap_or(0);
            (
                Target::Destination { destination: d.key },
                Count {
                    used: d.used,
                    time_wait: u64::from(time_wait),
                },
            )
        })
        .collect();
    m.insert(
        Target::UdpPool,
        Count {
            used: usage.pools.udp.used,
            time_wait: 0,
        },
    );
    m.insert(
        Target::TcpPool,
        Count {
            used: usage.pools.tcp.used,
            time_wait: 0,
        },
    );
    m
}

impl Tracker {
    /// Takes in a census made at `now`. A census less than [`MIN_SPAN`]
    /// after the last one counted leaves the rates as they are.
    pub fn update(&mut self, usage: &Usage, now: SystemTime) {
        let current = counts(usage);
        let Some((then, before)) = &self.last else {
            self.last = Some((now, current));
            return;
        };
        let Ok(span) = now.duration_since(*then) else {
            self.last = Some((now, current));
            return;
        };
        if span < MIN_SPAN {
            return;
        }
        let dt = span.as_secs_f64();
        let keep = (-dt / DECAY_SECS).exp();
        let mut rates = HashMap::with_capacity(current.len());
        for (target, now_count) in &current {
            let prev = before.get(target).copied().unwrap_or_default();
            let old = self.rates.get(target).copied().unwrap_or_default();
            let growth = (now_count.used as f64 - prev.used as f64) / dt;
            let closes = (now_count.time_wait as f64 - prev.time_wait as f64) / dt;
            let rate = Rate {
                growth: blend(old.growth, growth, keep),
                closes: blend(old.closes, closes, keep),
                growing: if growth > 0.0 { old.growing + 1 } else { 0 },
                latest: growth.max(0.0),
            };
            rates.insert(*target, rate);
        }
        self.rates = rates;
        self.last = Some((now, current));
    }

    /// Forecasts for the top destinations by usage and by growth, and for
    /// the UDP and TCP pools.
    pub fn forecast(&self, usage: &Usage) -> Vec<Forecast> {
        let mut out: Vec<Forecast> = Vec::new();
        let mut add = |f: Forecast| {
            if !out.iter().any(|o| o.target == f.target) {
                out.push(f);
            }
        };
        let of_dest = |d: &crate::observe::usage::DestUsage| {
            let time_wait = u64::from(d.states.get("TIME_WAIT").copied().unwrap_or(0));
            self.one(
                Target::Destination { destination: d.key },
                d.used,
                time_wait,
                usage.capacity,
            )
        };
        for d in usage.destinations.iter().take(TOP) {
            add(of_dest(d));
        }
        let mut growers: Vec<Forecast> = usage
            .destinations
            .iter()
            .take(REMEMBERED)
            .map(of_dest)
            .filter(|f| f.growth_per_second > 0.0)
            .collect();
        growers.sort_by(|a, b| {
            let (ta, tb) = (
                a.time_to_exhaustion.unwrap_or(f64::INFINITY),
                b.time_to_exhaustion.unwrap_or(f64::INFINITY),
            );
            ta.total_cmp(&tb)
                .then(b.growth_per_second.total_cmp(&a.growth_per_second))
        });
        for f in growers.into_iter().take(TOP) {
            add(f);
        }
        let pools = &usage.pools;
        add(self.one(Target::UdpPool, pools.udp.used, 0, pools.udp.capacity));
        add(self.one(Target::TcpPool, pools.tcp.used, 0, pools.tcp.capacity));
        out
    }

    fn one(&self, target: Target, used: u64, time_wait: u64, capacity: u64) -> Forecast {
        let rate = self.rates.get(&target).copied().unwrap_or_default();
        let live = used.saturating_sub(time_wait);
        let steady_state = if time_wait * 2 > used || rate.closes * 2.0 > rate.growth {
            // TIME_WAIT-dominated: each close holds its port for 60 s.
            let waiting = (rate.closes * TIME_WAIT_SECS).ceil() as u64;
            Some(live + waiting.max(time_wait))
        } else {
            None
        };
        let sustained = rate.sustained();
        let mut f = Forecast {
            target,
            used,
            capacity,
            usage: Ratio::of(used, capacity),
            growth_per_second: sustained.unwrap_or(rate.growth),
            connection_rate: rate.closes,
            time_wait,
            steady_state,
            time_to_exhaustion: None,
            sustained: sustained.is_some(),
        };
        f.time_to_exhaustion = f.time_to(Ratio::FULL);
        f
    }
}

/// How far ahead a decision looks: the hold plus one poll, the time the
/// next confirmation of a level takes (docs/DESIGN.md, "Acting in time").
/// A forecast that reaches critical within it confirms the level before
/// the hold; a trend of live connections is followed this far.
pub fn horizon(policy: &Policy) -> Duration {
    policy.hold + policy.interval
}

/// The forecasts that count: those of the targets that count towards
/// alerts (every destination and the UDP pool; the TCP `bind(0)` pool only
/// when the policy says so). The one definition the decision, the time to
/// exhaustion and the hurry all take their forecasts from.
#[derive(Clone, Copy, Debug)]
pub struct Counted<'a> {
    all: &'a [Forecast],
    tcp_pool: bool,
}

impl<'a> Counted<'a> {
    pub fn of(all: &'a [Forecast], policy: &Policy) -> Self {
        Counted {
            all,
            tcp_pool: policy.tcp_pool_alerts,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = &'a Forecast> {
        self.all
            .iter()
            .filter(move |f| self.tcp_pool || f.target != Target::TcpPool)
    }

    /// Those with growth seen on two censuses in a row: what the planner
    /// acts on before the hold.
    pub fn sustained(self) -> impl Iterator<Item = &'a Forecast> {
        self.iter()
            .filter(|f| f.sustained && f.growth_per_second > 0.0)
    }

    /// Seconds until the first of them runs out; `None` when none is
    /// growing towards it. Only growth seen on two censuses in a row
    /// counts, as for the planner ([`Counted::sustained`]): one census's
    /// growth may be a burst that already ended (a pool opened at once and
    /// held), and a time to exhaustion pages (the shipped
    /// PortdExhaustionForecast, `for: 0m`).
    pub fn soonest_exhaustion(self) -> Option<f64> {
        self.iter()
            .filter(|f| f.sustained)
            .filter_map(|f| f.time_to_exhaustion)
            .reduce(f64::min)
    }

    /// Whether one of them grows fast enough to reach `level` within
    /// `within`.
    pub fn reaches(self, level: Ratio, within: Duration) -> bool {
        self.iter().any(|f| {
            f.growth_per_second > 0.0 && f.time_to(level).is_some_and(|t| t < within.as_secs_f64())
        })
    }
}

/// Rises at once with growth; falls towards it with the decay.
fn blend(old: f64, new: f64, keep: f64) -> f64 {
    let new = new.max(0.0);
    if new >= old {
        new
    } else {
        old * keep + new * (1.0 - keep)
    }
}

#[cfg(test)]
#[path = "forecast_tests.rs"]
pub(crate) mod tests;
