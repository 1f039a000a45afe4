//! The sockets a sandbox holds: listeners, connections (both ends), a ramp
//! that opens them at a rate, and connections left in one TCP state. Each
//! socket is created on a thread moved into the sandbox's network namespace
//! ([`Sandbox::in_net`]); once created it is the namespace's, whichever
//! thread uses it, and it is held by the test process until released or the
//! sandbox is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use super::{Sandbox, enter_net};
use crate::suite::portd_child::wait_for;

/// The sockets a sandbox holds; dropping them closes them.
#[derive(Default)]
pub(super) struct Held {
    listeners: BTreeMap<u16, TcpListener>,
    /// Connections to a listener of the sandbox: (client, accepted peer).
    pairs: Vec<(TcpStream, TcpStream)>,
    /// Everything else a scenario keeps open.
    other: Vec<OwnedFd>,
}

/// A connection ramp running in the background.
pub(super) struct Ramp {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<String>>,
}

/// The name of an errno, as the tests compare it.
fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(98) => "EADDRINUSE".into(),
        Some(99) => "EADDRNOTAVAIL".into(),
        Some(111) => "ECONNREFUSED".into(),
        Some(115) => "EINPROGRESS".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

/// A socket of the sandbox's network namespace (call it inside
/// [`Sandbox::in_net`]).
fn socket(addr: &SocketAddr, kind: SocketType) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    rustix::net::socket_with(family, kind, SocketFlags::CLOEXEC, None).unwrap()
}

/// Sockets: listeners, connections held, ramps.
impl Sandbox {
    /// Listens on 127.0.0.1:`port`; panics when the kernel refuses.
    pub fn listen(&self, port: u16) {
        self.try_listen(port)
            .unwrap_or_else(|e| panic!("listen on {port}: {e}"));
    }

    /// Binds (SO_REUSEADDR) and listens on 127.0.0.1:`port`; the errno name
    /// when the kernel refuses.
    pub fn try_listen(&self, port: u16) -> Result<(), String> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = self.in_net(|| {
            let fd = socket(&addr, SocketType::STREAM);
            sockopt::set_socket_reuseaddr(&fd, true)?;
            rustix::net::bind(&fd, &addr)?;
            rustix::net::listen(&fd, 4096)?;
            Ok::<_, rustix::io::Errno>(TcpListener::from(fd))
        });
        let listener = listener.map_err(|e| errno_name(&e.into()))?;
        self.held.lock().unwrap().listeners.insert(port, listener);
        Ok(())
    }

    /// A listener of the sandbox (IPv4 or IPv6, `dual_stack` or not) on
    /// `addr`, held until the sandbox is dropped.
    pub fn listen_on(&self, addr: SocketAddr, dual_stack: bool) -> TcpListener {
        let fd = self.in_net(|| {
            let fd = socket(&addr, SocketType::STREAM);
            if addr.is_ipv6() {
                sockopt::set_ipv6_v6only(&fd, !dual_stack).unwrap();
            }
            rustix::net::bind(&fd, &addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            rustix::net::listen(&fd, 512).unwrap();
            fd
        });
        let listener = TcpListener::from(fd);
        self.hold(listener.try_clone().unwrap().into());
        listener
    }

    /// Closes the listener on `port` opened by [`Sandbox::listen`].
    pub fn unlisten(&self, port: u16) {
        self.held.lock().unwrap().listeners.remove(&port);
    }

    /// Keeps `fd` open until the sandbox is dropped.
    pub fn hold(&self, fd: OwnedFd) {
        self.held.lock().unwrap().other.push(fd);
    }

    /// A TCP connection to `to` from the sandbox, bound first to `from`
    /// (port 0) when given; with `listener`, also its accepted peer.
    pub fn connect_from(
        &self,
        to: SocketAddr,
        from: Option<SocketAddr>,
        listener: Option<&TcpListener>,
    ) -> std::io::Result<(TcpStream, Option<TcpStream>)> {
        let client = self.in_net(|| {
            let fd = socket(&to, SocketType::STREAM);
            if let Some(from) = from {
                rustix::net::bind(&fd, &from)?;
            }
            rustix::net::connect(&fd, &to)?;
            Ok::<_, rustix::io::Errno>(TcpStream::from(fd))
        })?;
        let peer = listener.map(|l| l.accept().unwrap().0);
        Ok((client, peer))
    }

    /// Opens up to `count` connections to the sandbox's first listener,
    /// holding both ends, stopping at the first failure: (local ports of
    /// those opened, errno name of the failure).
    pub fn connect(&self, count: usize) -> (Vec<u16>, Option<String>) {
        let port = self.target.expect("the sandbox has no listener");
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut held = self.held.lock().unwrap();
        let listener = &held.listeners[&port].try_clone().unwrap();
        let opened = self.in_net(|| {
            let mut pairs = Vec::new();
            for _ in 0..count {
                match TcpStream::connect(to) {
                    Ok(client) => pairs.push((client, listener.accept().unwrap().0)),
                    Err(e) => return (pairs, Some(errno_name(&e))),
                }
            }
            (pairs, None)
        });
        let ports = opened
            .0
            .iter()
            .map(|(c, _)| c.local_addr().unwrap().port())
            .collect();
        held.pairs.extend(opened.0);
        (ports, opened.1)
    }

    /// Starts opening connections to the sandbox's first listener at `rate`
    /// per second until `to` are held (or `connect()` fails).
    pub fn ramp(&mut self, to: usize, rate: u32) {
        let port = self.target.expect("the sandbox has no listener");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = self.held.lock().unwrap().listeners[&port]
            .try_clone()
            .unwrap();
        let held = Arc::clone(&self.held);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let netns = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        let thread = std::thread::spawn(move || {
            enter_net(&netns);
            let step = Duration::from_secs(1) / rate;
            let mut due = Instant::now();
            while !stopped.load(Ordering::Relaxed) && held.lock().unwrap().pairs.len() < to {
                let client = match TcpStream::connect(addr) {
                    Ok(client) => client,
                    Err(e) => return Some(errno_name(&e)),
                };
                let peer = listener.accept().unwrap().0;
                held.lock().unwrap().pairs.push((client, peer));
                due += step;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            None
        });
        self.ramp = Some(Ramp { stop, thread });
    }

    /// Waits (up to 30 s) for the ramp to end: (connections held, errno name
    /// of the failed `connect()` if one failed).
    pub fn wait_ramp(&mut self) -> (usize, Option<String>) {
        let ramp = self.ramp.take().expect("no ramp");
        wait_for("the ramp to end", Duration::from_secs(30), || {
            ramp.thread.is_finished().then_some(())
        });
        let error = ramp.thread.join().unwrap();
        (self.held.lock().unwrap().pairs.len(), error)
    }

    /// Stops the ramp and resets every connection (no TIME_WAIT is left).
    pub fn release(&mut self) {
        self.stop_ramp();
        let (clients, peers): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held.lock().unwrap().pairs)
                .into_iter()
                .unzip();
        for client in &clients {
            sockopt::set_socket_linger(client, Some(Duration::ZERO)).unwrap();
        }
        // The clients' ports go with the resets, in as short a time as can be,
        // so that a census sees them held or gone, seldom half-way.
        drop(clients);
        drop(peers);
    }

    /// Stops the ramp, if one runs.
    pub(super) fn stop_ramp(&mut self) {
        if let Some(ramp) = self.ramp.take() {
            ramp.stop.store(true, Ordering::Relaxed);
            let _ = ramp.thread.join();
        }
    }
}

