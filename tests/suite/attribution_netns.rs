//! `portd status --processes` names the processes that hold a destination's
//! sockets, including those of other users (needs root).
//!
//! The scenario, in a sandbox with the range 40000-40099, tcp_tw_reuse=0:
//!   127.0.0.1:5001  7 sockets of `portd-exec-nb` (nobody, after exec) + 3 TIME_WAIT
//!   127.0.0.1:5002  4 sockets of `portd-fork-nb` (nobody, forked without exec)
//!   127.0.0.1:5003  2 sockets of the test process itself (root)
//! The holders of nobody are tests/helpers/nobody_holder.py.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::sandbox::{Sandbox, stop_child};
use super::util::{own_comm, root_test, stdout_json, tests_dir};

/// A process of nobody holding connections; its report (`pid`, `uid`,
/// `ports`) once they are open. Dropping it closes its stdin, which ends it.
struct Holder {
    child: Child,
    report: Value,
}

impl Holder {
    /// `mode` "exec" or "fork" (see the script): `count` connections to
    /// 127.0.0.1:`port` from a process named `comm`, accepted by `listener`.
    fn start(
        ns: &Sandbox,
        mode: &str,
        comm: &str,
        port: u16,
        listener: &TcpListener,
        count: usize,
    ) -> Holder {
        let script = std::fs::read_to_string(tests_dir().join("helpers/nobody_holder.py")).unwrap();
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut cmd = if mode == "exec" {
            let mut cmd = ns.command("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", python]);
            cmd
        } else {
            ns.command(python)
        };
        let mut child = cmd
            .arg("-c")
            .arg(script)
            .args([mode, comm, &port.to_string(), &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let report: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the {comm} holder did not report ({e}): {line:?}"));
        for _ in 0..count {
            ns.hold(listener.accept().unwrap().0.into());
        }
        Holder { child, report }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.child.stdin.take();
        stop_child(&mut self.child, rustix::process::Signal::TERM);
    }
}

/// The scenario of the module doc: the sandbox, the holders (exec'd,
/// forked) and the test's own name as /proc shows it.
fn attribution() -> (Sandbox, Holder, Holder, String) {
    let ns = Sandbox::builder()
        .range("40000 40099")
        .reserved("")
        .sysctl("net.ipv4.tcp_tw_reuse", "0")
        .start();
    let at = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let l5001 = ns.listen_on(at(5001), false);
    let l5002 = ns.listen_on(at(5002), false);
    let l5003 = ns.listen_on(at(5003), false);
    let forked = Holder::start(&ns, "fork", "portd-fork-nb", 5002, &l5002, 4);
    let execd = Holder::start(&ns, "exec", "portd-exec-nb", 5001, &l5001, 7);
    for _ in 0..2 {
        let (client, peer) = ns.connect_from(at(5003), None, Some(&l5003)).unwrap();
        ns.hold(client.into());
        ns.hold(peer.unwrap().into());
    }
    for _ in 0..3 {
        ns.client_time_wait(at(5001), None, &l5001);
    }
    std::thread::sleep(Duration::from_millis(200));
    (ns, execd, forked, own_comm())
}

fn attribution_of(report: &Value, remote_port: u16) -> Value {
    let d = report["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["remote"] == "127.0.0.1" && d["remote_port"] == remote_port)
        .unwrap_or_else(|| panic!("no destination 127.0.0.1:{remote_port}: {report:#}"));
    assert_eq!(d["local"], "127.0.0.1");
    d["attribution"].clone()
}

fn status_with_processes(ns: &Sandbox) -> Value {
    let out = ns.portd_output(&["status", "--json", "--top", "0", "--processes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stdout_json(&out)
}

#[test]
fn attribution_names_process_of_other_user() {
    root_test!();
    let (ns, execd, _forked, ours) = attribution();
    let holder = &execd.report;
    assert_eq!(holder["uid"], 65534);
    let report = status_with_processes(&ns);

    assert_eq!(
        attribution_of(&report, 5001),
        json!({
            "processes": [{"pid": holder["pid"], "command": "portd-exec-nb", "uid": 65534, "sockets": 7}],
            "without_inode": 3,
            "not_found": 0,
        }),
        "7 sockets of nobody's process, 3 TIME_WAIT without a process"
    );
    assert_eq!(
        attribution_of(&report, 5003),
        json!({
            "processes": [{"pid": std::process::id(), "command": ours, "uid": 0, "sockets": 2}],
            "without_inode": 0,
            "not_found": 0,
        })
    );
    let note = report["attribution_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("inode 0"),
        "the report should say why some sockets have no process: {note:?}"
    );
}

#[test]
fn attribution_reports_uid_of_process_that_dropped_privileges_without_exec() {
    // Daemon workers (nginx, sshd) setuid() without exec: they are not
    // dumpable, so /proc/PID is owned by root, yet they run as another user.
    root_test!();
    let (ns, _execd, forked, _) = attribution();
    let holder = &forked.report;
    assert_eq!(holder["uid"], 65534);
    let report = status_with_processes(&ns);
    assert_eq!(
        attribution_of(&report, 5002),
        json!({
            "processes": [{"pid": holder["pid"], "command": "portd-fork-nb", "uid": 65534, "sockets": 4}],
            "without_inode": 0,
            "not_found": 0,
        })
    );
}
