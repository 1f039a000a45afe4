//! The witness as the daemon runs it: started once (saying once which path
//! it uses, or why none), read once per poll, and rendered for the journal
//! (first failure per destination or pool), the metrics file's rows and the
//! live view. The daemon calls [`Running::start`], [`Running::poll`],
//! [`Running::metrics`] and [`Running::live`]; the watch over the other
//! namespaces [`Running::follow`] and [`Running::take_others`].
//!
//! Failures are keyed by network namespace inode (the kernel's
//! `net->ns.inum`, the inode of `/proc/PID/ns/net`, the key the watch over
//! the other namespaces keeps them by): portd's own namespace's decide
//! portd's own judgement ([`Running::poll`]); those of another namespace
//! that watch follows are counted for its judgement ([`Running::take_others`]).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::observe::witness::Witness;
use crate::observe::witness::tally::{self, Row, Tally};
use crate::publish::events::{Entry, Kind, note};
use crate::publish::live;
use crate::publish::metrics;

pub struct Running {
    witness: Option<Witness>,
    /// The path in use, or why there is none (said once at start).
    pub describe: String,
    tally: Tally,
    read_error: Option<String>,
    /// Failures in other namespaces since the watch over them last took
    /// them, by namespace inode.
    others: HashMap<u64, u64>,
    /// Another namespace could not be watched (said once).
    full: bool,
    /// Readings that changed what the witness shows (a failure counted, a
    /// drop, a read error come or gone).
    changes: Changes,
}

/// How many readings changed what the witness shows, and when the last
/// one did.
#[derive(Default)]
struct Changes {
    count: u64,
    last: Option<Instant>,
}

