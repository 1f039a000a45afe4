//! What the watch over the other network namespaces writes to the journal:
//! a namespace's alert, with its time to exhaustion, the forecast that
//! confirmed it before the hold and where and how to set its range (the
//! advice, judge/netns/advice.rs); its exhaustion entry; and the end of an
//! alert whose namespace is gone.

use crate::judge::assess::Assessment;
use crate::judge::exhausted;
use crate::judge::level::Level;
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::publish::events::{self, Entry, Kind};

/// The journal entry for a change of a namespace's confirmed level: the
/// same assessment portd's own alerts render, in that namespace.
pub(super) fn alert(ns: &Namespace, usage: &Usage, a: &Assessment, advice: Option<&str>) {
    if let Some(entry) = level_entry(ns, usage, a, advice) {
        entry.emit();
    }
}

/// The entry [`alert`] writes: the namespace's level entry, with the time
/// to exhaustion (`PORTD_TIME_TO_EXHAUSTION` and the text), the forecast
/// that confirmed it before the hold, and a load its range cannot hold.
pub(super) fn level_entry(
    ns: &Namespace,
    usage: &Usage,
    a: &Assessment,
    advice: Option<&str>,
) -> Option<Entry> {
    let d = &a.decision;
    let mut entry = Entry::namespace_level(ns, usage, d, advice)?;
    if entry.kind == Kind::UsageRecovered {
        return Some(entry);
    }
    if let (Some(f), Some(_)) = (&d.urgent, d.transition) {
        entry.message.push_str(&format!(
            "; confirmed before the hold: {}",
            events::gains(f, " and")
        ));
    }
    if let Some(t) = a.time_to_exhaustion {
        entry
            .message
            .push_str(&format!("; forecast: runs out in {t:.0}s"));
        entry.fields.time_to_exhaustion = Some(t.ceil() as u64);
    }
    if let Some(u) = &d.unfit {
        let (text, remedy) = events::unfit_text(u, &a.remedies);
        entry.message.push_str(&text);
        entry.fields.remedy = remedy;
    }
    Some(entry)
}

/// The exhaustion entry of a namespace (judge/exhausted.rs): portd's own,
/// naming the namespace.
pub(super) fn exhaustion(ns: &Namespace, usage: &Usage, event: &exhausted::Event) {
    let mut entry = Entry::exhaustion(usage, event);
    if let Some((what, rest)) = entry.message.split_once(": ") {
        entry.message = format!(
            "{what} in {} (net:[{}], enter: {}): {rest}",
            ns.label, ns.inode, ns.enter
        );
    }
    entry.fields = std::mem::take(&mut entry.fields).in_namespace(ns);
    entry.emit();
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
