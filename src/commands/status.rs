//! `portd status`: a short human report or `--json`, with the
//! monitoring-plugin first line, perfdata and exit status.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::base::host::Host;
use crate::base::ports::Ratio;
use crate::judge::level::Level;
use crate::observe::attribution::{self, DestAttribution};
use crate::observe::census::{KernelSettings, SocketSource};
use crate::observe::usage::{self, Cause, DestUsage, Usage, UsageOptions};
use crate::policy;
use crate::publish::live;

/// Version of the `status --json` schema (docs/status-json.md). Bumped on any
/// change that removes or re-types a field; new fields may appear.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct StatusOptions {
    pub json: bool,
    /// Destinations to list; 0 means all.
    pub top: usize,
    pub processes: bool,
    /// Warning and critical levels (the policy's, or `--warning/--critical`).
    pub thresholds: policy::Thresholds,
    pub tcp_pool_in_headline: bool,
}

#[derive(Serialize)]
struct ThresholdsShown {
    warning: Ratio,
    critical: Ratio,
}

#[derive(Serialize)]
struct StatusReport<'a> {
    schema_version: u32,
    status: Level,
    exit_code: u8,
    thresholds: ThresholdsShown,
    #[serde(flatten)]
    usage: ReportUsage<'a>,
    destination_count: usize,
    destinations: Vec<ReportDest<'a>>,
    /// Present with `--processes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution_note: Option<&'static str>,
    /// The daemon's live view (live.rs), or why there is none.
    daemon: live::DaemonReport<'a>,
}

#[derive(Serialize)]
struct ReportUsage<'a> {
    source: &'static str,
    sees_bound_only: bool,
    range: crate::base::ports::PortRange,
    range_size: u32,
    reserved_ports: &'a crate::base::ports::PortSet,
    reserved_in_range: u32,
    unprivileged_port_start: u16,
    tcp_tw_reuse: crate::base::kernel::TwReuse,
    listeners_in_range: &'a [u16],
    capacity: u64,
    headline: &'a usage::Headline,
    pools: &'a usage::Pools,
    hazards: &'a [usage::Hazard],
    accepted_excluded: u64,
    reusable_time_wait: u64,
    time_wait_in_range: u64,
    sockets_in_range: u64,
}

#[derive(Serialize)]
struct ReportDest<'a> {
    #[serde(flatten)]
    dest: &'a DestUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution: Option<&'a DestAttribution>,
}

/// What `status` computed: the text to print and the exit status.
pub struct Outcome {
    pub text: String,
    pub level: Level,
}

/// Takes a census and renders the report. Never fails: a read error is an
/// UNKNOWN result naming what could not be read.
pub fn run(host: &Host, source: &dyn SocketSource, opts: &StatusOptions) -> Outcome {
    match measure(host, source, opts) {
        Ok((usage, attribution)) => {
            let daemon = live::read(host, SystemTime::now());
            render(&usage, attribution.as_deref(), &daemon, opts)
        }
        Err(error) => unknown(&error, opts.json),
    }
}

pub fn unknown(error: &str, json: bool) -> Outcome {
    let text = if json {
        let v = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "status": Level::Unknown,
            "exit_code": Level::Unknown.exit_code(),
            "error": error,
        });
        format!("{v:#}\n")
    } else {
        format!("PORTD UNKNOWN - {error}\n")
    };
    Outcome {
        text,
        level: Level::Unknown,
    }
}

type UsageAndHolders = (Usage, Option<Vec<DestAttribution>>);

