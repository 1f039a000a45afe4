//! The daemon's watch over the other network namespaces (docs/DESIGN.md,
//! "Other network namespaces"): the actor around the pure machine
//! (judge/netns/), which says when to look, what to read and census,
//! and what each namespace's level and advice are. The actor does the
//! I/O: each poll the machine lets look (every poll while an alert is
//! raised or pending there, else within its share of a core, budget.rs;
//! spared while the last look found none and no process was created since,
//! for at most `UNCHANGED_FOR`),
//! off the event loop on the blocking pool (netns_poll.rs): discovery
//! (identity read once per namespace, kept by inode; netns_refresh.rs),
//! the O(1) counters of every namespace (`/proc/<pid>/net/sockstat`,
//! `snmp`), the settings the machine wants (one thread entering them in
//! turn), and the censuses it orders, each walking the kernel's global
//! socket hash. Back on the loop: the machine's alert rule per namespace,
//! alerts with the namespace's identity and advice (netns_events.rs), the
//! end of the alert of a namespace that is gone, the live view and the
//! metrics (netns_publish.rs).

use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinError, JoinHandle};

use super::journal::Once;
use super::witness::Running as Witness;
use crate::act::netns as act_netns;
use crate::base::host::Host;
use crate::base::kernel;
use crate::judge::level::Level;
use crate::judge::netns::{Heard, Known, Pacing, Watched};
use crate::judge::planner::{Action, Blocked, Decision, Plan};
use crate::observe::census::reader::{KeptOpen, ProcRead};
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::policy::Policy;
use crate::publish::events::{Kind, note as journal_note};
use crate::publish::live;

#[path = "netns_events.rs"]
mod events;
#[path = "netns_poll.rs"]
mod poll;
#[path = "netns_publish.rs"]
mod publish;
#[path = "netns_refresh.rs"]
mod refresh;

use events::alert;
pub(super) use poll::Output;
use poll::{Censused, Kept, poll};
use publish::publish;

/// What the live view and the metrics file show of the other namespaces.
#[derive(Default)]
pub(super) struct Published {
    pub namespaces: Vec<live::NamespaceView>,
    pub note: Option<String>,
    /// The rows of the `portd_netns_*` families; none before the first poll.
    pub metrics: Option<crate::publish::metrics::NetnsRows>,
}

/// The daemon's side of the watch.
#[derive(Default)]
pub(super) struct Watch {
    /// `None` while a poll's task holds it.
    known: Option<Known>,
    /// The files kept open per namespace; `None` while a poll's task holds
    /// them, or before the first.
    files: Option<Kept>,
    pub published: Published,
    /// What portd cannot see, reported once.
    note: Once,
    censuses: u64,
    /// Unreadable processes on the last poll.
    unreadable: u32,
    /// When to look and sweep (the machine).
    pacing: Pacing,
    /// Reads `/proc/loadavg` (the last pid handed out).
    loadavg: KeptOpen,
    /// The last pid handed out, as last read, and when it was read.
    last_pid: Option<u32>,
    pid_read_at: Option<Instant>,
    /// When the running look began, and the last pid handed out then if
    /// none was handed out since the poll before.
    began: Option<(Instant, Option<u32>)>,
    /// The last look found no other namespace, and nothing was left
    /// pending: when it began and the last pid handed out then.
    empty: Option<(Instant, u32)>,
    /// Selected namespaces to widen after this poll (netns_act.rs).
    pub widen: Vec<Candidate>,
}

/// While the last look found no other namespace and no process or thread
/// has been created since the poll before it, no namespace can have
/// appeared but through a process at least a poll old that entered a new
/// one itself (`unshare`, `setns` without a fork): looks are then spared
/// for up to this long. Any process created (a container, `ip netns add`,
/// `unshare` run from a shell: each forks, then enters) makes the next two
/// polls look, so one that enters a namespace just after its fork is seen.
const UNCHANGED_FOR: Duration = Duration::from_secs(60);

