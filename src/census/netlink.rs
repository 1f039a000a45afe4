//! The netlink sock_diag source (kernel.md §5): `inet_diag` dumps of TCP and
//! UDP over a `NETLINK_SOCK_DIAG` socket, parsed in place from one receive
//! buffer and handed to the visitor message by message. No text is formatted
//! or parsed, and the kernel hands over about 250 sockets per `recv()`
//! instead of the 27 of a `/proc/net/tcp` read (docs/benchmarks.md).
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
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::{CensusError, Proto, Scope, Socket, SocketSource, normalise};
use crate::host::Host;
use crate::kernel::TcpState;

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

/// `1 << state` for ESTABLISHED (1) to CLOSING (11) and NEW_SYN_RECV (12):
/// every state of a socket in the listening or established hash, as
/// `/proc/net/tcp` lists them. Not `~0`: that adds `TCP_BOUND_INACTIVE` (13),
/// which makes the kernel walk the bind hash too (kernel.md §5.2).
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
    sctp: PathBuf,
}

impl NetlinkSource {
    /// Checks that sock_diag answers for TCP and UDP (the `tcp_diag` and
    /// `udp_diag` handlers can be missing) with empty dumps that walk
    /// nothing of size, and whether it takes the legacy request.
    pub fn open(host: &Host, options: NetlinkOptions) -> Result<Self, CensusError> {
        let source = NetlinkSource {
            options,
            single_walk: Cell::new(options.single_walk),
            bound_inactive_supported: kernel_at_least(host, (6, 8)),
            sctp: host.proc("net/sctp"),
        };
        let mut conn = Conn::new()?;
        let mut nothing = |_: &Socket| {};
        // A state mask of 0 makes tcp_diag skip every hash table.
        if source.single_walk.get()
            && conn
                .dump(Request::Legacy { states: 0 }, &mut nothing)
                .is_err()
        {
            source.single_walk.set(false);
        }
        conn.dump(Request::v2(AF_INET, IPPROTO_TCP, 0), &mut nothing)?;
        conn.dump(Request::v2(AF_INET, IPPROTO_UDP, 0), &mut nothing)?;
        Ok(source)
    }

    /// Whether the TCP dumps are the single-walk legacy request.
    pub fn single_walk(&self) -> bool {
        self.single_walk.get()
    }

    fn scan_tcp(
        &self,
        conn: &mut Conn,
        states: u32,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        if self.single_walk.get() {
            let mut seen = 0u64;
            let result = conn.dump(Request::Legacy { states }, &mut |s: &Socket| {
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
        conn.dump(Request::v2(AF_INET, IPPROTO_TCP, states), visit)?;
        optional_v6(conn.dump(Request::v2(AF_INET6, IPPROTO_TCP, states), visit))
    }
}

impl SocketSource for NetlinkSource {
    fn name(&self) -> &'static str {
        "netlink"
    }

    fn sees_bound_only(&self) -> bool {
        self.options.bound_inactive && self.bound_inactive_supported
    }

    fn scan(&self, scope: Scope, visit: &mut dyn FnMut(&Socket)) -> Result<(), CensusError> {
        let mut conn = Conn::new()?;
        if scope == Scope::Listeners {
            // Only the listening hash is walked for this mask.
            return self.scan_tcp(&mut conn, TCPF_LISTEN, visit);
        }
        let mut states = TCP_STATES;
        if self.sees_bound_only() {
            states |= TCPF_BOUND_INACTIVE;
        }
        self.scan_tcp(&mut conn, states, visit)?;
        conn.dump(Request::v2(AF_INET, IPPROTO_UDP, UDP_STATES), visit)?;
        optional_v6(conn.dump(Request::v2(AF_INET6, IPPROTO_UDP, UDP_STATES), visit))?;
        super::procfs::scan_sctp(&self.sctp, visit)
    }
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
    std::fs::read_to_string(host.proc("sys/kernel/osrelease"))
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

    /// The request datagram: `nlmsghdr` then the request struct, all zero
    /// but the family, protocol and state mask (no socket id, no bytecode).
    fn encode(self, seq: u32, out: &mut [u8; NLMSG_HDRLEN + REQ_LEGACY_LEN]) -> usize {
        out.fill(0);
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
        let len = NLMSG_HDRLEN + body_len;
        out[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        out[4..6].copy_from_slice(&kind.to_ne_bytes());
        out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        len
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
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), CensusError> {
        let what = request.describe();
        self.seq += 1;
        let mut msg = [0u8; NLMSG_HDRLEN + REQ_LEGACY_LEN];
        let len = request.encode(self.seq, &mut msg);
        rustix::net::sendto(
            &self.fd,
            &msg[..len],
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
        let mut out = [0u8; NLMSG_HDRLEN + REQ_LEGACY_LEN];
        let n = Request::v2(AF_INET6, IPPROTO_UDP, 0x1ffe).encode(9, &mut out);
        assert_eq!(n, 72);
        assert_eq!(u32_at(&out, 0), 72);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([out[6], out[7]]), 0x301);
        assert_eq!(u32_at(&out, 8), 9);
        assert_eq!((out[16], out[17]), (AF_INET6, IPPROTO_UDP));
        assert_eq!(u32_at(&out, 20), 0x1ffe);
        let n = Request::Legacy { states: 0x400 }.encode(1, &mut out);
        assert_eq!(n, 76);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), TCPDIAG_GETSOCK);
        assert_eq!(out[16], 0, "AF_UNSPEC: one walk for both families");
        assert_eq!(u32_at(&out, 16 + 52), 0x400);
    }
}
