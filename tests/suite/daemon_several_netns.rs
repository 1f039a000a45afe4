//! `portd run` on a container host: the namespaces of
//! tests/helpers/several_netns.sh (one near exhaustion with a tiny range of
//! its own, one quiet, portd's own idle), all in a private PID namespace
//! with its own /proc and a tmpfs /run; the daemon's part is
//! tests/helpers/daemon_several_netns.sh. The daemon alerts naming the busy
//! namespace and how to fix it there, labels its metrics with it, lists it
//! in its live view (which a `status` as nobody shows), and writes nothing
//! in any namespace (needs root).

use serde_json::Value;

use super::status_several_netns::{read, several_netns};
use super::util::{root_test, tests_dir};

#[test]
fn the_daemon_alerts_on_another_namespace_names_it_and_writes_nothing() {
    root_test!();
    let out = tempfile::tempdir().unwrap();
    let run = several_netns(
        out.path(),
        Some(&tests_dir().join("helpers/daemon_several_netns.sh")),
    );
    let dir = out.path();
    assert!(
        run.status.success(),
        "{}\ndaemon: {}",
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default()
    );
    let err = read(dir, "daemon.err");
    assert_eq!(read(dir, "daemon.rc").trim(), "0", "{err}");
    let busy_ss: u64 = read(dir, "busy.ss").trim().parse().unwrap();
    assert_eq!(busy_ss, 15, "the helper's own connections");
    let busy_netns = read(dir, "busy.netns").trim().to_string();
    let busy_pid = read(dir, "busy.pid").trim().to_string();

    // One alert, naming the namespace, the count ss sees, and the advice.
    let alerts: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ephemeral ports critical in "))
        .collect();
    assert_eq!(alerts.len(), 1, "one transition, one entry: {err}");
    let alert = alerts[0];
    assert!(alert.starts_with("portd: ERROR: "), "{alert}");
    assert!(
        alert.contains(&format!(
            "({busy_netns}, enter: nsenter -t {busy_pid} -n COMMAND)"
        )),
        "{alert}"
    );
    assert!(alert.contains(&format!("({busy_ss}/20)")), "{alert}");
    assert!(
        alert.contains(&format!(
            "`nsenter -t {busy_pid} -n sysctl -w net.ipv4.ip_local_port_range="
        )),
        "{alert}"
    );
    assert!(
        alert.contains("portd writes nothing in other namespaces"),
        "{alert}"
    );
    // The quiet namespace raises nothing.
    assert!(!err.contains("in netns quiet"), "{err}");

    // Metrics labelled netns, container, pod, pod_namespace; the busy one
    // critical.
    let metrics = read(dir, "metrics.txt");
    assert!(
        metrics.contains(&format!(
            "portd_netns_alert_level{{netns=\"{busy_netns}\",container=\"\",pod=\"\",pod_namespace=\"\"}} 2\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "portd_netns_used_ports{{netns=\"{busy_netns}\",container=\"\",pod=\"\",pod_namespace=\"\"}} {busy_ss}\n"
    )));
    assert!(metrics.contains("portd_netns_watched 2\n"), "{metrics}");
    assert!(
        !metrics.contains("{namespace=") && !metrics.contains(",namespace="),
        "{metrics}"
    );

    // The live view: the busy namespace first, with its census and advice;
    // the quiet one from its counters alone.
    let live: Value = serde_json::from_str(&read(dir, "live.json")).unwrap();
    let list = live["namespaces"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{live:#}");
    assert_eq!(format!("net:[{}]", list[0]["inode"]), busy_netns);
    assert_eq!(list[0]["level"], "critical");
    assert_eq!(list[0]["headline"]["used"], busy_ss);
    assert_eq!(list[0]["headline"]["capacity"], 20);
    assert!(
        list[0]["advice"].as_str().unwrap().contains("\"40000 "),
        "{live:#}"
    );
    assert_eq!(list[1]["label"], "netns quiet");
    assert_eq!(list[1]["level"], "ok");
    assert!(list[1]["headline"].is_null(), "no census: {live:#}");
    assert!(list[1]["bound"].as_str().unwrap().contains("no census"));

    // `status` as nobody: its own namespace is idle, the daemon's view of
    // the busy one is the headline and the exit status.
    let status = read(dir, "nobody.txt");
    assert_eq!(read(dir, "nobody.rc").trim(), "2", "{status}");
    assert!(
        status.starts_with("PORTD CRITICAL - ")
            && status.lines().next().unwrap().contains(&busy_netns),
        "{status}"
    );
    assert!(status.contains("daemon: netns netns quiet"), "{status}");

    // Without CAP_SYS_ADMIN: said once, in the log and by `check`, and
    // the daemon goes on with its own namespace.
    let nocap = read(dir, "nocap.err");
    assert_eq!(read(dir, "nocap.rc").trim(), "0", "{nocap}");
    assert_eq!(
        nocap
            .matches(
                "cannot enter 2 of 2 other network namespaces (setns: EPERM; needs CAP_SYS_ADMIN"
            )
            .count(),
        1,
        "{nocap}"
    );
    assert!(nocap.contains("portd watches its own namespace"), "{nocap}");
    assert!(nocap.contains("portd: NOTICE: ready: "), "{nocap}");
    let check = read(dir, "nocap-check.txt");
    assert!(
        check.contains("daemon: cannot enter 2 of 2 other network namespaces"),
        "{check}"
    );
    assert!(check.contains(" UNKNOWN: not measured"), "{check}");

    // Nothing written anywhere: every namespace's range and reserved ports
    // are what they were.
    for ns in ["busy", "quiet", "own"] {
        assert_eq!(
            read(dir, &format!("{ns}.before")),
            read(dir, &format!("{ns}.after")),
            "{ns}"
        );
    }
}
