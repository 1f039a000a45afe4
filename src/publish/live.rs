//! What only the running daemon knows, published for `portd status` and
//! `portd check`: the daemon writes its live view atomically at the end of
//! every poll to `/run/portd/live.json` (the unit's `RuntimeDirectory`),
//! and the commands merge it while its daemon runs and it is fresher than
//! two polls.
//!
//! A view is trusted only when: it is owned by root (or by the user who
//! reads it: a daemon run unprivileged in a test or a fixture tree writes
//! its own; a user can fool only themselves) and nobody else may write it;
//! the process it names runs, with the start time the view records (a
//! killed daemon, or its pid reused, is not running whatever the
//! timestamp); it is not written more than two polls ahead of the
//! reader's clock; and its daemon ran in the reader's network namespace
//! (the view describes that one) and PID namespace (where its pid can be
//! checked). Otherwise it is set aside with the reason. The pid is a
//! process of this machine, whatever `--root` says. Lists read back are
//! capped as the daemon caps them, and every text in it is printed through
//! [`crate::base::untrusted::escape`].
//!
//! One versioned file for everything the daemon learns over time: rates
//! and forecasts, witnessed failures and per-namespace headlines go here as
//! they are added. Every struct reads with `#[serde(default)]`, so a field
//! added later is simply absent from an older file; `format_version` changes
//! only when a field is removed or changes meaning or type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::base::fsutil;
use crate::base::host::Host;
use crate::base::ports::PortRange;
use crate::base::untrusted::escape;
use crate::judge::level::Level;

/// The format this portd writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The daemon's runtime directory (`RuntimeDirectory=portd`).
pub const DIR: &str = "/run/portd";

pub const FILE: &str = "live.json";

/// The longest live view read back; the daemon's are about a kilobyte.
const READ_LIMIT: u64 = 1024 * 1024;

/// The daemon's live view. Times are Unix times in seconds (fractions
/// allowed), durations seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Live {
    pub format_version: u32,
    pub written_at: f64,
    pub pid: u32,
    /// The daemon's start time, field 22 of `/proc/PID/stat` (clock ticks
    /// after boot): with the pid, which process wrote the view. Absent from
    /// views of older versions (then the pid alone is checked).
    pub start_time: Option<u64>,
    /// The daemon's network and PID namespaces (`/proc/self/ns/{net,pid}`
    /// inodes): a view describes the network namespace it was written in,
    /// and its pid means something only in its PID namespace.
    pub namespaces_of_daemon: Option<Namespaces>,
    /// The policy's poll interval: the view is fresh for two of them (or
    /// two of `refresh_seconds`, the longer).
    pub interval_seconds: f64,
    /// The longest the daemon goes without rewriting the view while what
    /// it says stays the same (0 in views of older versions: every poll).
    pub refresh_seconds: f64,
    /// The policy file the daemon runs, as it read it.
    pub policy: Option<PolicyView>,
    pub authority: AuthorityView,
    /// The last census's headline; none before the first census.
    pub headline: Option<HeadlineView>,
    pub census: Census,
    /// The last change portd made to the range, from its state.
    pub last_change: Option<ChangeView>,
    /// The failure witness (witness/): whether it runs and what it saw.
    pub witness: Option<WitnessView>,
    /// The other network namespaces the daemon watches (its own is the
    /// headline above), worst first, at most [`NAMESPACES_SHOWN`].
    pub namespaces: Vec<NamespaceView>,
    /// What the daemon cannot see of the other namespaces, and why.
    pub namespaces_note: Option<String>,
    /// Rates and forecasts of the last census (forecast.rs); none before
    /// the first census.
    pub forecast: Option<Outlook>,
    /// Usage over the last minutes (daemon/history.rs), for
    /// `status --watch`; absent from views of older versions.
    pub history: Option<UsageHistory>,
}

/// The most points of a [`HistorySeries`]: 10 minutes at 10 s.
pub const HISTORY_POINTS: usize = 60;
/// The most series of each kind (destinations, namespaces) kept.
pub const HISTORY_SERIES: usize = 10;

