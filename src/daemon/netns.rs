//! The daemon's watch over the other network namespaces (issue 15;
//! DESIGN.md, "Other network namespaces"). Each poll, off the event loop on
//! the blocking pool: discovery (identity read once per namespace, kept by
//! inode), each namespace's settings (one thread entering them in turn) and
//! O(1) counters (`/proc/<pid>/net/sockstat`, `snmp`), the fast path's rule
//! per namespace (fastpath.rs), and a census only of the namespaces whose
//! bound could reach the warning level (or whose last census is stale
//! while the counters cannot prove them quiet), at most
//! [`CENSUSES_PER_POLL`] a poll: each census walks the kernel's global
//! socket hash. Back on the loop: the planner's alert rule per namespace
//! (the same hold and hysteresis as portd's own), alerts with the
//! namespace's identity, advice only (nothing is written in another
//! namespace), the live view and the metrics.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinError, JoinHandle};

use super::budget::{NETNS_SHARE, Spent};
use super::fastpath::{self, Baseline, Due, Next, Pace};
use super::report::{Once, level_event, usage_fields};
use crate::authority::{Authority, Why};
use crate::census::KernelSettings;
use crate::census::sockstat::Totals;
use crate::events::{self, Fields};
use crate::host::Host;
use crate::level::Level;
use crate::live;
use crate::metrics;
use crate::netns::status::{Quiet, quiet};
use crate::netns::{self, Namespace, discovery};
use crate::planner::{self, Action, AlertState, Decision, History, Inputs, Observation};
use crate::policy::Policy;
use crate::usage::{Usage, UsageOptions};

/// At most this many other namespaces take a census in one poll.
pub(super) const CENSUSES_PER_POLL: usize = 2;

/// Namespaces in the metrics, worst first: the series stay bounded.
pub(super) const TOP_NAMESPACES: usize = 20;

/// The sysctl the advice is about.
const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";

/// The last census of a namespace.
struct Last {
    usage: Usage,
    active_opens: Option<u64>,
    started: Instant,
}

/// One watched namespace, kept by inode while it lives.
struct Watched {
    /// Named once, when first found; pid, process count and names follow
    /// discovery.
    ns: Namespace,
    alert: AlertState,
    last: Option<Last>,
    /// The bound of the last poll whose counters proved it quiet.
    quiet: Option<Quiet>,
    /// What to change, and where, while it is raised.
    advice: Option<String>,
    /// The last census error of this namespace, reported once.
    error: Once,
    /// Its `connect()` rate between polls.
    pace: Pace,
}

impl Watched {
    fn new(ns: Namespace) -> Self {
        Watched {
            ns,
            alert: AlertState::default(),
            last: None,
            quiet: None,
            advice: None,
            error: Once::default(),
            pace: Pace::default(),
        }
    }
}

type Known = HashMap<u64, Watched>;

/// What the live view and the metrics file show of the other namespaces.
#[derive(Default)]
pub(super) struct Published {
    pub namespaces: Vec<live::Namespace>,
    pub note: Option<String>,
    /// `portd_netns_*` families, appended to the metrics file.
    pub metrics: String,
}

