//! The per-poll cost of watching other network namespaces (issue 15):
//! discovery (`/proc/*/ns/net`, `/run/netns`) plus each namespace's O(1)
//! counters (`/proc/<pid>/net/sockstat{,6}`, `snmp`), repeated ROUNDS
//! times; prints the mean per poll and per namespace. Run as root inside a
//! private PID namespace that holds the namespaces to measure
//! (docs/benchmarks.md, "Other network namespaces").
//!
//! Usage: netns_poll [ROUNDS]

use std::time::Instant;

use portd::host::Host;
use portd::netns;

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let host = Host::default();
    let mut namespaces = 0;
    let mut read = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        let found = netns::discovery::discover(&host);
        namespaces = found.namespaces.len();
        read = 0;
        for f in &found.namespaces {
            let ns = netns::describe(&host, f);
            if netns::census::counters(&host, &ns).is_some() {
                read += 1;
            }
        }
    }
    let per_poll = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    println!(
        "namespaces {namespaces} (counters read: {read}), rounds {rounds}: {per_poll:.0} us per poll, {:.1} us per namespace",
        per_poll / namespaces.max(1) as f64
    );
}
