//! The daemon's live view (`/run/portd/live.json`, live.rs) and how
//! `status` and `check` merge it: written each poll with the expected
//! fields, "running" while fresher than two polls, "not running" when
//! absent or stale. Runs against a fake `/proc` tree (`--root`), so it needs
//! no root and writes nothing outside a tempdir.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::portd_child::{Notify, Portd};
use super::util::{conns_to, fake_proc, portd, write_policy};

const SECOND: Duration = Duration::from_secs(1);

/// One poll a second: the view stays fresh for two, however loaded the
/// machine running the tests.
const POLICY: &str = "[poll]\ninterval = \"1s\"\n\n[widen]\nmode = \"advise\"\n";

fn with_root(root: &Path, args: &[&str]) -> Command {
    let mut cmd = portd();
    cmd.arg("--root")
        .arg(root)
        .arg("--config")
        .arg(root.join("policy.toml"))
        .args(args)
        .env_remove("PORTD_ROOT");
    cmd
}

/// stdout of `portd --root ROOT ARGS`.
fn stdout(root: &Path, args: &[&str]) -> String {
    let out = with_root(root, args).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn daemon_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("daemon: "))
        .unwrap_or_else(|| panic!("no daemon line in:\n{text}"))
}

#[test]
fn status_and_check_show_the_live_view_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fake_proc(
        &root,
        (40000, 40099),
        &conns_to([10, 1, 1, 1], 443, 40000, 3),
    );
    write_policy(&root.join("policy.toml"), POLICY);
    let absent = "daemon: not running (no live view at /run/portd/live.json): no rates, no witnessed failures";
    assert_eq!(daemon_line(&stdout(&root, &["status"])), absent);
    assert_eq!(daemon_line(&stdout(&root, &["check"])), absent);
    let json: Value = serde_json::from_str(&stdout(&root, &["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["running"], false);

    let mut notify = Notify::bind(dir.path());
    let mut cmd = with_root(&root, &["run", "--log-target", "stderr"]);
    cmd.env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", notify.path());
    let mut daemon = Portd::spawn(cmd, &dir.path().join("stderr"));
    notify.wait_for("READY", 10 * SECOND, |m| m.contains("READY=1"));

    let file = root.join("run/portd/live.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; stderr:\n{}", file.display(), daemon.stderr()));
    let live: Value = serde_json::from_str(&text).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "{}", file.display());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(live["format_version"], 1, "{text}");
    assert_eq!(live["pid"], daemon.pid(), "{text}");
    assert_eq!(live["interval_seconds"], 1.0, "{text}");
    let written_at = live["written_at"].as_f64().unwrap();
    assert!((now - 60.0..=now).contains(&written_at), "{text}");
    assert_eq!(live["authority"]["mode"], "advise", "{text}");
    assert_eq!(live["authority"]["advise_reason"], "policy", "{text}");
    let headline = &live["headline"];
    assert_eq!(headline["used"], 3, "{text}");
    assert_eq!(headline["capacity"], 100, "{text}");
    assert_eq!(headline["usage"], 0.03, "{text}");
    assert_eq!(headline["level"], "ok", "{text}");
    assert!(
        headline["cause"].as_str().unwrap().contains("10.1.1.1:443"),
        "{text}"
    );
    assert!(live["census"]["total"].as_u64().unwrap() >= 1, "{text}");
    assert!(
        live["census"]["last_at"].as_f64().unwrap() <= written_at,
        "{text}"
    );
    assert!(
        live["census"]["last_took_seconds"].as_f64().is_some(),
        "{text}"
    );
    assert_eq!(live["census"]["failed_total"], 0, "{text}");
    assert_eq!(live["last_change"], Value::Null, "{text}");
    assert_eq!(
        live["forecast"]["time_to_exhaustion_seconds"],
        Value::Null,
        "{text}"
    );
    assert!(
        live["forecast"]["targets"].as_array().unwrap().len() >= 2,
        "{text}"
    );

    let running = format!(
        "daemon: running (pid {}), mode advise, last census ",
        daemon.pid()
    );
    let human = stdout(&root, &["status"]);
    assert!(daemon_line(&human).starts_with(&running), "{human}");
    // A steady load: the forecast sees nothing growing.
    assert!(
        daemon_line(&human).ends_with("s ago, nothing growing towards exhaustion"),
        "{human}"
    );
    let check = stdout(&root, &["check"]);
    assert!(daemon_line(&check).starts_with(&running), "{check}");
    let json: Value = serde_json::from_str(&stdout(&root, &["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["running"], true, "{json:#}");
    assert_eq!(json["daemon"]["live"]["pid"], daemon.pid(), "{json:#}");
    assert!(
        json["daemon"]["age_seconds"].as_f64().unwrap() <= 2.0,
        "{json:#}"
    );

    // Stopped: the file stays, and at once (not two polls later) it says
    // its daemon has exited.
    let pid = daemon.pid();
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status:?}; stderr:\n{}", daemon.stderr());
    assert!(file.exists());
    let stopped = stdout(&root, &["status"]);
    assert_eq!(
        daemon_line(&stopped),
        format!(
            "daemon: not running (pid {pid}, which wrote the live view /run/portd/live.json, has exited): no rates, no witnessed failures"
        ),
        "{stopped}"
    );
    let json: Value = serde_json::from_str(&stdout(&root, &["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["running"], false, "{json:#}");
    assert!(json["daemon"].get("live").is_none(), "{json:#}");
}
