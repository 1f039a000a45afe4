//! The usage model (docs/DESIGN.md, "The usage model"): per-destination TCP usage,
//! the per-protocol pools, the headline and the hazards, aggregated from one
//! streamed census.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::base::kernel::{CONNECT_SLOWDOWN_FRACTION, TcpState};
use crate::base::ports::{PortRange, PortSet, Ratio};
use crate::observe::census::{CensusError, KernelSettings, Proto, ScanScope, Socket, SocketSource};

/// What `connect()` shares a local port across: one destination
/// (docs/kernel.md §3.1, exhaustion is per (local address, remote address, remote port)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DestKey {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl std::fmt::Display for DestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.remote {
            IpAddr::V6(r) => write!(f, "{} -> [{}]:{}", self.local, r, self.remote_port),
            IpAddr::V4(r) => write!(f, "{} -> {}:{}", self.local, r, self.remote_port),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DestCounts {
    by_state: [u32; TcpState::ALL.len()],
    /// TIME_WAIT sockets the kernel may reuse under `tcp_tw_reuse`.
    reusable_time_wait: u32,
}

impl DestCounts {
    fn counted(&self) -> u64 {
        self.by_state.iter().map(|c| u64::from(*c)).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestUsage {
    #[serde(flatten)]
    pub key: DestKey,
    /// Sockets that hold a port towards this destination.
    pub used: u64,
    pub usage: Ratio,
    /// Counts by state (only non-zero states), reusable TIME_WAIT excluded.
    pub states: std::collections::BTreeMap<&'static str, u32>,
    /// TIME_WAIT sockets left out because `tcp_tw_reuse` lets connect() reuse them.
    pub reusable_time_wait: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Pool {
    /// Distinct local ports of the usable range in use.
    pub used: u64,
    pub capacity: u64,
    pub usage: Ratio,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pools {
    pub tcp: Pool,
    pub udp: Pool,
    pub sctp: Pool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// Nothing uses the range.
    Idle,
    Destination {
        destination: DestKey,
    },
    UdpPool,
    TcpPool,
    /// The range has no port `connect()` can hand out: every one is
    /// reserved or a listener's. Every `connect()` fails, whatever is in use.
    NoUsablePorts {
        range: PortRange,
        /// Of the range's ports, how many are reserved and how many more
        /// are held by listening services.
        reserved: u32,
        listening: u32,
    },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Idle => f.write_str("no ephemeral ports in use"),
            Cause::Destination { destination } => write!(f, "destination {destination}"),
            Cause::UdpPool => f.write_str("UDP pool"),
            Cause::TcpPool => f.write_str("TCP bind(0) pool"),
            Cause::NoUsablePorts {
                range,
                reserved,
                listening,
            } => {
                write!(
                    f,
                    "no usable ephemeral ports: every port of the range {range} is reserved"
                )?;
                if *listening > 0 {
                    write!(
                        f,
                        " ({reserved}) or held by a listening service ({listening})"
                    )?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Headline {
    pub usage: Ratio,
    pub used: u64,
    pub capacity: u64,
    pub cause: Cause,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hazard {
    /// Low and high have the same parity: one port per destination can be unreachable.
    SameParity { low: u16, high: u16 },
    /// Services listen inside the range on unreserved ports: a restarting
    /// service can find its port taken by an outgoing connection.
    ListenersInRange { ports: Vec<u16> },
    /// A destination is at or past half of capacity: connect() to it is about 10x slower.
    SlowdownMark { destination: DestKey, usage: Ratio },
}

impl std::fmt::Display for Hazard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hazard::SameParity { low, high } => write!(
                f,
                "range {low}-{high} has ends of the same parity: connect() may never reach one port per destination; make low and high differ by an odd number"
            ),
            Hazard::ListenersInRange { ports } => write!(
                f,
                "{} unreserved listening port(s) inside the range ({}): a service restarting there can find its port taken by an outgoing connection; reserve them in ip_local_reserved_ports",
                ports.len(),
                abbreviate(ports, 8)
            ),
            Hazard::SlowdownMark { destination, usage } => write!(
                f,
                "{destination} is at {usage}, past the 50% mark where every further connect() to it is about 10x slower"
            ),
        }
    }
}

/// "40050, 40051, and 3 more": the first `shown` ports of a list for a message.
pub fn abbreviate(ports: &[u16], shown: usize) -> String {
    let mut s: Vec<String> = ports.iter().take(shown).map(u16::to_string).collect();
    if ports.len() > shown {
        s.push(format!("and {} more", ports.len() - shown));
    }
    s.join(", ")
}

/// The derived usage of one census.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub source: &'static str,
    /// False for procfs: bound-only sockets hold ports it cannot see.
    pub sees_bound_only: bool,
    pub settings: KernelSettings,
    pub range_size: u32,
    pub reserved_in_range: u32,
    /// Listening TCP ports inside the range (sorted).
    pub listeners_in_range: Vec<u16>,
    /// Every listening TCP port, in the range or not (the planner reserves
    /// those the range grows over).
    #[serde(skip)]
    pub listening_ports: PortSet,
    /// Ports `connect()` can hand out towards one destination.
    pub capacity: u64,
    /// Which ports those are: the range minus reserved and listening ports.
    #[serde(skip)]
    pub usable: PortSet,
    /// All destinations, worst first. Bounded by the number of distinct destinations.
    pub destinations: Vec<DestUsage>,
    pub pools: Pools,
    pub headline: Headline,
    pub hazards: Vec<Hazard>,
    /// Sockets accepted by an unreserved listener inside the range: on a
    /// port of the range, but not ephemeral usage.
    pub accepted_excluded: u64,
    /// TIME_WAIT sockets `tcp_tw_reuse` lets the kernel reuse (not counted).
    pub reusable_time_wait: u64,
    /// TIME_WAIT sockets on unreserved ports of the range.
    pub time_wait_in_range: u64,
    /// Sockets of any protocol and state on unreserved ports of the range:
    /// all the census reads besides the listeners ([`census_ports`]).
    pub sockets_in_range: u64,
}

/// Whether the TCP `bind(0)` pool counts towards the headline (policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageOptions {
    pub tcp_pool_in_headline: bool,
}

/// How one TCP socket counts towards the destination it talks to: the one
/// rule the aggregator and process attribution share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// A listener, a bound-only socket, or a local port `connect()` does not
    /// hand out (outside the range, reserved, or a listener's: accepted).
    NotEphemeral,
    /// Holds a port towards its destination.
    Holds(DestKey),
    /// A TIME_WAIT the kernel may reuse under `tcp_tw_reuse`: reported apart.
    Reusable(DestKey),
}

/// `usable` is the set of ports `connect()` can hand out ([`Usage::usable`]).
pub fn counting(usable: &PortSet, settings: &KernelSettings, s: &Socket) -> Counting {
    if s.proto != Proto::Tcp
        || matches!(s.state, TcpState::Listen | TcpState::BoundInactive)
        || !usable.contains(s.local_port)
    {
        return Counting::NotEphemeral;
    }
    let key = DestKey {
        local: s.local,
        remote: s.remote,
        remote_port: s.remote_port,
    };
    if s.state == TcpState::TimeWait
        && settings
            .tcp_tw_reuse
            .reusable(settings.tcp_timestamps, s.local, s.remote)
    {
        Counting::Reusable(key)
    } else {
        Counting::Holds(key)
    }
}

/// The ports a census reads sockets on: the range minus the reserved ports,
/// all that `connect()` and `bind(0)` draw from. A socket on any other port
/// holds nothing a pool or a destination can run out of, so the census
/// leaves it out (and netlink has the kernel skip it: docs/benchmarks.md).
pub fn census_ports(settings: &KernelSettings) -> PortSet {
    let mut range = PortSet::new();
    range.insert_range(settings.port_range);
    range.difference(&settings.reserved_ports)
}

/// Streams the source twice (listeners on any port, then every socket on
/// the [`census_ports`]) and derives [`Usage`].
pub fn take_census(
    source: &dyn SocketSource,
    settings: KernelSettings,
    options: UsageOptions,
) -> Result<Usage, CensusError> {
    let mut listen_ports = PortSet::new();
    source.scan(ScanScope::Listeners, &mut |s| {
        if s.proto == Proto::Tcp && s.state == TcpState::Listen {
            listen_ports.insert(s.local_port);
        }
    })?;
    let mut agg = Aggregator::new(settings, listen_ports);
    let ports = agg.poolable.clone();
    source.scan(ScanScope::Ports(&ports), &mut |s| agg.visit(s))?;
    Ok(agg.finish(source.name(), source.sees_bound_only(), options))
}

/// Counts sockets as they stream past; memory grows only with the number of
/// distinct destinations.
pub struct Aggregator {
    settings: KernelSettings,
    /// Ports connect() may hand out: range minus reserved minus listeners.
    usable: PortSet,
    /// Range minus reserved: what the pools draw from.
    poolable: PortSet,
    listen_ports: PortSet,
    dests: HashMap<DestKey, DestCounts>,
    tcp_ports: PortSet,
    udp_ports: PortSet,
    sctp_ports: PortSet,
    accepted_excluded: u64,
    reusable_time_wait: u64,
    time_wait_in_range: u64,
    sockets_in_range: u64,
}

impl Aggregator {
    pub fn new(settings: KernelSettings, listen_ports: PortSet) -> Self {
        let poolable = census_ports(&settings);
        let usable = poolable.difference(&listen_ports);
        Aggregator {
            settings,
            usable,
            poolable,
            listen_ports,
            dests: HashMap::new(),
            tcp_ports: PortSet::new(),
            udp_ports: PortSet::new(),
            sctp_ports: PortSet::new(),
            accepted_excluded: 0,
            reusable_time_wait: 0,
            time_wait_in_range: 0,
            sockets_in_range: 0,
        }
    }

    /// One socket of the census. Sockets off the [`census_ports`] are
    /// ignored (a source may hand them over).
    pub fn visit(&mut self, s: &Socket) {
        if !self.poolable.contains(s.local_port) {
            return;
        }
        self.sockets_in_range += 1;
        match s.proto {
            Proto::Udp => {
                self.udp_ports.insert(s.local_port);
            }
            Proto::Sctp => {
                self.sctp_ports.insert(s.local_port);
            }
            Proto::Tcp => self.visit_tcp(s),
        }
    }

    fn visit_tcp(&mut self, s: &Socket) {
        self.tcp_ports.insert(s.local_port);
        if s.state == TcpState::TimeWait {
            self.time_wait_in_range += 1;
        }
        match counting(&self.usable, &self.settings, s) {
            Counting::Holds(key) => {
                self.dests.entry(key).or_default().by_state[s.state.index()] += 1
            }
            Counting::Reusable(key) => {
                self.dests.entry(key).or_default().reusable_time_wait += 1;
                self.reusable_time_wait += 1;
            }
            Counting::NotEphemeral => {
                // Accepted by a listener in the range: its port is the listener's.
                if !matches!(s.state, TcpState::Listen | TcpState::BoundInactive)
                    && self.listen_ports.contains(s.local_port)
                {
                    self.accepted_excluded += 1;
                }
            }
        }
    }

    pub fn finish(
        self,
        source: &'static str,
        sees_bound_only: bool,
        options: UsageOptions,
    ) -> Usage {
        let range = self.settings.port_range;
        let capacity = u64::from(self.usable.len());
        let pool = |ports: &PortSet| {
            let used = u64::from(ports.intersection_len(&self.poolable));
            let capacity = u64::from(self.poolable.len());
            Pool {
                used,
                capacity,
                usage: Ratio::of(used, capacity),
            }
        };
        let pools = Pools {
            tcp: pool(&self.tcp_ports),
            udp: pool(&self.udp_ports),
            sctp: pool(&self.sctp_ports),
        };
        let mut destinations: Vec<DestUsage> = self
            .dests
            .iter()
            .map(|(key, c)| {
                let used = c.counted();
                DestUsage {
                    key: *key,
                    used,
                    usage: Ratio::of(used, capacity),
                    states: TcpState::ALL
                        .iter()
                        .filter(|st| c.by_state[st.index()] > 0)
                        .map(|st| (st.name(), c.by_state[st.index()]))
                        .collect(),
                    reusable_time_wait: c.reusable_time_wait,
                }
            })
            .collect();
        destinations.sort_by(|a, b| b.used.cmp(&a.used).then(a.key.cmp(&b.key)));

        let reserved_in_range = self.settings.reserved_ports.count_in(range);
        let no_ports = Cause::NoUsablePorts {
            range,
            reserved: reserved_in_range,
            listening: range.len() - reserved_in_range - self.usable.count_in(range),
        };
        let headline = headline(&destinations, &pools, capacity, options, no_ports);
        let listeners_in_range: Vec<u16> = self
            .listen_ports
            .iter()
            .filter(|p| range.contains(*p))
            .collect();
        let hazards = hazards(&self.settings, &listeners_in_range, &destinations);
        Usage {
            source,
            sees_bound_only,
            range_size: range.len(),
            reserved_in_range,
            listeners_in_range,
            listening_ports: self.listen_ports,
            capacity,
            usable: self.usable,
            destinations,
            pools,
            headline,
            hazards,
            accepted_excluded: self.accepted_excluded,
            reusable_time_wait: self.reusable_time_wait,
            time_wait_in_range: self.time_wait_in_range,
            sockets_in_range: self.sockets_in_range,
            settings: self.settings,
        }
    }
}

/// What the census shows that could hurt: ends of the same parity,
/// services listening on unreserved ports inside the range, destinations
/// past the 50 % mark where `connect()` slows down.
fn hazards(
    settings: &KernelSettings,
    listeners_in_range: &[u16],
    destinations: &[DestUsage],
) -> Vec<Hazard> {
    let range = settings.port_range;
    let mut hazards = Vec::new();
    if range.has_same_parity() {
        hazards.push(Hazard::SameParity {
            low: range.low(),
            high: range.high(),
        });
    }
    // A reserved listener is safe: no outgoing connection can take its port.
    let unreserved: Vec<u16> = listeners_in_range
        .iter()
        .copied()
        .filter(|p| !settings.reserved_ports.contains(*p))
        .collect();
    if !unreserved.is_empty() {
        hazards.push(Hazard::ListenersInRange { ports: unreserved });
    }
    hazards.extend(
        destinations
            .iter()
            .filter(|d| d.used > 0 && d.usage.fraction() >= CONNECT_SLOWDOWN_FRACTION)
            .map(|d| Hazard::SlowdownMark {
                destination: d.key,
                usage: d.usage,
            }),
    );
    hazards
}

/// The worst of the per-destination usages and the UDP pool (and the TCP
/// pool where the policy says so), naming its cause; `no_ports` when the
/// capacity is zero. The one place that judges an empty capacity: `status`,
/// `check` and the daemon all show this headline.
fn headline(
    destinations: &[DestUsage],
    pools: &Pools,
    capacity: u64,
    options: UsageOptions,
    no_ports: Cause,
) -> Headline {
    let mut best = Headline {
        usage: Ratio::ZERO,
        used: 0,
        capacity,
        cause: Cause::Idle,
    };
    let mut consider = |usage: Ratio, used: u64, capacity: u64, cause: Cause| {
        if used > 0 && usage > best.usage {
            best = Headline {
                usage,
                used,
                capacity,
                cause,
            };
        }
    };
    if let Some(d) = destinations.first() {
        consider(
            d.usage,
            d.used,
            capacity,
            Cause::Destination { destination: d.key },
        );
    }
    consider(
        pools.udp.usage,
        pools.udp.used,
        pools.udp.capacity,
        Cause::UdpPool,
    );
    if options.tcp_pool_in_headline {
        consider(
            pools.tcp.usage,
            pools.tcp.used,
            pools.tcp.capacity,
            Cause::TcpPool,
        );
    }
    if capacity == 0 {
        // Nothing can be handed out at all: full, whatever is in use.
        return Headline {
            usage: Ratio::FULL,
            used: 0,
            capacity,
            cause: no_ports,
        };
    }
    best
}
