//! Prometheus text format for node_exporter's textfile collector, written
//! atomically after each poll when the policy names a metrics file.
//! Example alerting rules: `packaging/prometheus/portd-alerts.yml`.
//!
//! Every family of the file is rendered here, from typed rows the daemon
//! fills ([`Snapshot`], [`WitnessRows`], [`NetnsRows`]): one writer for
//! `# HELP`, `# TYPE` and the samples, one escaper for label values.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::base::fsutil;
use crate::judge::authority::Authority;
use crate::judge::level::Level;
use crate::observe::usage::{DestUsage, Pool, Usage};
use crate::observe::witness::tally::TOP_SERIES;

mod format;
pub use format::{MetricFamily, MetricType, Sample, Value, text};

/// Destinations exported with labels: bounded, so a host with 100k
/// destinations does not explode the series count.
pub const TOP_DESTINATIONS: usize = 10;

/// What one poll knows. Between full censuses (the fast path) the census
/// fields stay those of the last census, and `polled_at` moves on.
pub struct Snapshot<'a> {
    pub usage: &'a Usage,
    /// The confirmed alert level.
    pub level: Level,
    /// Range changes made since portd started (a counter).
    pub changes_total: u64,
    pub census_duration: Duration,
    pub census_at: SystemTime,
    pub polled_at: SystemTime,
    pub censuses_total: u64,
    pub census_skipped_total: u64,
    pub census_failed_total: u64,
    pub census_abandoned_total: u64,
    /// portd's most recent change of the range (from its state).
    pub last_change_at: Option<SystemTime>,
    /// Why the range was not widened although usage called for it
    /// ("advise", "cooldown", "at-bound", ...).
    pub widening_blocked: Option<&'a str>,
    /// Whether portd may write, and if not, why: the `mode` and
    /// `advise_reason` labels of `portd_info` and `portd_yielded`.
    pub authority: &'a Authority,
    /// The failure witness's counters (src/daemon/witness.rs fills them).
    pub witness: &'a WitnessRows,
    /// The other network namespaces (`portd_netns_*{netns,container,pod,
    /// pod_namespace}`,
    /// src/daemon/netns_publish.rs fills them); `None` before their first
    /// poll, when no family of theirs is written.
    pub netns: &'a Option<NetnsRows>,
    /// Seconds until the first destination or pool runs out at the last
    /// census's forecast (forecast.rs); `None` when nothing is growing.
    pub time_to_exhaustion: Option<f64>,
    /// `Tcp: ActiveOpens` of the namespace at this poll: connect() attempts.
    pub connect_attempts_total: Option<u64>,
}

/// The failure witness's rows: whether it counts, and when it does, the
/// three failure families (at most [`TOP_SERIES`] keys each) and what it
/// could not count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WitnessRows {
    pub active: bool,
    /// TCP connect() failures, per destination and process name.
    pub connect: FailureRows,
    /// bind(address, 0) failures, per pool and process name.
    pub bind: FailureRows,
    /// UDP autobind failures, per pool and process name.
    pub udp_autobind: FailureRows,
    pub dropped: u64,
}

/// One failure family: the keys shown and the rest in one `other` row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailureRows {
    pub shown: Vec<FailureRow>,
    pub other: u64,
}

/// Failures under one key. Labelled by the process name, never its pid;
/// rows whose labels are equal (keys that differ only by namespace) are
/// summed.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRow {
    pub local: IpAddr,
    /// TCP connect only: labels `remote` and `remote_port`; a pool (none)
    /// is labelled by `proto`.
    pub destination: Option<SocketAddr>,
    pub protocol: &'static str,
    /// Empty when the witness counted per destination or pool alone.
    pub comm: String,
    pub count: u64,
}

/// The other network namespaces: the worst few measured, the rest in one
/// row (pods churn: the label sets stay bounded), and the counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetnsRows {
    /// Worst first, already bounded.
    pub top: Vec<NetnsRow>,
    /// The measured namespaces past the top, in one row whose labels all
    /// read `other`: the worst usage, ports and level among them.
    pub other: Option<NetnsOther>,
    pub watched: usize,
    pub censuses: u64,
}

