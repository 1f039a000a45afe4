//! The same judgement in another namespace: `portd run` at the shipped
//! policy (config/portd.toml as shipped) in the sandbox's namespace (a
//! private PID namespace with its own /proc, tmpfs over /run and a
//! systemd-journald of its own), and a child network namespace with range
//! 40000-40999 in which a client of tests/helpers/ramp_ns.py opens 15
//! long-lived connections a second to a local listener. The namespace's
//! first alert comes from its forecast, before it holds half its range (the
//! count `ss` sees inside it right after the alert, an upper bound of the
//! count at the alert), and carries its time to exhaustion: in the journal
//! entry (field and text), in the live view and in `portd status`. And the
//! failure witness counts the failures of a namespace the daemon watches,
//! keyed by that namespace (needs root).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::portd_child::wait_for;
use super::sandbox::{Sandbox, stop_child};
use super::util::{root_test, summary, tests_dir, text};

/// The child namespace's part: `lo` up, its range, a listener that leaves
/// the connections in its accept queue, and the client (15 connections a
/// second, held). The first line is the namespace's `net:[INODE]`, the
/// second its pid in the sandbox; then the client's lines.
const CHILD: &str = r#"
set -eu
ip link set lo up
echo "$2" > /proc/sys/net/ipv4/ip_local_port_range
echo 4096 > /proc/sys/net/core/somaxconn
readlink /proc/self/ns/net
echo $$
python3 -u "$1" server 0 1 > /dev/null &
sleep 0.3
exec python3 -u "$1" client concurrency 15 0 "$3" 120 1 0
"#;

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

/// Client sockets to the listener with a local port in the range, any
/// state, counted by `ss` inside the child namespace.
fn held(sandbox: &Sandbox, pid: &str) -> usize {
    let out = sandbox
        .command("nsenter")
        .args(["-t", pid, "-n", "ss", "-Htan", "dst", "127.0.0.1:5001"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ss: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .filter(|port: &u16| (40000..=40999).contains(port))
        .count()
}

/// The child namespace with `range`, its client holding up to `plateau`
/// connections: the child, its `net:[INODE]` and its pid in the sandbox.
fn start_child(sandbox: &Sandbox, range: &str, plateau: u32) -> (Child, String, String) {
    let mut child = sandbox
        .command("unshare")
        .args(["-n", "sh", "-c", CHILD, "sh"])
        .arg(tests_dir().join("helpers/ramp_ns.py"))
        .args([range, &plateau.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let netns = lines.next().unwrap().unwrap();
    let pid = lines.next().unwrap().unwrap();
    assert!(netns.starts_with("net:["), "{netns}");
    // The client's lines are not needed: drained so it never blocks.
    std::thread::spawn(move || lines.for_each(drop));
    (child, netns, pid)
}

#[test]
fn a_ramp_in_another_namespace_is_alerted_before_half_its_range_with_a_time_to_exhaustion() {
    root_test!();
    let sandbox = Sandbox::builder()
        .pid_namespace()
        .journald()
        .policy(include_str!("../../config/portd.toml"))
        .start();
    let daemon = sandbox.spawn_daemon(sandbox.portd(&["run", "--log-target", "journal"]));
    wait_for("the live view", Duration::from_secs(10), || {
        sandbox.read_file("/run/portd/live.json")
    });
    let (mut child, netns, pid) = start_child(&sandbox, "40000 40999", 1000);

    let alert = wait_for(
        "the child namespace's first alert",
        Duration::from_secs(90),
        || {
            sandbox.portd_alerts().into_iter().find(|e| {
                field(e, "PORTD_NETNS") == netns && field(e, "PORTD_EVENT").starts_with("usage-")
            })
        },
    );
    let at_most = held(&sandbox, &pid);
    let live: Value =
        serde_json::from_str(&sandbox.read_file("/run/portd/live.json").unwrap()).unwrap();
    let status = sandbox.portd(&["status"]).output().unwrap();
    let alerts = sandbox.portd_alerts();
    stop_child(&mut child, rustix::process::Signal::KILL);
    // The daemon (forked by nsenter into the sandbox's PID namespace) ends
    // with the sandbox.
    let err = daemon.stderr();

    let event = field(&alert, "PORTD_EVENT");
    let message = field(&alert, "MESSAGE");
    eprintln!("first alert, {at_most} ports held just after it: {message}");
    assert_eq!(event, "usage-warning", "{message}\n{}", summary(&alerts));
    assert!(
        at_most < 500,
        "alerted only once {at_most} of 1000 ports were held: {message}\n{}",
        summary(&alerts)
    );
    // Its time to exhaustion: the field and the text.
    let tte: u64 = field(&alert, "PORTD_TIME_TO_EXHAUSTION")
        .parse()
        .unwrap_or_else(|_| panic!("no time to exhaustion: {alert:#}"));
    assert!((1..=120).contains(&tte), "{tte} s: {message}");
    assert!(message.contains("; forecast: runs out in "), "{message}");
    assert!(message.contains("confirmed before the hold"), "{message}");
    // The live view and `portd status` carry it too.
    let ns = live["namespaces"]
        .as_array()
        .and_then(|l| l.iter().find(|n| format!("net:[{}]", n["inode"]) == netns))
        .unwrap_or_else(|| panic!("{netns} not in the live view: {live:#}"));
    assert!(
        ns["time_to_exhaustion_seconds"]
            .as_f64()
            .is_some_and(|t| t > 0.0),
        "{ns:#}"
    );
    let status = text(&status.stdout);
    assert!(
        status.contains(&format!("{netns} ")) && status.contains("runs out in "),
        "{status}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_witness_counts_the_failures_of_another_namespace_by_that_namespace() {
    root_test!();
    let sandbox = Sandbox::builder()
        .pid_namespace()
        .journald()
        .policy(include_str!("../../config/portd.toml"))
        .start();
    sandbox.mount_tracefs();
    let daemon = sandbox.spawn_daemon(sandbox.portd(&["run", "--log-target", "journal"]));
    wait_for("the live view", Duration::from_secs(10), || {
        sandbox.read_file("/run/portd/live.json")
    });
    // 20 ports, 30 connections asked for: the last ones fail.
    let (mut child, netns, _) = start_child(&sandbox, "40000 40019", 30);
    let inode: u64 = netns
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let live = wait_for(
        "the witness to count the child namespace's failures",
        Duration::from_secs(30),
        || {
            let live: Value =
                serde_json::from_str(&sandbox.read_file("/run/portd/live.json")?).ok()?;
            let failures = live["witness"]["failures"].as_array()?;
            failures
                .iter()
                .any(|f| f["netns"] == inode && f["errno"] == "EADDRNOTAVAIL")
                .then_some(live)
        },
    );
    stop_child(&mut child, rustix::process::Signal::KILL);
    let err = daemon.stderr();
    assert_eq!(live["witness"]["active"], true, "{live:#}");
    assert!(!err.contains("panicked"), "{err}");
}
