//! `portd run` end to end with a real systemd-journald: real load ramps in a
//! private network + mount namespace (tmpfs over /run, so the journald and
//! its socket are the sandbox's own), read back with `journalctl -o json`.
//! One entry per transition with the right MESSAGE_ID, PRIORITY and PORTD_*
//! fields; widening before EADDRNOTAVAIL in auto mode, EADDRNOTAVAIL in
//! advise mode; reminders instead of floods; reloads; the admin's change;
//! the catalog's explanations under `journalctl -x`. Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use portd::publish::events::Kind;
use rustix::process::Signal;
use serde_json::Value;

use super::portd_child::{Notify, Portd, start_ready, status_of};
use super::sandbox::Sandbox;
use super::util::{catalog_ids, poll_policy, root_test, summary, write_policy};

const SECOND: Duration = Duration::from_secs(1);

fn kind(event: &str) -> Kind {
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == event)
        .unwrap_or_else(|| panic!("unknown PORTD_EVENT {event}"))
}

fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {entry:#}"))
}

fn events(alerts: &[Value]) -> Vec<&str> {
    alerts.iter().map(|e| field(e, "PORTD_EVENT")).collect()
}

/// Every portd alert: its MESSAGE_ID and PRIORITY are those of its kind, it
/// came natively (not as a stderr line), and the catalog explains its id.
fn check_ids_and_priorities(alerts: &[Value]) {
    let catalog = catalog_ids();
    for e in alerts {
        let k = kind(field(e, "PORTD_EVENT"));
        assert_eq!(field(e, "MESSAGE_ID"), k.message_id(), "{e:#}");
        assert_eq!(
            field(e, "PRIORITY"),
            k.severity().priority().to_string(),
            "{e:#}"
        );
        assert_eq!(field(e, "_TRANSPORT"), "journal", "{e:#}");
        assert!(
            catalog.iter().any(|id| id == field(e, "MESSAGE_ID")),
            "MESSAGE_ID {} found in the journal has no entry in packaging/portd.catalog",
            field(e, "MESSAGE_ID")
        );
    }
}

/// The raw values of a usage alert: the ratio is used / capacity, and the
/// destination's addresses and port are those of the sandbox's load.
fn check_raw_fields(e: &Value) {
    let number = |name: &str| -> f64 {
        field(e, name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is no plain number in {e:#}"))
    };
    let ratio = number("PORTD_USAGE_RATIO");
    let (used, capacity) = (number("PORTD_USED"), number("PORTD_CAPACITY"));
    assert!((ratio - used / capacity).abs() < 1e-4, "{e:#}");
    assert_eq!(
        format!("{:.1}%", ratio * 100.0),
        field(e, "PORTD_USAGE"),
        "{e:#}"
    );
    assert_eq!(field(e, "PORTD_LOCAL_ADDRESS"), "127.0.0.1", "{e:#}");
    assert_eq!(field(e, "PORTD_REMOTE_ADDRESS"), "127.0.0.1", "{e:#}");
    assert_eq!(field(e, "PORTD_REMOTE_PORT"), "5001", "{e:#}");
}

/// `ss`'s count of the sockets towards the load's destination, in the
/// sandbox: what PORTD_USED counts.
fn ss_count(sandbox: &Sandbox) -> u64 {
    sandbox
        .ss(&["-Htan", "dst", "127.0.0.1:5001", "src", "127.0.0.1"])
        .lines()
        .count() as u64
}

/// Every entry portd wrote, alert or note about itself, came natively with
/// a MESSAGE_ID of its kind that the catalog explains; returns the kinds.
fn check_every_entry_has_its_id(sandbox: &Sandbox) -> Vec<Kind> {
    let catalog = catalog_ids();
    let entries: Vec<Value> = sandbox
        .journal()
        .into_iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] == "portd")
        .collect();
    for e in &entries {
        assert!(e.get("MESSAGE_ID").is_some(), "no MESSAGE_ID: {e:#}");
        assert!(
            catalog.iter().any(|id| id == field(e, "MESSAGE_ID")),
            "{e:#}"
        );
    }
    check_ids_and_priorities(&entries);
    entries
        .iter()
        .map(|e| kind(field(e, "PORTD_EVENT")))
        .collect()
}

/// `portd --config POLICY run` in the sandbox with `--log-target auto` and
/// stderr connected "to the journal" as systemd does it: `JOURNAL_STREAM`
/// names stderr's device and inode.
fn start(sandbox: &Sandbox, dir: &Path, policy: &Path) -> (Portd, Notify) {
    let cmd = sandbox.portd(&["--config", policy.to_str().unwrap(), "run"]);
    start_ready(cmd, dir, true)
}

