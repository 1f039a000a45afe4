//! The census: one pass over the sockets of the network namespace, streamed
//! from a [`SocketSource`] into the usage aggregator, plus the kernel settings.

pub mod procfs;
pub mod settings;
pub mod sockstat;

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use crate::kernel::TcpState;

pub use settings::KernelSettings;

/// Transport protocols with a port space of their own. IPv4 and IPv6 share
/// each one (kernel.md §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

/// One socket, as a source reports it. Borrowed by the visitor for the
/// duration of one call only: sources reuse it, nothing keeps a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub proto: Proto,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// TCP state; UDP connected sockets report `Established`, unconnected
    /// `Close`; SCTP endpoints `Listen`, associations `Established`.
    pub state: TcpState,
    pub uid: u32,
    /// Socket inode; 0 for TIME_WAIT, request and orphaned sockets.
    pub inode: u64,
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`, how tcp6 shows IPv4 peers of a
/// dual-stack socket) is the IPv4 address it maps.
pub fn normalise(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

pub const UNSPECIFIED_V6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// What a scan should report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// TCP listeners only (a cheap first pass: they decide which sockets
    /// are accepted connections rather than ephemeral usage).
    Listeners,
    /// Every socket.
    All,
}

/// A source of sockets. It calls `visit` once per socket and keeps no list.
pub trait SocketSource {
    /// Short name for reports ("procfs", "netlink").
    fn name(&self) -> &'static str;
    /// Whether it can see sockets that are bound but neither listening nor
    /// connected (procfs cannot).
    fn sees_bound_only(&self) -> bool;
    fn scan(&self, scope: Scope, visit: &mut dyn FnMut(&Socket)) -> Result<(), CensusError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
