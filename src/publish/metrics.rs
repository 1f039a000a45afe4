//! Prometheus text format for node_exporter's textfile collector, written
//! atomically after each poll when the policy names a metrics file.
//! Example alerting rules: `packaging/prometheus/portd-alerts.yml`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::base::fsutil;
use crate::judge::authority::Authority;
use crate::judge::level::Level;
use crate::observe::usage::{DestUsage, Usage};

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
    /// The failure witness's families, rendered by witness/runtime.rs and
    /// appended as they are.
    pub witness: &'a str,
    /// The families of the other network namespaces
    /// (`portd_netns_*{netns,container,pod}`, src/daemon/netns.rs),
    /// appended as they are; empty when there are none.
    pub netns: &'a str,
    /// Seconds until the first destination or pool runs out at the last
    /// census's forecast (forecast.rs); `None` when nothing is growing.
    pub time_to_exhaustion: Option<f64>,
    /// `Tcp: ActiveOpens` of the namespace at this poll: connect() attempts.
    pub connect_attempts_total: Option<u64>,
}

/// A label value, escaped for the text format.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes families of samples: `# HELP`, `# TYPE`, then `name{labels} value`.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help, &[(String::new(), v)]);
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, "counter", help, &[(String::new(), v as f64)]);
    }
}

fn dest_labels(d: &DestUsage) -> String {
    format!(
        "{{local=\"{}\",remote=\"{}\",remote_port=\"{}\"}}",
        label(&d.key.local.to_string()),
        label(&d.key.remote.to_string()),
        d.key.remote_port
    )
}

// A flat list of metric families in the order the file shows them: each
// block is one family's HELP, TYPE and samples; splitting it would only
// scatter the file's layout over helpers.
#[allow(clippy::too_many_lines)]
pub fn render(s: &Snapshot<'_>) -> String {
    let u = s.usage;
    let mut out = Out(String::new());
    info(&mut out, s.authority);
    let range = u.settings.port_range;
    out.gauge(
        "portd_range_low",
        "Low end of net.ipv4.ip_local_port_range.",
        f64::from(range.low()),
    );
    out.gauge(
        "portd_range_high",
        "High end of net.ipv4.ip_local_port_range.",
        f64::from(range.high()),
    );
    out.gauge(
        "portd_range_ports",
        "Ports in the range.",
        f64::from(u.range_size),
    );
    out.gauge(
        "portd_reserved_ports_in_range",
        "Ports of the range in net.ipv4.ip_local_reserved_ports.",
        f64::from(u.reserved_in_range),
    );
    out.gauge(
        "portd_capacity_ports",
        "Ports connect() can hand out towards one destination (range minus reserved and listening ports).",
        u.capacity as f64,
    );
    out.gauge(
        "portd_headline_usage_ratio",
        "Worst per-destination or UDP pool usage (0-1).",
        u.headline.usage.fraction(),
    );
    out.gauge(
        "portd_headline_used_ports",
        "Ports in use by the worst destination or pool.",
        u.headline.used as f64,
    );
    out.gauge(
        "portd_alert_level",
        "Confirmed headline level (hold and hysteresis applied): 0 ok, 1 warning, 2 critical.",
        f64::from(s.level.exit_code()),
    );
    out.gauge(
        "portd_destinations",
        "Distinct (local address, remote address, remote port) destinations using the range.",
        u.destinations.len() as f64,
    );
    let top = &u.destinations[..u.destinations.len().min(TOP_DESTINATIONS)];
    out.family(
        "portd_destination_used_ports",
        "gauge",
        "Ports in use towards one of the top destinations (at most 10 are listed).",
        &top.iter()
            .map(|d| (dest_labels(d), d.used as f64))
            .collect::<Vec<_>>(),
    );
    out.family(
        "portd_destination_usage_ratio",
        "gauge",
        "Usage of one of the top destinations (0-1).",
        &top.iter()
            .map(|d| (dest_labels(d), d.usage.fraction()))
            .collect::<Vec<_>>(),
    );
    let pools = [
        ("tcp", &u.pools.tcp),
        ("udp", &u.pools.udp),
        ("sctp", &u.pools.sctp),
    ];
    let per_pool = |f: &dyn Fn(&crate::observe::usage::Pool) -> f64| {
        pools
            .iter()
            .map(|(p, pool)| (format!("{{proto=\"{p}\"}}"), f(pool)))
            .collect::<Vec<_>>()
    };
    out.family(
        "portd_pool_used_ports",
        "gauge",
        "Distinct local ports of the range in use, per protocol.",
        &per_pool(&|p| p.used as f64),
    );
    out.family(
        "portd_pool_capacity_ports",
        "gauge",
        "Ports of the range a pool can use, per protocol.",
        &per_pool(&|p| p.capacity as f64),
    );
    out.family(
        "portd_pool_usage_ratio",
        "gauge",
        "Pool usage per protocol (0-1).",
        &per_pool(&|p| p.usage.fraction()),
    );
    out.gauge(
        "portd_time_wait_in_range_sockets",
        "TCP sockets in TIME_WAIT on unreserved ports of the range (the only ones the census reads).",
        u.time_wait_in_range as f64,
    );
    out.gauge(
        "portd_reusable_time_wait_sockets",
        "TIME_WAIT sockets in the range that tcp_tw_reuse lets connect() reuse (not counted as used).",
        u.reusable_time_wait as f64,
    );
    out.gauge(
        "portd_census_duration_seconds",
        "Time the last full census took.",
        s.census_duration.as_secs_f64(),
    );
    out.gauge(
        "portd_census_timestamp_seconds",
        "When the last full census was taken (Unix time).",
        unix_seconds(s.census_at),
    );
    out.gauge(
        "portd_poll_timestamp_seconds",
        "When portd last polled, with or without a census (Unix time).",
        unix_seconds(s.polled_at),
    );
    out.counter(
        "portd_censuses_total",
        "Full censuses taken since portd started.",
        s.censuses_total,
    );
    out.counter(
        "portd_census_skipped_total",
        "Polls that skipped the census because the O(1) bounds stayed below the warning level.",
        s.census_skipped_total,
    );
    out.family(
        "portd_census_failures_total",
        "counter",
        "Censuses that failed (error) or outlived the watchdog interval (abandoned).",
        &[
            (
                "{reason=\"error\"}".to_string(),
                s.census_failed_total as f64,
            ),
            (
                "{reason=\"abandoned\"}".to_string(),
                s.census_abandoned_total as f64,
            ),
        ],
    );
    out.counter(
        "portd_range_changes_total",
        "Range changes portd made since it started.",
        s.changes_total,
    );
    if let Some(at) = s.last_change_at {
        out.gauge(
            "portd_last_change_timestamp_seconds",
            "When portd last changed the range (Unix time).",
            unix_seconds(at),
        );
    }
    out.family(
        "portd_widening_blocked",
        "gauge",
        "1 while usage calls for a wider range that portd may not or cannot write; reason says why.",
        &[match s.widening_blocked {
            Some(reason) => (format!("{{reason=\"{}\"}}", label(reason)), 1.0),
            None => ("{reason=\"\"}".to_string(), 0.0),
        }],
    );
    yielded(&mut out, s.authority);
    out.0.push_str(s.witness);
    out.0.push_str(s.netns);
    forecast(&mut out, s);
    out.0
}

