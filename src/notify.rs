//! The service manager protocol (sd_notify), wrapped so the rest of portd
//! never formats notify strings. Every call is a no-op without
//! `NOTIFY_SOCKET`; a failed send is logged at debug level and ignored.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
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

/// The watchdog interval systemd expects (`WATCHDOG_USEC` for this pid).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