fn sandbox() -> Sandbox {
    Sandbox::with_range("40000 40199", true)
}

/// Tables of the auto-mode policy, after a 100 ms [poll].
const AUTO: &str = r#"
[thresholds]
warning = 40
critical = 50
clear = 30
hold = "0s"

[widen]
mode = "auto"
ceiling = 40399
target = 25
cooldown = "0s"
max_changes_per_hour = 100

[alerts]
reminder = "1h"
"#;

#[test]
fn auto_mode_ramp_widens_before_eaddrnotavail_one_entry_per_transition() {
    root_test!();
    let mut sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let prom = dir.path().join("portd.prom");
    let valid = format!(
        "{}\n[metrics]\nfile = {:?}\n",
        poll_policy("100ms", "1s", AUTO),
        prom.display().to_string()
    );
    write_policy(&policy, &valid);
    let (mut portd, mut notify) = start(&sandbox, dir.path(), &policy);

    // 90 connections at 50/s: warning at 80 (40 % of 200), widened so that
    // usage is 25 %, which is below clear (30 %): recovered.
    sandbox.ramp(90, 50);
    assert_eq!(sandbox.wait_ramp(), (90, None));
    sandbox_wait(&sandbox, "usage-recovered", 1);
    // On to 230 (more than the 200 ports portd found): warning again,
    // widened up to the ceiling 40399, still above clear; 40 % of 400 calls
    // for more, which the ceiling forbids; critical at 200.
    sandbox.ramp(230, 50);
    assert_eq!(
        sandbox.wait_ramp(),
        (230, None),
        "portd must widen before connect() fails"
    );
    sandbox_wait(&sandbox, "usage-critical", 1);
    assert_eq!(
        sandbox.sysctl("net.ipv4.ip_local_port_range"),
        "40000\t40399"
    );
    // The load goes away (reset connections: no TIME_WAIT).
    sandbox.release();
    sandbox_wait(&sandbox, "usage-recovered", 2);
    // The admin sets a range of their own: portd yields.
    sandbox.set_sysctl("net.ipv4.ip_local_port_range", "40000 40499");
    sandbox_wait(&sandbox, "external-change", 1);
    notify.wait_for("STATUS in advise mode", 2 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.ends_with("mode advise (yielded to the admin)"))
    });
    // A broken policy is rejected, the old one stays (and so does the yield).
    let broken = valid.replace("mode = \"auto\"", "mode = \"sideways\"");
    let broken_line = broken.lines().position(|l| l.contains("sideways")).unwrap() + 1;
    write_policy(&policy, &broken);
    portd.signal(Signal::HUP);
    sandbox_wait(&sandbox, "policy-rejected", 1);
    notify.wait_for("READY after the rejected reload", 2 * SECOND, |m| {
        m.starts_with("READY=1") && m.trim_end().ends_with("mode advise (yielded to the admin)")
    });
    // A good one is taken, and clears the yield.
    write_policy(&policy, &valid);
    portd.signal(Signal::HUP);
    sandbox_wait(&sandbox, "policy-reloaded", 1);
    notify.wait_for("READY in auto mode", 2 * SECOND, |m| {
        m.starts_with("READY=1") && m.trim_end().ends_with("mode auto")
    });
    let (status, _) = portd.stop();
    assert!(status.success(), "{status:?}");

    let alerts = sandbox.portd_alerts();
    assert_eq!(
        events(&alerts),
        [
            "usage-warning",
            "range-widened",
            "usage-recovered",
            "usage-warning",
            "range-widened",
            "widening-blocked",
            "usage-critical",
            "usage-recovered",
            "external-change",
            "policy-rejected",
            "policy-reloaded",
        ],
        "one entry per transition, never one per poll:\n{}",
        summary(&alerts)
    );
    check_ids_and_priorities(&alerts);
    let [
        warn1,
        widen1,
        rec1,
        warn2,
        widen2,
        blocked,
        crit,
        rec2,
        external,
        rejected,
        reloaded,
    ] = &alerts[..]
    else {
        unreachable!()
    };
    let holder = format!("[{}] ", std::process::id());
    for (e, capacity) in [(warn1, 200), (warn2, range_size(widen1)), (crit, 400)] {
        assert_eq!(field(e, "PORTD_CAPACITY"), capacity.to_string(), "{e:#}");
        assert!(field(e, "PORTD_USAGE").ends_with('%'), "{e:#}");
        assert_eq!(
            field(e, "PORTD_DESTINATION"),
            "127.0.0.1 -> 127.0.0.1:5001",
            "{e:#}"
        );
        check_raw_fields(e);
        assert_eq!(
            field(e, "PORTD_REASON"),
            "destination 127.0.0.1 -> 127.0.0.1:5001"
        );
        // The process that holds the sockets: the test itself (its sandbox).
        assert!(field(e, "PORTD_PROCESS").contains(&holder), "{e:#}");
        assert!(e.get("PORTD_REMINDER").is_none(), "{e:#}");
    }
    let used = |e: &Value| field(e, "PORTD_USED").parse::<u64>().unwrap();
    assert!((80..=90).contains(&used(warn1)), "{warn1:#}");
    assert!((200..=230).contains(&used(crit)), "{crit:#}");
    assert_eq!(field(warn1, "PORTD_RANGE_BEFORE"), "40000-40199");
    assert_eq!(field(widen1, "PORTD_RANGE_BEFORE"), "40000-40199");
    assert_eq!(
        field(widen2, "PORTD_RANGE_BEFORE"),
        field(widen1, "PORTD_RANGE_AFTER")
    );
    assert_eq!(field(widen2, "PORTD_RANGE_AFTER"), "40000-40399");
    assert!(
        field(blocked, "PORTD_REASON").contains("already reaches the policy's floor and ceiling"),
        "{blocked:#}"
    );
    for e in [rec1, rec2] {
        assert!(e.get("PORTD_PROCESS").is_none(), "{e:#}");
        assert!(
            field(e, "MESSAGE").starts_with("ephemeral ports recovered"),
            "{e:#}"
        );
    }
    assert_eq!(field(rec2, "PORTD_USED"), "0");
    assert_eq!(field(external, "PORTD_RANGE_BEFORE"), "40000-40399");
    assert_eq!(field(external, "PORTD_RANGE_AFTER"), "40000-40499");
    assert!(
        field(external, "PORTD_REASON").contains("by someone else"),
        "{external:#}"
    );
    let path = policy.display().to_string();
    assert_eq!(field(rejected, "PORTD_POLICY"), path);
    assert!(
        field(rejected, "PORTD_REASON")
            .starts_with(&format!("{path}:{broken_line}:8: widen.mode:")),
        "{rejected:#}"
    );
    assert_eq!(field(reloaded, "PORTD_POLICY"), path);
    assert!(
        field(reloaded, "MESSAGE").contains("the yield to the admin is cleared"),
        "{reloaded:#}"
    );
    // Everything went to the journal natively; nothing to stderr.
    assert_eq!(portd.stderr(), "", "stderr is the journal stream here");
    // The metrics file counts the two changes.
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.lines().any(|l| l == "portd_range_changes_total 2"),
        "{metrics}"
    );

    explained_by_the_catalog(&sandbox, warn1);
}

