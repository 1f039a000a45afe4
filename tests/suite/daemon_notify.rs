//! `portd run` and the service manager: the sd_notify sequence on a fake
//! `NOTIFY_SOCKET`, the watchdog, SIGHUP reloads, SIGTERM with a census in
//! flight, and a census that runs long or fails. Runs against fake `/proc`
//! trees (`--root`), so it needs no root and writes nothing outside a tempdir.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::portd_child::{Notify, Portd, status_of};
use super::util::{conns_to, fake_proc, write_policy};
use rustix::process::Signal;

const SECOND: Duration = Duration::from_secs(1);

/// Advise mode (nothing is written), fast polls.
const POLICY: &str = "[poll]\ninterval = \"200ms\"\n\n[widen]\nmode = \"advise\"\n";

/// `portd --root ROOT --config ROOT/policy.toml run` with `NOTIFY_SOCKET`
/// and, if given, `WATCHDOG_USEC`. With `watchdog_pid_is_self`, a shell sets
/// `WATCHDOG_PID=$$` and execs portd, so the variable names portd's own pid
/// exactly as systemd would.
fn portd_cmd(
    root: &Path,
    notify: &Notify,
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
) -> Command {
    let mut cmd = if watchdog_pid == Some("self") {
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"",
        ])
        .arg(env!("CARGO_BIN_EXE_portd"));
        sh
    } else {
        Command::new(env!("CARGO_BIN_EXE_portd"))
    };
    cmd.arg("--root")
        .arg(root)
        .arg("--config")
        .arg(root.join("policy.toml"))
        .args(["run", "--log-target", "stderr"])
        .env_remove("PORTD_ROOT")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Each poll's status on the log (STATUS= goes out on change only).
        .env("PORTD_LOG", "debug")
        .env("NOTIFY_SOCKET", notify.path());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec);
    }
    if let Some(pid) = watchdog_pid.filter(|p| *p != "self") {
        cmd.env("WATCHDOG_PID", pid);
    }
    cmd
}

/// [`portd_cmd`] started, with a notify socket in `dir` and its stderr
/// kept in `dir/stderr`.
fn start(
    dir: &Path,
    root: &Path,
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
) -> (Notify, Portd) {
    let notify = Notify::bind(dir);
    let cmd = portd_cmd(root, &notify, watchdog_usec, watchdog_pid);
    let portd = Portd::spawn(cmd, &dir.join("stderr"));
    (notify, portd)
}

/// A fixture with three connections to 10.1.1.1:443 in 40000-40099 (3 %).
fn quiet_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    fake_proc(
        &root,
        (40000, 40099),
        &conns_to([10, 1, 1, 1], 443, 40000, 3),
    );
    write_policy(&root.join("policy.toml"), POLICY);
    root
}

fn index_of(seen: &[String], from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    seen.iter()
        .enumerate()
        .skip(from)
        .find(|(_, m)| pred(m))
        .map(|(i, _)| i)
}

