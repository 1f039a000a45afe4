//! One poll of the other namespaces, on a blocking thread: discovery, the
//! counters of every namespace, the settings the machine wants read, and
//! the censuses it orders (judge/netns/ decides; this file reads).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::events::Gone;
use super::refresh::refresh;
use crate::base::host::Host;
use crate::judge::netns::{self, Known, NetnsReading, Read, SettingsRead};
use crate::observe::netns::census::Files;
use crate::observe::netns::scope::{Scope, scope};
use crate::observe::netns::{self as observe, Namespace};
use crate::observe::usage::{Usage, UsageOptions};
use crate::policy::Policy;

/// What one poll's task hands back.
pub(in super::super) struct Output {
    pub(super) known: Known,
    /// The files kept open, of the namespaces still known.
    pub(super) files: Kept,
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

/// The files kept open per namespace (observe/netns/census.rs, [`Files`]),
/// by inode, and for how many namespaces at most.
pub(super) struct Kept {
    pub(super) files: HashMap<u64, Files>,
    pub(super) most: usize,
}

/// One poll of the other namespaces, on a blocking thread; `sweep`: read
/// the settings of every namespace, not only of the new ones and those
/// whose counters changed.
pub(super) fn poll(
    host: &Host,
    mut known: Known,
    mut kept: Kept,
    policy: &Policy,
    sweep: bool,
) -> Output {
    let nothing = |note: Option<String>, most: usize| Output {
        known: Known::new(),
        files: Kept {
            files: HashMap::new(),
            most,
        },
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
        Scope::OwnOnly => return nothing(None, kept.most),
        Scope::Hidden(why) => return nothing(Some(why), kept.most),
    }
    let begun = Instant::now();
    let (unreadable, gone) = refresh(host, &mut known);
    // The files of a namespace gone (or another at its inode, entered
    // through another process) are closed.
    kept.files
        .retain(|inode, f| known.get(inode).is_some_and(|w| f.through() == w.ns.pid));
    let readings = read(host, &known, &mut kept, sweep);
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
        files: kept,
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
/// counted only if the pid is still in it, through the files kept open for
/// it), and the settings of those the machine wants read: from the files
/// kept open, else from one thread entering each in turn. A namespace
/// whose process exited since discovery has no reading.
fn read(host: &Host, known: &Known, kept: &mut Kept, sweep: bool) -> HashMap<u64, NetnsReading> {
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    // Files are kept for the first namespaces up to the budget; the rest
    // read through files opened for this poll alone.
    let mut spare: HashMap<u64, Files> = HashMap::new();
    for inode in &inodes {
        if !kept.files.contains_key(inode) {
            let to = if kept.files.len() < kept.most {
                &mut kept.files
            } else {
                &mut spare
            };
            to.insert(*inode, Files::default());
        }
    }
    let mut counters: HashMap<u64, Read> = HashMap::new();
    for inode in &inodes {
        let (Some(w), Some(files)) = (
            known.get(inode),
            kept.files.get_mut(inode).or(spare.get_mut(inode)),
        ) else {
            continue;
        };
        let unchanged = w.counted.filter(|_| w.quiet.is_some() && !w.witnessed);
        let read = observe::census::counters_kept(host, &w.ns, files, unchanged);
        // Files opened through a process that is in the namespace stay
        // its files: the check is needed once.
        if files.verified() || observe::census::still_there(host, &w.ns) {
            files.verify();
            counters.insert(*inode, read);
        }
    }
    let to_read: HashSet<u64> = inodes
        .iter()
        .copied()
        .filter(|i| {
            let (Some(w), Some(c)) = (known.get(i), counters.get(i)) else {
                return false;
            };
            w.wants_settings(c, sweep)
        })
        .collect();
    let mut settings = settings(
        host,
        known,
        kept.files.iter_mut().chain(spare.iter_mut()),
        &to_read,
    );
    counters
        .into_iter()
        .map(|(inode, counters)| {
            let settings = settings.remove(&inode).unwrap_or(SettingsRead::Kept);
            (inode, NetnsReading { counters, settings })
        })
        .collect()
}

/// The settings of the namespaces `to_read`, through their files.
fn settings<'a>(
    host: &Host,
    known: &Known,
    files: impl Iterator<Item = (&'a u64, &'a mut Files)>,
    to_read: &HashSet<u64>,
) -> HashMap<u64, SettingsRead> {
    let mut list: Vec<&Namespace> = Vec::new();
    let mut of: Vec<&mut Files> = Vec::new();
    for (inode, f) in files {
        if let (true, Some(w)) = (to_read.contains(inode), known.get(inode)) {
            list.push(&w.ns);
            of.push(f);
        }
    }
    // None to read (the usual idle poll): nothing is entered.
    if list.is_empty() {
        return HashMap::new();
    }
    let each = observe::census::settings_kept(host, &list, &mut of);
    list.iter()
        .map(|ns| ns.inode)
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
        .collect()
}
