//! The two census sources, netlink sock_diag and procfs, give the same
//! census of the same live sockets (docs/DESIGN.md, "Census sources"); `auto`
//! picks netlink only for the live namespace; and the macro benchmark
//! harness (examples/census_bench.rs) still builds and runs. Needs root.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::sandbox::Sandbox;
use super::ss;
use super::status_netns::mixed;
use super::util::{portd, root_test, stdout_json, test_name, tests_dir};

/// `status --json --top 0` from one source, without its `source` field
/// and the `daemon` object (a live view's age differs between two runs).
fn census(ns: &Sandbox, source: &str) -> Value {
    let out = ns.portd_output(&["--source", source, "status", "--json", "--top", "0"]);
    let mut report = stdout_json(&out);
    assert_eq!(report["source"], source, "{report:#}");
    report.as_object_mut().unwrap().remove("source");
    assert!(report["daemon"].is_object(), "{report:#}");
    report.as_object_mut().unwrap().remove("daemon");
    report
}

fn sources_agree(tw_reuse: &str) {
    // Several destinations, TIME_WAIT and FIN_WAIT2, listeners inside the
    // range, UDP, IPv6 and v4-mapped peers (status_netns.rs).
    let ns = mixed(tw_reuse);
    let before = ss::parse(&ns.ss(&["-tuanH"]));
    let netlink = census(&ns, "netlink");
    let procfs = census(&ns, "procfs");
    let after = ss::parse(&ns.ss(&["-tuanH"]));
    assert_eq!(
        before, after,
        "sockets changed state while the sources looked"
    );

    // The scenario is what it claims to be, so that agreement means something.
    assert!(
        procfs["destination_count"].as_u64().unwrap() >= 6,
        "{procfs:#}"
    );
    assert!(procfs["time_wait_in_range"].as_u64().unwrap() > 0);
    assert!(procfs["accepted_excluded"].as_u64().unwrap() > 0);
    assert!(procfs["pools"]["udp"]["used"].as_u64().unwrap() > 0);
    assert!(!procfs["listeners_in_range"].as_array().unwrap().is_empty());
    let remotes: Vec<&str> = procfs["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["remote"].as_str().unwrap())
        .collect();
    assert!(
        remotes.contains(&"::1") && remotes.contains(&"127.0.0.1"),
        "{remotes:?}"
    );

    assert_eq!(netlink, procfs, "the sources disagree");
}

#[test]
fn netlink_and_procfs_give_the_same_census() {
    // tcp_tw_reuse=0: every TIME_WAIT counts.
    root_test!();
    sources_agree("0");
}

#[test]
fn netlink_and_procfs_agree_on_reusable_time_wait() {
    // tcp_tw_reuse=2: loopback TIME_WAIT is reported apart.
    root_test!();
    sources_agree("2");
}

#[test]
fn auto_uses_netlink_live_and_procfs_under_a_fixture_root() {
    let fixture = tests_dir().join("fixtures/status/01-two-destinations-tw-reuse-off");
    let out = portd()
        .arg("--root")
        .arg(&fixture)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["source"], "procfs");
    // netlink cannot read a fixture tree: refused, not silently live.
    let out = portd()
        .arg("--root")
        .arg(&fixture)
        .args(["--source", "netlink", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let report = stdout_json(&out);
    assert!(
        report["error"].as_str().unwrap().contains("netlink"),
        "{report:#}"
    );

    root_test!();
    let ns = mixed("0");
    let report = stdout_json(&ns.portd_output(&["status", "--json"]));
    assert_eq!(report["source"], "netlink", "{report:#}");
}

/// An example binary built by `cargo test` beside this test binary
/// (target/<profile>/examples/).
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[test]
fn benchmark_harness_runs_at_a_small_size() {
    root_test!();
    let test = test_name!();
    let Some(bench) = example("census_bench") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: examples/census_bench was not built (plain `cargo test` builds it)"
        );
        eprintln!("SKIP ({test}): examples/census_bench not built; run plain `cargo test`");
        return;
    };
    let outer = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg(&bench)
        .arg("run")
        .arg("--outer-netns")
        .arg(&outer)
        .arg("--portd")
        .arg(env!("CARGO_BIN_EXE_portd"))
        .args(["--sizes", "1000", "--runs", "1", "--warmup", "0"])
        .args(["--inproc-runs", "1", "--daemon-seconds", "1"])
        .args(["--churn-rates", "50", "--churn-seconds", "1"]);
    if let Some(tables) = example("procfs_tables") {
        cmd.arg("--procfs-tables").arg(tables);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "census_bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "## 1000 sockets",
        "| portd status --json (netlink) |",
        "| portd status --json (procfs) |",
        "| ss -tan |",
        "| netlink census (single walk; default) |",
        "sock_diag: single walk yes, port filter in the kernel yes",
        "| idle |",
        "| 50 new connections/s |",
        "## Summary",
    ] {
        assert!(stdout.contains(part), "no {part:?} in:\n{stdout}");
    }
    // Both sources saw the same sockets before anything was timed.
    let seen: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("netlink: "))
        .collect();
    assert_eq!(seen.len(), 1, "{stdout}");
    let counts: Vec<&str> = seen[0]
        .split("; ")
        .map(|s| s.split_once(": ").unwrap().1)
        .collect();
    assert_eq!(counts[0], counts[1], "{stdout}");
}