#[test]
fn notify_sees_ready_status_watchdog_reloading_ready_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let (mut notify, mut portd) = start(dir.path(), &root, Some("400000"), Some("self"));

    let first = notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
    assert_eq!(
        first,
        "READY=1\nSTATUS=usage 3.0% (3/100) destination 10.0.0.5 -> 10.1.1.1:443; range 40000-40099; mode advise\n",
        "READY must come first, with the one-line STATUS of the first census"
    );
    // WATCHDOG_USEC=400ms: fed every 200ms from the event loop. The later
    // polls (a census each) find the same usage: STATUS= is sent when it
    // changes, so the first census's is not sent again.
    let later = notify.collect(SECOND);
    let fed = later.iter().filter(|m| *m == "WATCHDOG=1\n").count();
    assert!(
        (3..=7).contains(&fed),
        "{fed} WATCHDOG=1 in 1 s, expected about 5 (half of WATCHDOG_USEC=400ms)"
    );
    assert!(
        !later.iter().any(|m| status_of(m) == status_of(&first)),
        "an unchanged STATUS= sent again: {later:#?}"
    );
    portd.wait_line(&["poll: usage 3.0%"], 2 * SECOND);

    portd.signal(Signal::HUP);
    let reloading = notify.wait_for("RELOADING", 2 * SECOND, |m| m.contains("RELOADING=1"));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading:?}");
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    notify.wait_for("READY after the reload", 2 * SECOND, |m| {
        m.starts_with("READY=1\nSTATUS=usage 3.0%")
    });

    let (status, took) = portd.stop();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(2));
    notify.wait_for("STOPPING", SECOND, |m| m.starts_with("STOPPING=1"));

    let seen: Vec<String> = notify.seen.iter().map(|(_, m)| m.clone()).collect();
    let ready = index_of(&seen, 0, |m| m.starts_with("READY=1")).unwrap();
    let watchdog = index_of(&seen, ready + 1, |m| m == "WATCHDOG=1\n").unwrap();
    let reloading = index_of(&seen, watchdog + 1, |m| m.starts_with("RELOADING=1")).unwrap();
    let ready_again = index_of(&seen, reloading + 1, |m| m.starts_with("READY=1")).unwrap();
    let stopping = index_of(&seen, ready_again + 1, |m| m.starts_with("STOPPING=1")).unwrap();
    assert_eq!(
        stopping,
        seen.len() - 1,
        "nothing after STOPPING: {seen:#?}"
    );
    for m in &seen {
        let status = status_of(m).unwrap_or("");
        assert!(
            !status.contains('\n'),
            "STATUS on more than one line: {m:?}"
        );
    }
}

#[test]
fn watchdog_is_off_when_watchdog_pid_names_another_process_or_usec_is_zero() {
    for (usec, pid) in [("400000", Some("1")), ("0", None)] {
        let dir = tempfile::tempdir().unwrap();
        let root = quiet_root(dir.path());
        let (mut notify, mut portd) = start(dir.path(), &root, Some(usec), pid);
        notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
        let got = notify.collect(Duration::from_millis(800));
        assert!(
            !got.iter().any(|m| m.contains("WATCHDOG=1")),
            "WATCHDOG_USEC={usec} WATCHDOG_PID={pid:?}: the watchdog is not ours, yet {got:?}"
        );
        assert!(portd.stop().0.success());
    }
}

/// `proc/net/tcp` with 400k more rows (local port 30000, outside the range):
/// a census of about a second in a debug build, long enough to be in flight
/// when a test signals. (A FIFO there no longer blocks the census: portd
/// refuses anything but a regular file, fsutil::open_regular.)
fn slow_root(dir: &Path) -> std::path::PathBuf {
    use std::fmt::Write as _;
    let root = quiet_root(dir);
    let tcp = root.join("proc/net/tcp");
    let mut table = std::fs::read_to_string(&tcp).unwrap();
    table.reserve(400_000 * 150);
    for i in 0..400_000u32 {
        let _ = writeln!(
            table,
            "{i:6}: 0500000A:7530 0101010A:01BB 01 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1",
            100_000 + i
        );
    }
    std::fs::write(&tcp, table).unwrap();
    root
}

#[test]
fn sigterm_exits_0_within_two_seconds_while_a_census_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = slow_root(dir.path());
    // No watchdog: the census would only be abandoned after 30 s.
    let (mut notify, mut portd) = start(dir.path(), &root, None, None);
    std::thread::sleep(Duration::from_millis(300));
    assert!(portd.is_running(), "stderr:\n{}", portd.stderr());
    let (status, took) = portd.stop();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", portd.stderr());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let seen: Vec<&str> = notify.seen.iter().map(|(_, m)| m.as_str()).collect();
    assert!(!seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    notify.wait_for("STOPPING", SECOND, |m| m.starts_with("STOPPING=1"));
}

