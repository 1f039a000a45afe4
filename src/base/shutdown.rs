//! SIGTERM and SIGINT as a flag that code running on the event loop can
//! read. The loop sees these signals through tokio, but only between two
//! events; the writes of a change run on the loop, one after another, so
//! they read this flag between steps and stop there (docs/DESIGN.md: SIGTERM is
//! answered within two seconds).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::SignalKind;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Sets the flag on SIGTERM and SIGINT, beside tokio's own handlers (both
/// go through the same signal-hook registry, which keeps every action).
pub fn watch() -> std::io::Result<()> {
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        // SAFETY: the action only stores to an atomic, which is
        // async-signal-safe; it allocates, locks and blocks nothing.
        unsafe {
            signal_hook_registry::register(kind.as_raw_value(), || {
                REQUESTED.store(true, Ordering::SeqCst);
            })
        }?;
    }
    Ok(())
}

/// True once SIGTERM or SIGINT arrived: start no further write.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