/// How a connection ends, leaving the client's port in one TCP state.
impl Sandbox {
    /// The client closes first, then the server: the client's port ends in
    /// TIME_WAIT.
    pub fn client_time_wait(
        &self,
        to: SocketAddr,
        from: Option<SocketAddr>,
        listener: &TcpListener,
    ) {
        let (client, peer) = self.connect_from(to, from, Some(listener)).unwrap();
        drop(client);
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
    }

    /// The client half-closes and the server does not: client FIN_WAIT2
    /// (with an inode).
    pub fn client_fin_wait2(&self, to: SocketAddr, listener: &TcpListener) {
        let (client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
        self.hold(client.into());
        self.hold(peer.into());
    }

    /// The client closes and the server never does: an orphaned FIN_WAIT2
    /// (inode 0).
    pub fn orphaned_fin_wait2(&self, to: SocketAddr, listener: &TcpListener) {
        let (client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        drop(client);
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
        self.hold(peer.into());
    }

    /// The server closes first: the client's port sits in CLOSE_WAIT.
    pub fn client_close_wait(&self, to: SocketAddr, listener: &TcpListener) {
        let (mut client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        drop(peer);
        wait_eof(&mut client);
        self.hold(client.into());
    }

    /// A connect() that hangs in SYN_SENT (to an address nobody answers).
    pub fn syn_sent(&self, to: SocketAddr) {
        let fd = self.in_net(|| {
            let fd = rustix::net::socket_with(
                if to.is_ipv4() {
                    AddressFamily::INET
                } else {
                    AddressFamily::INET6
                },
                SocketType::STREAM,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            let rc = rustix::net::connect(&fd, &to);
            assert_eq!(
                rc,
                Err(rustix::io::Errno::INPROGRESS),
                "connect to {to} should hang"
            );
            fd
        });
        self.hold(fd);
    }

    /// A UDP socket, bound to `bind` and connected to `peer` when given.
    pub fn udp(&self, family: SocketAddr, bind: Option<SocketAddr>, peer: Option<SocketAddr>) {
        let fd = self.in_net(|| {
            let fd = socket(&family, SocketType::DGRAM);
            if let Some(bind) = bind {
                rustix::net::bind(&fd, &bind).unwrap();
            }
            if let Some(peer) = peer {
                rustix::net::connect(&fd, &peer).unwrap();
            }
            fd
        });
        self.hold(UdpSocket::from(fd).into());
    }
}

/// Reads until the peer closes (up to 5 s).
fn wait_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    while s.read(&mut buf).unwrap() > 0 {}
}