#[test]
fn a_census_that_outlives_the_watchdog_interval_is_abandoned_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = slow_root(dir.path());
    let mut notify = Notify::bind(dir.path());
    let started = Instant::now();
    let mut portd = Portd::spawn(
        portd_cmd(&root, &notify, Some("300000"), None),
        &dir.path().join("stderr"),
    );
    let abandoned = notify.wait_for("census abandoned", 3 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.starts_with("census abandoned after"))
    });
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000),
        "abandoned after {waited:?}, the watchdog interval is 300ms: {abandoned:?}"
    );
    // The loop is alive meanwhile: it feeds the watchdog and reports each poll.
    let later = notify.collect(SECOND);
    assert!(
        later.iter().filter(|m| *m == "WATCHDOG=1\n").count() >= 2,
        "{later:?}"
    );
    assert!(
        later
            .iter()
            .any(|m| status_of(m).is_some_and(|s| s.starts_with("census stuck"))),
        "{later:?}"
    );
    portd.assert_stderr_has("census abandoned after");

    // A small table takes the big one's place; the census reading the big
    // one ends on its own. Its late result is discarded; the next census
    // reads the small table and portd becomes ready.
    let tcp = root.join("proc/net/tcp");
    let table = super::util::tcp_table(&conns_to([10, 1, 1, 1], 443, 40000, 3));
    std::fs::write(root.join("tcp.new"), &table).unwrap();
    std::fs::rename(root.join("tcp.new"), &tcp).unwrap();
    notify.wait_for("READY after the stuck census ended", 10 * SECOND, |m| {
        m.starts_with("READY=1\nSTATUS=usage 3.0%")
    });
    portd.assert_stderr_has("the abandoned census ended after");
    assert!(portd.stop().0.success());
}

#[test]
fn a_failed_census_is_reported_and_retried_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let tcp = root.join("proc/net/tcp");
    let good = std::fs::read_to_string(&tcp).unwrap();
    std::fs::write(&tcp, format!("{good}   3: not a socket line\n")).unwrap();
    let (mut notify, mut portd) = start(dir.path(), &root, None, None);
    notify.wait_for("census failed", 3 * SECOND, |m| {
        status_of(m).is_some_and(|s| s.starts_with("census failed, will retry:"))
    });
    // Retried every poll, logged once.
    notify.collect(Duration::from_millis(700));
    assert!(portd.is_running());
    let stderr = portd.stderr();
    assert_eq!(stderr.matches("census failed").count(), 1, "{stderr}");

    std::fs::write(&tcp, good).unwrap();
    notify.wait_for("READY once the census works", 3 * SECOND, |m| {
        m.starts_with("READY=1\nSTATUS=usage 3.0%")
    });
    assert!(portd.stop().0.success());
}

#[test]
fn a_policy_with_errors_on_sighup_is_rejected_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let policy = root.join("policy.toml");
    let (mut notify, mut portd) = start(dir.path(), &root, None, None);
    notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));

    // Asks for auto mode and a 5 s interval, with a syntax error.
    write_policy(
        &policy,
        "[poll]\ninterval = \"5s\"\n\n[widen]\nmode = \"auto\"\nceiling = 65,535\n",
    );
    portd.signal(Signal::HUP);
    notify.wait_for("RELOADING", 2 * SECOND, |m| m.starts_with("RELOADING=1"));
    notify.wait_for("READY after the rejected reload", 2 * SECOND, |m| {
        m.starts_with("READY=1")
    });
    // Still advise, still polling every 200 ms.
    let after = portd.polls(SECOND);
    assert!(after.len() >= 3, "{after:?}");
    assert!(
        after.iter().all(|s| s.ends_with("mode advise")),
        "{after:?}"
    );
    let stderr = portd.stderr();
    let rejected = format!("{}:6:13: TOML syntax error", policy.display());
    assert!(
        stderr.contains("policy rejected, the previous one stays in force")
            && stderr.contains(&rejected),
        "expected the rejection with {rejected}; stderr:\n{stderr}"
    );

    write_policy(
        &policy,
        "[poll]\ninterval = \"200ms\"\n\n[widen]\nmode = \"auto\"\n",
    );
    portd.signal(Signal::HUP);
    notify.wait_for("READY in auto mode", 2 * SECOND, |m| {
        m.starts_with("READY=1") && m.trim_end().ends_with("mode auto")
    });
    assert!(portd.stderr().contains("policy reloaded from"));
    assert!(portd.stop().0.success());
}

