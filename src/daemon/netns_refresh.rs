//! Discovery for the watch over the other network namespaces: which
//! processes are in which namespace, what is worth reading to tell a reused
//! inode from the namespace it was, and the names of the new ones; the
//! machine (judge/netns/, `refresh`) keeps, follows and ends them.

use crate::base::host::Host;
use crate::judge::netns::{self, Known, Sighting};
use crate::observe::netns::{self as observe, discovery};

use super::events::Gone;

/// Discovery, fed to the machine. Returns the processes that were
/// unreadable, and the namespaces gone with a raised alert.
pub(super) fn refresh(host: &Host, known: &mut Known) -> (u32, Vec<Gone>) {
    let now = discovery::uptime(host);
    let found = discovery::discover(host);
    let sightings: Vec<Sighting<'_>> = found
        .namespaces
        .iter()
        .filter(|f| !f.own)
        .map(|f| {
            // Read only for a namespace found through another process
            // than the one portd enters it through.
            let left = known
                .get(&f.inode)
                .is_some_and(|w| w.moved(f) && !observe::census::still_there(host, &w.ns));
            let started = if left {
                f.pid.and_then(|pid| discovery::started(host, pid))
            } else {
                None
            };
            Sighting {
                found: f,
                left,
                started,
            }
        })
        .collect();
    let ended = netns::refresh(known, &sightings, now, |f| observe::describe(host, f));
    let gone = ended
        .into_iter()
        .map(|w| Gone {
            level: w.alert.level,
            usage: w.last.map(|l| l.usage),
            ns: w.ns,
        })
        .collect();
    (found.unreadable, gone)
}
