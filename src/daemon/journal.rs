//! The daemon's journal entries that keep no reporting state (exhaustion, a
//! policy reloaded or rejected: publish/events.rs builds them; the state
//! file's notes at start), and the "report once" rule that keeps a
//! condition from being logged on every poll, shared by the poll and the
//! watch over the other namespaces.

use std::path::Path;

use crate::judge::authority::Authority;
use crate::judge::exhausted;
use crate::observe::usage::Usage;
use crate::policy::file::PolicyError;
use crate::publish::events::{Entry, Kind, note};

/// A condition reported once per distinct text, not once per poll.
#[derive(Debug, Default)]
pub(super) struct Once(Option<String>);

impl Once {
    /// True when `text` differs from what was reported last (then it is
    /// remembered as reported).
    pub fn is_new(&mut self, text: &str) -> bool {
        if self.0.as_deref() == Some(text) {
            return false;
        }
        self.0 = Some(text.to_string());
        true
    }

    /// The condition is over; true when one had been reported (so that its
    /// end can be reported too).
    pub fn clear(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// Exhaustion (exhausted.rs): one entry for every exhausted target.
pub(super) fn exhaustion(usage: &Usage, event: &exhausted::Event) {
    Entry::exhaustion(usage, event).emit();
}

pub(super) fn reloaded(config: &Path, authority: &Authority, yield_cleared: bool) {
    Entry::policy_reloaded(config, authority, yield_cleared).emit();
}

pub(super) fn rejected(config: &Path, error: &PolicyError) {
    Entry::policy_rejected(config, error).emit();
}

/// The state file's times were up to `ahead` past the clock: they count as now.
pub(super) fn state_ahead(path: &Path, ahead: std::time::Duration) {
    let ahead = humantime::format_duration(std::time::Duration::from_secs(ahead.as_secs()));
    note(
        Kind::Degraded,
        &format!(
            "{}: times up to {ahead} ahead of the clock (it was ahead when they were written, or was set back since); they count as now",
            path.display()
        ),
    );
}

/// The state file cannot be read (`reason`): portd writes nothing.
pub(super) fn state_unreadable(reason: &str) {
    note(
        Kind::DaemonFailed,
        &format!(
            "{reason}; portd will only advise (write nothing) until the state file is fixed or moved aside"
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_reported_once_per_distinct_text() {
        let mut once = Once::default();
        assert!(once.is_new("cooldown"));
        assert!(!once.is_new("cooldown"));
        assert!(once.is_new("write failed: EPERM"));
        assert!(once.is_new("cooldown"));
    }

    #[test]
    fn clearing_says_whether_something_had_been_reported() {
        let mut once = Once::default();
        assert!(!once.clear());
        once.is_new("cannot write metrics");
        assert!(once.clear());
        assert!(!once.clear());
        assert!(
            once.is_new("cannot write metrics"),
            "reported again after it cleared"
        );
    }
}