/// Just under the 1 MiB the policy file may have: about 90 000 unknown keys,
/// each an error.
fn huge_bad_policy() -> String {
    let text: String = (0..90_000).map(|i| format!("k{i} = 1\n")).collect();
    assert!(text.len() < 1 << 20, "{} bytes", text.len());
    text
}

#[test]
fn sigterm_right_after_sighup_with_a_huge_bad_policy_stops_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let (mut notify, mut portd) = start(dir.path(), &root, None, None);
    notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
    write_policy(&root.join("policy.toml"), &huge_bad_policy());
    portd.signal(Signal::HUP);
    notify.wait_for("RELOADING", 2 * SECOND, |m| m.starts_with("RELOADING=1"));
    let (status, took) = portd.stop();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", portd.stderr());
    assert!(took < 2 * SECOND, "took {took:?}");
}

#[test]
fn a_huge_bad_policy_on_sighup_is_rejected_with_a_capped_list_and_polls_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let policy = root.join("policy.toml");
    let (mut notify, mut portd) = start(dir.path(), &root, None, None);
    notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
    write_policy(&policy, &huge_bad_policy());
    portd.signal(Signal::HUP);
    notify.wait_for("RELOADING", 2 * SECOND, |m| m.starts_with("RELOADING=1"));
    notify.wait_for("READY after the rejected reload", 20 * SECOND, |m| {
        m.starts_with("READY=1")
    });
    let stderr = portd.stderr();
    assert!(
        stderr.contains("policy rejected, the previous one stays in force")
            && stderr.contains(&format!("and 89980 more problems in {}", policy.display())),
        "stderr:\n{}",
        &stderr[..stderr.len().min(4000)]
    );
    let listed = stderr
        .lines()
        .filter(|l| l.contains(&format!("{}:", policy.display())))
        .count();
    assert!(listed <= 21, "{listed} lines name the policy file");
    // Still polling in the old policy.
    let after = portd.polls(SECOND);
    assert!(after.len() >= 3, "{after:?}");
    assert!(portd.stop().0.success());
}

#[test]
fn an_interactive_run_logs_readable_lines_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let root = quiet_root(dir.path());
    let mut notify = Notify::bind(dir.path());
    // `--log-target auto` (the default) with a JOURNAL_STREAM that is not
    // our stderr, as in a shell started from a systemd unit.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portd"));
    cmd.arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(root.join("policy.toml"))
        .arg("run")
        .env_clear()
        .env("NOTIFY_SOCKET", notify.path())
        .env("JOURNAL_STREAM", "8:12345");
    let mut portd = Portd::spawn(cmd, &dir.path().join("stderr"));
    notify.wait_for("READY", 5 * SECOND, |m| m.contains("READY=1"));
    assert!(portd.stop().0.success());
    let stderr = portd.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("portd: NOTICE: portd ")
                && l.contains("starting: mode advise, interval 200ms")),
        "{stderr}"
    );
    assert!(
        lines.contains(
            &"portd: NOTICE: ready: usage 3.0% (3/100) destination 10.0.0.5 -> 10.1.1.1:443; \
              range 40000-40099; mode advise"
        ),
        "{stderr}"
    );
    assert_eq!(
        lines.last(),
        Some(&"portd: NOTICE: portd stopping"),
        "{stderr}"
    );
}