/// While looks are spared, the last pid is read at most this often (the
/// shipped poll interval): a process created is seen within it, and a
/// faster interval does not read `/proc/loadavg` on every poll of an idle
/// host.
const LAST_PID_EVERY: Duration = Duration::from_secs(2);

/// Descriptors each namespace's kept files take at most
/// (observe/netns/census.rs, `Files`: three counters, five settings).
const FILES_PER_NAMESPACE: u64 = 8;

/// For how many namespaces files are kept open: those within half the
/// open-file limit, which is raised to its hard limit first (systemd's soft
/// default, 1024, is kept for programs that use select(); portd uses none).
/// Beyond, a namespace's files are opened for each poll.
fn namespaces_kept_open() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        );
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20);
    usize::try_from(soft / 2 / FILES_PER_NAMESPACE).unwrap_or(usize::MAX)
}

/// A poll of the other namespaces on the blocking pool.
pub(super) struct InFlight {
    handle: JoinHandle<Output>,
}

/// Waits for the poll in `slot`; forever when there is none (a `select!` arm).
pub(super) async fn join(slot: &mut Option<InFlight>) -> Result<Output, JoinError> {
    match slot {
        Some(p) => (&mut p.handle).await,
        None => std::future::pending().await,
    }
}

impl Watch {
    /// Starts a poll of the other namespaces (none under a fixture root)
    /// when the machine lets it look (`Pacing::start`): at once when the
    /// witness saw a failure in one of them.
    pub fn start(
        &mut self,
        host: &Host,
        policy: &Policy,
        witness: &mut Witness,
    ) -> Option<InFlight> {
        if host.root() != std::path::Path::new("/") {
            return None;
        }
        if let Some(known) = &mut self.known {
            for (inode, failures) in witness.take_others() {
                if let Some(w) = known.get_mut(&inode) {
                    w.witnessed(failures);
                    self.pacing.hurry();
                }
            }
        }
        let now = Instant::now();
        if let (Some((at, _)), Some(read)) = (self.empty, self.pid_read_at)
            && now.duration_since(at) < UNCHANGED_FOR
            && now.duration_since(read) < LAST_PID_EVERY
        {
            return None;
        }
        self.pid_read_at = Some(now);
        let last_pid = self
            .loadavg
            .read_text(&host.proc("loadavg"))
            .ok()
            .and_then(|t| kernel::loadavg_last_pid(&t));
        let previous = std::mem::replace(&mut self.last_pid, last_pid);
        if let (Some((at, pid)), Some(last)) = (self.empty, last_pid)
            && pid == last
            && now.duration_since(at) < UNCHANGED_FOR
        {
            return None;
        }
        let settled = last_pid.filter(|p| previous == Some(*p));
        let sweep = self.pacing.start(now)?;
        self.began = Some((now, settled));
        let known = self.known.take().unwrap_or_default();
        let files = self.files.take().unwrap_or_else(|| Kept {
            files: std::collections::HashMap::new(),
            most: namespaces_kept_open(),
        });
        let host = host.clone();
        let policy = policy.clone();
        Some(InFlight {
            handle: tokio::task::spawn_blocking(move || poll(&host, known, files, &policy, sweep)),
        })
    }

    /// The look that was running ended now.
    pub fn finished(&mut self) {
        self.pacing.finished();
    }

    /// A namespace's census ended: the machine's alert rule, the journal.
    fn censused(&mut self, w: &mut Watched, c: Censused, policy: &Policy, now: SystemTime) {
        let census = (c.started, c.took, c.active_opens);
        match w.censused(c.result, census, policy, now) {
            Heard::Measured {
                assessment,
                recovered,
            } => {
                self.censuses += 1;
                if recovered {
                    journal_note(
                        Kind::Restored,
                        &format!("the census of {} works again", w.ns.label),
                    );
                }
                if let Some(last) = &w.last {
                    if let Some(event) = &assessment.exhausted {
                        events::exhaustion(&w.ns, &last.usage, event);
                    }
                    alert(&w.ns, &last.usage, &assessment, w.advice.as_deref());
                    let decision = &assessment.decision;
                    let widen = candidate(policy, &w.ns, &last.usage, decision);
                    self.widen.extend(widen);
                }
            }
            Heard::Failed { new } => {
                if let (true, Some(e)) = (new, &w.error) {
                    journal_note(
                        Kind::Degraded,
                        &format!(
                            "census of {} (net:[{}]) failed, will retry: {e}",
                            w.ns.label, w.ns.inode
                        ),
                    );
                }
            }
        }
    }

