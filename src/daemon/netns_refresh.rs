//! Where the watch over the other network namespaces stands: whether it
//! may watch them from where portd runs, and which namespaces discovery
//! finds at each poll: new ones named, those gone taken out with their
//! alert ended, and a reused inode told from the namespace it was.

use std::collections::HashSet;

use super::{Known, Watched};
use crate::base::host::Host;
use crate::judge::level::Level;
use crate::observe::netns::{self, discovery};

use super::events::Gone;

/// Whether portd watches other namespaces from where it runs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// In the host's namespace (pid 1's), on the real root.
    Others,
    /// A fixture root, or portd runs inside a container or a test's
    /// namespace: its own only, silently.
    OwnOnly,
    /// The host's namespace cannot be told: its own only, and why.
    Hidden(String),
}

pub(super) fn scope(host: &Host) -> Scope {
    if host.root() != std::path::Path::new("/") {
        return Scope::OwnOnly;
    }
    let pid1 = match std::fs::read_link(host.proc("1/ns/net")) {
        Ok(link) => link.to_str().and_then(discovery::parse_link),
        Err(e) => {
            return Scope::Hidden(format!(
                "other network namespaces are not watched: /proc/1/ns/net: {e} (reading other processes' namespaces needs CAP_SYS_PTRACE outside a private user namespace: /usr/share/doc/portd/examples/containers.conf grants what watching them needs)"
            ));
        }
    };
    if pid1.is_some() && pid1 == discovery::own_inode(host) {
        Scope::Others
    } else {
        Scope::OwnOnly
    }
}

/// Discovery: a namespace found for the first time is named (once), the
/// others follow their pid, process count and names; one that is gone
/// takes its state with it, and if its alert was raised, the alert ends
/// with it. Returns the processes that were unreadable, and those gone
/// with a raised alert.
pub(super) fn refresh(host: &Host, known: &mut Known) -> (u32, Vec<Gone>) {
    let now = discovery::uptime(host);
    let found = discovery::discover(host);
    let mut seen = HashSet::new();
    let mut ended = Vec::new();
    for f in found.namespaces.iter().filter(|f| !f.own) {
        seen.insert(f.inode);
        let w = match known.remove(&f.inode) {
            Some(w) if another_at(host, &w, f) => {
                ended.push(w);
                Watched::new(netns::describe(host, f))
            }
            Some(mut w) => {
                w.ns.pid = f.pid;
                w.ns.processes = f.processes;
                w.ns.names.clone_from(&f.names);
                w
            }
            None => Watched::new(netns::describe(host, f)),
        };
        known.insert(f.inode, Watched { seen: now, ..w });
    }
    let vanished: Vec<u64> = known
        .keys()
        .filter(|inode| !seen.contains(inode))
        .copied()
        .collect();
    ended.extend(
        vanished
            .into_iter()
            .filter_map(|inode| known.remove(&inode)),
    );
    let mut gone: Vec<Gone> = ended
        .into_iter()
        .filter(|w| w.alert.level > Level::Ok)
        .map(|w| Gone {
            level: w.alert.level,
            usage: w.last.map(|l| l.usage),
            ns: w.ns,
        })
        .collect();
    gone.sort_by_key(|g| g.ns.inode);
    (found.unreadable, gone)
}

/// Whether discovery found another namespace at the inode of `w`: the
/// kernel hands a freed namespace's inode to the next one created, so a
/// busy node reuses them within a poll. It is another when the process
/// portd entered `w` through is no longer in it, and the lowest process
/// in it now started after the last discovery that saw `w` (every process
/// of a namespace that lived on was there then). A namespace whose only
/// process forked and exited within one poll is taken for a new one: its
/// alert is closed and raised again by its next census.
fn another_at(host: &Host, w: &Watched, f: &discovery::Found) -> bool {
    if w.ns.pid == f.pid || netns::census::still_there(host, &w.ns) {
        return false;
    }
    later(f.pid.and_then(|pid| discovery::started(host, pid)), w.seen)
}

/// Started after it was last seen; `false` when either is unknown.
pub(super) fn later(started: Option<f64>, seen: Option<f64>) -> bool {
    matches!((started, seen), (Some(started), Some(seen)) if started > seen)
}
