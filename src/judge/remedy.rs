//! Remedies: what else closes the gap when the range, within the
//! policy's bounds, cannot hold a load. Each is a rule with a condition, a
//! quantified effect (ports) and a stable id: the `PORTD_REMEDY` journal
//! field, the catalog, `status --json` and `check --plan` use the same id.
//! Pure: the facts come in a [`Situation`].

use std::net::IpAddr;

use serde::Serialize;

use crate::base::kernel::TwReuse;
use crate::base::ports::PortRange;

/// Stable remedy ids: never change one once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Id {
    /// Keep-alive / connection pooling towards the destination.
    ConnectionReuse,
    /// `net.ipv4.tcp_tw_reuse = 1`.
    TcpTwReuse,
    /// More local source addresses towards the destination.
    SourceAddresses,
    /// A lower `widen.floor`.
    LowerFloor,
    /// `IP_BIND_ADDRESS_NO_PORT` before `bind()`.
    BindAddressNoPort,
}

impl Id {
    pub fn as_str(self) -> &'static str {
        match self {
            Id::ConnectionReuse => "connection-reuse",
            Id::TcpTwReuse => "tcp-tw-reuse",
            Id::SourceAddresses => "source-addresses",
            Id::LowerFloor => "lower-floor",
            Id::BindAddressNoPort => "bind-address-no-port",
        }
    }
}

