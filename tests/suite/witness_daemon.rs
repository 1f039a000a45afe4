//! `portd run` as the failure witness, end to end: in a sandbox (private
//! network + mount namespace, tmpfs over /run with a journald of its own,
//! tracefs mounted inside), clients provoke real failures on all three
//! paths while portd runs in advise mode; its metrics file shows exactly the
//! clients' counts per destination/pool and process name, the journal has
//! one port-allocation-failed entry per destination or pool naming the
//! process, and failures in another namespace are not counted. Without
//! capabilities portd says once that the witness is off and carries on
//! from the census; in auto mode a witnessed failure widens at once, without
//! waiting for the policy's hold. Needs root.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon_metrics::parse_textfile;
use super::portd_child::{Notify, Portd, start_ready};
use super::sandbox::Sandbox;
use super::util::{own_comm, poll_policy, root_test, tests_dir, write_policy};

const SECOND: Duration = Duration::from_secs(1);

/// Fast polls (a census at least every second), advise mode, and `tables`.
fn advise_policy(tables: &str) -> String {
    poll_policy(
        "200ms",
        "1s",
        &format!("\n[widen]\nmode = \"advise\"\n{tables}"),
    )
}

fn sandbox() -> Sandbox {
    let sandbox = Sandbox::with_range("40000 40001", true);
    sandbox.mount_tracefs();
    sandbox
}

/// `portd --config POLICY run` in the sandbox, stderr "to the journal" as
/// systemd connects it; `wrap` runs before portd (e.g. setpriv).
fn start(sandbox: &Sandbox, dir: &Path, wrap: &[&str]) -> (Portd, Notify) {
    let metrics = dir.join("metrics.prom");
    let policy = dir.join("portd.toml");
    write_policy(
        &policy,
        &advise_policy(&format!("\n[metrics]\nfile = \"{}\"\n", metrics.display())),
    );
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = sandbox.command(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_portd"));
            c
        }
        None => sandbox.command(env!("CARGO_BIN_EXE_portd")),
    };
    cmd.args(["--config", policy.to_str().expect("utf-8 path"), "run"]);
    start_ready(cmd, dir, true)
}

/// Samples of the metrics file: (name, labels without "__") -> value.
fn samples(dir: &Path) -> BTreeMap<(String, String), f64> {
    let text = std::fs::read_to_string(dir.join("metrics.prom")).unwrap_or_default();
    if text.is_empty() {
        return BTreeMap::new();
    }
    parse_textfile(&text)
        .into_iter()
        .map(|s| {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ((s.name, labels.join(",")), s.value)
        })
        .collect()
}

/// What the clients saw, as the metrics should show it (summed over pids).
fn expected(clients: &Value) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for c in clients["clients"].as_array().expect("clients") {
        let comm = c["comm"].as_str().expect("comm");
        for e in c["seen"].as_array().expect("seen") {
            let local = e["local"].as_str().expect("local");
            let key = match e["kind"].as_str().expect("kind") {
                "tcp_connect" => {
                    let dest = e["destination"].as_str().expect("destination");
                    let (ip, port) = dest.rsplit_once(':').expect("ip:port");
                    (
                        "portd_connect_failures_total".to_string(),
                        format!("comm={comm},local={local},remote={ip},remote_port={port}"),
                    )
                }
                kind => (
                    if kind == "bind0" {
                        "portd_bind_failures_total"
                    } else {
                        "portd_udp_autobind_failures_total"
                    }
                    .to_string(),
                    format!(
                        "comm={comm},local={local},proto={}",
                        e["protocol"].as_str().expect("protocol")
                    ),
                ),
            };
            *out.entry(key).or_insert(0.0) += e["count"].as_f64().expect("count");
        }
    }
    out
}

