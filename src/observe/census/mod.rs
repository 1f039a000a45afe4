//! The census: one pass over the sockets of the network namespace, streamed
//! from a [`SocketSource`] into the usage aggregator, plus the kernel settings.

pub mod netlink;
pub mod procfs;
pub mod reader;
pub(crate) mod settings;
pub(crate) mod sockstat;

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::base::host::Host;
use crate::base::kernel::TcpState;
use crate::base::ports::PortSet;

pub use settings::KernelSettings;

/// Transport protocols with a port space of their own. IPv4 and IPv6 share
/// each one (docs/kernel.md §1.1).
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
#[derive(Clone, Copy, Debug)]
pub enum ScanScope<'a> {
    /// TCP listeners on any port (a cheap first pass: they decide which
    /// sockets are accepted connections rather than ephemeral usage, and
    /// which ports a wider range would grow over).
    Listeners,
    /// Every socket, of every protocol and state, whose local port is in
    /// the set: a census asks for the ports `connect()` and `bind(0)` can
    /// hand out, since no other socket can hold one. netlink has the
    /// kernel leave the others out (most of the cost of a dump is filling
    /// the message of each reported socket); procfs reads and drops them.
    Ports(&'a PortSet),
}

/// A source of sockets. It calls `visit` once per socket and keeps no list.
pub trait SocketSource {
    /// Short name for reports ("procfs", "netlink").
    fn name(&self) -> &'static str;
    /// Whether it can see sockets that are bound but neither listening nor
    /// connected (procfs cannot).
    fn sees_bound_only(&self) -> bool;
    fn scan(&self, scope: ScanScope<'_>, visit: &mut dyn FnMut(&Socket))
    -> Result<(), CensusError>;
}

/// Which source a census uses (`portd --source`, hidden: for benchmarks and
/// the tests that compare the sources).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// [`best_source`].
    #[default]
    Auto,
    Procfs,
    Netlink,
}

/// netlink sock_diag when the kernel answers it and the host root is `/`,
/// procfs otherwise: a fixture root (`--root`) has only files, and netlink
/// always reads the live network namespace of the process.
pub fn best_source(host: &Host) -> Box<dyn SocketSource> {
    best_source_with(host, netlink::NetlinkOptions::default())
}

/// [`best_source`] with netlink options: `bound_inactive` is worth its
/// cost (docs/benchmarks.md) where the TCP `bind(0)` pool counts towards
/// alerts, since bound-only sockets change nothing else in the census.
pub fn best_source_with(host: &Host, options: netlink::NetlinkOptions) -> Box<dyn SocketSource> {
    if host.root() == Path::new("/") {
        match netlink::NetlinkSource::open(host, options) {
            Ok(source) => return Box::new(source),
            Err(e) => tracing::debug!("sock_diag unavailable, reading procfs: {e}"),
        }
    }
    Box::new(procfs::ProcfsSource::new(host))
}

/// The source `choice` names. An explicit `netlink` fails where sock_diag
/// does not answer, or with a fixture root it could not honour.
pub fn open_source(
    host: &Host,
    choice: SourceChoice,
) -> Result<Box<dyn SocketSource>, CensusError> {
    match choice {
        SourceChoice::Auto => Ok(best_source(host)),
        SourceChoice::Procfs => Ok(Box::new(procfs::ProcfsSource::new(host))),
        SourceChoice::Netlink if host.root() != Path::new("/") => Err(CensusError::Netlink {
            request: "the netlink source",
            source: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!(
                    "it reads the live network namespace, not the root {}",
                    host.root().display()
                ),
            ),
        }),
        SourceChoice::Netlink => Ok(Box::new(netlink::NetlinkSource::open(
            host,
            netlink::NetlinkOptions::default(),
        )?)),
    }
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
    #[error("netlink sock_diag, {request}: {source}")]
    Netlink {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink sock_diag, {request}: malformed reply: {message}")]
    NetlinkMalformed {
        request: &'static str,
        message: String,
    },
}
