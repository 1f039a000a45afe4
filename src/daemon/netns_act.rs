//! Widening inside other network namespaces as the daemon runs it
//! (`[namespaces]`, mode `auto`): the watch (netns.rs) hands over each
//! namespace whose census confirmed an alert with a plan and that the
//! policy selects; after the watch's poll the one writer (act/netns.rs)
//! writes it from inside the namespace, the state is saved, and every
//! change, yield and failure goes to the journal with the namespace's name.

use std::time::SystemTime;

use tokio::task::JoinError;

use super::Daemon;
use super::netns::{Candidate, Output};
use crate::act::netns::{self, Widening};
use crate::observe::netns::Namespace;
use crate::publish::events::{Entry, Kind, note};

/// An entry about `ns`: its name before the message, its fields.
fn in_namespace(mut entry: Entry, ns: &Namespace) -> Entry {
    entry.message = format!("in {} (net:[{}]): {}", ns.label, ns.inode, entry.message);
    entry.fields = entry.fields.in_namespace(ns);
    entry
}

impl Daemon {
    /// Widens the namespaces the watch's last poll handed over; nothing
    /// while portd only advises (`--dry-run`, an unreadable state).
    /// The poll of the other namespaces ended (netns.rs): their alerts,
    /// then the widenings it handed over, then what is published.
    pub(super) fn netns_ended(&mut self, out: Result<Output, JoinError>) {
        let now = self.clock.now();
        let changed = self.netns.ended(out, &self.policy, now, &mut self.witness);
        self.widen_namespaces();
        if changed {
            let authority = self.authority();
            self.report_with(&authority, |r, p| r.publish(p));
        }
    }

    fn widen_namespaces(&mut self) {
        let candidates = std::mem::take(&mut self.netns.widen);
        if candidates.is_empty() || self.dry_run || self.state_unreadable.is_some() {
            return;
        }
        let now = self.clock.now();
        for c in candidates {
            self.widen_namespace(&c, now);
        }
    }

    fn widen_namespace(&mut self, c: &Candidate, now: SystemTime) {
        let h = &c.usage.headline;
        let reason = format!("{} at {} ({}/{})", h.cause, h.usage, h.used, h.capacity);
        let result = netns::widen(
            &self.host,
            &mut self.state,
            &c.ns,
            &c.plan,
            &self.policy,
            now,
            &reason,
        );
        let entry = match result {
            Ok(Widening::Widened) => Entry::widened(&c.usage, &c.plan, &reason),
            Ok(Widening::Yielded(why)) => {
                Entry::external_change(&why, Some(c.plan.from), c.usage.settings.port_range)
            }
            Ok(Widening::Held(why)) => {
                tracing::debug!("not widening {} now: {why}", c.ns.label);
                return;
            }
            Err(e) => Entry::write_failed(&c.usage, &c.plan, &e.to_string()),
        };
        in_namespace(entry, &c.ns).emit();
        if let Err(e) = self.state.save(&self.host) {
            let text = format!(
                "cannot save the state after a change in {}: {e}",
                c.ns.label
            );
            note(Kind::DaemonFailed, &text);
        }
    }
}