/// The recent usage of the worst destinations and namespaces, one point
/// every `step_seconds`, the last at `last_at`; kept in the daemon's
/// memory only (a restarted daemon starts a new one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageHistory {
    pub step_seconds: f64,
    /// Unix time of the last point of every series.
    pub last_at: f64,
    /// The destinations and pools (as [`TargetView::target`]), worst first,
    /// at most [`HISTORY_SERIES`].
    pub destinations: Vec<HistorySeries>,
    /// The other namespaces (as [`NamespaceView::label`]), worst first, at
    /// most [`HISTORY_SERIES`].
    pub namespaces: Vec<HistorySeries>,
}

/// One destination's or namespace's usage, oldest first, at most
/// [`HISTORY_POINTS`]; its last point is at [`UsageHistory::last_at`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistorySeries {
    pub name: String,
    /// Usage ratios (0.45 is 45 %), to the thousandth.
    pub usage: Vec<f64>,
    /// The ports used at each point.
    pub used: Vec<u64>,
}

impl UsageHistory {
    /// Caps a history read back as the daemon caps it.
    pub fn cap(&mut self) {
        for list in [&mut self.destinations, &mut self.namespaces] {
            list.truncate(HISTORY_SERIES);
            for s in list.iter_mut() {
                keep_last(&mut s.usage);
                keep_last(&mut s.used);
            }
        }
    }
}

/// Drops all but the last [`HISTORY_POINTS`] of `points`.
pub fn keep_last<T>(points: &mut Vec<T>) {
    let drop = points.len().saturating_sub(HISTORY_POINTS);
    points.drain(..drop);
}

/// The failure witness in the live view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WitnessView {
    pub active: bool,
    /// `failure witness on: PATH (what it cannot see)` or why it is off.
    pub describe: String,
    /// Failed port allocations since the daemon started (all keys).
    pub failures_total: u64,
    /// Failures in the last minute (all keys).
    pub last_minute_total: u64,
    /// Failures the witness could not count (its maps were full).
    pub dropped_total: u64,
    /// Per destination (TCP) or pool, and process; the most recent and
    /// largest first, at most [`WITNESS_ROWS`].
    pub failures: Vec<WitnessedFailure>,
    /// Keys left out of `failures` by the limit.
    pub failures_not_listed: usize,
}

/// The most rows of [`WitnessView::failures`] in the live view.
pub const WITNESS_ROWS: usize = 50;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WitnessedFailure {
    /// `tcp_connect`, `bind0` or `udp_autobind`.
    pub kind: String,
    /// The error the program saw.
    pub errno: String,
    pub netns: u64,
    pub protocol: String,
    pub local: String,
    /// `ip:port` (TCP connect only).
    pub destination: Option<String>,
    /// The destination, or `PROTO pool LOCAL`.
    pub target: String,
    /// As portd's PID namespace numbers the process; none if not visible.
    pub pid: Option<u32>,
    pub comm: String,
    pub total: u64,
    pub last_minute: u64,
}

/// The most other namespaces a live view lists.
pub const NAMESPACES_SHOWN: usize = 50;

/// Another network namespace as the daemon sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NamespaceView {
    pub inode: u64,
    /// The pod, the container, the netns name, the unit or the process.
    pub label: String,
    /// The container's name (a pod's containers' names), else runtime and
    /// short id.
    pub container: Option<String>,
    /// The pod's name (else its uid) and its Kubernetes namespace.
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
    /// How to run a command inside it.
    pub enter: String,
    /// The level the daemon holds for it (hold and hysteresis applied).
    pub level: Option<Level>,
    /// Its last census's headline; none while its counters alone show it
    /// below the warning level.
    pub headline: Option<HeadlineView>,
    /// The bound its counters give when no census was needed.
    pub bound: Option<String>,
    /// What to change, and where, while it is raised.
    pub advice: Option<String>,
    /// Seconds until its first destination or pool runs out at the growth
    /// of its last censuses (its forecast revised each poll, as portd's
    /// own); none while nothing grows towards it.
    pub time_to_exhaustion_seconds: Option<f64>,
}

