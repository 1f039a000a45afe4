//! `portd status --watch` beside a daemon with a history: under a
//! pseudo-terminal it draws the sparkline on the alternate screen, leaves
//! on `q` with exit 0 and restores the terminal; into a pipe it prints
//! plain lines. The daemon polls every second and takes a history point
//! every second (`PORTD_HISTORY_STEP`, daemon/history.rs) while
//! connections climb on a 100-port range in the sandbox. Needs root.

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::portd_child::{start_ready, wait_for};
use super::sandbox::Sandbox;
use super::util::{root_test, text, write_policy};

const SECOND: Duration = Duration::from_secs(1);
const POLICY: &str = "[poll]\ninterval = \"1s\"\n\n[widen]\nmode = \"advise\"\n";
const DESTINATION: &str = "127.0.0.1:5001";
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// crossterm's `LeaveAlternateScreen` (and `EnterAlternateScreen`).
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";
const ENTER_ALTERNATE: &str = "\x1b[?1049h";

/// Runs argv[1:] under a pseudo-terminal of 40 × 160; once its screen
/// shows every argument of `--expect` (before the command), sends `q`.
/// Writes everything the terminal received to stdout and exits with the
/// command's exit status (99 when the screen never showed them in 20 s).
const PTY_DRIVER: &str = r#"
import os, pty, select, struct, sys, time, fcntl, termios
expect = sys.argv[1].split("\t")
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
seen = b""
sent = False
deadline = time.time() + 20
while True:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    screen = seen.decode("utf-8", "replace")
    if not sent and all(e in screen for e in expect):
        time.sleep(0.3)
        os.write(fd, b"q")
        sent = True
        deadline = time.time() + 10
    if time.time() > deadline:
        os.kill(pid, 9)
        break
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status) if sent else 99)
"#;

/// The history's series of the sandbox's destination.
fn series(live: &Value) -> Option<&Value> {
    live["history"]["destinations"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.contains(DESTINATION)))
}

fn history_points(live: &Value) -> usize {
    series(live)
        .and_then(|s| s["usage"].as_array())
        .map_or(0, Vec::len)
}

#[test]
fn status_watch_draws_the_history_on_a_terminal_and_plain_lines_into_a_pipe() {
    root_test!();
    let mut sandbox = Sandbox::with_range("40000 40099", false);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write_policy(&policy, POLICY);
    let mut cmd = sandbox.portd(&["--config", policy.to_str().unwrap(), "run"]);
    cmd.env("PORTD_HISTORY_STEP", "1");
    let (mut portd, _notify) = start_ready(cmd, dir.path(), false);
    // 8 connections a second up to 40 of 100 ports: five seconds of climb.
    sandbox.ramp(40, 8);
    let live = wait_for("a history of 6 points", 30 * SECOND, || {
        let text = sandbox.read_file("/run/portd/live.json")?;
        let live: Value = serde_json::from_str(&text).ok()?;
        (history_points(&live) >= 6).then_some(live)
    });
    assert_eq!(sandbox.wait_ramp(), (40, None));
    let used = &series(&live).unwrap()["used"];
    assert!(used[0].as_u64() < used[5].as_u64(), "climbing: {live:#}");
    assert_eq!(live["history"]["step_seconds"], 1.0, "{live:#}");

    // Under a pseudo-terminal: the screen, then `q`.
    let portd_exe = env!("CARGO_BIN_EXE_portd");
    let bars: String = BARS.iter().collect();
    let expect = format!("{DESTINATION}\tlast 10 min\t{}", &bars[bars.len() - 3..]);
    let out = sandbox
        .command("python3")
        .args(["-c", PTY_DRIVER, &expect, portd_exe])
        .args(["--config", policy.to_str().unwrap()])
        .args(["status", "--watch", "--interval", "0.5"])
        .output()
        .unwrap();
    let screen = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit after q; screen:\n{screen:?}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(screen.contains(ENTER_ALTERNATE), "{screen:?}");
    let leave = screen
        .rfind(LEAVE_ALTERNATE)
        .expect("the alternate screen left");
    let drawn = screen.rfind(DESTINATION).unwrap();
    assert!(leave > drawn, "restored after the last screen: {screen:?}");
    let climbing: Vec<char> = screen.chars().filter(|c| BARS.contains(c)).collect();
    assert!(
        climbing.contains(&'▁') || climbing.contains(&'▂'),
        "low bars of the start of the climb: {screen:?}"
    );

    // Into a pipe: plain blocks, until SIGTERM.
    let mut watch = sandbox
        .portd(&["--config", policy.to_str().unwrap()])
        .args(["status", "--watch", "--interval", "0.3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &watch.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut plain = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut plain)
        .unwrap();
    let status = watch.wait().unwrap();
    assert!(started.elapsed() < 5 * SECOND, "SIGTERM answered at once");
    let mut stderr = String::new();
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{plain}\nstderr: {stderr}");
    assert!(!plain.contains('\x1b'), "no escape sequence: {plain:?}");
    let blocks: Vec<&str> = plain.split("\n\n").filter(|b| !b.is_empty()).collect();
    assert!(blocks.len() >= 2, "a block per refresh: {plain}");
    let first = blocks[0];
    assert!(
        first.starts_with("portd status --watch, every 300ms"),
        "{first}"
    );
    assert!(first.contains("daemon: running"), "{first}");
    assert!(first.contains("range 40000-40099 (100 ports)"), "{first}");
    let row = first
        .lines()
        .find(|l| l.contains(DESTINATION))
        .unwrap_or_else(|| panic!("no row of {DESTINATION}: {first}"));
    assert!(row.contains("40/100"), "{row}");
    assert!(row.chars().any(|c| BARS.contains(&c)), "a sparkline: {row}");
    assert!(portd.stop().0.success());
}
