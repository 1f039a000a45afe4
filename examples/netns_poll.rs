//! The per-poll cost of watching other network namespaces:
//! discovery (`/proc/*/ns/net`, `/run/netns`) plus each namespace's O(1)
//! counters (`/proc/<pid>/net/sockstat{,6}`, `snmp`), repeated ROUNDS
//! times; prints the mean per poll and per namespace. Run as root inside a
//! private PID namespace that holds the namespaces to measure
//! (docs/benchmarks.md, "Other network namespaces").
//!
//! Usage: netns_poll [ROUNDS]

use std::time::Instant;

use portd::base::host::Host;
use portd::observe::netns;

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
    // The daemon's path (src/daemon/netns.rs): identity named once and
    // kept by inode; each poll discovery, every namespace's settings from
    // one thread that enters them in turn, and its counters.
    let found = netns::discovery::discover(&host);
    let named: Vec<netns::Namespace> = found
        .namespaces
        .iter()
        .filter(|f| !f.own)
        .map(|f| netns::describe(&host, f))
        .collect();
    let mut settings_read = 0;
    let start = Instant::now();
    let cpu_start = self_cpu();
    for _ in 0..rounds {
        let found = netns::discovery::discover(&host);
        let list: Vec<&netns::Namespace> = named
            .iter()
            .filter(|n| found.namespaces.iter().any(|f| f.inode == n.inode))
            .collect();
        settings_read = netns::census::settings_each(&host, &list)
            .iter()
            .filter(|s| s.is_ok())
            .count();
        for ns in &list {
            let _ = netns::census::counters(&host, ns);
        }
    }
    let per_poll = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let cpu_per_poll = (self_cpu() - cpu_start) * 1e6 / f64::from(rounds);
    println!(
        "daemon's path: other namespaces {} (settings read: {settings_read}), rounds {rounds}: {per_poll:.0} us per poll ({cpu_per_poll:.0} us CPU), {:.1} us per namespace ({:.1} us CPU)",
        named.len(),
        per_poll / named.len().max(1) as f64,
        cpu_per_poll / named.len().max(1) as f64
    );
}

/// CPU seconds of this process, all threads (user + system).
fn self_cpu() -> f64 {
    // SAFETY: an all-zero rusage is valid and getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}
