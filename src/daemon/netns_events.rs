//! What the watch over the other network namespaces writes to the journal:
//! a namespace's alert, with where and how to set its range (the advice,
//! judge/netns/advice.rs), and the end of an alert whose namespace is gone.

use crate::judge::level::Level;
use crate::judge::planner::Decision;
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::publish::events::{self, Fields, Kind};

use super::super::journal::{level_event, usage_fields};

/// `base` with the fields that name the namespace.
pub(super) fn in_namespace(ns: &Namespace, base: Fields) -> Fields {
    Fields {
        netns: Some(format!("net:[{}]", ns.inode)),
        container: ns.identity.container(),
        pod: ns
            .identity
            .pod
            .clone()
            .or_else(|| ns.identity.pod_uid.clone()),
        ..base
    }
}

/// The journal entry for a change of a namespace's confirmed level.
pub(super) fn alert(ns: &Namespace, usage: &Usage, d: &Decision, advice: Option<&str>) {
    let Some((kind, what, reminder)) = level_event(d) else {
        return;
    };
    let advice = advice.map(|a| format!("; {a}")).unwrap_or_default();
    events::emit(
        kind,
        &format!(
            "{what} in {} (net:[{}], enter: {}): {} of ephemeral ports in use ({}/{}), worst: {}{advice}",
            ns.label,
            ns.inode,
            ns.enter,
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity,
            usage.headline.cause
        ),
        &Fields {
            reminder,
            ..in_namespace(ns, usage_fields(usage))
        },
    );
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
    let ns = &g.ns;
    let level = g.level.label().to_ascii_lowercase();
    let last = g
        .usage
        .as_ref()
        .map(|u| {
            format!(
                "; last census {} ({}/{}), worst: {}",
                u.headline.usage, u.headline.used, u.headline.capacity, u.headline.cause
            )
        })
        .unwrap_or_default();
    let base = g.usage.as_ref().map(usage_fields).unwrap_or_default();
    events::emit(
        Kind::NetnsGone,
        &format!(
            "ephemeral port alert ended in {} (net:[{}]): the namespace is gone; it was {level}{last}",
            ns.label, ns.inode
        ),
        &Fields {
            reason: Some(format!(
                "the namespace is gone while {level}: no process or /run/netns name holds it"
            )),
            ..in_namespace(ns, base)
        },
    );
}