    /// The poll ended: alert state, journal, what is published. True when
    /// the live view and the metrics should be written again.
    pub fn ended(
        &mut self,
        out: Result<Output, JoinError>,
        policy: &Policy,
        now: SystemTime,
        witness: &mut Witness,
    ) -> bool {
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The namespaces' state went with the task: found again
                // on the next poll, with no alert held.
                journal_note(
                    Kind::DaemonFailed,
                    &format!("the poll of the other network namespaces failed: {e}"),
                );
                self.pacing.ended(None);
                (self.began, self.empty) = (None, None);
                self.known = Some(Known::new());
                return false;
            }
        };
        let shown_before = !self.published.namespaces.is_empty() || self.published.note.is_some();
        for g in &out.gone {
            events::gone(g);
        }
        let mut known = out.known;
        self.files = Some(out.files);
        for c in out.censused {
            if let Some(w) = known.get_mut(&c.inode) {
                self.censused(w, c, policy, now);
            }
        }
        // The next poll looks whatever the budget while an alert is raised
        // or pending, or a census that cannot wait is left over.
        let urgent = out.left || known.values().any(Watched::unsettled);
        self.pacing.ended(Some((out.paced, urgent)));
        self.empty = match self.began.take() {
            Some((at, Some(pid))) if known.is_empty() && !urgent => Some((at, pid)),
            _ => None,
        };
        witness.follow(&known.keys().copied().collect());
        let note = self.note(out.note, out.unreadable, out.hidden);
        self.published = publish(&known, note, self.censuses);
        self.known = Some(known);
        shown_before || !self.published.namespaces.is_empty() || self.published.note.is_some()
    }

    /// What portd cannot see, logged once: the poll's `note`, else the
    /// processes unreadable on two polls in a row (a process that exits
    /// while discovery reads it can fail once).
    fn note(&mut self, note: Option<String>, unreadable: u32, hidden: bool) -> Option<String> {
        let persistent = unreadable.min(self.unreadable);
        self.unreadable = unreadable;
        let note = note.or_else(|| {
            (persistent > 0).then(|| {
                format!(
                    "{persistent} processes' network namespaces are not readable (CAP_SYS_PTRACE, or /proc without ProtectProc=invisible or hidepid: /usr/share/doc/portd/examples/containers.conf)"
                )
            })
        });
        match &note {
            Some(note) => {
                // Under the default unit that is by design: a notice. Lost
                // sight with the drop-in in place is a warning.
                if self.note.is_new(note) {
                    let kind = if hidden {
                        Kind::NamespacesHidden
                    } else {
                        Kind::NamespacesNotWatched
                    };
                    journal_note(kind, &format!("{note}; portd watches its own namespace"));
                }
            }
            None => {
                self.note.clear();
            }
        }
        note
    }
}

/// A selected namespace whose census asks for a wider range.
pub(super) struct Candidate {
    pub(super) ns: Namespace,
    pub(super) usage: Usage,
    pub(super) plan: Plan,
}

/// The candidate of a namespace's decision: the policy selects it in
/// `auto`, its confirmed level is warning or above, and the plan is held
/// only because the watch advises (not because it would leave fewer
/// usable ports, nor because the range is at its bounds).
pub(super) fn candidate(
    policy: &Policy,
    ns: &Namespace,
    usage: &Usage,
    decision: &Decision,
) -> Option<Candidate> {
    if ns.own || decision.alert.level < Level::Warning {
        return None;
    }
    policy.namespaces.widens(&act_netns::names_of(ns))?;
    match &decision.action {
        Action::Hold {
            plan: Some(plan),
            reason: Blocked::Advise,
        } => Some(Candidate {
            ns: ns.clone(),
            usage: usage.clone(),
            plan: plan.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