/// The forecast's time to exhaustion (`+Inf` when nothing grows towards it)
/// and the connection attempts as a counter, for `rate()`.
fn forecast(out: &mut Out, s: &Snapshot<'_>) {
    let _ = writeln!(
        out.0,
        "# HELP portd_time_to_exhaustion_seconds Seconds until the first destination or pool runs out at the growth of the last censuses (+Inf when none is growing towards it).\n\
         # TYPE portd_time_to_exhaustion_seconds gauge\n\
         portd_time_to_exhaustion_seconds {}",
        s.time_to_exhaustion
            .map_or_else(|| "+Inf".to_string(), |t| t.to_string())
    );
    if let Some(n) = s.connect_attempts_total {
        out.counter(
            "portd_connect_attempts_total",
            "TCP connect() attempts in the namespace (Tcp: ActiveOpens of /proc/net/snmp); rate() gives connections per second.",
            n,
        );
    }
}

/// `portd_info`: what portd may do now, as the STATUS line says it.
fn info(out: &mut Out, authority: &Authority) {
    out.family(
        "portd_info",
        "gauge",
        "portd's version and mode (auto, advise, dry-run); advise_reason says why it only advises (policy, dry-run, yielded, state-unreadable).",
        &[(
            format!(
                "{{version=\"{}\",mode=\"{}\",advise_reason=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                authority.mode_label(),
                authority.reason_label()
            ),
            1.0,
        )],
    );
}

fn yielded(out: &mut Out, authority: &Authority) {
    out.gauge(
        "portd_yielded",
        "1 while portd yields to an admin who changed the range (advise only until a reload).",
        f64::from(u8::from(authority.yielded())),
    );
}

pub fn write(path: &Path, s: &Snapshot<'_>) -> std::io::Result<()> {
    check_target(path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics path has no file name",
        )
    })?;
    fsutil::atomic_write(dir, name, render(s).as_bytes(), 0o644)
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
        let mut out = Out(String::new());
        info(&mut out, authority);
        yielded(&mut out, authority);
        out.0
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
}