/// One namespace, labelled `netns`, `container`, `pod`, `pod_namespace`
/// (never `namespace`, which Kubernetes' scrape targets carry, never a
/// pid). The names are display text (escaped and bounded where read).
#[derive(Clone, Debug, PartialEq)]
pub struct NetnsRow {
    pub inode: u64,
    /// The container's name (in a pod: its containers' names but the
    /// sandbox's, comma-separated), else runtime and short id; empty
    /// outside a container.
    pub container: String,
    /// The pod's name, or its uid; empty outside a pod.
    pub pod: String,
    /// The pod's Kubernetes namespace; empty outside a pod or unknown.
    pub pod_namespace: String,
    /// Its last census's headline usage, or the bound its counters give.
    pub usage: f64,
    /// Ports in use by its worst destination or pool at its last census
    /// (0 without one).
    pub used: u64,
    /// Its confirmed level.
    pub level: Level,
    /// Seconds until its first destination or pool runs out (`None`: not
    /// growing towards it, `+Inf` in the file).
    pub time_to_exhaustion: Option<f64>,
}

/// The namespaces past the top: the worst of each value among them.
#[derive(Clone, Debug, PartialEq)]
pub struct NetnsOther {
    pub usage: f64,
    pub used: u64,
    pub level: Level,
    /// The soonest time to exhaustion among them.
    pub time_to_exhaustion: Option<f64>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics file: every family in the order the file shows them.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut families = vec![info(s.authority)];
    families.extend(range(s.usage, s.level));
    families.extend(destinations(s.usage));
    families.extend(pools(s.usage));
    families.extend(census(s));
    families.push(yielded(s.authority));
    families.extend(witness(s.witness));
    families.extend(allocation_failures(s.witness));
    if let Some(rows) = s.netns {
        families.extend(netns(rows));
    }
    families.extend(forecast(s));
    text(&families)
}

/// The range, its capacity and the headline.
fn range(u: &Usage, level: Level) -> Vec<MetricFamily> {
    let range = u.settings.port_range;
    vec![
        MetricFamily::one_gauge(
            "portd_range_low",
            "Low end of net.ipv4.ip_local_port_range.",
            f64::from(range.low()),
        ),
        MetricFamily::one_gauge(
            "portd_range_high",
            "High end of net.ipv4.ip_local_port_range.",
            f64::from(range.high()),
        ),
        MetricFamily::one_gauge(
            "portd_range_ports",
            "Ports in the range.",
            f64::from(u.range_size),
        ),
        MetricFamily::one_gauge(
            "portd_reserved_ports_in_range",
            "Ports of the range in net.ipv4.ip_local_reserved_ports.",
            f64::from(u.reserved_in_range),
        ),
        MetricFamily::one_gauge(
            "portd_capacity_ports",
            "Ports connect() can hand out towards one destination (range minus reserved and listening ports).",
            u.capacity as f64,
        ),
        MetricFamily::one_gauge(
            "portd_headline_usage_ratio",
            "Worst per-destination or UDP pool usage (0-1).",
            u.headline.usage.fraction(),
        ),
        MetricFamily::one_gauge(
            "portd_headline_used_ports",
            "Ports in use by the worst destination or pool.",
            u.headline.used as f64,
        ),
        MetricFamily::one_gauge(
            "portd_alert_level",
            "Confirmed headline level (hold and hysteresis applied): 0 ok, 1 warning, 2 critical.",
            f64::from(level.exit_code()),
        ),
        MetricFamily::one_gauge(
            "portd_destinations",
            "Distinct (local address, remote address, remote port) destinations using the range.",
            u.destinations.len() as f64,
        ),
    ]
}

/// The top [`TOP_DESTINATIONS`] destinations, labelled by local address,
/// remote address and remote port.
fn destinations(u: &Usage) -> Vec<MetricFamily> {
    let top = &u.destinations[..u.destinations.len().min(TOP_DESTINATIONS)];
    let labels = |d: &DestUsage| {
        vec![
            ("local", d.key.local.to_string()),
            ("remote", d.key.remote.to_string()),
            ("remote_port", d.key.remote_port.to_string()),
        ]
    };
    let per_destination = |f: &dyn Fn(&DestUsage) -> f64| {
        top.iter()
            .map(|d| Sample::labelled(labels(d), Value::Real(f(d))))
            .collect()
    };
    vec![
        MetricFamily::gauge(
            "portd_destination_used_ports",
            "Ports in use towards one of the top destinations (at most 10 are listed).",
            per_destination(&|d| d.used as f64),
        ),
        MetricFamily::gauge(
            "portd_destination_usage_ratio",
            "Usage of one of the top destinations (0-1).",
            per_destination(&|d| d.usage.fraction()),
        ),
    ]
}

