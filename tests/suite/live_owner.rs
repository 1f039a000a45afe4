//! The live view belongs to its daemon: two daemons in two network
//! namespaces share one tmpfs `/run/portd` (the sandbox's, in its private
//! mount and PID namespaces), the second a dry run in a namespace made with
//! `ip netns add`. `status` in each names its own daemon: the first's in
//! its namespace; in the dry run's, none (a dry run publishes nothing),
//! naming the view it saw and why it set it aside. Only the first writes
//! the metrics file. `status` then says when the policy on disk differs
//! from the one the daemon runs (needs root).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::sandbox::{POLICY, Sandbox};
use super::util::{root_test, stdout_json, text};

const LIVE_POLICY: &str = r#"
[poll]
interval = "300ms"

[widen]
mode = "advise"

[metrics]
file = "/run/portd/metrics.prom"
"#;

/// The namespace the dry run runs in (`ip netns add`, under the sandbox's
/// tmpfs /run).
const OTHER: &str = "live-other";

/// `portd ARGS` in the other network namespace.
fn in_other(ns: &Sandbox, args: &[&str]) -> std::process::Command {
    let mut cmd = ns.command("ip");
    cmd.args(["netns", "exec", OTHER, env!("CARGO_BIN_EXE_portd")])
        .args(["--config", POLICY])
        .args(args);
    cmd
}

fn status(mut cmd: std::process::Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    stdout_json(&out)["daemon"].clone()
}

/// The network namespace `cmd` (a `readlink`) runs in.
fn net_inode(mut cmd: std::process::Command) -> u64 {
    let out = cmd.arg("/proc/self/ns/net").output().unwrap();
    let link = text(&out.stdout);
    link.trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("{link}: {e}"))
}

#[test]
fn status_in_each_namespace_names_its_own_daemon_and_a_dry_run_publishes_nothing() {
    root_test!();
    let ns = Sandbox::builder()
        .pid_namespace()
        .policy(LIVE_POLICY)
        .start();
    ns.ip(&["netns", "add", OTHER]);
    ns.ip(&["-n", OTHER, "link", "set", "lo", "up"]);
    let here = net_inode(ns.command("readlink"));
    let mut other_cmd = ns.command("ip");
    other_cmd.args(["netns", "exec", OTHER, "readlink"]);
    let there = net_inode(other_cmd);
    assert_ne!(here, there);

    let mut dry = ns.spawn_daemon(in_other(
        &ns,
        &["run", "--dry-run", "--log-target", "stderr"],
    ));
    let daemon = ns.start_daemon();
    // Polls of both, three a second each, interleave for several seconds:
    // a view or metrics file the dry run wrote would be seen.
    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0;
    while Instant::now() < until {
        let mine = status(ns.portd(&["status", "--json"]));
        if mine["running"] == true || samples > 0 {
            assert_eq!(mine["running"], true, "{mine:#}");
            assert_eq!(mine["live"]["authority"]["mode"], "advise", "{mine:#}");
            assert_eq!(mine["live"]["namespaces_of_daemon"]["net"], here);
            samples += 1;
        }
        let theirs = status(in_other(&ns, &["status", "--json"]));
        assert_eq!(theirs["running"], false, "{theirs:#}");
        if mine["running"] == true {
            let why = theirs["reason"].as_str().unwrap_or_default();
            assert!(
                why.contains(&format!("view of the daemon pid {}", mine["live"]["pid"]))
                    && why.contains(&format!("net:[{here}]"))
                    && why.contains("a dry run writes none"),
                "{theirs:#}"
            );
        }
        if let Some(metrics) = ns.read_file("/run/portd/metrics.prom") {
            assert!(!metrics.contains("mode=\"dry-run\""), "{metrics}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 5, "the daemon's view was seen {samples} times");
    assert!(dry.is_running(), "{}", dry.stderr());

    // The policy on disk changes: the daemon runs the old one until SIGHUP.
    ns.write_file(POLICY, &format!("{LIVE_POLICY}\n# edited\n"));
    let mine = status(ns.portd(&["status", "--json"]));
    let changed = mine["policy_changed"].as_str().unwrap_or_default();
    assert!(
        changed.contains("differs from the one the daemon runs"),
        "{mine:#}"
    );
    // By its pid in the sandbox's PID namespace: nsenter forked it.
    let pid = mine["live"]["pid"].to_string();
    let out = ns.command("kill").args(["-HUP", &pid]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mine = status(ns.portd(&["status", "--json"]));
        if mine["running"] == true && mine.get("policy_changed").is_none() {
            break;
        }
        assert!(
            Instant::now() < until,
            "still differs after SIGHUP: {mine:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // nsenter forked them, and dies of the SIGTERM it passes on; the
    // sandbox's PID namespace ends whatever is left.
    for mut d in [dry, daemon] {
        let _ = d.stop_within(Duration::from_secs(5));
    }
}
