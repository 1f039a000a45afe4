//! `status`, `check` and `run` against hostile input and faults: a missing
//! `--config`, a closed stdout, process names chosen by an attacker, and
//! namespaces that vanish while `status` measures them.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::util::{fixture_host, helper_in_private_namespaces, portd, read, root_test, text};

fn run(root: &Path, args: &[&str]) -> Output {
    portd()
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_explicit_config_that_does_not_exist_is_an_error_naming_it() {
    let root = fixture_host();
    let missing = root.path().join("etc/portd-typo.toml");
    let missing = missing.to_str().unwrap();
    let said = format!(
        "{missing}: the policy file given with --config does not exist; only the default /etc/portd.toml may be absent"
    );
    // status: the plugin's UNKNOWN, on its one line.
    let out = run(root.path(), &["--config", missing, "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("PORTD UNKNOWN - {said}")),
        "{}",
        text(&out.stdout)
    );
    let out = run(root.path(), &["--config", missing, "status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["error"].as_str().unwrap().starts_with(&said),
        "{json:#}"
    );
    // check: 3 too (nothing was checked), the reason on stderr.
    for args in [&["check"][..], &["check", "--json"], &["check", "--plan"]] {
        let mut all = vec!["--config", missing];
        all.extend_from_slice(args);
        let out = run(root.path(), &all);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(&said), "{}", text(&out.stderr));
    }
    // run: an error (2) before anything starts, under any log target.
    for target in ["stderr", "auto"] {
        let out = run(
            root.path(),
            &[
                "--config",
                missing,
                "run",
                "--dry-run",
                "--log-target",
                target,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(&said), "{}", text(&out.stderr));
    }
    assert!(
        !root.path().join("run").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn the_default_config_may_be_absent() {
    let root = fixture_host();
    let out = run(root.path(), &["status"]);
    assert_ne!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("PORTD "),
        "{}",
        text(&out.stdout)
    );
    let out = run(root.path(), &["check"]);
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("etc/portd.toml does not exist: the built-in defaults apply"),
        "{}",
        text(&out.stdout)
    );
}

/// `portd --root ROOT ARGS >&-`: started with stdout closed.
fn with_stdout_closed(root: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$@" >&-"#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_portd"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("PORTD_ROOT")
        .output()
        .unwrap()
}

#[test]
fn status_with_stdout_closed_is_unknown_and_says_why() {
    let root = fixture_host();
    for (args, code) in [
        (&["status"][..], 3),
        (&["status", "--json"], 3),
        (&["check"], 2),
    ] {
        let out = with_stdout_closed(root.path(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains("portd: cannot write output: stdout is closed"),
            "{args:?}: {stderr}"
        );
    }
    // /dev/null is written, whichever way it is opened: not an error.
    for redirect in [">/dev/null", "1<>/dev/null"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(r#"exec "$@" {redirect}"#))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_portd"))
            .arg("--root")
            .arg(root.path())
            .arg("status")
            .env_remove("PORTD_ROOT")
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(3),
            "{redirect}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{redirect}: {}", text(&out.stderr));
    }
}

/// Runs tests/helpers/hostile_status.sh in a private PID, network and mount
/// namespace with its own /proc and a tmpfs /run, writing into `out`.
fn namespaces(out: &Path, mode: &str) -> Output {
    helper_in_private_namespaces("hostile_status.sh")
        .arg(out)
        .arg(mode)
        .output()
        .unwrap()
}

#[test]
fn a_process_name_cannot_forge_the_plugin_line() {
    root_test!();
    let out = tempfile::tempdir().unwrap();
    let run = namespaces(out.path(), "name");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let dir = out.path();
    let pid = read(dir, "busy.pid").trim().to_string();
    let status = read(dir, "status.txt");
    assert_eq!(read(dir, "status.rc").trim(), "2", "{status}");
    let first = status.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "PORTD CRITICAL - pid {pid} (x\\x7cy=1\\x0aOK - \\x1b[2J): 75.0% of ephemeral ports in use (15/20)"
        )),
        "{status}"
    );
    assert_eq!(first.matches('|').count(), 1, "{first}");
    assert!(
        first
            .split_once(" | ")
            .unwrap()
            .1
            .starts_with("usage=75.00%;"),
        "{first}"
    );
    // No line of the long output starts as a plugin line of its own, and
    // nothing reaches the terminal raw.
    assert!(
        !status.lines().skip(1).any(|l| l.starts_with("OK - ")),
        "{status}"
    );
    assert!(!status.contains('\u{1b}'), "{status}");
    // JSON keeps the name as the process set it (JSON escapes it).
    assert_eq!(read(dir, "status-json.rc").trim(), "2");
    let json: serde_json::Value = serde_json::from_str(&read(dir, "status.json")).unwrap();
    let busy = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["pid"] == pid.parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(busy["comm"], "x|y=1\nOK - \u{1b}[2J", "{json:#}");
}

#[test]
fn status_stays_critical_while_namespaces_come_and_go() {
    root_test!();
    let out = tempfile::tempdir().unwrap();
    let run = namespaces(out.path(), "churn");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let dir = out.path();
    assert_eq!(read(dir, "churn.rc").trim(), "0", "the churn's own failure");
    let runs = read(dir, "runs.txt");
    let lines: Vec<&str> = runs.lines().collect();
    assert!(
        lines.len() >= 5,
        "only {} status runs in 8 s:\n{runs}",
        lines.len()
    );
    let odd = std::fs::read_to_string(dir.join("odd-runs.txt")).unwrap_or_default();
    for line in &lines {
        assert!(
            line.starts_with("2 PORTD CRITICAL - pid "),
            "a status run during the churn was not CRITICAL: {line}\n{odd}"
        );
    }
}
