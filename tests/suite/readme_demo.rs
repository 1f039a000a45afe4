//! The README's demo (the block between `<!-- demo:begin -->` and
//! `<!-- demo:end -->`) run unchanged in the namespace recipe it is written
//! for: private PID, network and mount namespaces with tmpfs over /run,
//! /etc/sysctl.d and /var/lib (the sandbox, docs/DESIGN.md, "Testing in a
//! namespace", which also covers /usr/lib/sysctl.d), `portd` on the PATH. It must make its own load and show the
//! alert, the forecast and, in auto, the widening. Needs root and python3.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::sandbox::Sandbox;
use super::util::{can_run, root_test, test_name};

const BEGIN: &str = "<!-- demo:begin -->";
const END: &str = "<!-- demo:end -->";

/// The shell text of the README's marked block, without its fence.
fn demo_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert_eq!(readme.matches(BEGIN).count(), 1, "README.md: one {BEGIN}");
    assert_eq!(readme.matches(END).count(), 1, "README.md: one {END}");
    let marked = readme
        .split(BEGIN)
        .nth(1)
        .unwrap()
        .split(END)
        .next()
        .unwrap();
    let body = marked
        .trim()
        .strip_prefix("```sh\n")
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("the marked block is not one ```sh fence:\n{marked}"));
    assert!(
        !body.contains("```"),
        "the marked block holds one fence only"
    );
    body.to_string()
}

fn have_python3() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_readme_demo_runs_unchanged_in_the_namespace_recipe_and_shows_the_alert() {
    root_test!();
    if !can_run(test_name!(), "python3", have_python3()) {
        return;
    }
    let block = demo_block();
    let sandbox = Sandbox::builder().pid_namespace().start();
    let bin = Path::new(env!("CARGO_BIN_EXE_portd")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = sandbox
        .command("sh")
        .arg("-c")
        .arg(&block)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // About 20 s; a demo that hangs ends with the sandbox (its PID
    // namespace's init exits, the kernel kills the rest).
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    let shown = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the demo did not finish well ({status:?}):\n{shown}"
    );
    let said = |what: &str| assert!(stdout.contains(what), "no {what:?}:\n{shown}");
    // The alert, as the daemon logs it and as `portd status` shows it.
    assert!(
        stdout.contains("ephemeral ports warning: ")
            || stdout.contains("ephemeral ports critical: "),
        "the daemon raised no alert:\n{shown}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PORTD WARNING - ") || l.starts_with("PORTD CRITICAL - ")),
        "`portd status` never left OK:\n{shown}"
    );
    said("daemon: running (pid ");
    said("mode advise");
    // The forecast, in the alert or on status's daemon line.
    said("runs out in ");
    // Advise writes nothing; auto widens, persists, and rollback undoes it.
    said("but advise mode: nothing is written");
    said("widened ip_local_port_range 40000-40099 -> 40000-");
    said("net.ipv4.ip_local_port_range = 40000 ");
    said("portd rollback: restored ip_local_port_range");
    assert_eq!(sandbox.range(), "40000 40099", "{shown}");
}