impl Id {
    #[cfg(test)]
    pub const ALL: [Id; 5] = [
        Id::ConnectionReuse,
        Id::TcpTwReuse,
        Id::SourceAddresses,
        Id::LowerFloor,
        Id::BindAddressNoPort,
    ];
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the load is and what the bounds allow.
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    /// Connections to one destination.
    Destination {
        local: IpAddr,
        remote: IpAddr,
        remote_port: u16,
        /// TIME_WAIT sockets among the ports it holds.
        time_wait: u64,
    },
    /// `bind(address, 0)` before `connect()`: the TCP pool.
    TcpPool,
    UdpPool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Situation {
    pub load: Load,
    /// Ports it holds now.
    pub used: u64,
    /// Ports it will hold (the forecast's steady state, or `used`).
    pub demand: u64,
    /// Ports it can hold with the widest range the policy allows, below
    /// the critical level (planner.rs, `room_at_bounds`): the gap is what
    /// the demand exceeds it by.
    pub capacity_at_bounds: u64,
    pub tcp_tw_reuse: TwReuse,
    pub tcp_timestamps: bool,
    /// The range now, and the highest port a service listens on below it.
    pub range: PortRange,
    pub highest_listener_below: Option<u16>,
    /// `ip_unprivileged_port_start`, the lowest low end the kernel takes.
    pub unprivileged_port_start: u16,
    /// Processes known to hold sockets towards it, when known.
    pub processes: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Remedy {
    pub id: Id,
    /// Ports it frees or adds (its effect).
    pub effect: u64,
    /// Whether the effect alone closes the gap.
    pub closes_gap: bool,
    pub advice: String,
}

impl Situation {
    /// Ports the demand exceeds the capacity by (0 when it fits).
    pub fn gap(&self) -> u64 {
        self.demand.saturating_sub(self.capacity_at_bounds)
    }

    fn owner(&self) -> String {
        match (&self.processes, &self.load) {
            (Some(p), _) => format!("held by {p}"),
            (
                None,
                Load::Destination {
                    remote,
                    remote_port,
                    ..
                },
            ) => format!(
                "TIME_WAIT sockets have no owning process; find the client with \
                 `ss -tnp dst {remote}:{remote_port}` while it has live connections, \
                 or by which service talks to {remote}:{remote_port}"
            ),
            (None, _) => {
                "the owning processes are unknown; `portd status --processes` names them".into()
            }
        }
    }
}

/// The remedies that apply, those whose effect alone closes the gap first
/// (each group in the order of the rules below).
pub fn remedies(s: &Situation) -> Vec<Remedy> {
    let gap = s.gap().max(1);
    let mut candidates = destination_rules(s);
    candidates.extend(range_rules(s));
    let mut out: Vec<Remedy> = candidates
        .into_iter()
        .filter(|(_, effect, _)| *effect > 0)
        .map(|(id, effect, advice)| Remedy {
            id,
            effect,
            closes_gap: effect >= gap,
            advice,
        })
        .collect();
    // Stable: the rules' order within each group.
    out.sort_by_key(|r| !r.closes_gap);
    out
}

/// Reuse, `tcp_tw_reuse` and more source addresses: for one destination.
fn destination_rules(s: &Situation) -> Vec<(Id, u64, String)> {
    let mut out = Vec::new();
    let Load::Destination {
        local,
        remote,
        remote_port,
        time_wait,
    } = &s.load
    else {
        return out;
    };
    // Reuse: TIME_WAIT more than half of the destination's usage (of the
    // load it is heading for, when that is more than today's).
    if time_wait * 2 > s.used.max(s.demand) {
        out.push((
            Id::ConnectionReuse,
            *time_wait,
            format!(
                "reuse connections (keep-alive, pooling) to {remote}:{remote_port}: \
                 {time_wait} ports held in TIME_WAIT by closed connections at this load; {}",
                s.owner()
            ),
        ));
    }
    let peer_loopback = local.is_loopback() || remote.is_loopback();
    if s.tcp_timestamps && s.tcp_tw_reuse != TwReuse::On && !peer_loopback {
        out.push((
            Id::TcpTwReuse,
            *time_wait,
            format!(
                "set net.ipv4.tcp_tw_reuse = 1 (tcp_timestamps is on): connect() may then \
                 reuse the {time_wait} TIME_WAIT ports towards {remote}:{remote_port}; \
                 it is per network namespace and applies to every outgoing connection"
            ),
        ));
    }
    if s.capacity_at_bounds > 0 {
        let k = s.demand.div_ceil(s.capacity_at_bounds).max(2);
        out.push((
            Id::SourceAddresses,
            s.capacity_at_bounds * (k - 1),
            format!(
                "connect from {k} local addresses instead of {local} alone: each gives \
                 {} more ports towards {remote}:{remote_port} (capacity x {k})",
                s.capacity_at_bounds
            ),
        ));
    }
    out
}

/// A lower floor, and `IP_BIND_ADDRESS_NO_PORT` for the bind(0) pool.
fn range_rules(s: &Situation) -> Vec<(Id, u64, String)> {
    let mut out = Vec::new();
    let floor = s
        .highest_listener_below
        .map_or(s.unprivileged_port_start, |p| p.saturating_add(1))
        .max(s.unprivileged_port_start)
        .max(1);
    if floor < s.range.low() {
        let gained = u64::from(s.range.low() - floor);
        out.push((
            Id::LowerFloor,
            gained,
            format!(
                "lower widen.floor to {floor} (above the highest listening port below the \
                 range, as `portd check` shows): {gained} more ports"
            ),
        ));
    }
    if s.load == Load::TcpPool {
        out.push((
            Id::BindAddressNoPort,
            s.used,
            "set IP_BIND_ADDRESS_NO_PORT before bind(address, 0): the port is then chosen \
             at connect() per destination, not from the bind(0) pool"
                .to_string(),
        ));
    }
    out
}

/// The remedies for the headline of one census (`check --plan`, `status`):
/// its destination or pool as it is now, against `capacity_at_bounds` (the
/// room below the critical level within the bounds).
pub fn for_headline(usage: &crate::observe::usage::Usage, capacity_at_bounds: u64) -> Vec<Remedy> {
    use crate::judge::forecast::{Forecast, Target};
    use crate::observe::usage::Cause;
    let h = &usage.headline;
    let f = match &h.cause {
        Cause::Destination { destination } => {
            let time_wait = usage
                .destinations
                .iter()
                .find(|d| d.key == *destination)
                .and_then(|d| d.states.get("TIME_WAIT"))
                .copied()
                .map_or(0, u64::from);
            Forecast::flat(
                Target::Destination {
                    destination: *destination,
                },
                h.used,
                time_wait,
                h.capacity,
            )
        }
        Cause::UdpPool => Forecast::flat(Target::UdpPool, h.used, 0, h.capacity),
        Cause::TcpPool => Forecast::flat(Target::TcpPool, h.used, 0, h.capacity),
        Cause::Idle | Cause::NoUsablePorts { .. } => return Vec::new(),
    };
    remedies(&situation(&f, h.used, capacity_at_bounds, usage, None))
}

/// The situation of a forecast target: its load, its demand and the
/// facts of the census (settings, listeners below the range).
pub fn situation(
    f: &crate::judge::forecast::Forecast,
    demand: u64,
    capacity_at_bounds: u64,
    usage: &crate::observe::usage::Usage,
    processes: Option<&str>,
) -> Situation {
    use crate::judge::forecast::Target;
    // What connection reuse would free is the TIME_WAIT of the load it
    // leads to, not of today: for a TIME_WAIT-dominated forecast (one with
    // a steady state), the demand less the live connections. A load of
    // live connections grows in live connections.
    let live = f.used.saturating_sub(f.time_wait);
    let time_wait = match f.steady_state {
        Some(_) => f.time_wait.max(demand.saturating_sub(live)),
        None => f.time_wait,
    };
    let load = match f.target {
        Target::Destination { destination } => Load::Destination {
            local: destination.local,
            remote: destination.remote,
            remote_port: destination.remote_port,
            time_wait,
        },
        Target::UdpPool => Load::UdpPool,
        Target::TcpPool => Load::TcpPool,
    };
    let range = usage.settings.port_range;
    Situation {
        load,
        used: f.used,
        demand,
        capacity_at_bounds,
        tcp_tw_reuse: usage.settings.tcp_tw_reuse,
        tcp_timestamps: usage.settings.tcp_timestamps,
        range,
        highest_listener_below: usage
            .listening_ports
            .iter()
            .filter(|p| *p < range.low())
            .max(),
        unprivileged_port_start: usage.settings.unprivileged_port_start,
        processes: processes.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(time_wait: u64, used: u64, demand: u64, capacity: u64) -> Situation {
        Situation {
            load: Load::Destination {
                local: "10.0.0.1".parse().unwrap(),
                remote: "10.0.0.2".parse().unwrap(),
                remote_port: 80,
                time_wait,
            },
            used,
            demand,
            capacity_at_bounds: capacity,
            tcp_tw_reuse: TwReuse::LoopbackOnly,
            tcp_timestamps: true,
            range: PortRange::new(32768, 60999).unwrap(),
            highest_listener_below: Some(22000),
            unprivileged_port_start: 1024,
            processes: None,
        }
    }

    fn ids(r: &[Remedy]) -> Vec<&'static str> {
        r.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_time_wait_load_is_offered_reuse_first_with_its_effect() {
        // 600/s for 60 s: 36000 ports, 32767 at the ceiling.
        let s = dest(20000, 21000, 36000, 32767);
        let r = remedies(&s);
        assert_eq!(r[0].id, Id::ConnectionReuse);
        assert_eq!(r[0].effect, 20000);
        assert!(r[0].closes_gap, "gap {}", s.gap());
        assert!(r[0].advice.contains("no owning process"), "{}", r[0].advice);
        assert_eq!(
            ids(&r),
            [
                "connection-reuse",
                "tcp-tw-reuse",
                "source-addresses",
                "lower-floor"
            ]
        );
        let lower = &r[3];
        assert_eq!(lower.effect, 32768 - 22001);
        assert!(r[1].advice.contains("per network namespace"));
    }

    #[test]
    fn remedies_that_close_the_gap_come_before_those_that_do_not() {
        // Mostly live connections: reuse does not apply; the floor gains
        // less than the gap; two source addresses close it.
        let mut s = dest(100, 30000, 40000, 32767);
        s.highest_listener_below = Some(30000);
        let r = remedies(&s);
        assert_eq!(ids(&r), ["source-addresses", "tcp-tw-reuse", "lower-floor"]);
        assert!(r[0].closes_gap && !r[1].closes_gap && !r[2].closes_gap);
        assert!(r[0].advice.contains("capacity x 2"));
    }

    #[test]
    fn tw_reuse_only_when_timestamps_are_on_reuse_is_off_and_the_peer_is_not_loopback() {
        let mut s = dest(20000, 21000, 36000, 32767);
        s.tcp_timestamps = false;
        assert!(!ids(&remedies(&s)).contains(&"tcp-tw-reuse"));
        let mut s = dest(20000, 21000, 36000, 32767);
        s.tcp_tw_reuse = TwReuse::On;
        assert!(!ids(&remedies(&s)).contains(&"tcp-tw-reuse"));
        let mut s = dest(20000, 21000, 36000, 32767);
        s.load = Load::Destination {
            local: "127.0.0.1".parse().unwrap(),
            remote: "127.0.0.1".parse().unwrap(),
            remote_port: 80,
            time_wait: 20000,
        };
        assert!(!ids(&remedies(&s)).contains(&"tcp-tw-reuse"));
    }

    #[test]
    fn the_bind_pool_is_offered_ip_bind_address_no_port_and_a_known_process_is_named() {
        let mut s = dest(0, 30000, 30000, 28232);
        s.load = Load::TcpPool;
        let r = remedies(&s);
        assert!(ids(&r).contains(&"bind-address-no-port"));
        let mut s = dest(20000, 21000, 36000, 32767);
        s.processes = Some("nginx[812]".into());
        assert!(remedies(&s)[0].advice.contains("held by nginx[812]"));
    }

    #[test]
    fn the_headline_of_a_census_gets_its_remedies() {
        // 900 TIME_WAIT and 50 live of 1000 towards 10.0.0.1:80, nothing
        // more within the bounds: reuse frees 900 and comes first.
        let u = crate::judge::forecast::tests::census(&[(1, 900, 50)]);
        let r = for_headline(&u, 1000);
        assert_eq!(r[0].id, Id::ConnectionReuse);
        assert_eq!(r[0].effect, 900);
        assert!(ids(&r).contains(&"lower-floor"), "{r:?}");
        let idle = crate::judge::forecast::tests::census(&[]);
        assert!(for_headline(&idle, 1000).is_empty());
    }

    #[test]
    fn ids_are_distinct() {
        let set: std::collections::BTreeSet<_> = Id::ALL.iter().map(|i| i.as_str()).collect();
        assert_eq!(set.len(), Id::ALL.len());
    }
}
