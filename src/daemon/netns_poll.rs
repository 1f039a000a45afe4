//! One poll of the other namespaces, on a blocking thread: discovery, the
//! counters of every namespace, the settings the machine wants read, and
//! the censuses it orders (judge/netns/ decides; this file reads).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::events::Gone;
use super::refresh::refresh;
use crate::base::host::Host;
use crate::judge::netns::{self, Known, NetnsReading, Read, SettingsRead};
use crate::observe::netns::scope::{Scope, scope};
use crate::observe::netns::{self as observe, Namespace};
use crate::observe::usage::{Usage, UsageOptions};
use crate::policy::Policy;

/// What one poll's task hands back.
pub(in super::super) struct Output {
    pub(super) known: Known,
    pub(super) censused: Vec<Censused>,
    /// What portd could not see on this poll.
    pub(super) note: Option<String>,
    /// Processes whose namespace could not be read.
    pub(super) unreadable: u32,
    /// The host's namespace cannot be told at all (`Scope::Hidden`).
    pub(super) hidden: bool,
    /// Namespaces with a raised alert that are gone.
    pub(super) gone: Vec<Gone>,
    /// What the poll cost but the censuses that could not wait: the share
    /// of a core a sweep is paced to (budget.rs).
    pub(super) paced: Duration,
    /// A census that cannot wait was left for the next poll.
    pub(super) left: bool,
}

/// One census a poll took.
pub(super) struct Censused {
    pub(super) inode: u64,
    pub(super) started: Instant,
    pub(super) took: Duration,
    pub(super) active_opens: Option<u64>,
    pub(super) result: Result<Usage, String>,
}

/// One poll of the other namespaces, on a blocking thread; `sweep`: read
/// the settings of every namespace, not only of the new ones and those
/// whose counters changed.
pub(super) fn poll(host: &Host, mut known: Known, policy: &Policy, sweep: bool) -> Output {
    let nothing = |note: Option<String>| Output {
        known: Known::new(),
        censused: Vec::new(),
        hidden: note.is_some(),
        note,
        unreadable: 0,
        gone: Vec::new(),
        paced: Duration::ZERO,
        left: false,
    };
    match scope(host) {
        Scope::Others => {}
        Scope::OwnOnly => return nothing(None),
        Scope::Hidden(why) => return nothing(Some(why)),
    }
    let begun = Instant::now();
    let (unreadable, gone) = refresh(host, &mut known);
    let readings = read(host, &known, sweep);
    let measured = netns::measure(&mut known, readings, policy, Instant::now());
    let options = UsageOptions {
        tcp_pool_in_headline: policy.tcp_pool_alerts,
    };
    let mut censused = Vec::new();
    let mut spent = Duration::ZERO;
    let mut urgent = Duration::ZERO;
    let mut left = false;
    for due in netns::order(measured.due) {
        if !netns::one_more(due.why, censused.len(), spent, sweep) {
            left = netns::cannot_wait(due.why);
            break;
        }
        let Some(w) = known.get(&due.inode) else {
            continue;
        };
        let started = Instant::now();
        let result = observe::census::take(host, &w.ns, options);
        let took = started.elapsed();
        spent += took;
        if netns::cannot_wait(due.why) {
            urgent += took;
        }
        if !observe::census::still_there(host, &w.ns) {
            // Its process exited since discovery or during the census
            // (which then saw the sockets it closed on its way out): gone,
            // neither failed nor recovered. The next discovery closes its
            // alert, or finds it through another process.
            continue;
        }
        censused.push(Censused {
            inode: due.inode,
            started,
            took,
            active_opens: due.active_opens,
            result,
        });
    }
    let note = (measured.refused > 0).then(|| {
        format!(
            "cannot enter {} of {} other network namespaces (setns: EPERM; needs CAP_SYS_ADMIN and RestrictNamespaces= allowing net: /usr/share/doc/portd/examples/containers.conf); they are not measured",
            measured.refused,
            known.len()
        )
    });
    Output {
        known,
        censused,
        note,
        unreadable,
        hidden: false,
        gone,
        paced: begun.elapsed().saturating_sub(urgent),
        left,
    }
}

/// The counters of every namespace still there (read through its pid:
/// counted only if the pid is still in it), and the settings of those the
/// machine wants read, from one thread entering each in turn. A namespace
/// whose process exited since discovery has no reading.
fn read(host: &Host, known: &Known, sweep: bool) -> HashMap<u64, NetnsReading> {
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    let mut counters: HashMap<u64, Read> = HashMap::new();
    for inode in &inodes {
        let Some(w) = known.get(inode) else {
            continue;
        };
        let read = observe::census::counters(host, &w.ns);
        if observe::census::still_there(host, &w.ns) {
            counters.insert(*inode, read);
        }
    }
    let to_read: Vec<u64> = inodes
        .iter()
        .copied()
        .filter(|i| {
            let (Some(w), Some(c)) = (known.get(i), counters.get(i)) else {
                return false;
            };
            w.wants_settings(c, sweep)
        })
        .collect();
    let list: Vec<&Namespace> = to_read
        .iter()
        .filter_map(|i| known.get(i))
        .map(|w| &w.ns)
        .collect();
    // None to read (the usual idle poll): no thread to enter them from.
    let each = if list.is_empty() {
        Vec::new()
    } else {
        observe::census::settings_each(host, &list)
    };
    let mut settings: HashMap<u64, SettingsRead> = to_read
        .iter()
        .copied()
        .zip(each)
        .map(|(inode, read)| {
            let read = match read {
                Ok(s) => SettingsRead::Read(s),
                Err(_)
                    if !known
                        .get(&inode)
                        .is_some_and(|w| observe::census::still_there(host, &w.ns)) =>
                {
                    SettingsRead::Gone
                }
                Err(e) => SettingsRead::Failed {
                    refused: e.contains("EPERM") || e.contains("Operation not permitted"),
                },
            };
            (inode, read)
        })
        .collect();
    counters
        .into_iter()
        .map(|(inode, counters)| {
            let settings = settings.remove(&inode).unwrap_or(SettingsRead::Kept);
            (inode, NetnsReading { counters, settings })
        })
        .collect()
}
