//! One poll of the other namespaces, on a blocking thread: discovery, the
//! counters of every namespace, the settings of those that need reading,
//! the fast path's step per namespace, and the censuses the poll takes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::budget::{CENSUS_SHARE, Spent};
use super::{
    Censused, Known, Output, Read, Scope, Step, Watched, one_more, order, rank, refresh, scope,
    step,
};
use crate::base::host::Host;
use crate::judge::fastpath::{self, Baseline, Due};
use crate::observe::census::KernelSettings;
use crate::observe::netns::{self, Namespace};
use crate::observe::usage::UsageOptions;
use crate::policy::Policy;

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
    let measured = measure(host, &mut known, policy, sweep);
    let options = UsageOptions {
        tcp_pool_in_headline: policy.tcp_pool_alerts,
    };
    let mut censused = Vec::new();
    let mut spent = Duration::ZERO;
    let mut urgent = Duration::ZERO;
    let mut left = false;
    for (inode, why) in order(measured.due) {
        if !one_more(why, censused.len(), spent, sweep) {
            left = rank(why) == 0;
            break;
        }
        let Some(w) = known.get(&inode) else {
            continue;
        };
        let started = Instant::now();
        let result = netns::census::take(host, &w.ns, options);
        let took = started.elapsed();
        spent += took;
        if rank(why) == 0 {
            urgent += took;
        }
        if !netns::census::still_there(host, &w.ns) {
            // Its process exited since discovery or during the census
            // (which then saw the sockets it closed on its way out): gone,
            // neither failed nor recovered. The next discovery closes its
            // alert, or finds it through another process.
            continue;
        }
        censused.push(Censused {
            inode,
            started,
            took,
            active_opens: measured.opens.get(&inode).copied().flatten(),
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

/// What the settings and counters of every namespace showed.
#[derive(Default)]
struct Measured {
    /// Namespaces that need a census: inode, why, age of the last one.
    due: Vec<(u64, Due, Option<Duration>)>,
    /// `Tcp: ActiveOpens` read before any census, by inode.
    opens: HashMap<u64, Option<u64>>,
    /// Namespaces setns refused (EPERM).
    refused: usize,
}

/// The settings read on a poll, by inode.
type ReadSettings = HashMap<u64, Result<KernelSettings, String>>;

/// Counters of every namespace; settings (one thread entering each in
/// turn) of those never read, of those whose counters changed since their
/// settings were read (a namespace that sets its range as it starts is
/// judged by that range), or of all on a `sweep`; and the rule for each. A
/// namespace whose process exited since discovery is skipped without a
/// word: the next discovery tells whether it is gone.
fn measure(host: &Host, known: &mut Known, policy: &Policy, sweep: bool) -> Measured {
    let mut m = Measured::default();
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    let (counters, mut read) = read(host, known, &inodes, sweep);
    for inode in &inodes {
        let (Some(w), Some(&read_now)) = (known.get_mut(inode), counters.get(inode)) else {
            continue;
        };
        let counted = std::mem::replace(&mut w.counted, read_now);
        match read.remove(inode) {
            Some(Ok(s)) => {
                w.settings = Some(s);
                w.read_with = read_now;
            }
            // Proven quiet by the same settings and counters as on the
            // last poll: still quiet, nothing to work out again.
            None if w.quiet.is_some() && counted == read_now => continue,
            Some(Err(_)) if !netns::census::still_there(host, &w.ns) => continue,
            Some(Err(e)) => {
                if e.contains("EPERM") || e.contains("Operation not permitted") {
                    m.refused += 1;
                }
                // What could not be read is not shown as it was.
                w.quiet = None;
                w.last = None;
                w.settings = None;
                continue;
            }
            None => {}
        }
        let Some(settings) = &w.settings else {
            continue;
        };
        let (totals, active_opens) = match read_now {
            Some((t, o)) => (Some(t), o),
            None => (None, None),
        };
        let counters = fastpath::Counters {
            settings,
            totals,
            active_opens,
            pace: w.pace.update(Instant::now(), active_opens),
        };
        let baseline = w
            .last
            .as_ref()
            .map(|l| Baseline::of(&l.usage, l.active_opens, l.started.elapsed()));
        match step(baseline.as_ref(), &counters, policy, &w.alert) {
            Step::Census(why) if !waits(w, why) => {
                let age = w.last.as_ref().map(|l| l.started.elapsed());
                m.due.push((*inode, why, age));
            }
            Step::Census(_) | Step::Skip => {}
            Step::Quiet(q) => {
                w.quiet = Some(q);
                w.last = None;
            }
        }
        m.opens.insert(*inode, active_opens);
    }
    m
}

/// As in portd's own namespace, a census the counters only suggest waits
/// for its share of a core: a census of a few hundred sockets never does.
fn waits(w: &Watched, why: Due) -> bool {
    why.may_wait()
        && w.last.as_ref().is_some_and(|l| {
            let spent = Spent {
                started: l.started,
                took: l.took,
            };
            spent.wait(Instant::now(), CENSUS_SHARE).is_some()
        })
}

/// The counters of each of `inodes` still there, and the settings of
/// those that are read on this poll ([`measure`]).
fn read(
    host: &Host,
    known: &Known,
    inodes: &[u64],
    sweep: bool,
) -> (HashMap<u64, Read>, ReadSettings) {
    let mut counters: HashMap<u64, Read> = HashMap::new();
    for inode in inodes {
        let Some(w) = known.get(inode) else {
            continue;
        };
        let read = netns::census::counters(host, &w.ns);
        // Read through its pid: counted only if the pid is still in it.
        if netns::census::still_there(host, &w.ns) {
            counters.insert(*inode, read);
        }
    }
    let to_read: Vec<u64> = inodes
        .iter()
        .copied()
        .filter(|i| {
            known.get(i).is_some_and(|w| {
                counters.contains_key(i)
                    && (sweep || w.settings.is_none() || w.read_with != counters[i])
            })
        })
        .collect();
    let list: Vec<&Namespace> = to_read
        .iter()
        .filter_map(|i| known.get(i))
        .map(|w| &w.ns)
        .collect();
    let read: ReadSettings = to_read
        .iter()
        .copied()
        .zip(netns::census::settings_each(host, &list))
        .collect();
    (counters, read)
}