/// The pools of each protocol, and TIME_WAIT.
fn pools(u: &Usage) -> Vec<MetricFamily> {
    let pools = [
        ("tcp", &u.pools.tcp),
        ("udp", &u.pools.udp),
        ("sctp", &u.pools.sctp),
    ];
    let per_pool = |f: &dyn Fn(&Pool) -> f64| {
        pools
            .iter()
            .map(|(p, pool)| Sample::labelled(vec![("proto", (*p).into())], Value::Real(f(pool))))
            .collect()
    };
    vec![
        MetricFamily::gauge(
            "portd_pool_used_ports",
            "Distinct local ports of the range in use, per protocol.",
            per_pool(&|p| p.used as f64),
        ),
        MetricFamily::gauge(
            "portd_pool_capacity_ports",
            "Ports of the range a pool can use, per protocol.",
            per_pool(&|p| p.capacity as f64),
        ),
        MetricFamily::gauge(
            "portd_pool_usage_ratio",
            "Pool usage per protocol (0-1).",
            per_pool(&|p| p.usage.fraction()),
        ),
        MetricFamily::one_gauge(
            "portd_time_wait_in_range_sockets",
            "TCP sockets in TIME_WAIT on unreserved ports of the range (the only ones the census reads).",
            u.time_wait_in_range as f64,
        ),
        MetricFamily::one_gauge(
            "portd_reusable_time_wait_sockets",
            "TIME_WAIT sockets in the range that tcp_tw_reuse lets connect() reuse (not counted as used).",
            u.reusable_time_wait as f64,
        ),
    ]
}

/// The census's timing and counters, the changes made and why widening is
/// held.
fn census(s: &Snapshot<'_>) -> Vec<MetricFamily> {
    let failures = |reason: &str, n: u64| {
        Sample::labelled(vec![("reason", reason.into())], Value::Real(n as f64))
    };
    let mut families = vec![
        MetricFamily::one_gauge(
            "portd_census_duration_seconds",
            "Time the last full census took.",
            s.census_duration.as_secs_f64(),
        ),
        MetricFamily::one_gauge(
            "portd_census_timestamp_seconds",
            "When the last full census was taken (Unix time).",
            unix_seconds(s.census_at),
        ),
        MetricFamily::one_gauge(
            "portd_poll_timestamp_seconds",
            "When portd last polled, with or without a census (Unix time).",
            unix_seconds(s.polled_at),
        ),
        MetricFamily::one_counter(
            "portd_censuses_total",
            "Full censuses taken since portd started.",
            s.censuses_total,
        ),
        MetricFamily::one_counter(
            "portd_census_skipped_total",
            "Polls that skipped the census because the O(1) bounds stayed below the warning level.",
            s.census_skipped_total,
        ),
        MetricFamily::counter(
            "portd_census_failures_total",
            "Censuses that failed (error) or outlived the watchdog interval (abandoned).",
            vec![
                failures("error", s.census_failed_total),
                failures("abandoned", s.census_abandoned_total),
            ],
        ),
        MetricFamily::one_counter(
            "portd_range_changes_total",
            "Range changes portd made since it started.",
            s.changes_total,
        ),
    ];
    if let Some(at) = s.last_change_at {
        families.push(MetricFamily::one_gauge(
            "portd_last_change_timestamp_seconds",
            "When portd last changed the range (Unix time).",
            unix_seconds(at),
        ));
    }
    let (reason, held) = s.widening_blocked.map_or(("", 0.0), |r| (r, 1.0));
    families.push(MetricFamily::gauge(
        "portd_widening_blocked",
        "1 while usage calls for a wider range that portd may not or cannot write; reason says why.",
        vec![Sample::labelled(
            vec![("reason", reason.into())],
            Value::Real(held),
        )],
    ));
    families
}

/// The forecast's time to exhaustion (`+Inf` when nothing grows towards it)
/// and the connection attempts as a counter, for `rate()`.
fn forecast(s: &Snapshot<'_>) -> Vec<MetricFamily> {
    let mut families = vec![MetricFamily::one_gauge(
        "portd_time_to_exhaustion_seconds",
        "Seconds until the first destination or pool runs out at the growth of the last censuses (+Inf when none is growing towards it).",
        s.time_to_exhaustion.unwrap_or(f64::INFINITY),
    )];
    if let Some(n) = s.connect_attempts_total {
        families.push(MetricFamily::one_counter(
            "portd_connect_attempts_total",
            "TCP connect() attempts in the namespace (Tcp: ActiveOpens of /proc/net/snmp); rate() gives connections per second.",
            n,
        ));
    }
    families
}