/// Where usage is heading: the forecast's time to exhaustion, rates and
/// remedies, as the daemon last computed them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outlook {
    /// Seconds until the first destination or pool runs out; none while
    /// nothing grows towards it.
    pub time_to_exhaustion_seconds: Option<f64>,
    /// `Tcp: ActiveOpens` at the last poll: connect() attempts in the
    /// namespace since boot (a counter; its rate is the connection rate).
    pub connect_attempts_total: Option<u64>,
    /// The top destinations by usage and by growth, and the pools.
    pub targets: Vec<TargetView>,
    /// For a load the policy's bounds cannot hold: what else closes the
    /// gap (remedy.rs ids, as PORTD_REMEDY and `check --plan`).
    pub remedies: Vec<RemedyView>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetView {
    /// `destination 10.0.0.1 -> 10.0.0.2:80`, `UDP pool`, `TCP bind(0) pool`.
    pub target: String,
    pub used: u64,
    pub capacity: u64,
    pub growth_per_second: f64,
    /// New TIME_WAIT per second: closed connections, a lower bound of the
    /// connection rate towards it.
    pub connection_rate: f64,
    /// Where usage levels off (TIME_WAIT-dominated); none for a trend.
    pub steady_state: Option<u64>,
    pub time_to_exhaustion_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemedyView {
    pub id: String,
    /// Ports it frees or adds.
    pub effect: u64,
    pub closes_gap: bool,
    pub advice: String,
}

/// The policy file a daemon runs: its path and a digest of the content it
/// read (at start or at the last accepted reload), so `status` can tell
/// when the file on disk has changed since.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyView {
    pub path: String,
    /// [`policy_digest`] of the file; none when it was absent (the
    /// built-in defaults) or unreadable.
    pub digest: Option<String>,
}

/// The digest of the policy file at `path` (the real path: a `--root`
/// tree's policy is given by its full path), `fnv1a64:HEX` of its bytes;
/// none when it cannot be read. It tells an edit apart, not an attacker:
/// whoever can write the policy runs the daemon's policy anyway.
pub fn policy_digest(path: &std::path::Path) -> Option<String> {
    const MAX: u64 = 1024 * 1024; // as policy/load.rs reads at most
    let bytes = fsutil::read_regular(path, MAX).ok()?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(format!("fnv1a64:{hash:016x}"))
}

impl Live {
    /// When the policy file the daemon runs differs on disk from what it
    /// read (its digest differs): what that means, for `status`.
    pub fn policy_changed(&self) -> Option<String> {
        let p = self.policy.as_ref()?;
        let on_disk = policy_digest(std::path::Path::new(&p.path));
        if on_disk == p.digest {
            return None;
        }
        let path = escape(&p.path);
        // Equal digests (both none: no file) returned above.
        Some(match on_disk {
            Some(_) => format!(
                "the policy file {path} differs from the one the daemon runs (changed since it was read): reload the daemon (SIGHUP, systemctl reload portd) to apply it"
            ),
            None => format!(
                "the policy file {path} the daemon runs is gone or unreadable now; the daemon keeps the policy it read"
            ),
        })
    }
}

/// May the daemon write, and if not, why (authority.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorityView {
    /// `auto`, `advise` or `dry-run`, as the metrics' `mode` label.
    pub mode: String,
    /// Why portd only advises (`policy`, `dry-run`, `yielded`,
    /// `state-unreadable`); empty while it may write.
    pub advise_reason: String,
    /// As the STATUS line shows it, e.g. `advise (yielded to the admin)`.
    pub describe: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadlineView {
    /// A fraction: 0.45 is 45 %.
    pub usage: f64,
    pub used: u64,
    pub capacity: u64,
    /// The worst destination or pool, as `status` prints it.
    pub cause: String,
    /// The level the daemon holds (with its hysteresis), not the one the
    /// usage alone would give.
    pub level: Option<Level>,
}

/// Census counters since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Census {
    pub last_at: Option<f64>,
    pub last_took_seconds: Option<f64>,
    pub total: u64,
    pub skipped_total: u64,
    pub failed_total: u64,
    pub abandoned_total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChangeView {
    pub at: f64,
    pub from: Option<PortRange>,
    pub to: Option<PortRange>,
    pub reason: String,
}

/// Unix time in seconds, to the millisecond.
pub fn unix_seconds(t: SystemTime) -> f64 {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    (d.as_millis() as f64) / 1000.0
}

/// Where the live view of `host` is.
pub fn path(host: &Host) -> PathBuf {
    host.path(DIR).join(FILE)
}