impl Changes {
    fn seen(&mut self, now: Instant) {
        self.count += 1;
        self.last = Some(now);
    }
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
            others: HashMap::new(),
            full: false,
            changes: Changes::default(),
        }
    }

    /// The witness counts failures in the other namespaces `inodes` (those
    /// the watch over them follows) and no longer in those gone. The
    /// kernel's map holds 256 namespaces: beyond, the rest go without
    /// (said once).
    pub fn follow(&mut self, inodes: &HashSet<u64>) {
        let Some(w) = &mut self.witness else {
            return;
        };
        let own = w.watched().first().copied();
        let gone: Vec<u64> = w
            .watched()
            .iter()
            .copied()
            .filter(|i| Some(*i) != own && !inodes.contains(i))
            .collect();
        for inode in gone {
            w.unwatch(inode);
            self.others.remove(&inode);
        }
        let new: Vec<u64> = inodes
            .iter()
            .copied()
            .filter(|i| !w.watched().contains(i))
            .collect();
        for inode in new {
            if let Err(e) = w.watch(inode) {
                if !self.full {
                    tracing::warn!(
                        "the failure witness does not count failures in every other namespace: {e}"
                    );
                }
                self.full = true;
                break;
            }
        }
    }

    /// Failures in other namespaces since the last call, by inode.
    pub fn take_others(&mut self) -> HashMap<u64, u64> {
        std::mem::take(&mut self.others)
    }

    pub fn active(&self) -> bool {
        self.witness.is_some()
    }

    /// Says once which path the witness uses, or why none.
    pub fn announce(&self) {
        let kind = if self.active() {
            Kind::Started
        } else {
            Kind::WitnessOff
        };
        note(kind, &self.describe);
    }

    /// Reads the kernel's counters once; journals the first failure per
    /// destination (TCP) or pool. Returns the failures new since the last
    /// poll: a reason for the daemon to act at once.
    pub fn poll(&mut self, now: Instant) -> u64 {
        let Some(w) = &mut self.witness else {
            return 0;
        };
        let reading = match w.read() {
            Ok(r) => {
                if self.read_error.take().is_some() {
                    self.changes.seen(now);
                    note(
                        Kind::Restored,
                        "the failure witness's counters are readable again",
                    );
                }
                r
            }
            Err(e) => {
                if self.read_error.as_deref() != Some(e.as_str()) {
                    note(
                        Kind::Degraded,
                        &format!("cannot read the failure witness's counters: {e}"),
                    );
                    self.read_error = Some(e);
                    self.changes.seen(now);
                }
                return 0;
            }
        };
        if !reading.counts.is_empty() || reading.dropped != self.tally.dropped {
            self.changes.seen(now);
        }
        let update = self.tally.observe(&reading, now);
        for first in &update.first_per_target {
            alert(first);
        }
        let own = w.watched().first().copied();
        let mut own_failures = 0;
        for c in &reading.counts {
            if Some(c.key.netns) == own {
                own_failures += c.new;
            } else {
                *self.others.entry(c.key.netns).or_default() += c.new;
            }
        }
        own_failures
    }

    /// What the witness shows stays as it is until its next reading that
    /// brings something: the count of such readings, or `None` while a
    /// failure is within the last minute the live view counts
    /// ([`tally::WINDOW`]), a count that falls as time passes.
    pub fn settled(&self, now: Instant) -> Option<u64> {
        let recent = (self.changes.last)
            .is_some_and(|at| now.saturating_duration_since(at) <= tally::WINDOW);
        (!recent).then_some(self.changes.count)
    }

    /// The rows of the metrics file's witness families.
    pub fn metrics(&self) -> metrics::WitnessRows {
        if !self.active() {
            return metrics::WitnessRows::default();
        }
        counted(&self.tally)
    }

    /// For the daemon's live view (`status`): the path, and failures in the
    /// last minute and since start per destination/pool and process.
    pub fn live(&self, now: Instant) -> live::WitnessView {
        let mut rows = self.tally.rows(now);
        rows.sort_by(|a, b| {
            (b.last_minute, b.total)
                .cmp(&(a.last_minute, a.total))
                .then_with(|| a.key.cmp(&b.key))
        });
        let not_listed = rows.len().saturating_sub(live::WITNESS_ROWS);
        live::WitnessView {
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

/// The rows of an active witness: its three families and what it could
/// not count.
fn counted(tally: &Tally) -> metrics::WitnessRows {
    let [connect, bind, udp_autobind] = tally.families().map(|f| failure_rows(&f));
    metrics::WitnessRows {
        active: true,
        connect,
        bind,
        udp_autobind,
        dropped: tally.dropped,
    }
}

/// One family's rows: at most [`tally::TOP_SERIES`] keys, the rest
/// counted as `other` (an empty comm: counted per destination or pool
/// alone because the witness's per-process map was full).
fn failure_rows(family: &tally::Family) -> metrics::FailureRows {
    metrics::FailureRows {
        shown: family
            .shown
            .iter()
            .map(|(k, count)| metrics::FailureRow {
                local: k.local,
                destination: k.destination,
                protocol: k.protocol,
                comm: k.comm.clone().unwrap_or_default(),
                count: *count,
            })
            .collect(),
        other: family.other,
    }
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
        pid: r.pid,
        // Counted per destination alone: the last process seen.
        comm: r.key.comm.clone().unwrap_or_else(|| r.process.clone()),
        total: r.total,
        last_minute: r.last_minute,
    }
}

/// The first failure towards a destination (or in a pool): one journal
/// entry naming the process.
fn alert(first: &Row) {
    Entry::allocation_failed(first).emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::witness::{FailureCount, FailureKey, FailureKind as WKind, Reading};

    fn key(kind: WKind, dest: Option<&str>, comm: &str) -> FailureKey {
        FailureKey {
            netns: 1,
            kind,
            local: "0.0.0.0".parse().expect("addr"),
            destination: dest.map(|d| d.parse().expect("addr")),
            comm: Some(comm.into()),
            protocol: if kind == WKind::TcpConnect {
                "tcp"
            } else {
                "udp"
            },
        }
    }

    fn count(key: FailureKey, new: u64, pid: u32) -> FailureCount {
        FailureCount {
            process: key.comm.clone().unwrap_or_default(),
            key,
            new,
            pid: Some(pid),
        }
    }

    fn running() -> Running {
        Running {
            witness: None,
            describe: "failure witness on: test".into(),
            tally: Tally::default(),
            read_error: None,
            others: HashMap::new(),
            full: false,
            changes: Changes::default(),
        }
    }

    #[test]
    fn metrics_count_per_process_name_and_carry_no_pid_label() {
        let mut r = running();
        let reading = Reading {
            counts: vec![
                count(key(WKind::TcpConnect, Some("10.0.0.1:443"), "curl"), 3, 10),
                count(key(WKind::TcpConnect, Some("10.0.0.1:443"), "curl"), 4, 11),
                count(key(WKind::UdpAutobind, None, "dig"), 2, 12),
            ],
            ..Reading::default()
        };
        let now = Instant::now();
        r.tally.observe(&reading, now);
        // Inactive: only the gauge.
        let inactive = metrics::text(&metrics::witness(&r.metrics()));
        assert_eq!(inactive.lines().last(), Some("portd_witness_active 0"));
        let text = metrics::text(&metrics::witness(&counted(&r.tally)));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "portd_witness_active 1",
                "portd_connect_failures_total{local=\"0.0.0.0\",remote=\"10.0.0.1\",remote_port=\"443\",comm=\"curl\"} 7",
                "portd_udp_autobind_failures_total{proto=\"udp\",local=\"0.0.0.0\",comm=\"dig\"} 2",
                "portd_witness_dropped_total 0",
            ]
        );
        assert!(!text.contains("pid"));
    }

    #[test]
    fn metrics_show_the_top_keys_and_one_other_row_per_family() {
        let mut r = running();
        let keys: Vec<FailureKey> = (0..30)
            .map(|i| key(WKind::TcpConnect, Some("10.0.0.1:443"), &format!("w{i:02}")))
            .collect();
        let mut counts: Vec<FailureCount> = keys.iter().map(|k| count(k.clone(), 2, 10)).collect();
        let mut pool = key(WKind::UdpAutobind, None, "dig");
        pool.comm = None; // counted per pool alone
        counts.push(count(pool, 1, 12));
        r.tally.observe(
            &Reading {
                counts,
                ..Reading::default()
            },
            Instant::now(),
        );
        r.tally.dropped = 3;
        let text = metrics::text(&metrics::witness(&counted(&r.tally)));
        let connect: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("portd_connect_failures_total"))
            .collect();
        assert_eq!(connect.len(), tally::TOP_SERIES + 1, "{text}");
        assert_eq!(
            connect.last().copied(),
            Some(
                "portd_connect_failures_total{local=\"other\",remote=\"other\",remote_port=\"other\",comm=\"other\"} 20"
            )
        );
        let sum: u64 = connect
            .iter()
            .map(|l| {
                l.rsplit_once(' ')
                    .expect("sample")
                    .1
                    .parse::<u64>()
                    .expect("value")
            })
            .sum();
        assert_eq!(sum, 60, "every failure counted once");
        assert!(
            text.contains(
                "portd_udp_autobind_failures_total{proto=\"udp\",local=\"0.0.0.0\",comm=\"\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("portd_witness_dropped_total 3"));
    }

    #[test]
    fn the_live_view_lists_the_latest_and_largest_first_within_the_limit() {
        let mut r = running();
        let t0 = Instant::now();
        let old = key(WKind::TcpConnect, Some("10.0.0.1:443"), "old");
        r.tally.observe(
            &Reading {
                counts: vec![count(old, 100, 10)],
                ..Reading::default()
            },
            t0,
        );
        let mut counts = Vec::new();
        for i in 0..60u16 {
            let dest = format!("10.0.1.{}:80", i + 1);
            counts.push(count(
                key(WKind::TcpConnect, Some(&dest), "new"),
                u64::from(i) + 1,
                20,
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
        assert_eq!(v.failures[0].pid, Some(20));
        assert!(
            v.failures.iter().all(|f| f.comm == "new"),
            "the old key is left out last"
        );
    }
}