fn failures(s: &BTreeMap<(String, String), f64>) -> BTreeMap<(String, String), f64> {
    s.iter()
        .filter(|((name, _), _)| {
            [
                "portd_connect_failures_total",
                "portd_bind_failures_total",
                "portd_udp_autobind_failures_total",
            ]
            .contains(&name.as_str())
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The journal's messages (of any process in the sandbox) containing `text`.
/// tests/helpers/witness_clients.py's clients of 5101 and 5102 in the
/// sandbox, which must succeed.
fn run_clients(sandbox: &Sandbox) -> std::process::Output {
    let out = sandbox
        .command("python3")
        .arg(tests_dir().join("helpers/witness_clients.py"))
        .args(["clients", "5101", "5102"])
        .output()
        .expect("run clients");
    assert!(out.status.success(), "clients: {out:?}");
    out
}

fn said(sandbox: &Sandbox, text: &str) -> Vec<String> {
    sandbox
        .journal()
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .filter(|m| m.contains(text))
        .map(str::to_string)
        .collect()
}

#[test]
fn portd_run_counts_every_failure_the_clients_saw() {
    root_test!();
    let sandbox = sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut portd, _notify) = start(&sandbox, dir.path(), &[]);

    let out = run_clients(&sandbox);
    let clients: Value = serde_json::from_slice(&out.stdout).expect("clients json");
    let want = expected(&clients);
    let total: f64 = want.values().sum();
    assert!(total >= 100.0, "only {total} failures provoked");
    assert!(clients["noise"].as_u64().expect("noise") > 0);

    // The next polls show them all (polls every 200 ms).
    let deadline = Instant::now() + 5 * SECOND;
    let mut got = failures(&samples(dir.path()));
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = failures(&samples(dir.path()));
    }
    assert_eq!(got, want, "metrics vs clients");
    let all = samples(dir.path());
    assert_eq!(
        all.get(&("portd_witness_active".into(), String::new())),
        Some(&1.0)
    );
    assert_eq!(
        all.get(&("portd_witness_dropped_total".into(), String::new())),
        Some(&0.0)
    );

    // `status` shows the same through the daemon's live view, per key.
    let out = sandbox
        .portd(&["status", "--json"])
        .output()
        .expect("portd status");
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    let w = &status["daemon"]["live"]["witness"];
    assert_eq!(w["active"], true, "{status:#}");
    assert_eq!(w["failures_total"].as_f64(), Some(total), "{w:#}");
    let mut by_key: BTreeMap<(String, String), f64> = BTreeMap::new();
    for f in w["failures"].as_array().expect("failures") {
        let key = f["target"].as_str().expect("target").to_string();
        let who = format!(
            "{} {}",
            f["comm"].as_str().expect("comm"),
            f["kind"].as_str().expect("kind")
        );
        *by_key.entry((key, who)).or_default() += f["total"].as_f64().expect("total");
    }
    let mut want_by_key: BTreeMap<(String, String), f64> = BTreeMap::new();
    for c in clients["clients"].as_array().expect("clients") {
        for e in c["seen"].as_array().expect("seen") {
            let target = match e["destination"].as_str() {
                Some(d) => d.to_string(),
                None => format!(
                    "{} pool {}",
                    e["protocol"].as_str().expect("protocol"),
                    e["local"].as_str().expect("local")
                ),
            };
            let who = format!(
                "{} {}",
                c["comm"].as_str().expect("comm"),
                e["kind"].as_str().expect("kind")
            );
            *want_by_key.entry((target, who)).or_default() += e["count"].as_f64().expect("count");
        }
    }
    assert_eq!(by_key, want_by_key, "status vs clients");
    let human = sandbox.portd(&["status"]).output().expect("portd status");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!("since start: {total}"))
            || human.contains(&format!("{total} since start")),
        "{human}"
    );

    // One journal entry per destination (TCP) or pool, naming a client.
    let alerts = sandbox.wait_alerts("port-allocation-failed", 5, 5 * SECOND);
    let mut targets: Vec<&str> = alerts
        .iter()
        .filter(|e| e["PORTD_EVENT"] == "port-allocation-failed")
        .map(|e| {
            assert_eq!(e["MESSAGE_ID"], "bc91379153534ca58f0c1d5d8a11bbbd");
            assert_eq!(e["PRIORITY"], "3");
            let process = e["PORTD_PROCESS"].as_str().expect("PORTD_PROCESS");
            assert!(process.starts_with("wclient-"), "{process}");
            e["PORTD_DESTINATION"].as_str().expect("PORTD_DESTINATION")
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "127.0.0.1:5101",
            "127.0.0.1:5102",
            "tcp pool 127.0.0.1",
            "udp pool 0.0.0.0",
            "udp pool 127.0.0.1"
        ]
    );
    assert_eq!(
        said(&sandbox, "failure witness on: syscall tracepoints").len(),
        1
    );
    portd.stop();
}