/// The daemon's side of the watch.
#[derive(Default)]
pub(super) struct Watch {
    /// `None` while a poll's task holds it.
    known: Option<Known>,
    pub published: Published,
    /// What portd cannot see, reported once.
    note: Once,
    censuses: u64,
    /// Unreadable processes on the last poll.
    unreadable: u32,
    /// When the running look began; what the last one cost (budget.rs).
    running_since: Option<Instant>,
    spent: Option<Spent>,
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

/// Whether portd watches other namespaces from where it runs.
#[derive(Debug, PartialEq, Eq)]
enum Scope {
    /// In the host's namespace (pid 1's), on the real root.
    Others,
    /// A fixture root, or portd runs inside a container or a test's
    /// namespace: its own only, silently.
    OwnOnly,
    /// The host's namespace cannot be told: its own only, and why.
    Hidden(String),
}

fn scope(host: &Host) -> Scope {
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

/// What one poll's task hands back.
pub(super) struct Output {
    known: Known,
    censused: Vec<Censused>,
    /// What portd could not see on this poll.
    note: Option<String>,
    /// Processes whose namespace could not be read.
    unreadable: u32,
    /// The host's namespace cannot be told at all ([`Scope::Hidden`]).
    hidden: bool,
}

struct Censused {
    inode: u64,
    started: Instant,
    active_opens: Option<u64>,
    result: Result<Usage, String>,
}

/// Why a namespace takes a census on this poll, or what its counters show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Census(Due),
    /// The fast path's bound from the last census keeps it below warning.
    Skip,
    /// The counters alone prove it below warning (no census needed, and
    /// none is kept: its last one, if any, is dropped as stale).
    Quiet(Quiet),
}

/// The fast path's rule (fastpath.rs) for one namespace: with a census to
/// bound from, its bound; without one, or with a stale one, whether the
/// counters alone prove every destination below the warning level
/// (netns/status.rs). Raised or pending alerts always take a census.
fn step(
    last: Option<&Baseline<'_>>,
    counters: &fastpath::Counters<'_>,
    policy: &Policy,
    alert: &AlertState,
) -> Step {
    let settled = alert.level == Level::Ok && alert.pending.is_none();
    let proven = || {
        counters
            .totals
            .as_ref()
            .and_then(|t| quiet(counters.settings, t, &policy.thresholds))
    };
    match (last, settled) {
        (None, true) => proven().map_or(Step::Census(Due::FirstCensus), Step::Quiet),
        (None, false) => Step::Census(Due::AlertRaised),
        (Some(b), _) => match fastpath::next(Some(b), counters, policy, alert) {
            Next::Skip(_) => Step::Skip,
            Next::Census(due @ (Due::Stale | Due::SettingsChanged)) if settled => {
                proven().map_or(Step::Census(due), Step::Quiet)
            }
            Next::Census(due) => Step::Census(due),
        },
    }
}

/// Which due namespaces come first: raised alerts, then bounds at the
/// warning level, then changed settings or missing counters, then stale.
fn rank(due: Due) -> u8 {
    match due {
        Due::AlertRaised | Due::AlertPending => 0,
        Due::BoundAtWarning | Due::Growing | Due::FirstCensus => 1,
        Due::SettingsChanged | Due::NoCounters => 2,
        Due::Stale => 3,
    }
}

/// Picks at most `n` of `due` (inode, why, age of the last census; `None`:
/// never censused), most urgent and oldest first.
fn pick(mut due: Vec<(u64, Due, Option<Duration>)>, n: usize) -> Vec<u64> {
    due.sort_by_key(|&(inode, why, age)| {
        (
            rank(why),
            std::cmp::Reverse(age.unwrap_or(Duration::MAX)),
            inode,
        )
    });
    due.into_iter().take(n).map(|(inode, _, _)| inode).collect()
}

/// One poll of the other namespaces, on a blocking thread.
fn poll(host: &Host, mut known: Known, policy: &Policy) -> Output {
    let nothing = |note: Option<String>| Output {
        known: Known::new(),
        censused: Vec::new(),
        hidden: note.is_some(),
        note,
        unreadable: 0,
    };
    match scope(host) {
        Scope::Others => {}
        Scope::OwnOnly => return nothing(None),
        Scope::Hidden(why) => return nothing(Some(why)),
    }
    let unreadable = refresh(host, &mut known);
    let measured = measure(host, &mut known, policy);
    let options = UsageOptions {
        tcp_pool_in_headline: policy.tcp_pool_alerts,
    };
    let censused = pick(measured.due, CENSUSES_PER_POLL)
        .into_iter()
        .filter_map(|inode| {
            let w = known.get(&inode)?;
            let active_opens = measured.opens.get(&inode).copied().flatten();
            let started = Instant::now();
            Some(Censused {
                inode,
                started,
                active_opens,
                result: netns::census::take(host, &w.ns, options),
            })
        })
        .collect();
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
    }
}

