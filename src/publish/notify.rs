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
//!
//! STATUS= is sent when its text changes, not on every poll: the service
//! manager keeps the last text for `systemctl status`, and each datagram
//! wakes it (and cost an idle poll about a tenth of its CPU,
//! docs/benchmarks.md, "Idle poll cost"). Liveness is the watchdog's, fed
//! on its own timer.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `states` to the service manager, and with them `status`
/// (already one line) as STATUS=; true when the datagram was sent.
fn send(states: &[NotifyState<'_>], status: Option<&str>) -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|path| send_to(&path, states, status))
}

fn send_to(path: &OsStr, states: &[NotifyState<'_>], status: Option<&str>) -> bool {
    let mut message = String::new();
    for state in states
        .iter()
        .chain(status.map(NotifyState::Status).as_ref())
    {
        let _ = writeln!(message, "{state}");
    }
    match send_now(path, message.as_bytes()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("sd_notify {:?} failed: {e}", message.trim_end());
            false
        }
    }
}

/// The STATUS= text the service manager has (the last one sent), and
/// where it went: a status equal to it is not sent again. A message
/// dropped (a full queue) leaves it as it was, so the next poll's status
/// goes out.
static STATUS_SENT: Mutex<Option<(OsString, String)>> = Mutex::new(None);

/// Sends `states` with `status` (made one line), and remembers the status
/// once sent.
fn send_with_status(states: &[NotifyState<'_>], status: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let line = one_line(status);
    if send_to(&path, states, Some(&line)) {
        *STATUS_SENT.lock().unwrap_or_else(PoisonError::into_inner) = Some((path, line));
    }
}

/// STATUS= to `path`, unless it is the status last sent there.
fn status_to(path: &OsStr, status: &str) {
    let line = one_line(status);
    let mut sent = STATUS_SENT.lock().unwrap_or_else(PoisonError::into_inner);
    if sent
        .as_ref()
        .is_some_and(|(to, said)| to == path && *said == line)
    {
        return;
    }
    if send_to(path, &[], Some(&line)) {
        *sent = Some((path.to_owned(), line));
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
    send_with_status(&[NotifyState::Ready], status);
}

/// STATUS=, when it differs from the status last sent.
pub fn status(status: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        status_to(&path, status);
    }
}

/// STATUS= is one line of the datagram: a newline would end it early.
fn one_line(text: &str) -> String {
    text.trim_end().replace('\n', "; ")
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog], None);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by systemd >= 253 for
/// reload tracking, ignored by older ones).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send_with_status(&[NotifyState::Reloading, now], "reloading policy"),
        Err(_) => {
            send(&[NotifyState::Reloading], None);
        }
    }
}

pub fn stopping() {
    send_with_status(&[NotifyState::Stopping], "stopping");
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
    fn a_status_is_sent_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        for line in ["usage 1%", "usage 1%", "usage 2%", "usage 2%", "usage 1%"] {
            super::status_to(path.as_os_str(), line);
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "STATUS=usage 1%\n",
                "STATUS=usage 2%\n",
                "STATUS=usage 1%\n"
            ]
        );
    }

    #[test]
    fn status_text_stays_on_one_line() {
        assert_eq!(
            super::one_line("policy rejected:\na:1:2: x\nb:3:4: y\n"),
            "policy rejected:; a:1:2: x; b:3:4: y"
        );
    }
}
