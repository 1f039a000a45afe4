//! What the watch over the other network namespaces writes to the journal:
//! a namespace's alert, with where and how to set its range (the advice,
//! judge/netns/advice.rs), and the end of an alert whose namespace is gone.

use crate::judge::level::Level;
use crate::judge::planner::Decision;
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::publish::events::Entry;

/// The journal entry for a change of a namespace's confirmed level.
pub(super) fn alert(ns: &Namespace, usage: &Usage, d: &Decision, advice: Option<&str>) {
    if let Some(entry) = Entry::namespace_level(ns, usage, d, advice) {
        entry.emit();
    }
}

/// A namespace that had a raised alert and is gone: its process exited (or
/// its name was deleted) and discovery no longer finds it.
pub(in super::super) struct Gone {
    pub ns: Namespace,
    pub level: Level,
    /// Its last census, when it had one.
    pub usage: Option<Usage>,
}

/// The journal entry that closes the alert of a namespace that is gone: no
/// recovery follows, and its reminders stop.
pub(super) fn gone(g: &Gone) {
    Entry::namespace_gone(&g.ns, g.level, g.usage.as_ref()).emit();
}