/// Discovery: a namespace found for the first time is named (once), the
/// others follow their pid, process count and names; one that is gone
/// takes its state with it. Returns the processes that were unreadable.
fn refresh(host: &Host, known: &mut Known) -> u32 {
    let found = discovery::discover(host);
    let mut seen = HashSet::new();
    for f in found.namespaces.iter().filter(|f| !f.own) {
        seen.insert(f.inode);
        match known.get_mut(&f.inode) {
            Some(w) => {
                w.ns.pid = f.pid;
                w.ns.processes = f.processes;
                w.ns.names.clone_from(&f.names);
            }
            None => {
                known.insert(f.inode, Watched::new(netns::describe(host, f)));
            }
        }
    }
    known.retain(|inode, _| seen.contains(inode));
    found.unreadable
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

/// Settings (one thread entering each in turn) and counters of every
/// namespace, and the rule for each.
fn measure(host: &Host, known: &mut Known, policy: &Policy) -> Measured {
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    let list: Vec<&Namespace> = inodes
        .iter()
        .filter_map(|i| known.get(i))
        .map(|w| &w.ns)
        .collect();
    let settings = netns::census::settings_each(host, &list);
    let mut m = Measured::default();
    for (inode, settings) in inodes.iter().zip(settings) {
        let Some(w) = known.get_mut(inode) else {
            continue;
        };
        let settings: KernelSettings = match settings {
            Ok(s) => s,
            Err(e) => {
                if e.contains("EPERM") || e.contains("Operation not permitted") {
                    m.refused += 1;
                }
                // What could not be read is not shown as it was.
                w.quiet = None;
                w.last = None;
                continue;
            }
        };
        let (totals, active_opens): (Option<Totals>, Option<u64>) =
            match netns::census::counters(host, &w.ns) {
                Some((t, o)) => (Some(t), o),
                None => (None, None),
            };
        let counters = fastpath::Counters {
            settings: &settings,
            totals,
            active_opens,
            pace: w.pace.update(Instant::now(), active_opens),
        };
        let baseline = w
            .last
            .as_ref()
            .map(|l| Baseline::of(&l.usage, l.active_opens, l.started.elapsed()));
        match step(baseline.as_ref(), &counters, policy, &w.alert) {
            Step::Census(why) => {
                let age = w.last.as_ref().map(|l| l.started.elapsed());
                m.due.push((*inode, why, age));
            }
            Step::Skip => {}
            Step::Quiet(q) => {
                w.quiet = Some(q);
                w.last = None;
            }
        }
        m.opens.insert(*inode, active_opens);
    }
    m
}

/// Where and how to set the range in `ns`: a pod's securityContext, a
/// container's `--sysctl`, a named namespace's `ip netns exec`.
fn advice(ns: &Namespace, decision: &Decision) -> Option<String> {
    if decision.alert.level < Level::Warning {
        return None;
    }
    let plan = match &decision.action {
        Action::Hold { plan: Some(p), .. } | Action::Apply { plan: p } => p,
        Action::Hold { plan: None, reason } => {
            return Some(format!(
                "the range cannot be widened ({reason}): fewer connections towards the worst destination, or more destination addresses"
            ));
        }
        Action::Nothing => return None,
    };
    let value = format!("{} {}", plan.to.low(), plan.to.high());
    let reserve = if plan.newly_reserved.is_empty() {
        String::new()
    } else {
        format!(
            " (reserve its listeners first: net.ipv4.ip_local_reserved_ports={})",
            plan.reserved
        )
    };
    let id = &ns.identity;
    let r#where = if id.pod.is_some() || id.pod_uid.is_some() {
        format!(
            "in the pod's spec: securityContext.sysctls: [{{name: {RANGE_KEY}, value: \"{value}\"}}]"
        )
    } else if let Some(c) = id.container() {
        let runtime = c.split(':').next().unwrap_or("docker");
        let tool = if runtime == "podman" {
            "podman"
        } else {
            "docker"
        };
        format!(
            "when the container ({c}) is started: `{tool} run --sysctl {RANGE_KEY}=\"{value}\" ...` (compose: sysctls:)"
        )
    } else if let Some(name) = ns.names.first() {
        format!("`ip netns exec {name} sysctl -w {RANGE_KEY}=\"{value}\"`")
    } else if let Some(pid) = ns.pid {
        format!(
            "`nsenter -t {pid} -n sysctl -w {RANGE_KEY}=\"{value}\"` (lost with the namespace: set it where it is created)"
        )
    } else {
        return None;
    };
    Some(format!(
        "set {RANGE_KEY} to \"{value}\" (was {}){reserve} {where}; portd writes nothing in other namespaces, and /etc/sysctl.d applies only to the host's",
        plan.from
    ))
}