/// `portd_info`: what portd may do now, as the STATUS line says it.
fn info(authority: &Authority) -> MetricFamily {
    MetricFamily::gauge(
        "portd_info",
        "portd's version and mode (auto, advise, dry-run); advise_reason says why it only advises (policy, dry-run, yielded, state-unreadable).",
        vec![Sample::labelled(
            vec![
                ("version", env!("CARGO_PKG_VERSION").into()),
                ("mode", authority.mode_label().into()),
                ("advise_reason", authority.reason_label().into()),
            ],
            Value::Real(1.0),
        )],
    )
}

fn yielded(authority: &Authority) -> MetricFamily {
    MetricFamily::one_gauge(
        "portd_yielded",
        "1 while portd yields to an admin who changed the range (advise only until a reload).",
        f64::from(u8::from(authority.yielded())),
    )
}

/// The witness's families (docs/DESIGN.md naming: counters end in
/// `_total`; labels by comm, never by pid): whether it is active, and
/// while it is, its failures and what it could not count.
pub fn witness(w: &WitnessRows) -> Vec<MetricFamily> {
    let mut families = vec![MetricFamily::gauge(
        "portd_witness_active",
        "Whether the failure witness counts failed port allocations (1) or not (0).",
        vec![Sample::new(Value::Int(u64::from(w.active)))],
    )];
    if !w.active {
        return families;
    }
    families.extend([
        failures(
            "portd_connect_failures_total",
            "TCP connect() calls that failed with EADDRNOTAVAIL because no local port was free, per destination and process name",
            &w.connect,
            true,
        ),
        failures(
            "portd_bind_failures_total",
            "bind(address, 0) calls that failed with EADDRINUSE because no local port was free, per pool and process name",
            &w.bind,
            false,
        ),
        failures(
            "portd_udp_autobind_failures_total",
            "UDP connect()/sendto() on an unbound socket that failed with EAGAIN because no local port was free, per pool and process name",
            &w.udp_autobind,
            false,
        ),
        MetricFamily::counter(
            "portd_witness_dropped_total",
            "Failures the witness could not count (its maps of counters were full) or may have missed (counted after their generation was drained).",
            vec![Sample::new(Value::Int(w.dropped))],
        ),
    ]);
    families
}

/// Every failed allocation the witness counted in this namespace, one
/// series without labels: the sum of the three families, `other` rows
/// included. Written at 0 from the moment the witness is attached, so that
/// `increase()` sees the first failure: a per-key series is born at its
/// first failure (1), and `increase()` needs two samples of a series
/// (docs/ramps.md, "The alert rules in a real Prometheus"). Absent while
/// the witness is off, as the families it sums.
pub fn allocation_failures(w: &WitnessRows) -> Option<MetricFamily> {
    let family = |rows: &FailureRows| rows.shown.iter().map(|r| r.count).sum::<u64>() + rows.other;
    w.active.then(|| {
        MetricFamily::counter(
            "portd_port_allocation_failures_total",
            "Failed port allocations the witness counted (connect(), bind(address, 0), UDP autobind; the sum of their families), 0 from the moment it is attached.",
            vec![Sample::new(Value::Int(
                family(&w.connect) + family(&w.bind) + family(&w.udp_autobind),
            ))],
        )
    })
}

/// One failure family: rows with equal labels summed, in the order of
/// their labels, then the rest in one row whose labels all read `other`
/// (with the destination's labels when `by_destination`).
fn failures(
    name: &'static str,
    help: &str,
    rows: &FailureRows,
    by_destination: bool,
) -> MetricFamily {
    let mut sums: BTreeMap<String, Sample> = BTreeMap::new();
    for row in &rows.shown {
        let sample = Sample::labelled(failure_labels(row), Value::Int(0));
        let sum = sums.entry(sample.label_text()).or_insert(sample);
        if let Value::Int(n) = &mut sum.value {
            *n += row.count;
        }
    }
    let mut samples: Vec<Sample> = sums.into_values().collect();
    if rows.other > 0 {
        let names: &[&'static str] = if by_destination {
            &["local", "remote", "remote_port", "comm"]
        } else {
            &["proto", "local", "comm"]
        };
        let other = names.iter().map(|n| (*n, "other".to_string())).collect();
        samples.push(Sample::labelled(other, Value::Int(rows.other)));
    }
    MetricFamily {
        name,
        kind: MetricType::Counter,
        help: Cow::Owned(format!(
            "{help} (at most {TOP_SERIES} series, the rest in one row labelled other)."
        )),
        samples,
    }
}

