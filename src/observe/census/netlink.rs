//! The netlink sock_diag source (docs/kernel.md §5): `inet_diag` dumps of TCP and
//! UDP over a `NETLINK_SOCK_DIAG` socket, parsed in place from one receive
//! buffer and handed to the visitor message by message. No text is formatted
//! or parsed, and the kernel hands over about 250 sockets per `recv()`
//! instead of the 27 of a `/proc/net/tcp` read (docs/benchmarks.md).
//!
//! A census asks only for the sockets on ports the range can hand out
//! ([`ScanScope::Ports`]); a small filter program of `inet_diag_bc_op`s
//! (`INET_DIAG_REQ_BYTECODE`) has the kernel leave the others out before it
//! fills their messages, which is most of the cost of a dump. Sockets the
//! program lets through beyond the set are dropped here, so the census is
//! exactly that of procfs either way.
//!
//! SCTP stays with procfs (`/proc/net/sctp`): it is rare, small, and
//! `sctp_diag` reports associations with address lists rather than one
//! 4-tuple per socket.
//!
//! Hand-written over rustix rather than `netlink-packet-sock-diag` +
//! `netlink-sys`, by measurement (docs/benchmarks.md, "Choice of the netlink
//! implementation"): the crate decodes every message into an owned
//! `InetResponse` (five allocations per socket, measured, where the census
//! must make none), has no `NEW_SYN_RECV` or `BOUND_INACTIVE` state bit and
//! no legacy single-walk request, and was 13-36 % slower than this module's
//! whole census while doing less; this module is two request layouts and
//! one 72-byte message layout of `include/uapi/linux/inet_diag.h`, decoded
//! with safe slice reads.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::{CensusError, Proto, ScanScope, Socket, SocketSource, normalise};
use crate::base::host::Host;
use crate::base::kernel::TcpState;
use crate::base::ports::{PortRange, PortSet};

// include/uapi/linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH

// include/uapi/linux/sock_diag.h, inet_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The legacy request: the kernel runs it with `AF_UNSPEC`, so one walk of
/// the established hash returns IPv4 and IPv6 sockets together
/// (`inet_diag_dump_compat`, net/ipv4/inet_diag.c).
const TCPDIAG_GETSOCK: u16 = 18;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `struct inet_diag_req_v2`.
const REQ_V2_LEN: usize = 56;
/// `struct inet_diag_req` (the legacy one).
const REQ_LEGACY_LEN: usize = 60;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// The request attribute holding a filter program (`enum` after
/// `INET_DIAG_REQ_NONE` in inet_diag.h), and the two program ops used:
/// "jump" (always takes its `no` branch) and "local port >= n", n in host
/// order in the `no` field of the op that follows.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
/// A filter tests at most this many runs of ports; a set in more pieces
/// (many reserved ports inside the range) is let through in this many
/// runs, its smallest gaps filled, and the rest dropped here.
const FILTER_RUNS: usize = 32;

/// `1 << state` for ESTABLISHED (1) to CLOSING (11) and NEW_SYN_RECV (12):
/// every state of a socket in the listening or established hash, as
/// `/proc/net/tcp` lists them. Not `~0`: that adds `TCP_BOUND_INACTIVE` (13),
/// which makes the kernel walk the bind hash too (docs/kernel.md §5.2).
const TCP_STATES: u32 = 0x1ffe;
const TCPF_LISTEN: u32 = 1 << 10;
/// Bound-only sockets, walked via `bhash2` (Linux >= 6.8, commit
/// 91051f003948). The kernel reports them with state CLOSE (7).
const TCPF_BOUND_INACTIVE: u32 = 1 << 13;
/// UDP sockets are CLOSE (unconnected) or ESTABLISHED (connected).
const UDP_STATES: u32 = u32::MAX;

/// The kernel fills dump datagrams up to `SKB_WITH_OVERHEAD(32768)` for a
/// reader whose buffer is at least that big (`netlink_recvmsg`).
const RECV_BUFFER: usize = 64 * 1024;