#[test]
fn without_capabilities_portd_says_once_the_witness_is_off_and_runs_on_the_census() {
    root_test!();
    let sandbox = sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut portd, _notify) = start(
        &sandbox,
        dir.path(),
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"],
    );
    run_clients(&sandbox);
    std::thread::sleep(SECOND);
    let all = samples(dir.path());
    assert_eq!(
        all.get(&("portd_witness_active".into(), String::new())),
        Some(&0.0)
    );
    assert!(failures(&all).is_empty(), "{all:?}");
    assert!(
        all.contains_key(&("portd_range_low".into(), String::new())),
        "census metrics"
    );
    let off = said(&sandbox, "failure witness off");
    assert_eq!(off.len(), 1, "{off:?}");
    assert!(off[0].contains("Operation not permitted"), "{off:?}");
    assert!(portd.is_running());
    portd.stop();
}

/// Auto mode, no cooldown, and an hour's hold: only a witnessed failure can
/// widen at once.
const AUTO_LONG_HOLD: &str = r#"
[thresholds]
hold = "1h"

[widen]
mode = "auto"
cooldown = "0s"
max_changes_per_hour = 100
"#;

/// Holds both ports of the range towards 127.0.0.1:5101 until a line comes
/// on stdin, then tries one more connect and prints its errno.
const HOLD_THEN_FAIL: &str = r#"
import errno, socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 5101)); ls.listen(16)
held = [socket.create_connection(("127.0.0.1", 5101)) for _ in range(2)]
print("held", flush=True)
sys.stdin.readline()
s = socket.socket()
try:
    s.connect(("127.0.0.1", 5101)); print("connected", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
sys.stdin.readline()
"#;

#[test]
fn in_auto_mode_a_witnessed_failure_widens_at_once_without_the_hold() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    root_test!();
    let sandbox = sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("portd.toml");
    write_policy(&policy, &poll_policy("200ms", "1s", AUTO_LONG_HOLD));
    let cmd = sandbox.portd(&["--config", policy.to_str().expect("utf-8"), "run"]);
    let (mut portd, _notify) = start_ready(cmd, dir.path(), false);

    let mut client = sandbox
        .command("python3")
        .args(["-c", HOLD_THEN_FAIL])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut input = client.stdin.take().expect("stdin");
    let mut output = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    output.read_line(&mut line).expect("client line");
    assert_eq!(line.trim(), "held");
    // Every port in use: critical, but the 1 h hold keeps portd waiting.
    std::thread::sleep(2 * SECOND);
    assert_eq!(
        sandbox.sysctl("net.ipv4.ip_local_port_range"),
        "40000\t40001",
        "widened before any failure: {}",
        portd.stderr()
    );
    // A program fails to get a port: portd acts at once.
    writeln!(input).expect("to client");
    line.clear();
    output.read_line(&mut line).expect("client line");
    assert_eq!(line.trim(), "EADDRNOTAVAIL");
    let failed_at = Instant::now();
    let deadline = failed_at + 30 * SECOND;
    let mut range = sandbox.sysctl("net.ipv4.ip_local_port_range");
    while range == "40000\t40001" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        range = sandbox.sysctl("net.ipv4.ip_local_port_range");
    }
    eprintln!(
        "range {range:?} {:?} after the failure",
        failed_at.elapsed()
    );
    if range == "40000\t40001" {
        let live = sandbox
            .command("cat")
            .arg("/run/portd/live.json")
            .output()
            .expect("cat live.json");
        panic!(
            "not widened after the failure: {}\n{}",
            portd.stderr(),
            String::from_utf8_lossy(&live.stdout)
        );
    }
    drop(input);
    let _ = client.wait();
    portd.stop();
}

/// The sandbox's ramp (sandbox.rs) in advise mode: the ramp ends at its
/// first EADDRNOTAVAIL, and the witness counts exactly that one failure.
#[test]
fn the_ramps_failure_in_advise_mode_is_counted_exactly_once() {
    root_test!();
    let mut sandbox = sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut portd, _notify) = start(&sandbox, dir.path(), &[]);
    sandbox.ramp(10, 50);
    assert_eq!(sandbox.wait_ramp(), (2, Some("EADDRNOTAVAIL".to_string())));
    let want: BTreeMap<(String, String), f64> = [(
        (
            "portd_connect_failures_total".to_string(),
            // The ramp's connect()s are the test process's own.
            format!(
                "comm={},local=0.0.0.0,remote=127.0.0.1,remote_port=5001",
                own_comm()
            ),
        ),
        1.0,
    )]
    .into();
    let deadline = Instant::now() + 5 * SECOND;
    let mut got = failures(&samples(dir.path()));
    while got != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        got = failures(&samples(dir.path()));
    }
    assert_eq!(got, want, "the ramp saw one EADDRNOTAVAIL");
    sandbox.release();
    portd.stop();
}
