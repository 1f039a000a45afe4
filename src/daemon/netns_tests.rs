//! The daemon's watch over other namespaces without root: what it
//! publishes (the metrics, worst first and bounded) and discovery's refresh
//! against a fixture `/proc` (the machine's rules are tested in
//! judge/netns/tests.rs).

use super::refresh::refresh;
use super::*;
use crate::base::ports::Ratio;
use crate::judge::level::Level;
use crate::judge::netns::tests::{namespace, raised};
use crate::judge::netns::{Known, Quiet, TOP_NAMESPACES, Watched};
use crate::observe::netns::Namespace;
use crate::observe::netns::identity::{Identity, Runtime};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn watched(inode: u64, level: Level, usage: f64, identity: Identity) -> Watched {
    let mut w = Watched::new(Namespace {
        inode,
        ..namespace(identity, &[])
    });
    w.alert = raised(level);
    w.quiet = Some(Quiet {
        bound: 1,
        capacity: 100,
        usage: Ratio::from_percent(usage).unwrap(),
    });
    w
}

#[test]
fn metrics_are_labelled_netns_container_pod_worst_first_and_bounded() {
    let mut known = Known::new();
    let mut pod = Identity {
        runtime: Some(Runtime::Containerd),
        container_id: Some(ID.into()),
        ..Identity::default()
    };
    pod.set_pod("shop", "checkout");
    known.insert(7, watched(7, Level::Critical, 60.0, pod));
    for i in 100..130 {
        known.insert(i, watched(i, Level::Ok, 1.0, Identity::default()));
    }
    let p = publish(&known, None, 3);
    assert_eq!(p.namespaces.len(), 31);
    assert_eq!(p.namespaces[0].inode, 7, "worst first");
    let view = &p.namespaces[0];
    assert_eq!(
        (view.pod.as_deref(), view.pod_namespace.as_deref()),
        (Some("checkout"), Some("shop"))
    );
    assert_eq!(view.container.as_deref(), Some("containerd:0123456789ab"));
    // The labels and the text are publish/metrics.rs's (tested there).
    let m = p.metrics.as_ref().expect("rows after a poll");
    assert_eq!(
        (m.top[0].inode, m.top[0].level, m.top[0].used),
        (7, Level::Critical, 0)
    );
    assert_eq!(m.top[0].container, "containerd:0123456789ab");
    assert_eq!(
        (m.top[0].pod.as_str(), m.top[0].pod_namespace.as_str()),
        ("checkout", "shop")
    );
    assert_eq!((m.watched, m.censuses), (31, 3));
    assert_eq!(m.top.len(), TOP_NAMESPACES);
    assert!(m.other.is_some(), "the rest in one row");
}

#[test]
fn past_the_top_the_namespaces_are_one_other_row_of_their_worst() {
    let mut known = Known::new();
    // N + 5 measured: the five least used go to the other row.
    for i in 0..(TOP_NAMESPACES as u64 + 5) {
        let level = if i == TOP_NAMESPACES as u64 + 1 {
            Level::Warning
        } else {
            Level::Ok
        };
        let usage = 50.0 - i as f64;
        known.insert(
            1000 + i,
            watched(1000 + i, level, usage, Identity::default()),
        );
    }
    let m = publish(&known, None, 1).metrics.expect("rows");
    assert_eq!(m.top.len(), TOP_NAMESPACES);
    // Warnings rank first: the one at 29 % is in the top.
    assert_eq!(m.top[0].inode, 1000 + TOP_NAMESPACES as u64 + 1);
    let other = m.other.expect("an other row");
    assert_eq!(other.level, Level::Ok);
    assert!((other.usage - 0.31).abs() < 1e-9, "{}", other.usage);
    assert_eq!(m.watched, TOP_NAMESPACES + 5);

    let mut few = Known::new();
    few.insert(1, watched(1, Level::Ok, 5.0, Identity::default()));
    assert_eq!(publish(&few, None, 1).metrics.expect("rows").other, None);
}

/// A fixture `/proc` at 100 s after boot: portd in `net:[1]`, and each
/// `(pid, inode, started)` a process in `net:[inode]` since `started` s.
fn proc_at_100s(processes: &[(u32, u64, u64)]) -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let tps = procfs::ticks_per_second();
    for (pid, inode, started) in [(1, 1, 0)].iter().chain(processes) {
        std::fs::create_dir_all(proc.join(format!("{pid}/ns"))).unwrap();
        symlink(format!("net:[{inode}]"), proc.join(format!("{pid}/ns/net"))).unwrap();
        std::fs::write(
            proc.join(format!("{pid}/stat")),
            format!(
                "{pid} (sleep) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0\n",
                started * tps
            ),
        )
        .unwrap();
    }
    std::fs::create_dir_all(proc.join("self/ns")).unwrap();
    symlink("net:[1]", proc.join("self/ns/net")).unwrap();
    std::fs::write(proc.join("uptime"), "100.00 50.00\n").unwrap();
    dir
}

fn watched_at(inode: u64, pid: u32, level: Level, seen: f64) -> Watched {
    let mut w = watched(inode, level, 1.0, Identity::default());
    w.ns.pid = Some(pid);
    w.seen = Some(seen);
    w
}

#[test]
fn a_namespace_that_vanishes_with_a_raised_alert_ends_it_and_a_reused_inode_starts_afresh() {
    let dir = proc_at_100s(&[(20, 200, 50), (30, 300, 95), (40, 400, 10)]);
    let mut known = Known::new();
    // Still there, through the same process.
    known.insert(200, watched_at(200, 20, Level::Critical, 90.0));
    // Its process (31) is gone; the one now at its inode started after the
    // last look (95 s > 90 s): another namespace.
    known.insert(300, watched_at(300, 31, Level::Critical, 90.0));
    // Its process (39) is gone, but 40 was in it before the last look: it
    // lives on.
    known.insert(400, watched_at(400, 39, Level::Critical, 90.0));
    // Gone, raised and quiet.
    known.insert(500, watched_at(500, 50, Level::Warning, 90.0));
    known.insert(600, watched_at(600, 60, Level::Ok, 90.0));

    let (unreadable, gone) = refresh(&Host::new(dir.path()), &mut known);
    assert_eq!(unreadable, 0);
    let ended: Vec<(u64, Level)> = gone.iter().map(|g| (g.ns.inode, g.level)).collect();
    assert_eq!(ended, vec![(300, Level::Critical), (500, Level::Warning)]);
    let mut inodes: Vec<u64> = known.keys().copied().collect();
    inodes.sort_unstable();
    assert_eq!(inodes, vec![200, 300, 400]);
    assert_eq!(known[&200].alert.level, Level::Critical);
    assert_eq!(known[&300].alert.level, Level::Ok, "a new one, not alerted");
    assert_eq!(known[&300].ns.label, "pid 30");
    assert_eq!(known[&400].alert.level, Level::Critical);
    assert_eq!(known[&400].ns.pid, Some(40));
    assert!(known.values().all(|w| w.seen == Some(100.0)));
}