fn failure_labels(row: &FailureRow) -> Vec<(&'static str, String)> {
    match row.destination {
        Some(d) => vec![
            ("local", row.local.to_string()),
            ("remote", d.ip().to_string()),
            ("remote_port", d.port().to_string()),
            ("comm", row.comm.clone()),
        ],
        None => vec![
            ("proto", row.protocol.into()),
            ("local", row.local.to_string()),
            ("comm", row.comm.clone()),
        ],
    }
}

/// `portd_netns_*`: the namespaces' usage, ports and level, how many are
/// watched and their censuses.
pub fn netns(n: &NetnsRows) -> Vec<MetricFamily> {
    let per_namespace = |f: &dyn Fn(&NetnsRow) -> f64| {
        let mut samples: Vec<Sample> = n
            .top
            .iter()
            .map(|r| {
                let labels = vec![
                    ("netns", format!("net:[{}]", r.inode)),
                    ("container", r.container.clone()),
                    ("pod", r.pod.clone()),
                    ("pod_namespace", r.pod_namespace.clone()),
                ];
                Sample::labelled(labels, Value::Real(f(r)))
            })
            .collect();
        if let Some(o) = &n.other {
            let row = NetnsRow {
                inode: 0,
                container: String::new(),
                pod: String::new(),
                pod_namespace: String::new(),
                usage: o.usage,
                used: o.used,
                level: o.level,
                time_to_exhaustion: o.time_to_exhaustion,
            };
            let labels = ["netns", "container", "pod", "pod_namespace"]
                .map(|name| (name, "other".to_string()))
                .to_vec();
            samples.push(Sample::labelled(labels, Value::Real(f(&row))));
        }
        samples
    };
    vec![
        MetricFamily::gauge(
            "portd_netns_usage_ratio",
            "Worst destination or pool usage in another network namespace (0-1): its last census, or the bound its counters give when none was needed (top 20 namespaces, the worst of the rest in one row labelled other).",
            per_namespace(&|r| r.usage),
        ),
        MetricFamily::gauge(
            "portd_netns_used_ports",
            "Ports in use by the worst destination or pool of another network namespace at its last census (0 without one).",
            per_namespace(&|r| r.used as f64),
        ),
        MetricFamily::gauge(
            "portd_netns_alert_level",
            "Confirmed level of another network namespace (hold and hysteresis applied): 0 ok, 1 warning, 2 critical.",
            per_namespace(&|r| f64::from(r.level.exit_code())),
        ),
        MetricFamily::gauge(
            "portd_netns_time_to_exhaustion_seconds",
            "Seconds until the first destination or pool of another network namespace runs out at the growth of its last censuses (+Inf when none is growing towards it; top 20 namespaces), as portd_time_to_exhaustion_seconds for portd's own.",
            per_namespace(&|r| r.time_to_exhaustion.unwrap_or(f64::INFINITY)),
        ),
        MetricFamily::gauge(
            "portd_netns_watched",
            "Other network namespaces portd watches.",
            vec![Sample::new(Value::Int(n.watched as u64))],
        ),
        MetricFamily::counter(
            "portd_netns_censuses_total",
            "Censuses of other network namespaces since portd started.",
            vec![Sample::new(Value::Int(n.censuses))],
        ),
    ]
}

/// Replaces the metrics file at `path` with `text`, which [`render`] made.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    check_target(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics path has no file name",
        )
    })?;
    // Rebuilt every poll: replaced by a rename, never fsynced (fsutil.rs).
    fsutil::replace_ephemeral(dir, name, text.as_bytes(), 0o644)
}