/// How the TCP part of a census is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetlinkOptions {
    /// Also dump bound-only sockets (`TCP_BOUND_INACTIVE`). They hold ports
    /// that procfs never shows, but asking for them makes the kernel walk
    /// the bind hash too: 12-17 % more per census on every host, whether it
    /// has any or not (docs/benchmarks.md), for a change to the TCP pool
    /// only. So it is off by default.
    pub bound_inactive: bool,
    /// Try the legacy single-walk request first (12-18 % cheaper, and half
    /// the fixed cost of an empty namespace); two per-family dumps when the
    /// kernel refuses it.
    pub single_walk: bool,
}

impl Default for NetlinkOptions {
    fn default() -> Self {
        NetlinkOptions {
            bound_inactive: false,
            single_walk: true,
        }
    }
}

/// TCP and UDP from sock_diag, SCTP from procfs. Opens a fresh netlink
/// socket per scan, so an abandoned dump can never leak into the next one.
/// It reads the network namespace of the process, whatever the host root.
pub struct NetlinkSource {
    options: NetlinkOptions,
    /// False once the kernel has refused the legacy request.
    single_walk: Cell<bool>,
    /// Whether the kernel walks bound-only sockets when asked (>= 6.8).
    bound_inactive_supported: bool,
    /// Whether the kernel takes a filter program (false where its audit
    /// refuses ours: the census then reads every socket and drops here).
    filters: bool,
    sctp: PathBuf,
}

impl NetlinkSource {
    /// Checks that sock_diag answers for TCP and UDP (the `tcp_diag` and
    /// `udp_diag` handlers can be missing) with empty dumps that walk
    /// nothing of size, whether it takes the legacy request, and whether it
    /// takes a filter program of the shape a census sends.
    pub fn open(host: &Host, options: NetlinkOptions) -> Result<Self, CensusError> {
        let mut conn = Conn::new()?;
        let mut nothing = |_: &Socket| {};
        // A state mask of 0 makes tcp_diag skip every hash table; the
        // kernel audits the program before it starts the dump.
        let single_walk = options.single_walk
            && conn
                .dump(Request::Legacy { states: 0 }, &[], &mut nothing)
                .is_ok();
        conn.dump(Request::v2(AF_INET, IPPROTO_TCP, 0), &[], &mut nothing)?;
        conn.dump(Request::v2(AF_INET, IPPROTO_UDP, 0), &[], &mut nothing)?;
        let mut sample = PortSet::new();
        sample.insert_range(PortRange::new(32768, 40000).expect("a valid range"));
        sample.insert_range(PortRange::new(40002, 60999).expect("a valid range"));
        let filters = match port_filter(&sample) {
            Filter::Program(program) => conn
                .dump(Request::v2(AF_INET, IPPROTO_TCP, 0), &program, &mut nothing)
                .inspect_err(|e| tracing::debug!("sock_diag refuses port filters: {e}"))
                .is_ok(),
            _ => unreachable!("two runs make a program"),
        };
        tracing::debug!(single_walk, filters, "sock_diag answers");
        Ok(NetlinkSource {
            options,
            single_walk: Cell::new(single_walk),
            bound_inactive_supported: kernel_at_least(host, (6, 8)),
            filters,
            sctp: host.proc("net/sctp"),
        })
    }

    /// Whether the TCP dumps are the single-walk legacy request.
    pub fn single_walk(&self) -> bool {
        self.single_walk.get()
    }

    /// Whether the kernel takes the port filter (it skips sockets off the
    /// census ports before filling their messages).
    pub fn filters(&self) -> bool {
        self.filters
    }

    fn scan_tcp(
        &self,
        conn: &mut Conn,
        states: u32,
        filter: &[u8],
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        if self.single_walk.get() {
            let mut seen = 0u64;
            let result = conn.dump(Request::Legacy { states }, filter, &mut |s: &Socket| {
                seen += 1;
                visit(s)
            });
            match result {
                Ok(()) => return Ok(()),
                // Refused before any socket: fall back for good.
                Err(_) if seen == 0 => self.single_walk.set(false),
                Err(e) => return Err(e),
            }
        }
        conn.dump(Request::v2(AF_INET, IPPROTO_TCP, states), filter, visit)?;
        optional_v6(conn.dump(Request::v2(AF_INET6, IPPROTO_TCP, states), filter, visit))
    }
}