/// `base` with the fields that name the namespace.
fn in_namespace(ns: &Namespace, base: Fields) -> Fields {
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
fn alert(ns: &Namespace, usage: &Usage, d: &Decision, advice: Option<&str>) {
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

impl Watch {
    /// Starts a poll of the other namespaces (none under a fixture root).
    pub fn start(&mut self, host: &Host, policy: &Policy) -> Option<InFlight> {
        if host.root() != std::path::Path::new("/") {
            return None;
        }
        let now = Instant::now();
        if self
            .spent
            .is_some_and(|s| s.wait(now, NETNS_SHARE).is_some())
        {
            return None;
        }
        self.running_since = Some(now);
        let known = self.known.take().unwrap_or_default();
        let host = host.clone();
        let policy = policy.clone();
        Some(InFlight {
            handle: tokio::task::spawn_blocking(move || poll(&host, known, &policy)),
        })
    }

    /// The look that was running ended now: what it cost.
    pub fn finished(&mut self) {
        self.spent = self.running_since.take().map(|started| Spent {
            started,
            took: started.elapsed(),
        });
    }

    /// The poll ended: alert state, journal, what is published. True when
    /// the live view and the metrics should be written again.
    pub fn ended(
        &mut self,
        out: Result<Output, JoinError>,
        policy: &Policy,
        now: SystemTime,
    ) -> bool {
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The namespaces' state went with the task: found again
                // on the next poll, with no alert held.
                tracing::error!("the poll of the other network namespaces failed: {e}");
                self.known = Some(Known::new());
                return false;
            }
        };
        let shown_before = !self.published.namespaces.is_empty() || self.published.note.is_some();
        let mut known = out.known;
        for c in out.censused {
            let Some(w) = known.get_mut(&c.inode) else {
                continue;
            };
            match c.result {
                Ok(usage) => {
                    self.censuses += 1;
                    if w.error.clear() {
                        tracing::info!("the census of {} works again", w.ns.label);
                    }
                    let decision = planner::plan(&Inputs {
                        observation: &Observation::from_usage(&usage),
                        policy,
                        history: &History {
                            alert: w.alert.clone(),
                            ..History::default()
                        },
                        pin: None,
                        now,
                        // Advise only: nothing is written in another namespace.
                        authority: &Authority::Advise(Why::Policy),
                        // The witness's failures are portd's own
                        // namespace's decision; here the usage alone.
                        witnessed_failure: false,
                        // No rates are kept for other namespaces yet: their
                        // alerts follow the census and the hold alone.
                        forecast: &[],
                    });
                    w.advice = advice(&w.ns, &decision);
                    alert(&w.ns, &usage, &decision, w.advice.as_deref());
                    w.alert = decision.alert;
                    w.quiet = None;
                    w.last = Some(Last {
                        usage,
                        active_opens: c.active_opens,
                        started: c.started,
                    });
                }
                Err(e) => {
                    if w.error.is_new(&e) {
                        tracing::warn!(
                            "census of {} (net:[{}]) failed, will retry: {e}",
                            w.ns.label,
                            w.ns.inode
                        );
                    }
                }
            }
        }
        // A process that exits while discovery reads it can fail once:
        // only processes unreadable on two polls in a row are reported.
        let unreadable = out.unreadable.min(self.unreadable);
        self.unreadable = out.unreadable;
        let note = out.note.or_else(|| {
            (unreadable > 0).then(|| {
                format!(
                    "{unreadable} processes' network namespaces are not readable (CAP_SYS_PTRACE, or /proc without ProtectProc=invisible or hidepid: /usr/share/doc/portd/examples/containers.conf)"
                )
            })
        });
        match &note {
            Some(note) => {
                // Under the default unit that is by design: a notice. Lost
                // sight with the drop-in in place is a warning.
                if self.note.is_new(note) {
                    if out.hidden {
                        tracing::info!("{note}; portd watches its own namespace");
                    } else {
                        tracing::warn!("{note}; portd watches its own namespace");
                    }
                }
            }
            None => {
                self.note.clear();
            }
        }
        self.published = publish(&known, note, self.censuses);
        self.known = Some(known);
        shown_before || !self.published.namespaces.is_empty() || self.published.note.is_some()
    }
}

