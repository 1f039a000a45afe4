//! The drop-in portd writes sets, at boot, exactly what portd set at
//! runtime: applied by the real `sysctl -p` and by the real systemd-sysctl
//! in a fresh network namespace (whose values are the kernel's defaults).

use super::sandbox::{DROPIN, Sandbox};
use super::util::{parse_dropin, root_test, state_range};

/// A new network namespace starts with these (docs/kernel.md §1.1, §2.1).
const DEFAULT_RANGE: &str = "32768\t60999";

/// Applies `apply` (a command taking the drop-in's path) in a fresh network
/// namespace that sees the test's mounts; returns (values before, after).
fn apply_in_fresh_netns(ns: &Sandbox, apply: &str) -> (String, String) {
    let script = format!(
        r#"set -e
own=$(readlink /proc/self/ns/net)
[ "$own" != "$1" ] && [ "$own" != "$2" ] || {{ echo "not a fresh netns: $own" >&2; exit 1; }}
cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_local_reserved_ports
echo --
{apply} {DROPIN} >&2
cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_local_reserved_ports
"#
    );
    let link = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .display()
            .to_string()
    };
    let out = ns
        .command("unshare")
        .args(["-n", "sh", "-c", &script, "sh"])
        .arg(link(&ns.pid().to_string()))
        .arg(link("self"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{apply} in a fresh netns failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, after) = stdout.split_once("--\n").unwrap();
    (before.to_string(), after.to_string())
}

#[test]
fn dropin_applied_at_boot_gives_exactly_the_runtime_values() {
    root_test!();
    // An admin's reservation, set at runtime and in an earlier sysctl.d file,
    // and a service listening inside the span the widening opens.
    let ns = Sandbox::actuation("40000 40099", "40500");
    ns.write_file(
        "/etc/sysctl.d/50-admin.conf",
        "net.ipv4.ip_local_reserved_ports = 40500\n",
    );
    ns.listen(40120);
    let (ports, err) = ns.connect(45);
    assert_eq!((ports.len(), err), (45, None));

    let daemon = ns.start_daemon_until_persisted("40000-40099");
    daemon.stop_ok();

    let runtime = (ns.sysctl(super::sandbox::RANGE_KEY), ns.reserved());
    let (low, high) = runtime.0.split_once('\t').unwrap();
    assert_eq!(low, "40000", "{runtime:?}");
    assert!(high.parse::<u16>().unwrap() > 40120, "{runtime:?}");
    assert_eq!(runtime.1, "40120,40500", "listener reserved, admin's kept");
    let state = ns.state();
    assert_eq!(
        state_range(&state["last_written"]["range"]),
        runtime.0.replace('\t', " ")
    );

    let text = ns.read_file(DROPIN).expect("portd wrote no drop-in");
    assert!(text.starts_with("# Managed by portd."), "{text}");
    // It says why, in the words of the change that made it.
    let why =
        format!("# Why: widened 40000-40099 -> {low}-{high}: destination 127.0.0.1 -> 127.0.0.1:");
    assert!(text.contains(&why), "no {why:?} in:\n{text}");
    assert_eq!(
        parse_dropin(&text),
        [
            (
                "net.ipv4.ip_local_reserved_ports".to_string(),
                runtime.1.clone()
            ),
            (
                "net.ipv4.ip_local_port_range".to_string(),
                runtime.0.replace('\t', " ")
            ),
        ],
        "reserved ports first, then the range:\n{text}"
    );
    let expected_after = format!("{}\n{}\n", runtime.0, runtime.1);
    for apply in ["sysctl -p", "/usr/lib/systemd/systemd-sysctl"] {
        let (before, after) = apply_in_fresh_netns(&ns, apply);
        assert_eq!(
            before,
            format!("{DEFAULT_RANGE}\n\n"),
            "{apply}: not a fresh netns"
        );
        assert_eq!(after, expected_after, "{apply} {DROPIN}");
    }
}