/// Writes the live view atomically (mode 0644: `status` runs as any user),
/// creating the runtime directory (0755) when systemd did not. A symbolic
/// link at the directory's name is never followed: the write fails, naming it.
pub fn write(host: &Host, live: &Live) -> io::Result<()> {
    let path = host.path(DIR);
    let dir = fsutil::open_own_dir(&path, 0o755)?;
    let mut text = serde_json::to_vec_pretty(live).map_err(io::Error::other)?;
    text.push(b'\n');
    // Rebuilt every poll: replaced by a rename, never fsynced (fsutil.rs).
    fsutil::replace_ephemeral_at(&dir, &path, FILE, &text, 0o644)
}

/// What `status` and `check` know of the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum DaemonView {
    /// A live view fresher than two polls.
    Running { live: Box<Live>, age: Duration },
    /// No live view, or one at least two polls old.
    NotRunning(NotRunning),
    /// A live view that cannot be read or is not portd's format.
    Unreadable(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum NotRunning {
    Absent,
    Stale {
        age: Duration,
        interval: Duration,
    },
    /// The process that wrote the view has exited.
    Exited {
        pid: u32,
    },
    /// Its pid names another process now (a different start time).
    Replaced {
        pid: u32,
    },
}

impl fmt::Display for NotRunning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRunning::Absent => write!(f, "no live view at {DIR}/{FILE}"),
            NotRunning::Exited { pid } => write!(
                f,
                "pid {pid}, which wrote the live view {DIR}/{FILE}, has exited"
            ),
            NotRunning::Replaced { pid } => write!(
                f,
                "pid {pid}, which wrote the live view {DIR}/{FILE}, has exited: the pid is another process now"
            ),
            NotRunning::Stale { age, interval } => write!(
                f,
                "its live view {DIR}/{FILE} is {}s old, older than two polls of {}",
                age.as_secs(),
                humantime::format_duration(*interval)
            ),
        }
    }
}

/// The longest poll interval a view's freshness is judged by: the policy
/// allows no more, and a forged interval must not keep a view fresh.
const LONGEST_INTERVAL: f64 = 24.0 * 3600.0;

mod read;
#[cfg(test)]
use crate::base::kernel::parse_proc_stat as parse_stat;
pub use read::{Namespaces, process, read};
#[cfg(test)]
use read::{Process, judge};

/// The freshness rule: a live view counts while
/// `written_at + 2 × max(interval, refresh) ≥ now`. A view written in the future (a clock
/// set back) counts as written now, up to two polls ahead: see [`judge`].
pub fn fresh(live: &Live, now: SystemTime) -> Result<Duration, NotRunning> {
    let now = unix_seconds(now);
    let interval_seconds = live
        .interval_seconds
        .max(live.refresh_seconds)
        .clamp(0.0, LONGEST_INTERVAL);
    let age = (now - live.written_at).max(0.0);
    let age_d = Duration::try_from_secs_f64(age).unwrap_or(Duration::MAX);
    let interval = Duration::try_from_secs_f64(interval_seconds).unwrap_or(Duration::ZERO);
    if live.written_at + 2.0 * interval_seconds >= now {
        Ok(age_d)
    } else {
        Err(NotRunning::Stale {
            age: age_d,
            interval,
        })
    }
}

/// What `status --json` and `check --json` show as `daemon`.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonReport<'a> {
    pub running: bool,
    /// Seconds since the live view was written, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    /// Why the daemon counts as not running, or why its view is unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<&'a Live>,
    /// When the policy file on disk differs from the one the daemon runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_changed: Option<String>,
}