fn measure(
    host: &Host,
    source: &dyn SocketSource,
    opts: &StatusOptions,
) -> Result<UsageAndHolders, String> {
    let settings = KernelSettings::read(host).map_err(|e| e.to_string())?;
    let usage = usage::take_census(
        source,
        settings,
        UsageOptions {
            tcp_pool_in_headline: opts.tcp_pool_in_headline,
        },
    )
    .map_err(|e| e.to_string())?;
    let attribution = if opts.processes {
        let keys: Vec<_> = top(&usage, opts.top).iter().map(|d| d.key).collect();
        Some(attribution::attribute(host, source, &usage, &keys).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok((usage, attribution))
}

fn top(usage: &Usage, n: usize) -> &[DestUsage] {
    let n = if n == 0 { usage.destinations.len() } else { n };
    &usage.destinations[..n.min(usage.destinations.len())]
}

const ATTRIBUTION_NOTE: &str =
    "sockets with inode 0 (TIME_WAIT, orphaned FIN_WAIT2) are counted but belong to no process";

pub fn render(
    usage: &Usage,
    attribution: Option<&[DestAttribution]>,
    daemon: &live::DaemonView,
    opts: &StatusOptions,
) -> Outcome {
    let level = Level::of(
        usage.headline.usage,
        opts.thresholds.warning(),
        opts.thresholds.critical(),
    );
    let shown = top(usage, opts.top);
    let text = if opts.json {
        let report = StatusReport {
            schema_version: SCHEMA_VERSION,
            status: level,
            exit_code: level.exit_code(),
            thresholds: ThresholdsShown {
                warning: opts.thresholds.warning(),
                critical: opts.thresholds.critical(),
            },
            usage: ReportUsage {
                source: usage.source,
                sees_bound_only: usage.sees_bound_only,
                range: usage.settings.port_range,
                range_size: usage.range_size,
                reserved_ports: &usage.settings.reserved_ports,
                reserved_in_range: usage.reserved_in_range,
                unprivileged_port_start: usage.settings.unprivileged_port_start,
                tcp_tw_reuse: usage.settings.tcp_tw_reuse,
                listeners_in_range: &usage.listeners_in_range,
                capacity: usage.capacity,
                headline: &usage.headline,
                pools: &usage.pools,
                hazards: &usage.hazards,
                accepted_excluded: usage.accepted_excluded,
                reusable_time_wait: usage.reusable_time_wait,
                time_wait_in_range: usage.time_wait_in_range,
                sockets_in_range: usage.sockets_in_range,
            },
            destination_count: usage.destinations.len(),
            destinations: shown
                .iter()
                .enumerate()
                .map(|(i, d)| ReportDest {
                    dest: d,
                    attribution: attribution.and_then(|a| a.get(i)),
                })
                .collect(),
            attribution_note: attribution.map(|_| ATTRIBUTION_NOTE),
            daemon: daemon.report(),
        };
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => return unknown(&format!("cannot render JSON: {e}"), true),
        }
    } else {
        let mut text = human(usage, shown, attribution, level, opts);
        text.push_str(&daemon.line());
        text.push('\n');
        text
    };
    Outcome { text, level }
}

/// The plugin-style first line: `PORTD WARNING - ... | perfdata`.
pub fn plugin_line(usage: &Usage, level: Level, opts: &StatusOptions) -> String {
    let h = &usage.headline;
    let summary = match &h.cause {
        Cause::NoUsablePorts { .. } => h.cause.to_string(),
        cause => format!(
            "{} of ephemeral ports in use ({}/{}), worst: {cause}",
            h.usage, h.used, h.capacity
        ),
    };
    format!(
        "PORTD {} - {summary} | usage={:.2}%;{};{};0;100 used={};;;0;{} tcp_pool={:.2}%;;;0;100 udp_pool={:.2}%;;;0;100 time_wait={};;;0;",
        level.label(),
        h.usage.percent(),
        trim(opts.thresholds.warning().percent()),
        trim(opts.thresholds.critical().percent()),
        h.used,
        h.capacity,
        usage.pools.tcp.usage.percent(),
        usage.pools.udp.usage.percent(),
        usage.time_wait_in_range,
    )
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// A flat list of report lines in the order they print; splitting it would
// only scatter the report's layout over helpers.
#[allow(clippy::too_many_lines)]
fn human(
    usage: &Usage,
    shown: &[DestUsage],
    attribution: Option<&[DestAttribution]>,
    level: Level,
    opts: &StatusOptions,
) -> String {
    let s = &usage.settings;
    let mut out = plugin_line(usage, level, opts);
    out.push('\n');
    let _ = writeln!(
        out,
        "range      {} ({} ports; {} reserved and {} listening inside; ip_unprivileged_port_start {})",
        s.port_range,
        usage.range_size,
        usage.reserved_in_range,
        usage.listeners_in_range.len(),
        s.unprivileged_port_start
    );
    let _ = writeln!(
        out,
        "capacity   {} ports per destination (source: {}{})",
        usage.capacity,
        usage.source,
        if usage.sees_bound_only {
            ""
        } else {
            "; bound-only sockets are not visible to it"
        }
    );
    let _ = writeln!(
        out,
        "headline   {} ({}/{}) - {}",
        usage.headline.usage, usage.headline.used, usage.headline.capacity, usage.headline.cause
    );
    let p = &usage.pools;
    let _ = writeln!(
        out,
        "pools      tcp bind(0) {}/{} ({}), udp {}/{} ({}), sctp {}/{} ({})",
        p.tcp.used,
        p.tcp.capacity,
        p.tcp.usage,
        p.udp.used,
        p.udp.capacity,
        p.udp.usage,
        p.sctp.used,
        p.sctp.capacity,
        p.sctp.usage
    );
    let _ = writeln!(
        out,
        "excluded   {} accepted by unreserved listeners in the range, {} TIME_WAIT reusable under tcp_tw_reuse={}",
        usage.accepted_excluded,
        usage.reusable_time_wait,
        match s.tcp_tw_reuse {
            crate::base::kernel::TwReuse::Off => "0",
            crate::base::kernel::TwReuse::On => "1",
            crate::base::kernel::TwReuse::LoopbackOnly => "2 (loopback)",
        }
    );
    if shown.is_empty() {
        let _ = writeln!(out, "destinations: none use the range");
    } else {
        let _ = writeln!(
            out,
            "destinations ({} of {}, worst first):",
            shown.len(),
            usage.destinations.len()
        );
        let _ = writeln!(
            out,
            "  {:>7} {:>6}  {:<44} STATES",
            "USAGE", "USED", "LOCAL -> REMOTE"
        );
        for (i, d) in shown.iter().enumerate() {
            let states: Vec<String> = d.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "  {:>7} {:>6}  {:<44} {}",
                d.usage.to_string(),
                d.used,
                d.key.to_string(),
                states.join(", ")
            );
            if let Some(a) = attribution.and_then(|a| a.get(i)) {
                for p in &a.processes {
                    let _ = writeln!(
                        out,
                        "  {:>15}  pid {} ({}, uid {}) holds {}",
                        "",
                        p.pid,
                        crate::base::untrusted::escape(&p.command),
                        p.uid,
                        p.sockets
                    );
                }
                if a.without_inode > 0 {
                    let _ = writeln!(
                        out,
                        "  {:>15}  {} without a process (inode 0: TIME_WAIT or orphaned)",
                        "", a.without_inode
                    );
                }
                if a.not_found > 0 {
                    let _ = writeln!(
                        out,
                        "  {:>15}  {} held by no process found (exited, or not readable without root)",
                        "", a.not_found
                    );
                }
            }
        }
    }
    if !usage.hazards.is_empty() {
        let _ = writeln!(out, "hazards:");
        for h in &usage.hazards {
            let _ = writeln!(out, "  - {h}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ports::{PortRange, PortSet};
    use crate::observe::attribution::ProcessShare;
    use crate::observe::census::{Proto, Socket};

    #[test]
    fn process_names_are_escaped_in_the_processes_lines() {
        let settings = KernelSettings {
            port_range: PortRange::new(40000, 40019).unwrap(),
            reserved_ports: PortSet::new(),
            unprivileged_port_start: 1024,
            tcp_tw_reuse: crate::base::kernel::TwReuse::LoopbackOnly,
            tcp_timestamps: true,
        };
        let mut agg = usage::Aggregator::new(settings, PortSet::new());
        agg.visit(&Socket {
            proto: Proto::Tcp,
            local: [10, 0, 0, 1].into(),
            local_port: 40000,
            remote: [10, 0, 0, 2].into(),
            remote_port: 443,
            state: crate::base::kernel::TcpState::Established,
            uid: 1000,
            inode: 7,
        });
        let usage = agg.finish("fixture", true, UsageOptions::default());
        let attribution = [DestAttribution {
            processes: vec![ProcessShare {
                pid: 8,
                command: "x|y=1\nOK - \u{1b}[2J".into(),
                uid: 1000,
                sockets: 1,
            }],
            ..DestAttribution::default()
        }];
        let opts = StatusOptions {
            json: false,
            top: 10,
            processes: true,
            thresholds: policy::Policy::default().thresholds,
            tcp_pool_in_headline: false,
        };
        let none = live::DaemonView::NotRunning(live::NotRunning::Absent);
        let text = render(&usage, Some(&attribution), &none, &opts).text;
        assert!(
            text.contains("pid 8 (x\\x7cy=1\\x0aOK - \\x1b[2J, uid 1000) holds 1\n"),
            "{text}"
        );
        assert_eq!(text.matches('|').count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