/// The file is replaced by a rename: only a regular file, or nothing, may be
/// at the path. A symlink, FIFO, socket, device or directory there is not a
/// metrics file portd made, so it is left alone and the error says so.
fn check_target(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "device"
    } else {
        "file of unknown type"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "it is a {what}, not a regular file; portd replaces only a regular file there \
             (or creates one): point metrics.file at a path of its own"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::authority::Why;

    #[test]
    fn only_a_regular_file_or_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("portd.prom");
        std::fs::write(&regular, "old\n").unwrap();
        assert!(check_target(&regular).is_ok());
        assert!(check_target(&dir.path().join("absent.prom")).is_ok());

        let link = dir.path().join("link.prom");
        std::os::unix::fs::symlink(&regular, &link).unwrap();
        let fifo = dir.path().join("fifo.prom");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let subdir = dir.path().join("dir.prom");
        std::fs::create_dir(&subdir).unwrap();
        for (path, what) in [
            (&link, "symbolic link"),
            (&fifo, "FIFO"),
            (&subdir, "directory"),
        ] {
            let error = check_target(path).unwrap_err().to_string();
            assert!(
                error.contains(what) && error.contains("not a regular file"),
                "{error}"
            );
        }
        assert!(check_target(Path::new("/dev/null")).is_err());
    }

    fn authority_lines(authority: &Authority) -> String {
        text(&[info(authority), yielded(authority)])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace(env!("CARGO_PKG_VERSION"), "V"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn an_unreadable_state_shows_as_advise_in_the_metrics_too() {
        assert_eq!(
            authority_lines(&Authority::Advise(Why::StateUnreadable("bad json".into()))),
            "portd_info{version=\"V\",mode=\"advise\",advise_reason=\"state-unreadable\"} 1\nportd_yielded 0"
        );
    }

    #[test]
    fn the_metrics_name_each_authority() {
        let cases = [
            (Authority::Write, "auto", "", 0),
            (Authority::Advise(Why::Policy), "advise", "policy", 0),
            (Authority::Advise(Why::DryRun), "dry-run", "dry-run", 0),
            (
                Authority::Advise(Why::Yielded("admin".into())),
                "advise",
                "yielded",
                1,
            ),
        ];
        for (authority, mode, reason, yielded) in cases {
            assert_eq!(
                authority_lines(&authority),
                format!(
                    "portd_info{{version=\"V\",mode=\"{mode}\",advise_reason=\"{reason}\"}} 1\nportd_yielded {yielded}"
                ),
                "{authority:?}"
            );
        }
    }

    fn failure(destination: Option<&str>, comm: &str, count: u64) -> FailureRow {
        FailureRow {
            local: "10.0.0.1".parse().expect("addr"),
            destination: destination.map(|d| d.parse().expect("addr")),
            protocol: if destination.is_some() { "tcp" } else { "udp" },
            comm: comm.into(),
            count,
        }
    }

    fn samples(families: &[MetricFamily]) -> Vec<String> {
        text(families)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn witness_rows_with_equal_labels_are_summed_and_the_rest_is_one_other_row() {
        let rows = WitnessRows {
            active: true,
            connect: FailureRows {
                // The same destination and comm in two namespaces.
                shown: vec![
                    failure(Some("10.0.0.9:443"), "cu\"rl", 3),
                    failure(Some("10.0.0.2:80"), "curl", 1),
                    failure(Some("10.0.0.9:443"), "cu\"rl", 4),
                ],
                other: 20,
            },
            bind: FailureRows::default(),
            udp_autobind: FailureRows {
                shown: vec![failure(None, "", 2)],
                other: 0,
            },
            dropped: 5,
        };
        assert_eq!(
            samples(&witness(&rows)),
            [
                "portd_witness_active 1",
                "portd_connect_failures_total{local=\"10.0.0.1\",remote=\"10.0.0.2\",remote_port=\"80\",comm=\"curl\"} 1",
                "portd_connect_failures_total{local=\"10.0.0.1\",remote=\"10.0.0.9\",remote_port=\"443\",comm=\"cu\\\"rl\"} 7",
                "portd_connect_failures_total{local=\"other\",remote=\"other\",remote_port=\"other\",comm=\"other\"} 20",
                "portd_udp_autobind_failures_total{proto=\"udp\",local=\"10.0.0.1\",comm=\"\"} 2",
                "portd_witness_dropped_total 5",
            ]
        );
        assert_eq!(
            samples(&allocation_failures(&rows).into_iter().collect::<Vec<_>>()),
            ["portd_port_allocation_failures_total 30"],
            "the three families, other rows included, not the dropped"
        );
        let help = text(&witness(&rows));
        assert!(help.contains(&format!("(at most {TOP_SERIES} series, the rest in one row labelled other).\n# TYPE portd_bind_failures_total counter\n")), "{help}");
        assert_eq!(
            samples(&witness(&WitnessRows::default())),
            ["portd_witness_active 0"]
        );
        assert!(allocation_failures(&WitnessRows::default()).is_none());
    }

    #[test]
    fn the_total_of_allocation_failures_is_zero_from_the_moment_the_witness_is_attached() {
        let attached = WitnessRows {
            active: true,
            ..WitnessRows::default()
        };
        assert_eq!(
            samples(
                &allocation_failures(&attached)
                    .into_iter()
                    .collect::<Vec<_>>()
            ),
            ["portd_port_allocation_failures_total 0"]
        );
        let help = text(
            &allocation_failures(&attached)
                .into_iter()
                .collect::<Vec<_>>(),
        );
        assert!(
            help.contains("# TYPE portd_port_allocation_failures_total counter\n"),
            "{help}"
        );
    }

    #[test]
    fn netns_rows_are_labelled_netns_container_pod_pod_namespace_never_a_pid() {
        let rows = NetnsRows {
            top: vec![NetnsRow {
                inode: 7,
                container: "envoy".into(),
                pod: "\"checkout\"".into(),
                pod_namespace: "shop".into(),
                usage: 0.6,
                used: 600,
                level: Level::Critical,
                time_to_exhaustion: Some(41.5),
            }],
            other: Some(NetnsOther {
                usage: 0.3,
                used: 300,
                level: Level::Warning,
                time_to_exhaustion: Some(90.0),
            }),
            watched: 31,
            censuses: 3,
        };
        let labels = "{netns=\"net:[7]\",container=\"envoy\",pod=\"\\\"checkout\\\"\",pod_namespace=\"shop\"}";
        let other = "{netns=\"other\",container=\"other\",pod=\"other\",pod_namespace=\"other\"}";
        assert_eq!(
            samples(&netns(&rows)),
            [
                format!("portd_netns_usage_ratio{labels} 0.6"),
                format!("portd_netns_usage_ratio{other} 0.3"),
                format!("portd_netns_used_ports{labels} 600"),
                format!("portd_netns_used_ports{other} 300"),
                format!("portd_netns_alert_level{labels} 2"),
                format!("portd_netns_alert_level{other} 1"),
                format!("portd_netns_time_to_exhaustion_seconds{labels} 41.5"),
                format!("portd_netns_time_to_exhaustion_seconds{other} 90"),
                "portd_netns_watched 31".into(),
                "portd_netns_censuses_total 3".into(),
            ]
        );
    }

    #[test]
    fn the_file_has_every_family_once_and_the_others_only_with_their_rows() {
        let usage = crate::judge::forecast::tests::census(&[(1, 10, 5)]);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let (witness, netns) = (WitnessRows::default(), Some(NetnsRows::default()));
        let mut s = Snapshot {
            usage: &usage,
            level: Level::Ok,
            changes_total: 0,
            census_duration: Duration::from_millis(2),
            census_at: at,
            polled_at: at,
            censuses_total: 1,
            census_skipped_total: 0,
            census_failed_total: 0,
            census_abandoned_total: 0,
            last_change_at: None,
            widening_blocked: None,
            authority: &Authority::Write,
            witness: &witness,
            netns: &None,
            time_to_exhaustion: None,
            connect_attempts_total: None,
        };
        let names = |s: &Snapshot<'_>| -> Vec<String> {
            render(s)
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .map(|l| l.split(' ').next().unwrap_or_default().to_string())
                .collect()
        };
        let without = names(&s);
        assert_eq!(without.first().map(String::as_str), Some("portd_info"));
        assert_eq!(
            without.last().map(String::as_str),
            Some("portd_time_to_exhaustion_seconds")
        );
        assert!(render(&s).ends_with("portd_time_to_exhaustion_seconds +Inf\n"));
        assert!(render(&s).contains("portd_widening_blocked{reason=\"\"} 0\n"));
        assert!(!without.iter().any(|n| n.starts_with("portd_netns_")));
        s.netns = &netns;
        let with = names(&s);
        assert_eq!(with.len(), without.len() + 6, "{with:?}");
        let unique: std::collections::BTreeSet<&String> = with.iter().collect();
        assert_eq!(unique.len(), with.len(), "each family once");
    }
}
