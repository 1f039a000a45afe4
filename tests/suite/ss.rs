//! `ss -tuanH` as the tests read it, and the usage model counted from it with
//! the test's own few lines (docs/DESIGN.md, "The usage model"), never with
//! portd's code: the reference that `portd status --json` must equal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

/// One line of `ss -tuanH`: `Netid State Recv-Q Send-Q Local Peer`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SsSocket {
    pub proto: String,
    pub state: String,
    /// None for `*` (any address).
    pub local: Option<IpAddr>,
    pub local_port: u16,
    pub remote: Option<IpAddr>,
    pub remote_port: u16,
}

pub fn parse(text: &str) -> Vec<SsSocket> {
    let mut sockets: Vec<SsSocket> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "unexpected ss line {line:?}");
            let (local, local_port) = endpoint(f[4]);
            let (remote, remote_port) = endpoint(f[5]);
            SsSocket {
                proto: f[0].to_string(),
                state: f[1].to_string(),
                local,
                local_port,
                remote,
                remote_port,
            }
        })
        .collect();
    sockets.sort();
    sockets
}

/// `127.0.0.1:5001`, `[::1]:5003`, `[::ffff:127.0.0.1]:40050`, `*:40050`,
/// `0.0.0.0:*`, `127.0.0.1%lo:53`. A v4-mapped address is its IPv4 address.
fn endpoint(text: &str) -> (Option<IpAddr>, u16) {
    let (addr, port) = text.rsplit_once(':').unwrap();
    let port = if port == "*" {
        0
    } else {
        port.parse().unwrap()
    };
    let addr = addr.split('%').next().unwrap();
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    if addr == "*" {
        return (None, port);
    }
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("bad address in ss output: {text:?}"));
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    (Some(ip), port)
}

/// portd's JSON names for the states `ss` prints.
fn state_name(ss: &str) -> &'static str {
    match ss {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "CLOSING" => "CLOSING",
        other => panic!("unexpected TCP state in ss output: {other}"),
    }
}

pub type DestKey = (IpAddr, IpAddr, u16);

/// What one destination holds: counted sockets by state, and TIME_WAIT
/// sockets left out because `tcp_tw_reuse` lets connect() reuse them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dest {
    pub states: BTreeMap<String, u64>,
    pub reusable_time_wait: u64,
}

impl Dest {
    pub fn used(&self) -> u64 {
        self.states.values().sum()
    }
}

#[derive(Debug)]
pub struct Model {
    pub listeners_in_range: Vec<u16>,
    /// Ports connect() can hand out towards one destination.
    pub capacity: u64,
    /// Range minus reserved: what the pools draw from.
    pub pool_capacity: u64,
    pub dests: BTreeMap<DestKey, Dest>,
    pub tcp_pool: u64,
    pub udp_pool: u64,
    pub accepted_excluded: u64,
    pub time_wait_in_range: u64,
    pub sockets: u64,
}

/// The kernel's rule for a TIME_WAIT 4-tuple under `tcp_tw_reuse`
/// (`tcp_twsk_unique`), with timestamps on: 1 reuses all, 2 loopback only.
fn reusable(tw_reuse: u8, local: IpAddr, remote: IpAddr) -> bool {
    match tw_reuse {
        1 => true,
        2 => local.is_loopback() || remote.is_loopback(),
        _ => false,
    }
}

pub fn model(
    sockets: &[SsSocket],
    range: RangeInclusive<u16>,
    reserved: &BTreeSet<u16>,
    tw_reuse: u8,
) -> Model {
    let tcp = || sockets.iter().filter(|s| s.proto == "tcp");
    let listening: BTreeSet<u16> = tcp()
        .filter(|s| s.state == "LISTEN")
        .map(|s| s.local_port)
        .collect();
    let in_range = |p: u16| range.contains(&p);
    let poolable = |p: u16| in_range(p) && !reserved.contains(&p);
    let listeners_in_range: Vec<u16> = listening.iter().copied().filter(|p| in_range(*p)).collect();
    let pool_capacity = range.clone().filter(|p| poolable(*p)).count() as u64;
    let capacity = range
        .clone()
        .filter(|p| poolable(*p) && !listening.contains(p))
        .count() as u64;

    let mut dests: BTreeMap<DestKey, Dest> = BTreeMap::new();
    let mut accepted_excluded = 0;
    for s in tcp().filter(|s| s.state != "LISTEN") {
        let port = s.local_port;
        if poolable(port) && listening.contains(&port) {
            accepted_excluded += 1;
        }
        if !poolable(port) || listening.contains(&port) {
            continue;
        }
        let (Some(local), Some(remote)) = (s.local, s.remote) else {
            panic!("a connected socket without addresses: {s:?}");
        };
        let dest = dests.entry((local, remote, s.remote_port)).or_default();
        if s.state == "TIME-WAIT" && reusable(tw_reuse, local, remote) {
            dest.reusable_time_wait += 1;
        } else {
            *dest
                .states
                .entry(state_name(&s.state).to_string())
                .or_default() += 1;
        }
    }
    let pool = |proto: &str| {
        sockets
            .iter()
            .filter(|s| s.proto == proto && poolable(s.local_port))
            .map(|s| s.local_port)
            .collect::<BTreeSet<u16>>()
            .len() as u64
    };
    Model {
        listeners_in_range,
        capacity,
        pool_capacity,
        tcp_pool: pool("tcp"),
        udp_pool: pool("udp"),
        dests,
        accepted_excluded,
        time_wait_in_range: tcp()
            .filter(|s| s.state == "TIME-WAIT" && poolable(s.local_port))
            .count() as u64,
        sockets: sockets.iter().filter(|s| poolable(s.local_port)).count() as u64,
    }
}
