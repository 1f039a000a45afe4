//! Prometheus text format for node_exporter's textfile collector, written
//! atomically after each poll when the policy names a metrics file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::fsutil;
use crate::level::Level;
use crate::usage::Usage;

/// Destinations exported with labels: bounded, so a host with 100k
/// destinations does not explode the series count.
pub const TOP_DESTINATIONS: usize = 10;

pub struct Snapshot<'a> {
    pub usage: &'a Usage,
    pub level: Level,
    pub changes_total: u64,
    pub census_duration: Duration,
    pub census_at: SystemTime,
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(s: &Snapshot<'_>) -> String {
    let u = s.usage;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let range = u.settings.port_range;
    gauge(
        "portd_range_low",
        "Low end of net.ipv4.ip_local_port_range.",
        &one(f64::from(range.low())),
    );
    gauge(
        "portd_range_high",
        "High end of net.ipv4.ip_local_port_range.",
        &one(f64::from(range.high())),
    );
    gauge(
        "portd_range_ports",
        "Ports in the range.",
        &one(f64::from(u.range_size)),
    );
    gauge(
        "portd_capacity_ports",
        "Ports connect() can hand out towards one destination (range minus reserved and listening ports).",
        &one(u.capacity as f64),
    );
    gauge(
        "portd_headline_usage_ratio",
        "Worst per-destination or UDP pool usage (0-1).",
        &one(u.headline.usage.0),
    );
    gauge(
        "portd_alert_level",
        "Headline level: 0 ok, 1 warning, 2 critical.",
        &one(f64::from(s.level.exit_code())),
    );
    gauge(
        "portd_destinations",
        "Distinct (local address, remote address, remote port) destinations using the range.",
        &one(u.destinations.len() as f64),
    );
    let top: Vec<_> = u.destinations.iter().take(TOP_DESTINATIONS).collect();
    let dest_labels = |d: &crate::usage::DestUsage| {
        format!(
            "{{local=\"{}\",remote=\"{}\",remote_port=\"{}\"}}",
            label(&d.key.local.to_string()),
            label(&d.key.remote.to_string()),
            d.key.remote_port
        )
    };
    gauge(
        "portd_destination_used_ports",
        "Ports in use towards one of the top destinations.",
        &top.iter()
            .map(|d| (dest_labels(d), d.used as f64))
            .collect::<Vec<_>>(),
    );
    gauge(
        "portd_destination_usage_ratio",
        "Usage of one of the top destinations (0-1).",
        &top.iter()
            .map(|d| (dest_labels(d), d.usage.0))
            .collect::<Vec<_>>(),
    );
    let pools = [
        ("tcp", &u.pools.tcp),
        ("udp", &u.pools.udp),
        ("sctp", &u.pools.sctp),
    ];
    gauge(
        "portd_pool_used_ports",
        "Distinct local ports of the range in use, per protocol.",
        &pools
            .iter()
            .map(|(p, pool)| (format!("{{proto=\"{p}\"}}"), pool.used as f64))
            .collect::<Vec<_>>(),
    );
    gauge(
        "portd_pool_usage_ratio",
        "Pool usage per protocol (0-1).",
        &pools
            .iter()
            .map(|(p, pool)| (format!("{{proto=\"{p}\"}}"), pool.usage.0))
            .collect::<Vec<_>>(),
    );
    gauge(
        "portd_time_wait_sockets",
        "TCP sockets in TIME_WAIT.",
        &one(u.time_wait_total as f64),
    );
    gauge(
        "portd_census_duration_seconds",
        "Time the last census took.",
        &one(s.census_duration.as_secs_f64()),
    );
    gauge(
        "portd_census_timestamp_seconds",
        "When the last census was taken (Unix time).",
        &one(s
            .census_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())),
    );
    let _ = writeln!(
        out,
        "# HELP portd_range_changes_total Range changes portd made (kept in its state).\n# TYPE portd_range_changes_total counter\nportd_range_changes_total {}",
        s.changes_total
    );
    out
}

pub fn write(path: &Path, s: &Snapshot<'_>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics path has no file name",
        )
    })?;
    fsutil::atomic_write(dir, name, render(s).as_bytes(), 0o644)
}
