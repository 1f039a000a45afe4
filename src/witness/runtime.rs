//! The witness as the daemon runs it: started once (saying once which path
//! it uses, or why none), read once per poll, and rendered for the journal
//! (first failure per destination or pool), the metrics file and the live
//! view. The daemon calls [`Running::start`], [`Running::poll`],
//! [`Running::metrics`] and [`Running::live`]; nothing else of it.

use std::fmt::Write as _;
use std::time::Instant;

use super::tally::{Row, Tally};
use super::{FailureKey, Witness};
use crate::events::{self, Fields, Kind};
use crate::live;

pub struct Running {
    witness: Option<Witness>,
    /// The path in use, or why there is none (said once at start).
    pub describe: String,
    tally: Tally,
    read_error: Option<String>,
}

impl Running {
    /// Starts the witness when portd watches the live host; `fixture` is
    /// the reason it does not (a test's host root). The caller says
    /// [`Running::describe`] once.
    pub fn start(fixture: Option<&str>) -> Running {
        let (witness, describe) = match fixture {
            Some(why) => (None, format!("failure witness off: {why}")),
            None => match Witness::start() {
                Ok(w) => {
                    let d = format!(
                        "failure witness on: {} ({})",
                        w.path().as_str(),
                        w.path().blind_spots()
                    );
                    (Some(w), d)
                }
                Err(e) => (
                    None,
                    format!("failure witness off: {e}; portd works from the socket census alone"),
                ),
            },
        };
        Running {
            witness,
            describe,
            tally: Tally::default(),
            read_error: None,
        }
    }

    pub fn active(&self) -> bool {
        self.witness.is_some()
    }

    /// Reads the kernel's counters once; journals the first failure per
    /// destination (TCP) or pool. Returns the failures new since the last
    /// poll: a reason for the daemon to act at once.
    pub fn poll(&mut self, now: Instant) -> u64 {
        let Some(w) = &self.witness else {
            return 0;
        };
        let reading = match w.read() {
            Ok(r) => {
                if self.read_error.take().is_some() {
                    tracing::info!("the failure witness's counters are readable again");
                }
                r
            }
            Err(e) => {
                if self.read_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("cannot read the failure witness's counters: {e}");
                    self.read_error = Some(e);
                }
                return 0;
            }
        };
        let update = self.tally.observe(&reading, now);
        for (key, count) in &update.first_per_target {
            alert(key, *count);
        }
        update.new_failures
    }

    /// Metric families, appended to the metrics file (DESIGN.md naming:
    /// counters end in `_total`; labels by comm, never by pid).
    pub fn metrics(&self, now: Instant) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP portd_witness_active Whether the failure witness counts failed port allocations (1) or not (0).\n\
             # TYPE portd_witness_active gauge\nportd_witness_active {}",
            u8::from(self.active())
        );
        if !self.active() {
            return out;
        }
        out.push_str(&families(&self.tally.rows(now), self.tally.dropped));
        out
    }

    /// For the daemon's live view (`status`): the path, and failures in the
    /// last minute and since start per destination/pool and process.
    pub fn live(&self, now: Instant) -> live::Witness {
        let mut rows = self.tally.rows(now);
        rows.sort_by(|a, b| {
            (b.last_minute, b.total)
                .cmp(&(a.last_minute, a.total))
                .then_with(|| a.key.cmp(&b.key))
        });
        let not_listed = rows.len().saturating_sub(live::WITNESS_ROWS);
        live::Witness {
            active: self.active(),
            describe: self.describe.clone(),
            failures_total: self.tally.total(),
            last_minute_total: rows.iter().map(|r| r.last_minute).sum(),
            dropped_total: self.tally.dropped,
            failures: rows.iter().take(live::WITNESS_ROWS).map(live_row).collect(),
            failures_not_listed: not_listed,
        }
    }
}

