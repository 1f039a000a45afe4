//! Drives the failure witness alone (tests/suite/witness_counts.rs and the
//! cost measurement in docs/benchmarks.md): starts it, prints one JSON line
//! `{"path": ...}` or `{"unavailable": reason}`, then for each line read on
//! stdin prints the counters since start as one JSON line (per key, with the
//! last process counted under it); exits at EOF.
//! With `--stats`, holds BPF_ENABLE_STATS (fd-scoped) and adds the programs'
//! run time and run count to each line.

use std::collections::BTreeMap;
use std::io::BufRead;

use portd::observe::witness::{self, Witness};
use serde_json::json;

fn main() {
    let stats = std::env::args().any(|a| a == "--stats");
    let mut w = match Witness::start() {
        Ok(w) => w,
        Err(e) => {
            println!("{}", json!({ "unavailable": e.to_string() }));
            return;
        }
    };
    let _stats_fd = if stats {
        match witness::enable_stats() {
            Ok(fd) => Some(fd),
            Err(e) => {
                println!(
                    "{}",
                    json!({ "unavailable": format!("BPF_ENABLE_STATS: {e}") })
                );
                return;
            }
        }
    } else {
        None
    };
    println!("{}", json!({ "path": w.path().as_str() }));
    let mut totals: BTreeMap<witness::FailureKey, (u64, Option<u32>, String)> = BTreeMap::new();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let reading = match w.read() {
            Ok(r) => r,
            Err(e) => {
                println!("{}", json!({ "error": e }));
                continue;
            }
        };
        // Each read brings what is new: add it up.
        for c in reading.counts {
            let e = totals.entry(c.key).or_insert((0, None, String::new()));
            e.0 += c.new;
            e.1 = c.pid;
            e.2 = c.process;
        }
        let counts: Vec<_> = totals
            .iter()
            .map(|(k, (n, pid, process))| {
                json!({
                    "netns": k.netns,
                    "kind": k.kind.as_str(),
                    "protocol": k.protocol,
                    "local": k.local.to_string(),
                    "destination": k.destination.map(|d| d.to_string()),
                    "pid": pid,
                    "comm": k.comm.as_deref().unwrap_or(process),
                    "count": n,
                })
            })
            .collect();
        let (run_ns, runs) = if stats {
            w.run_stats().unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        println!(
            "{}",
            json!({
                "counts": counts,
                "dropped": reading.dropped,
                "run_time_ns": run_ns,
                "run_count": runs,
            })
        );
    }
}