/// Ports in the range a widening wrote (the capacity: nothing is reserved).
fn range_size(widened: &Value) -> u32 {
    let after = field(widened, "PORTD_RANGE_AFTER");
    let (low, high) = after.split_once('-').unwrap();
    high.parse::<u32>().unwrap() - low.parse::<u32>().unwrap() + 1
}

fn sandbox_wait(sandbox: &Sandbox, event: &str, n: usize) -> Vec<Value> {
    sandbox.wait_alerts(event, n, 5 * SECOND)
}

/// `journalctl --update-catalog` in the sandbox (its /usr/lib/systemd/catalog
/// holds only portd's file, its /var/lib is a tmpfs), then `journalctl -x`
/// shows the explanation under the entry, with its fields filled in.
fn explained_by_the_catalog(sandbox: &Sandbox, warning: &Value) {
    let out = sandbox
        .command("journalctl")
        .arg("--update-catalog")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "journalctl --update-catalog: {out:?}"
    );
    let out = sandbox
        .command("journalctl")
        .args(["-x", "-D", "/run/log/journal", "--no-pager", "-o", "short"])
        .arg(format!("MESSAGE_ID={}", Kind::UsageWarning.message_id()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let subject = format!(
        "Subject: Ephemeral port usage reached the warning level ({})",
        field(warning, "PORTD_USAGE")
    );
    assert!(
        text.contains(&subject),
        "no {subject:?} in journalctl -x:\n{text}"
    );
    assert!(text.contains("Defined-By: portd"), "{text}");
    assert!(text.contains("portd status --processes"), "{text}");
}

/// Tables of the advise-mode policy, after a 100 ms [poll].
const ADVISE: &str = r#"
[thresholds]
hold = "0s"

[widen]
mode = "advise"

[alerts]
reminder = "1s"
"#;

#[test]
fn advise_mode_alerts_changes_nothing_and_the_ramp_hits_eaddrnotavail_with_reminders() {
    root_test!();
    let mut sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, &poll_policy("100ms", "1s", ADVISE));
    let (mut portd, _notify) = start(&sandbox, dir.path(), &policy);

    // 100 connections a second towards 200 ports: the 201st fails.
    sandbox.ramp(1000, 100);
    let (held, error) = sandbox.wait_ramp();
    assert_eq!(
        (held, error.as_deref()),
        (200, Some("EADDRNOTAVAIL")),
        "the ramp must really exhaust the range"
    );
    // A plateau at 100 % for longer than the reminder interval; `ss`
    // counts the sockets in the middle of it.
    std::thread::sleep(1200 * Duration::from_millis(1));
    let counted = ss_count(&sandbox);
    std::thread::sleep(1300 * Duration::from_millis(1));
    let released = Instant::now();
    sandbox.release();
    let alerts = sandbox_wait(&sandbox, "usage-recovered", 1);
    let recovered_at = Instant::now();
    assert!(portd.stop().0.success());
    assert_eq!(portd.stderr(), "");

    check_ids_and_priorities(&alerts);
    let critical: Vec<&Value> = alerts
        .iter()
        .filter(|e| e["PORTD_EVENT"] == "usage-critical")
        .collect();
    let mut others: Vec<&str> = events(&alerts)
        .into_iter()
        .filter(|e| *e != "usage-critical")
        .collect();
    // The release closes 200 sockets one by one: a poll in the middle may
    // see the way down through warning, which is true and allowed.
    if let Some(ended) = others.iter().position(|e| *e == "exhaustion-ended") {
        let after = others.split_off(ended + 1);
        others.extend(after.into_iter().filter(|e| *e != "usage-warning"));
    }
    // Exhaustion is its own event: once when it begins (the
    // plateau is shorter than its minute between repeats), once when it ends.
    assert_eq!(
        others,
        [
            "usage-warning",
            "widening-blocked",
            "ports-exhausted",
            "exhaustion-ended",
            "usage-recovered"
        ],
        "{}",
        summary(&alerts)
    );
    let exhausted = alerts
        .iter()
        .find(|e| e["PORTD_EVENT"] == "ports-exhausted")
        .unwrap();
    assert_eq!(
        field(exhausted, "PORTD_DESTINATION"),
        "127.0.0.1 -> 127.0.0.1:5001 (200/200)",
        "{exhausted:#}"
    );
    assert!(exhausted.get("PORTD_REMINDER").is_none(), "{exhausted:#}");
    let blocked = alerts
        .iter()
        .find(|e| e["PORTD_EVENT"] == "widening-blocked")
        .unwrap();
    assert!(
        field(blocked, "MESSAGE").starts_with("would widen ip_local_port_range 40000-40199 -> ")
            && field(blocked, "MESSAGE").ends_with("but advise mode: nothing is written"),
        "{blocked:#}"
    );
    // Each reminder of the plateau carries the raw count, as `ss` has it.
    assert_eq!(counted, 200, "ss on the plateau");
    for e in &critical[1..] {
        check_raw_fields(e);
        assert_eq!(field(e, "PORTD_USED"), counted.to_string(), "{e:#}");
        assert_eq!(field(e, "PORTD_CAPACITY"), "200", "{e:#}");
        assert_eq!(field(e, "PORTD_USAGE_RATIO").parse::<f64>().ok(), Some(1.0));
    }
    // One critical entry, then a reminder per second of plateau, not one per
    // poll (about 10 a second here).
    assert!(critical[0].get("PORTD_REMINDER").is_none());
    let at = |e: &Value| field(e, "__REALTIME_TIMESTAMP").parse::<u64>().unwrap();
    for pair in critical.windows(2) {
        assert_eq!(field(pair[1], "PORTD_REMINDER"), "1", "{:#}", pair[1]);
        assert!(
            field(pair[1], "MESSAGE").starts_with("ephemeral ports still critical"),
            "{:#}",
            pair[1]
        );
        let gap = at(pair[1]) - at(pair[0]);
        assert!(
            gap >= 950_000,
            "reminders {gap} us apart: {}",
            summary(&alerts)
        );
    }
    let plateau_us = at(critical.last().unwrap()) - at(critical[0]);
    let reminders = critical.len() - 1;
    assert!(
        (2..=4).contains(&reminders) && plateau_us < 5_000_000,
        "{reminders} reminders over a plateau of about {:?}: {}",
        recovered_at - released + 2500 * Duration::from_millis(1),
        summary(&alerts)
    );
    // Nothing was changed or written.
    assert_eq!(
        sandbox.sysctl("net.ipv4.ip_local_port_range"),
        "40000\t40199"
    );
    let listing = sandbox
        .command("ls")
        .args(["-A", "/etc/sysctl.d"])
        .output()
        .unwrap();
    assert!(listing.stdout.is_empty(), "advise mode wrote {listing:?}");
}