/// The counter families of the rows (keys that differ only by pid are
/// summed: labels carry the comm, never the pid).
fn families(rows: &[Row], dropped: u64) -> String {
    let mut families: [(&str, &str, Vec<String>); 3] = [
        (
            "portd_connect_failures_total",
            "TCP connect() calls that failed with EADDRNOTAVAIL because no local port was free, per destination and process name.",
            Vec::new(),
        ),
        (
            "portd_bind_failures_total",
            "bind(address, 0) calls that failed with EADDRINUSE because no local port was free, per pool and process name.",
            Vec::new(),
        ),
        (
            "portd_udp_autobind_failures_total",
            "UDP connect()/sendto() on an unbound socket that failed with EAGAIN because no local port was free, per pool and process name.",
            Vec::new(),
        ),
    ];
    let mut sums: std::collections::BTreeMap<(usize, String), u64> = Default::default();
    for r in rows {
        *sums.entry(labels(&r.key)).or_default() += r.total;
    }
    for ((i, labels), v) in sums {
        families[i].2.push(format!("{}{labels} {v}", families[i].0));
    }
    let mut out = String::new();
    for (name, help, samples) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in samples {
            let _ = writeln!(out, "{s}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP portd_witness_dropped_total Failures the witness could not count (its map of counters was full).\n\
         # TYPE portd_witness_dropped_total counter\nportd_witness_dropped_total {dropped}"
    );
    out
}

fn live_row(r: &Row) -> live::WitnessedFailure {
    live::WitnessedFailure {
        kind: r.key.kind.as_str().into(),
        errno: r.key.kind.errno().into(),
        netns: r.key.netns,
        protocol: r.key.protocol.into(),
        local: r.key.local.to_string(),
        destination: r.key.destination.map(|d| d.to_string()),
        target: r.key.target(),
        pid: r.key.pid,
        comm: r.key.comm.clone(),
        total: r.total,
        last_minute: r.last_minute,
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// (family index, labels) of one key.
fn labels(k: &FailureKey) -> (usize, String) {
    match k.destination {
        Some(d) => (
            0,
            format!(
                "{{local=\"{}\",remote=\"{}\",remote_port=\"{}\",comm=\"{}\"}}",
                escape(&k.local.to_string()),
                escape(&d.ip().to_string()),
                d.port(),
                escape(&k.comm)
            ),
        ),
        None => (
            if k.kind == super::Kind::Bind0 { 1 } else { 2 },
            format!(
                "{{proto=\"{}\",local=\"{}\",comm=\"{}\"}}",
                k.protocol,
                escape(&k.local.to_string()),
                escape(&k.comm)
            ),
        ),
    }
}

/// The first failure towards a destination (or in a pool): one journal
/// entry naming the process.
fn alert(k: &FailureKey, count: u64) {
    let comm = crate::untrusted::escape(&k.comm);
    let process = match k.pid {
        Some(pid) => format!("{comm} (pid {pid})"),
        None => format!("{comm} (pid not visible from portd)"),
    };
    let message = format!(
        "port allocation failed: {} got {} {} time(s) for {}{}",
        process,
        k.kind.errno(),
        count,
        k.target(),
        match k.kind {
            super::Kind::TcpConnect => " (connect: no free local port)",
            super::Kind::Bind0 => " (bind to port 0: no free port)",
            super::Kind::UdpAutobind => " (UDP autobind: no free port)",
        }
    );
    events::emit(
        Kind::PortAllocationFailed,
        &message,
        &Fields {
            destination: Some(k.target()),
            process: Some(process),
            used: Some(count),
            reason: Some(k.kind.errno().to_string()),
            ..Fields::default()
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::{Kind as WKind, Reading};

    fn key(kind: WKind, dest: Option<&str>, pid: u32, comm: &str) -> FailureKey {
        FailureKey {
            netns: 1,
            kind,
            local: "0.0.0.0".parse().expect("addr"),
            destination: dest.map(|d| d.parse().expect("addr")),
            pid: Some(pid),
            comm: comm.into(),
            protocol: if kind == WKind::TcpConnect {
                "tcp"
            } else {
                "udp"
            },
        }
    }

    #[test]
    fn metrics_sum_over_pids_and_carry_no_pid_label() {
        let mut r = Running {
            witness: None,
            describe: String::new(),
            tally: Tally::default(),
            read_error: None,
        };
        let reading = Reading {
            counts: vec![
                (key(WKind::TcpConnect, Some("10.0.0.1:443"), 10, "curl"), 3),
                (key(WKind::TcpConnect, Some("10.0.0.1:443"), 11, "curl"), 4),
                (key(WKind::UdpAutobind, None, 12, "dig"), 2),
            ],
            ..Reading::default()
        };
        let now = Instant::now();
        r.tally.observe(&reading, now);
        // Inactive: only the gauge.
        assert_eq!(
            r.metrics(now).lines().last(),
            Some("portd_witness_active 0")
        );
        let text = families(&r.tally.rows(now), 0);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "portd_connect_failures_total{local=\"0.0.0.0\",remote=\"10.0.0.1\",remote_port=\"443\",comm=\"curl\"} 7",
                "portd_udp_autobind_failures_total{proto=\"udp\",local=\"0.0.0.0\",comm=\"dig\"} 2",
                "portd_witness_dropped_total 0",
            ]
        );
        assert!(!text.contains("pid"));
    }

    #[test]
    fn the_live_view_lists_the_latest_and_largest_first_within_the_limit() {
        let mut r = Running {
            witness: None,
            describe: "failure witness on: test".into(),
            tally: Tally::default(),
            read_error: None,
        };
        let t0 = Instant::now();
        let old = key(WKind::TcpConnect, Some("10.0.0.1:443"), 10, "old");
        r.tally.observe(
            &Reading {
                counts: vec![(old.clone(), 100)],
                ..Reading::default()
            },
            t0,
        );
        let mut counts = vec![(old, 100)];
        for i in 0..60u16 {
            let dest = format!("10.0.1.{}:80", i + 1);
            counts.push((
                key(WKind::TcpConnect, Some(&dest), 20, "new"),
                u64::from(i) + 1,
            ));
        }
        let later = t0 + std::time::Duration::from_secs(90);
        r.tally.observe(
            &Reading {
                counts,
                ..Reading::default()
            },
            later,
        );
        let v = r.live(later);
        assert_eq!(v.failures_total, 100 + (1..=60).sum::<u64>());
        assert_eq!(
            v.last_minute_total,
            (1..=60).sum::<u64>(),
            "the old 100 left the minute"
        );
        assert_eq!(v.failures.len(), live::WITNESS_ROWS);
        assert_eq!(v.failures_not_listed, 61 - live::WITNESS_ROWS);
        assert_eq!(v.failures[0].target, "10.0.1.60:80");
        assert_eq!(v.failures[0].last_minute, 60);
        assert!(
            v.failures.iter().all(|f| f.comm == "new"),
            "the old key is left out last"
        );
    }
}