/// Worst first: the confirmed level, then the usage.
fn ordered(known: &Known) -> Vec<&Watched> {
    let mut list: Vec<&Watched> = known.values().collect();
    list.sort_by(|a, b| {
        b.alert
            .level
            .cmp(&a.alert.level)
            .then(usage_of(b).total_cmp(&usage_of(a)))
            .then(a.ns.inode.cmp(&b.ns.inode))
    });
    list
}

/// The last census's headline usage, or the counters' bound.
fn usage_of(w: &Watched) -> f64 {
    match (&w.last, &w.quiet) {
        (Some(l), _) => l.usage.headline.usage.fraction(),
        (None, Some(q)) => q.usage.fraction(),
        (None, None) => 0.0,
    }
}

fn publish(known: &Known, note: Option<String>, censuses: u64) -> Published {
    let list = ordered(known);
    let namespaces = list
        .iter()
        .take(live::NAMESPACES_SHOWN)
        .map(|w| live::Namespace {
            inode: w.ns.inode,
            label: w.ns.label.clone(),
            container: w.ns.identity.container(),
            pod: w.ns.identity.pod.clone(),
            enter: w.ns.enter.clone(),
            level: measured(w).then_some(w.alert.level),
            headline: w.last.as_ref().map(|l| live::Headline {
                usage: l.usage.headline.usage.fraction(),
                used: l.usage.headline.used,
                capacity: l.usage.headline.capacity,
                cause: l.usage.headline.cause.to_string(),
                level: Some(w.alert.level),
            }),
            bound: w.quiet.map(|q| {
                format!(
                    "at most {} of {} ports towards any destination ({}; sockstat, no census)",
                    q.bound, q.capacity, q.usage
                )
            }),
            advice: w.advice.clone(),
        })
        .collect();
    Published {
        namespaces,
        metrics: metrics_text(&list, known.len(), censuses),
        note,
    }
}

/// Its last census or its counters' bound is known.
fn measured(w: &Watched) -> bool {
    w.last.is_some() || w.quiet.is_some()
}

/// `portd_netns_*`: the top [`TOP_NAMESPACES`] of those measured,
/// labelled `netns`, `container`, `pod` (never `namespace`, never a pid).
fn metrics_text(list: &[&Watched], watched: usize, censuses: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let top: Vec<&Watched> = list
        .iter()
        .copied()
        .filter(|w| measured(w))
        .take(TOP_NAMESPACES)
        .collect();
    let labels = |w: &Watched| {
        format!(
            "{{netns=\"net:[{}]\",container=\"{}\",pod=\"{}\"}}",
            w.ns.inode,
            metrics::label(&w.ns.identity.container().unwrap_or_default()),
            metrics::label(
                w.ns.identity
                    .pod
                    .as_deref()
                    .or(w.ns.identity.pod_uid.as_deref())
                    .unwrap_or_default()
            )
        )
    };
    let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&Watched) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for w in &top {
            let _ = writeln!(out, "{name}{} {}", labels(w), f(w));
        }
    };
    family(
        "portd_netns_usage_ratio",
        "gauge",
        "Worst destination or pool usage in another network namespace (0-1): its last census, or the bound its counters give when none was needed (top 20 namespaces).",
        &usage_of,
    );
    family(
        "portd_netns_used_ports",
        "gauge",
        "Ports in use by the worst destination or pool of another network namespace at its last census (0 without one).",
        &|w| {
            w.last
                .as_ref()
                .map_or(0.0, |l| l.usage.headline.used as f64)
        },
    );
    family(
        "portd_netns_alert_level",
        "gauge",
        "Confirmed level of another network namespace (hold and hysteresis applied): 0 ok, 1 warning, 2 critical.",
        &|w| f64::from(w.alert.level.exit_code()),
    );
    let _ = writeln!(
        out,
        "# HELP portd_netns_watched Other network namespaces portd watches.\n# TYPE portd_netns_watched gauge\nportd_netns_watched {watched}"
    );
    let _ = writeln!(
        out,
        "# HELP portd_netns_censuses_total Censuses of other network namespaces since portd started.\n# TYPE portd_netns_censuses_total counter\nportd_netns_censuses_total {censuses}"
    );
    out
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