impl SocketSource for NetlinkSource {
    fn name(&self) -> &'static str {
        "netlink"
    }

    fn sees_bound_only(&self) -> bool {
        self.options.bound_inactive && self.bound_inactive_supported
    }

    fn scan(
        &self,
        scope: ScanScope<'_>,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        let mut conn = Conn::new()?;
        let ports = match scope {
            // Only the listening hash is walked for this mask.
            ScanScope::Listeners => return self.scan_tcp(&mut conn, TCPF_LISTEN, &[], visit),
            ScanScope::Ports(ports) => ports,
        };
        let filter = match port_filter(ports) {
            Filter::Nothing => return Ok(()),
            Filter::Program(program) if self.filters => program,
            _ => Vec::new(),
        };
        let mut visit = |s: &Socket| {
            if ports.contains(s.local_port) {
                visit(s)
            }
        };
        let mut states = TCP_STATES;
        if self.sees_bound_only() {
            states |= TCPF_BOUND_INACTIVE;
        }
        self.scan_tcp(&mut conn, states, &filter, &mut visit)?;
        let udp = |family| Request::v2(family, IPPROTO_UDP, UDP_STATES);
        conn.dump(udp(AF_INET), &filter, &mut visit)?;
        optional_v6(conn.dump(udp(AF_INET6), &filter, &mut visit))?;
        super::procfs::scan_sctp(&self.sctp, &mut visit)
    }
}

/// What the kernel is asked to leave out of a dump.
#[derive(Debug, PartialEq, Eq)]
enum Filter {
    /// The set is every port: no program.
    Everything,
    /// The set is empty: no dump at all.
    Nothing,
    /// `inet_diag_bc_op`s that accept a socket whose local port is in one
    /// of at most [`FILTER_RUNS`] runs covering the set.
    Program(Vec<u8>),
}

/// The filter program for `ports`: for each run `a-b`, ascending,
/// `sport >= a` or reject (no later run holds a smaller port), then
/// `sport >= b + 1` or accept; after the last run, reject. Every op falls
/// through on success (`yes` is its own size) and branches on failure
/// (`no`), as the kernel's audit walks the `yes` chain to the end; a jump
/// to the end accepts, 4 bytes past it rejects (`inet_diag_bc_run` and
/// `inet_diag_bc_audit`, net/ipv4/inet_diag.c).
fn port_filter(ports: &PortSet) -> Filter {
    let runs = filter_runs(&ports.runs(), FILTER_RUNS);
    match runs.as_slice() {
        [] => return Filter::Nothing,
        [(0, u16::MAX)] => return Filter::Everything,
        _ => {}
    }
    // Two 8-byte comparisons a run; the last run either ends at 65535
    // (no upper test) or is followed by a 4-byte reject.
    let open_ended = runs.last().is_some_and(|&(_, high)| high == u16::MAX);
    let len = if open_ended {
        runs.len() * 16 - 8
    } else {
        runs.len() * 16 + 4
    };
    let mut program = Vec::with_capacity(len);
    // One op: `no` is a jump from the op's start; `len - at + 4` rejects.
    let mut op = |code: u8, no_to: usize, port: Option<u16>| {
        let at = program.len();
        let size = if port.is_some() { 8 } else { 4 };
        let no = u16::try_from(no_to - at).expect("a program under 64 KiB");
        program.extend_from_slice(&[code, size]);
        program.extend_from_slice(&no.to_ne_bytes());
        if let Some(port) = port {
            // The operand: an op whose `no` holds the port.
            program.extend_from_slice(&[0, 0]);
            program.extend_from_slice(&port.to_ne_bytes());
        }
    };
    let (accept, reject) = (len, len + 4);
    for &(low, high) in &runs {
        op(INET_DIAG_BC_S_GE, reject, Some(low));
        if let Some(above) = high.checked_add(1) {
            op(INET_DIAG_BC_S_GE, accept, Some(above));
        }
    }
    if !open_ended {
        op(INET_DIAG_BC_JMP, reject, None);
    }
    debug_assert_eq!(program.len(), len);
    Filter::Program(program)
}

