//! The service manager protocol (sd_notify), wrapped so the rest of portd
//! never formats notify strings. Every call is a no-op without
//! `NOTIFY_SOCKET`; a failed send is logged at debug level and ignored.
//!
//! The sd-notify crate formats the states and reads the watchdog settings;
//! the datagram itself is sent here without blocking. `sd_notify::notify`
//! sends on a blocking socket, and a unix datagram send blocks while the
//! receiver's queue is full (`net.unix.max_dgram_qlen`, 10 by default): a
//! service manager slow to read would stall the event loop, the watchdog
//! included. A message that does not fit now is dropped instead.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut message = String::new();
    for state in states {
        let _ = writeln!(message, "{state}");
    }
    if let Err(e) = send_now(&path, message.as_bytes()) {
        tracing::debug!("sd_notify {:?} failed: {e}", message.trim_end());
    }
}

/// The socket connected to the address last sent to: a send on it skips
/// the lookup of the socket's path, the dearest part of a send.
static CONNECTED: Mutex<Option<(OsString, UnixDatagram)>> = Mutex::new(None);

/// One datagram to `path` (or the abstract socket `@name`), never waiting.
fn send_now(path: &OsStr, message: &[u8]) -> io::Result<()> {
    let mut connected = CONNECTED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((to, socket)) = connected.as_ref()
        && to == path
    {
        match socket.send(message) {
            Ok(sent) => return whole(sent, message),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            // The receiver is gone (a service manager that re-executed
            // itself may bind the path anew): connect again.
            Err(_) => {}
        }
    }
    *connected = None;
    let address = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.connect_addr(&address)?;
    let sent = socket.send(message);
    *connected = Some((path.to_owned(), socket));
    whole(sent?, message)
}

fn whole(sent: usize, message: &[u8]) -> io::Result<()> {
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "incomplete write"))
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// STATUS= is one line of the datagram: a newline would end it early.
fn one_line(text: &str) -> String {
    text.trim_end().replace('\n', "; ")
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by systemd >= 253 for
/// reload tracking, ignored by older ones).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading policy"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd expects: `WATCHDOG_USEC`, when
/// `WATCHDOG_PID` is unset or names this process (sd_watchdog_enabled(3)).
/// Zero means no watchdog, as for sd_watchdog_enabled().
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;

    #[test]
    fn a_full_receive_queue_drops_the_message_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let started = Instant::now();
        let mut errors = 0;
        for _ in 0..2000 {
            if super::send_now(path.as_os_str(), b"WATCHDOG=1\n").is_err() {
                errors += 1;
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            errors > 0,
            "2000 unread datagrams should overflow the queue"
        );
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn a_receiver_bound_anew_at_the_path_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let first = UnixDatagram::bind(&path).unwrap();
        super::send_now(path.as_os_str(), b"STATUS=one\n").unwrap();
        let mut buf = [0u8; 64];
        let n = first.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=one\n");
        // The service manager re-executed: its socket closed, bound anew.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = UnixDatagram::bind(&path).unwrap();
        super::send_now(path.as_os_str(), b"STATUS=two\n").unwrap();
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=two\n");
    }

    #[test]
    fn status_text_stays_on_one_line() {
        assert_eq!(
            super::one_line("policy rejected:\na:1:2: x\nb:3:4: y\n"),
            "policy rejected:; a:1:2: x; b:3:4: y"
        );
    }
}