#[test]
fn explicit_journal_target_from_a_terminal_says_where_the_lines_go() {
    root_test!();
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, &poll_policy("100ms", "1s", ADVISE));
    let notify = Notify::bind(dir.path());
    let mut cmd = sandbox.portd(&[
        "--config",
        policy.to_str().unwrap(),
        "run",
        "--log-target",
        "journal",
    ]);
    cmd.env("NOTIFY_SOCKET", notify.path());
    let mut portd = Portd::spawn(cmd, &dir.path().join("stderr"));
    let mut notify = notify;
    notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
    assert!(portd.stop().0.success());
    assert_eq!(
        portd.stderr(),
        "portd: logging to the journal (journalctl -t portd)\n"
    );
    let deadline = Instant::now() + 3 * SECOND;
    loop {
        let lines: Vec<String> = sandbox
            .journal()
            .iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "portd")
            .map(|e| field(e, "MESSAGE").to_string())
            .collect();
        if lines.last().is_some_and(|l| l == "portd stopping") {
            assert!(lines[0].contains("starting: mode advise"), "{lines:?}");
            let kinds = check_every_entry_has_its_id(&sandbox);
            assert_eq!(kinds.first(), Some(&Kind::Started), "{lines:?}");
            assert_eq!(kinds.last(), Some(&Kind::Stopping), "{lines:?}");
            // The witness, on or off, and the first census ("ready").
            assert!(
                kinds.iter().filter(|k| **k == Kind::Started).count()
                    + kinds.iter().filter(|k| **k == Kind::WitnessOff).count()
                    >= 3,
                "{lines:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_configuration_hazard_is_logged_once_when_it_appears() {
    root_test!();
    // Both ends even: the same-parity hazard from the first census on.
    let sandbox = Sandbox::with_range("40000 40200", true);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, &poll_policy("100ms", "1s", ADVISE));
    let (mut portd, mut notify) = start(&sandbox, dir.path(), &policy);
    sandbox_wait(&sandbox, "configuration-hazard", 1);
    // Censuses go on (max_staleness 1 s); the hazard is not logged again.
    std::thread::sleep(2500 * Duration::from_millis(1));
    assert_eq!(
        sandbox.portd_alerts().len(),
        1,
        "{}",
        summary(&sandbox.portd_alerts())
    );

    // Gone with an odd-sized range, logged again when it comes back.
    sandbox.set_sysctl("net.ipv4.ip_local_port_range", "40000 40199");
    notify.wait_for("a census of 40000-40199", 5 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.contains("range 40000-40199"))
    });
    sandbox.set_sysctl("net.ipv4.ip_local_port_range", "40000 40198");
    let alerts = sandbox_wait(&sandbox, "configuration-hazard", 2);
    assert!(portd.stop().0.success());
    assert_eq!(portd.stderr(), "");

    check_ids_and_priorities(&alerts);
    assert_eq!(
        events(&alerts),
        ["configuration-hazard", "configuration-hazard"],
        "{}",
        summary(&alerts)
    );
    for (e, range) in alerts.iter().zip(["40000-40200", "40000-40198"]) {
        assert_eq!(field(e, "PORTD_RANGE_BEFORE"), range, "{e:#}");
        let reason = format!("range {range} has ends of the same parity");
        assert!(field(e, "PORTD_REASON").starts_with(&reason), "{e:#}");
        assert_eq!(
            field(e, "MESSAGE"),
            format!("configuration hazard: {}", field(e, "PORTD_REASON"))
        );
    }
}