impl DaemonView {
    pub fn report(&self) -> DaemonReport<'_> {
        match self {
            DaemonView::Running { live, age } => DaemonReport {
                running: true,
                age_seconds: Some((age.as_millis() as f64) / 1000.0),
                reason: None,
                live: Some(live),
                policy_changed: live.policy_changed(),
            },
            DaemonView::NotRunning(why) => DaemonReport {
                running: false,
                age_seconds: None,
                reason: Some(why.to_string()),
                live: None,
                policy_changed: None,
            },
            DaemonView::Unreadable(why) => DaemonReport {
                running: false,
                age_seconds: None,
                reason: Some(why.clone()),
                live: None,
                policy_changed: None,
            },
        }
    }

    /// One line for the human outputs of `status` and `check`.
    pub fn line(&self) -> String {
        match self {
            DaemonView::Running { live, age } => {
                let census = match live.census.last_at {
                    Some(at) => format!(
                        "last census {}s ago",
                        (age.as_secs_f64() + live.written_at - at).max(0.0).round()
                    ),
                    None => "no census yet".into(),
                };
                let outlook = match live.forecast.as_ref() {
                    Some(o) => match o.time_to_exhaustion_seconds {
                        Some(t) => format!(", runs out in {t:.0}s"),
                        None => ", nothing growing towards exhaustion".into(),
                    },
                    None => String::new(),
                };
                let mut line = format!(
                    "daemon: running (pid {}), mode {}, {census}{outlook}",
                    live.pid,
                    escape(&live.authority.describe)
                );
                if let Some(changed) = live.policy_changed() {
                    line.push_str(&format!("\ndaemon: {changed}"));
                }
                if let Some(w) = &live.witness {
                    witness_lines(&mut line, w);
                }
                line.push_str(&namespaces_lines(live));
                line
            }
            DaemonView::NotRunning(why) => {
                format!("daemon: not running ({why}): no rates, no witnessed failures")
            }
            DaemonView::Unreadable(why) => {
                format!("daemon: unknown ({why}): no rates, no witnessed failures")
            }
        }
    }
}

/// The witness's lines under the daemon line of `status` and `check`.
fn witness_lines(out: &mut String, w: &WitnessView) {
    use std::fmt::Write as _;
    if !w.active {
        let _ = write!(out, "\n{}", escape(&w.describe));
        return;
    }
    let _ = write!(
        out,
        "\n{}\nwitnessed failures: {} in the last minute, {} since start",
        escape(&w.describe),
        w.last_minute_total,
        w.failures_total
    );
    for f in &w.failures {
        let pid = f
            .pid
            .map_or_else(|| "pid not visible".into(), |p| format!("pid {p}"));
        let _ = write!(
            out,
            "\n  {} ({pid}): {} {} towards {}: {} in the last minute, {} since start",
            escape(&f.comm),
            escape(&f.kind),
            escape(&f.errno),
            escape(&f.target),
            f.last_minute,
            f.total
        );
    }
    if w.failures_not_listed > 0 {
        let _ = write!(
            out,
            "\n  ... and {} more (status --json, metrics)",
            w.failures_not_listed
        );
    }
    if w.dropped_total > 0 {
        let _ = write!(
            out,
            "\n  {} failures not counted: the witness's maps were full",
            w.dropped_total
        );
    }
}

/// The other namespaces of a live view, one line each, then the note.
fn namespaces_lines(live: &Live) -> String {
    let mut out = String::new();
    for ns in &live.namespaces {
        let what = match (&ns.headline, &ns.bound) {
            (Some(h), _) => format!(
                "{:.1}% ({}/{}) {}",
                h.usage * 100.0,
                h.used,
                h.capacity,
                escape(&h.cause)
            ),
            (None, Some(bound)) => escape(bound),
            (None, None) => "not measured".into(),
        };
        out.push_str(&format!(
            "\ndaemon: netns {} net:[{}] {}: {what}",
            escape(&ns.label),
            ns.inode,
            ns.level.map_or("UNKNOWN", Level::label)
        ));
        if let Some(t) = ns.time_to_exhaustion_seconds {
            out.push_str(&format!(", runs out in {t:.0}s at the present growth"));
        }
        if let Some(advice) = &ns.advice {
            out.push_str(&format!("\n  advice: {}", escape(advice)));
        }
    }
    if let Some(note) = &live.namespaces_note {
        out.push_str(&format!("\ndaemon: {}", escape(note)));
    }
    out
}

/// The worst level the daemon holds for another namespace, with it.
pub fn worst_namespace(daemon: &DaemonView) -> Option<&NamespaceView> {
    match daemon {
        // By level, then usage; the first of equals. The file's order is
        // not trusted.
        DaemonView::Running { live, .. } => live
            .namespaces
            .iter()
            .filter(|n| n.level.is_some())
            .reduce(|worst, n| {
                let key = |n: &NamespaceView| {
                    (
                        n.level.map_or(0, Level::rank),
                        n.headline.as_ref().map_or(0.0, |h| h.usage),
                    )
                };
                if key(n).partial_cmp(&key(worst)) == Some(std::cmp::Ordering::Greater) {
                    n
                } else {
                    worst
                }
            }),
        _ => None,
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