/// `runs` (ascending, disjoint) as at most `max` (low, high) runs: the
/// smallest gaps between them are filled, so the result covers every port
/// of `runs`.
fn filter_runs(runs: &[RangeInclusive<u16>], max: usize) -> Vec<(u16, u16)> {
    if runs.len() <= max {
        return runs.iter().map(|r| (*r.start(), *r.end())).collect();
    }
    // Keep the max - 1 widest gaps; gap i lies between runs i and i + 1.
    let mut gaps: Vec<(u16, usize)> = runs
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].start() - w[0].end(), i))
        .collect();
    gaps.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept: Vec<usize> = gaps.iter().take(max - 1).map(|(_, i)| *i).collect();
    kept.sort_unstable();
    let mut merged = Vec::with_capacity(max);
    let mut start = 0;
    for i in kept.into_iter().chain([runs.len() - 1]) {
        merged.push((*runs[start].start(), *runs[i].end()));
        start = i + 1;
    }
    merged
}

/// A kernel without IPv6 has no AF_INET6 handler: ENOENT, as procfs has no
/// tcp6/udp6 there.
fn optional_v6(result: Result<(), CensusError>) -> Result<(), CensusError> {
    match result {
        Err(CensusError::Netlink { source, .. })
            if source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `/proc/sys/kernel/osrelease` ("6.18.44-...") is at least `want`.
fn kernel_at_least(host: &Host, want: (u32, u32)) -> bool {
    super::reader::read_proc_value(&host.proc("sys/kernel/osrelease"))
        .ok()
        .and_then(|release| {
            let mut parts = release
                .trim()
                .split(|c: char| !c.is_ascii_digit())
                .map(str::parse::<u32>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .is_some_and(|version| version >= want)
}

#[derive(Clone, Copy, Debug)]
enum Request {
    Legacy {
        states: u32,
    },
    V2 {
        family: u8,
        protocol: u8,
        states: u32,
    },
}

impl Request {
    fn v2(family: u8, protocol: u8, states: u32) -> Self {
        Request::V2 {
            family,
            protocol,
            states,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Request::Legacy { .. } => "TCPDIAG_GETSOCK dump",
            Request::V2 {
                family: AF_INET,
                protocol: IPPROTO_TCP,
                ..
            } => "SOCK_DIAG_BY_FAMILY dump of TCP/IPv4",
            Request::V2 {
                protocol: IPPROTO_TCP,
                ..
            } => "SOCK_DIAG_BY_FAMILY dump of TCP/IPv6",
            Request::V2 {
                family: AF_INET, ..
            } => "SOCK_DIAG_BY_FAMILY dump of UDP/IPv4",
            Request::V2 { .. } => "SOCK_DIAG_BY_FAMILY dump of UDP/IPv6",
        }
    }

    fn proto(self) -> Proto {
        match self {
            Request::V2 {
                protocol: IPPROTO_UDP,
                ..
            } => Proto::Udp,
            _ => Proto::Tcp,
        }
    }

    /// The request datagram: `nlmsghdr`, the request struct, all zero but
    /// the family, protocol and state mask (no socket id), then the filter
    /// program as an `INET_DIAG_REQ_BYTECODE` attribute unless it is empty.
    fn encode(self, seq: u32, filter: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(NLMSG_HDRLEN + REQ_LEGACY_LEN, 0);
        let (kind, body_len) = match self {
            Request::Legacy { states } => {
                // idiag_family, src_len, dst_len, ext, id (48 bytes), states, dbs
                out[NLMSG_HDRLEN + 52..NLMSG_HDRLEN + 56].copy_from_slice(&states.to_ne_bytes());
                (TCPDIAG_GETSOCK, REQ_LEGACY_LEN)
            }
            Request::V2 {
                family,
                protocol,
                states,
            } => {
                // sdiag_family, sdiag_protocol, idiag_ext, pad, states, id
                out[NLMSG_HDRLEN] = family;
                out[NLMSG_HDRLEN + 1] = protocol;
                out[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&states.to_ne_bytes());
                (SOCK_DIAG_BY_FAMILY, REQ_V2_LEN)
            }
        };
        out.truncate(NLMSG_HDRLEN + body_len);
        if !filter.is_empty() {
            let attr_len = u16::try_from(4 + filter.len()).expect("a program under 64 KiB");
            out.extend_from_slice(&attr_len.to_ne_bytes());
            out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            out.extend_from_slice(filter);
        }
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[4..6].copy_from_slice(&kind.to_ne_bytes());
        out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
}

/// One netlink socket and its receive buffer, for the dumps of one scan.
struct Conn {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Conn {
    fn new() -> Result<Self, CensusError> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .map_err(|e| netlink_error("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", e.into()))?;
        Ok(Conn {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends one dump request and streams every socket of the reply.
    fn dump(
        &mut self,
        request: Request,
        filter: &[u8],
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        let what = request.describe();
        self.seq += 1;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEGACY_LEN + 4 + filter.len());
        request.encode(self.seq, filter, &mut msg);
        rustix::net::sendto(
            &self.fd,
            &msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(|e| netlink_error(what, e.into()))?;
        loop {
            let (n, full) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::TRUNC)
                .map_err(|e| netlink_error(what, e.into()))?;
            if full > n {
                return Err(malformed(
                    what,
                    format!("a {full}-byte datagram overflowed the {n}-byte buffer"),
                ));
            }
            match decode(&self.buf[..n], self.seq, request.proto(), visit) {
                Ok(Progress::More) => {}
                Ok(Progress::Done) => return Ok(()),
                Err(Decode::Kernel(errno)) => {
                    return Err(netlink_error(what, io::Error::from_raw_os_error(errno)));
                }
                Err(Decode::Malformed(message)) => return Err(malformed(what, message)),
            }
        }
    }
}

fn netlink_error(request: &'static str, source: io::Error) -> CensusError {
    CensusError::Netlink { request, source }
}

fn malformed(request: &'static str, message: String) -> CensusError {
    CensusError::NetlinkMalformed { request, message }
}

/// Where a dump stands after one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decode {
    /// The kernel answered with an errno (positive).
    Kernel(i32),
    Malformed(String),
}

/// Decodes one datagram of a dump reply (a run of `nlmsghdr` + payload,
/// each 4-byte aligned) and visits its sockets. Messages of another
/// sequence number are skipped. Public for the benchmarks.
pub fn decode(
    datagram: &[u8],
    seq: u32,
    proto: Proto,
    visit: &mut dyn FnMut(&Socket),
) -> Result<Progress, Decode> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Decode::Malformed(format!(
                "message length {len} with {} bytes left",
                rest.len()
            )));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let payload = &rest[NLMSG_HDRLEN..len];
        let this_seq = u32_at(rest, 8);
        rest = rest.get(align4(len)..).unwrap_or_default();
        if this_seq != seq {
            continue;
        }
        match kind {
            // NLMSG_DONE carries the dump's final status; NLMSG_ERROR a
            // negative errno (0 is an acknowledgement).
            NLMSG_DONE | NLMSG_ERROR => {
                let status = payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if status != 0 {
                    return Err(Decode::Kernel(status.saturating_abs()));
                }
                if kind == NLMSG_DONE {
                    return Ok(Progress::Done);
                }
            }
            _ => visit(&socket_of(payload, proto)?),
        }
    }
    Ok(Progress::More)
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// `struct inet_diag_msg`: family, state, timer, retrans, then the socket id
/// (ports and addresses in network byte order), expires, rqueue, wqueue,
/// uid, inode. Attributes after it are not asked for and are skipped.
fn socket_of(msg: &[u8], proto: Proto) -> Result<Socket, Decode> {
    if msg.len() < MSG_LEN {
        return Err(Decode::Malformed(format!(
            "inet_diag_msg of {} bytes (expected {MSG_LEN})",
            msg.len()
        )));
    }
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let addr = |at: usize| -> Result<IpAddr, Decode> {
        match msg[0] {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                msg[at],
                msg[at + 1],
                msg[at + 2],
                msg[at + 3],
            ))),
            AF_INET6 => {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&msg[at..at + 16]);
                Ok(normalise(IpAddr::V6(Ipv6Addr::from(bytes))))
            }
            family => Err(Decode::Malformed(format!("address family {family}"))),
        }
    };
    let code = msg[1];
    let state = match (proto, code) {
        // Only the bind-hash walk yields a TCP socket in CLOSE: bound-only.
        (Proto::Tcp, 7) => TcpState::BoundInactive,
        _ => TcpState::from_code(code)
            .ok_or_else(|| Decode::Malformed(format!("unknown state {code}")))?,
    };
    Ok(Socket {
        proto,
        local: addr(8)?,
        local_port: port(4),
        remote: addr(24)?,
        remote_port: port(6),
        state,
        uid: u32_at(msg, 64),
        inode: u64::from(u32_at(msg, 68)),
    })
}

/// Builds the reply messages of a dump, for tests and benchmarks: one
/// `nlmsghdr` + `inet_diag_msg` per socket, as the kernel lays them out.
pub fn encode_for_tests(sockets: &[Socket], seq: u32, out: &mut Vec<u8>) {
    for s in sockets {
        let start = out.len();
        let len = NLMSG_HDRLEN + MSG_LEN;
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        let v6 = matches!(s.local, IpAddr::V6(_)) || matches!(s.remote, IpAddr::V6(_));
        let code = match (s.proto, s.state) {
            (Proto::Tcp, TcpState::BoundInactive) => 7,
            (_, st) => st as u8,
        };
        out.extend_from_slice(&[if v6 { AF_INET6 } else { AF_INET }, code, 0, 0]);
        out.extend_from_slice(&s.local_port.to_be_bytes());
        out.extend_from_slice(&s.remote_port.to_be_bytes());
        for a in [s.local, s.remote] {
            let bytes = match (a, v6) {
                (IpAddr::V4(v4), false) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&v4.octets());
                    b
                }
                (IpAddr::V4(v4), true) => v4.to_ipv6_mapped().octets(),
                (IpAddr::V6(v6), _) => v6.octets(),
            };
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&[0; 12]); // if, cookie
        out.extend_from_slice(&[0; 12]); // expires, rqueue, wqueue
        out.extend_from_slice(&s.uid.to_ne_bytes());
        out.extend_from_slice(&(s.inode as u32).to_ne_bytes());
        debug_assert_eq!(out.len() - start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(local: &str, lport: u16, remote: &str, rport: u16, state: TcpState) -> Socket {
        Socket {
            proto: Proto::Tcp,
            local: local.parse().unwrap(),
            local_port: lport,
            remote: remote.parse().unwrap(),
            remote_port: rport,
            state,
            uid: 1000,
            inode: 4242,
        }
    }

    fn done(seq: u32, status: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&status.to_ne_bytes());
        m
    }

    fn decode_all(buf: &[u8], seq: u32) -> (Result<Progress, Decode>, Vec<Socket>) {
        let mut seen = Vec::new();
        let r = decode(buf, seq, Proto::Tcp, &mut |s| seen.push(*s));
        (r, seen)
    }

    #[test]
    fn decodes_what_the_kernel_lays_out() {
        let sockets = [
            sock("127.0.0.1", 40000, "127.0.0.1", 5001, TcpState::Established),
            sock("::1", 40001, "::1", 5003, TcpState::TimeWait),
            sock("0.0.0.0", 40002, "0.0.0.0", 0, TcpState::BoundInactive),
            sock("10.0.0.1", 80, "0.0.0.0", 0, TcpState::Listen),
        ];
        let mut buf = Vec::new();
        encode_for_tests(&sockets, 7, &mut buf);
        buf.extend(done(7, 0));
        let (r, seen) = decode_all(&buf, 7);
        assert_eq!(r, Ok(Progress::Done));
        assert_eq!(seen, sockets);
    }

    #[test]
    fn v4_mapped_addresses_become_ipv4() {
        let mut s = sock("::1", 40000, "::1", 5001, TcpState::Established);
        let mut buf = Vec::new();
        encode_for_tests(&[s], 1, &mut buf);
        // ::ffff:127.0.0.1 in both address fields of the AF_INET6 message.
        let mapped = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        let msg = NLMSG_HDRLEN;
        buf[msg + 8..msg + 24].copy_from_slice(&mapped);
        buf[msg + 24..msg + 40].copy_from_slice(&mapped);
        let (_, seen) = decode_all(&buf, 1);
        s.local = "127.0.0.1".parse().unwrap();
        s.remote = s.local;
        assert_eq!(seen, [s]);
    }

    #[test]
    fn other_sequence_numbers_are_skipped() {
        let mut buf = Vec::new();
        encode_for_tests(
            &[sock("127.0.0.1", 1, "127.0.0.1", 2, TcpState::Established)],
            3,
            &mut buf,
        );
        buf.extend(done(3, 0));
        let (r, seen) = decode_all(&buf, 4);
        assert_eq!((r, seen.len()), (Ok(Progress::More), 0));
    }

    #[test]
    fn kernel_errors_and_bad_messages_are_errors() {
        let (r, _) = decode_all(&done(1, -2), 1);
        assert_eq!(r, Err(Decode::Kernel(2)));
        let mut short = Vec::new();
        encode_for_tests(
            &[sock("127.0.0.1", 1, "127.0.0.1", 2, TcpState::Established)],
            1,
            &mut short,
        );
        short[0] = 40; // nlmsg_len too small for an inet_diag_msg
        assert!(matches!(decode_all(&short, 1).0, Err(Decode::Malformed(_))));
        let mut long = short.clone();
        long[0] = 200; // longer than the datagram
        assert!(matches!(decode_all(&long, 1).0, Err(Decode::Malformed(_))));
        let mut bad_state = Vec::new();
        encode_for_tests(
            &[sock("127.0.0.1", 1, "127.0.0.1", 2, TcpState::Established)],
            1,
            &mut bad_state,
        );
        bad_state[NLMSG_HDRLEN + 1] = 99;
        assert!(matches!(
            decode_all(&bad_state, 1).0,
            Err(Decode::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = decode(&bytes, 0, Proto::Tcp, &mut |_| {});
        }
    }

    #[test]
    fn requests_have_the_uapi_layout() {
        let mut out = Vec::new();
        Request::v2(AF_INET6, IPPROTO_UDP, 0x1ffe).encode(9, &[], &mut out);
        assert_eq!(out.len(), 72);
        assert_eq!(u32_at(&out, 0), 72);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([out[6], out[7]]), 0x301);
        assert_eq!(u32_at(&out, 8), 9);
        assert_eq!((out[16], out[17]), (AF_INET6, IPPROTO_UDP));
        assert_eq!(u32_at(&out, 20), 0x1ffe);
        Request::Legacy { states: 0x400 }.encode(1, &[], &mut out);
        assert_eq!(out.len(), 76);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), TCPDIAG_GETSOCK);
        assert_eq!(out[16], 0, "AF_UNSPEC: one walk for both families");
        assert_eq!(u32_at(&out, 16 + 52), 0x400);
        // A program follows the request as an nlattr; nlmsg_len covers it.
        let program = [INET_DIAG_BC_JMP, 4, 8, 0];
        Request::Legacy { states: 0x400 }.encode(1, &program, &mut out);
        assert_eq!((out.len(), u32_at(&out, 0)), (84, 84));
        assert_eq!(u16::from_ne_bytes([out[76], out[77]]), 8, "nla_len");
        assert_eq!(
            u16::from_ne_bytes([out[78], out[79]]),
            INET_DIAG_REQ_BYTECODE
        );
        assert_eq!(&out[80..], program);
    }

    // The kernel's side of a filter program, as net/ipv4/inet_diag.c has it
    // (`inet_diag_bc_audit` with `valid_cc`, and `inet_diag_bc_run`), for
    // the ops this module sends: the tests check our programs against it.

    fn op_at(bc: &[u8], off: usize) -> (u8, i32, i32) {
        (
            bc[off],
            i32::from(bc[off + 1]),
            i32::from(u16::from_ne_bytes([bc[off + 2], bc[off + 3]])),
        )
    }

    fn kernel_valid_cc(bc: &[u8], mut len: i32, cc: i32) -> bool {
        let mut off = 0usize;
        while len >= 0 {
            if cc > len {
                return false;
            }
            if cc == len {
                return true;
            }
            let yes = i32::from(bc[off + 1]);
            if yes < 4 || yes & 3 != 0 {
                return false;
            }
            len -= yes;
            off += yes as usize;
        }
        false
    }

    fn kernel_audit(bc: &[u8]) -> bool {
        let bc_len = bc.len() as i32;
        let (mut off, mut len) = (0usize, bc_len);
        while len > 0 {
            if len < 4 {
                return false;
            }
            let (code, yes, no) = op_at(bc, off);
            let mut min_len = 4;
            match code {
                INET_DIAG_BC_S_GE | 3 => {
                    min_len += 4;
                    if len < min_len {
                        return false;
                    }
                }
                INET_DIAG_BC_JMP | 0 => {}
                _ => return false,
            }
            if code != 0 {
                if no < min_len || no > len + 4 || no & 3 != 0 {
                    return false;
                }
                if no < len && !kernel_valid_cc(bc, bc_len, len - no) {
                    return false;
                }
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return false;
            }
            off += yes as usize;
            len -= yes;
        }
        len == 0
    }

    fn kernel_run(bc: &[u8], sport: u16) -> bool {
        let (mut off, mut len) = (0usize, bc.len() as i32);
        while len > 0 {
            let (code, yes, no) = op_at(bc, off);
            let operand = || u16::from_ne_bytes([bc[off + 6], bc[off + 7]]);
            let taken = match code {
                0 => true,
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_S_GE => sport >= operand(),
                3 => sport <= operand(),
                other => panic!("op {other} is not one this module sends"),
            };
            let step = if taken { yes } else { no };
            len -= step;
            off = off.wrapping_add(step as usize);
        }
        len == 0
    }

    fn set_of(runs: &[(u16, u16)]) -> PortSet {
        let mut set = PortSet::new();
        for &(a, b) in runs {
            for port in a.min(b)..=a.max(b) {
                set.insert(port);
            }
        }
        set
    }

    #[test]
    fn port_filters_pass_the_kernels_audit_and_accept_exactly_their_runs() {
        for runs in [
            vec![(32768, 60999)],
            vec![(1024, 9999), (11000, 19999), (21000, 65535)],
            vec![(0, 100), (65535, 65535)],
            vec![(0, 0), (2, 2), (4, 4)],
            vec![(40000, 40099), (40101, 40101)],
        ] {
            let set = set_of(&runs);
            let Filter::Program(program) = port_filter(&set) else {
                panic!("{runs:?} needs a program");
            };
            assert!(kernel_audit(&program), "{runs:?}: refused by the audit");
            for port in 0..=u16::MAX {
                assert_eq!(
                    kernel_run(&program, port),
                    set.contains(port),
                    "{runs:?}: port {port}"
                );
            }
        }
        assert_eq!(port_filter(&PortSet::new()), Filter::Nothing);
        assert_eq!(port_filter(&PortSet::all()), Filter::Everything);
    }

    proptest::proptest! {
        #[test]
        fn any_port_set_gets_an_audited_program_covering_it(
            runs in proptest::collection::vec((proptest::prelude::any::<u16>(), 0u16..40), 1..100),
            probes in proptest::collection::vec(proptest::prelude::any::<u16>(), 64),
        ) {
            // Narrow runs, so that sets of more than FILTER_RUNS pieces are common.
            let runs: Vec<(u16, u16)> = runs.iter().map(|&(a, w)| (a, a.saturating_add(w))).collect();
            let set = set_of(&runs);
            let covering = filter_runs(&set.runs(), FILTER_RUNS);
            proptest::prop_assert!(covering.len() <= FILTER_RUNS);
            let Filter::Program(program) = port_filter(&set) else {
                return Ok(()); // one run of every port
            };
            proptest::prop_assert!(kernel_audit(&program));
            let in_covering = |p: u16| covering.iter().any(|&(a, b)| (a..=b).contains(&p));
            let edges = set.runs().iter().flat_map(|r| {
                [*r.start(), *r.end(), r.start().wrapping_sub(1), r.end().wrapping_add(1)]
            }).collect::<Vec<_>>();
            for port in probes.into_iter().chain(edges) {
                proptest::prop_assert_eq!(kernel_run(&program, port), in_covering(port), "port {}", port);
                if set.contains(port) {
                    proptest::prop_assert!(in_covering(port), "port {} of the set is filtered out", port);
                }
            }
        }
    }

    #[test]
    fn many_runs_are_merged_over_their_smallest_gaps() {
        // Runs of one port every 3 ports, and one wide gap in the middle.
        let mut runs: Vec<RangeInclusive<u16>> =
            (0..50u16).map(|i| 1000 + i * 3..=1000 + i * 3).collect();
        runs.push(5000..=5001);
        assert_eq!(filter_runs(&runs, 2), [(1000, 1147), (5000, 5001)]);
    }
}
