//! The per-poll cost of watching other network namespaces:
//! discovery (`/proc/*/ns/net`, `/run/netns`) plus each namespace's O(1)
//! counters (`/proc/<pid>/net/sockstat{,6}`, `snmp`), repeated ROUNDS
//! times; prints the mean per poll and per namespace; then the former
//! daemon's path (every namespace's settings through `setns`, counters
//! opened anew, each poll) and the parts of a look each on its own, with
//! the files kept open as the daemon keeps them now. Run as root inside a
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
    // The daemon's former path: identity named once and kept by inode;
    // each poll discovery, every namespace's settings from one thread that
    // enters them in turn, and its counters opened anew.
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
    parts(&host, &named, rounds);
}

/// Where a look's CPU goes, each part on its own over `rounds` polls, in
/// microseconds of CPU per namespace per poll: discovery, whether each
/// namespace's process is still in it, its counters opened anew or kept
/// open (the daemon's way), its settings through `setns` or kept open.
fn parts(host: &Host, named: &[netns::Namespace], rounds: u32) {
    let n = named.len().max(1) as f64;
    let list: Vec<&netns::Namespace> = named.iter().collect();
    let time = |f: &mut dyn FnMut()| {
        let c = self_cpu();
        for _ in 0..rounds {
            f();
        }
        (self_cpu() - c) * 1e6 / f64::from(rounds) / n
    };
    let discovery = time(&mut || {
        let _ = netns::discovery::discover(host);
    });
    let still = time(&mut || {
        for ns in &list {
            let _ = netns::census::still_there(host, ns);
        }
    });
    let fresh = time(&mut || {
        for ns in &list {
            let _ = netns::census::counters(host, ns);
        }
    });
    let mut kept: Vec<netns::census::Files> = list.iter().map(|_| Default::default()).collect();
    let kept_counters = time(&mut || {
        for (ns, files) in list.iter().zip(kept.iter_mut()) {
            let _ = netns::census::counters_kept(host, ns, files, None);
        }
    });
    let last: Vec<_> = list
        .iter()
        .zip(kept.iter_mut())
        .map(|(ns, files)| netns::census::counters_kept(host, ns, files, None))
        .collect();
    let quiet_counters = time(&mut || {
        for ((ns, files), last) in list.iter().zip(kept.iter_mut()).zip(&last) {
            let _ = netns::census::counters_kept(host, ns, files, *last);
        }
    });
    let setns = time(&mut || {
        let _ = netns::census::settings_each(host, &list);
    });
    let mut files: Vec<&mut netns::census::Files> = kept.iter_mut().collect();
    let kept_settings = time(&mut || {
        let _ = netns::census::settings_kept(host, &list, &mut files);
    });
    println!(
        "parts, us CPU per namespace per poll: discovery {discovery:.1}, still there {still:.1}, counters opened anew {fresh:.1}, kept open {kept_counters:.1}, kept open and unchanged (no snmp) {quiet_counters:.1}; settings through setns {setns:.1}, kept open {kept_settings:.1}"
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
