//! `portd status` against real sockets in a private network namespace,
//! checked against `ss` for the same namespace (needs root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;

use serde_json::{Value, json};

use super::sandbox::{RANGE_KEY, RESERVED_KEY, Sandbox};
use super::ss::{self, Dest, DestKey};
use super::util::{root_test, stdout_json};

/// Several destinations in every interesting state, in a sandbox with the
/// range 40000-40099, reserved ports 40007-40008 and 50000 and this
/// `tcp_tw_reuse`: TIME_WAIT, FIN_WAIT2 (held and orphaned), CLOSE_WAIT,
/// SYN_SENT, listeners inside the range, UDP, IPv6 and v4-mapped peers.
pub fn mixed(tw_reuse: &str) -> Sandbox {
    let ns = Sandbox::builder()
        .range("40000 40099")
        .sysctl(RESERVED_KEY, "40007-40008,50000")
        .sysctl("net.ipv4.tcp_tw_reuse", tw_reuse)
        .sysctl("net.ipv4.tcp_timestamps", "1")
        .start();
    // 10.9.9.0/24 routed into lo from 10.9.9.1 but not local: SYNs to it
    // get no answer.
    ns.ip(&["addr", "add", "10.9.9.1/32", "dev", "lo"]);
    ns.ip(&[
        "route",
        "add",
        "10.9.9.0/24",
        "dev",
        "lo",
        "src",
        "10.9.9.1",
    ]);
    let at = |addr: &str| -> SocketAddr { addr.parse().unwrap() };
    // Listeners first, so that connect() never hands out their ports.
    let l5001 = ns.listen_on(at("127.0.0.1:5001"), false);
    let l5002 = ns.listen_on(at("127.0.0.2:5002"), false);
    let l5003 = ns.listen_on(at("[::1]:5003"), false);
    let l5004 = ns.listen_on(at("[::]:5004"), true);
    let l5005 = ns.listen_on(at("127.0.0.1:5005"), false);
    let l5007 = ns.listen_on(at("10.9.9.1:5007"), false);
    let l5008 = ns.listen_on(at("0.0.0.0:5008"), false);
    let in_range = ns.listen_on(at("[::]:40050"), true); // inside the range
    let reserved = ns.listen_on(at("127.0.0.1:40007"), false); // and reserved
    let udp_server = at("127.0.0.1:5353");
    ns.udp(udp_server, Some(udp_server), None);

    let v4_any = at("0.0.0.0:0");
    let v6_any = at("[::]:0");
    let hold = |to: &str, from: Option<&str>, listener: &TcpListener, n| {
        for _ in 0..n {
            let (client, peer) = ns
                .connect_from(at(to), from.map(at), Some(listener))
                .unwrap();
            ns.hold(client.into());
            ns.hold(peer.unwrap().into());
        }
    };
    hold("127.0.0.1:5001", None, &l5001, 30);
    hold("[::ffff:127.0.0.1]:5001", None, &l5001, 4); // v4-mapped: listed in tcp6
    hold("127.0.0.2:5002", None, &l5002, 5);
    hold("127.0.0.2:5002", Some("127.0.0.3:0"), &l5002, 3); // another local address
    hold("[::1]:5003", None, &l5003, 3);
    hold("127.0.0.1:5004", None, &l5004, 4); // IPv4 clients of a dual-stack listener
    hold("127.0.0.1:40050", None, &in_range, 3); // accepted inside the range
    hold("[::1]:40050", None, &in_range, 2);
    hold("127.0.0.1:40007", None, &reserved, 2);

    let time_wait = |to: &str, from: Option<&str>, listener: &TcpListener, n| {
        for _ in 0..n {
            ns.client_time_wait(at(to), from.map(at), listener);
        }
    };
    time_wait("127.0.0.1:5005", None, &l5005, 6);
    time_wait("[::1]:5003", None, &l5003, 2);
    time_wait("[::ffff:127.0.0.1]:5005", None, &l5005, 2);
    // Not loopback: never reusable under tcp_tw_reuse=2.
    time_wait("10.9.9.1:5007", None, &l5007, 3);
    // Only the remote end is loopback: reusable under 2.
    time_wait("127.0.0.1:5008", Some("10.9.9.1:0"), &l5008, 2);
    for _ in 0..2 {
        ns.client_fin_wait2(at("127.0.0.1:5005"), &l5005);
    }
    ns.orphaned_fin_wait2(at("127.0.0.1:5005"), &l5005);
    for _ in 0..2 {
        ns.client_close_wait(at("127.0.0.1:5005"), &l5005);
    }
    ns.syn_sent(at("10.9.9.2:80"));
    ns.syn_sent(at("[::ffff:10.9.9.2]:80"));

    // Fixed ports before automatic ones, which could take them.
    ns.udp(v4_any, Some(at("127.0.0.1:40060")), None);
    ns.udp(v4_any, Some(at("127.0.0.1:40008")), None); // reserved, bound explicitly
    for _ in 0..4 {
        ns.udp(v4_any, None, Some(udp_server));
    }
    for _ in 0..2 {
        ns.udp(v6_any, None, Some(at("[::1]:5353")));
    }
    ns.udp(v4_any, Some(v4_any), None);
    // Let the last FIN/ACKs land, so the census and ss see settled states.
    std::thread::sleep(std::time::Duration::from_millis(300));
    ns
}

/// What [`mixed`] sets.
const RANGE: RangeInclusive<u16> = 40000..=40099;
const RESERVED: [u16; 3] = [40007, 40008, 50000];
/// Thresholds that make the scenario's headline (34 of 97) a warning.
const WARNING: f64 = 30.0;
const CRITICAL: f64 = 60.0;

fn ip(v: &Value) -> IpAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {v}"))
}

fn key_of(d: &Value) -> DestKey {
    (
        ip(&d["local"]),
        ip(&d["remote"]),
        d["remote_port"].as_u64().unwrap() as u16,
    )
}

/// portd's destinations as the test's model shows them; also checks that
/// each one's `used` and `usage` agree with its own state counts.
fn reported_dests(report: &Value, capacity: u64) -> BTreeMap<DestKey, Dest> {
    let mut dests = BTreeMap::new();
    for d in report["destinations"].as_array().unwrap() {
        let dest = Dest {
            states: d["states"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect(),
            reusable_time_wait: d["reusable_time_wait"].as_u64().unwrap(),
        };
        assert_eq!(d["used"].as_u64().unwrap(), dest.used(), "used of {d}");
        let usage = dest.used() as f64 / capacity as f64;
        assert!(
            (d["usage"].as_f64().unwrap() - usage).abs() < 1e-12,
            "usage of {d}"
        );
        assert!(
            dests.insert(key_of(d), dest).is_none(),
            "destination listed twice: {d}"
        );
    }
    dests
}

fn assert_pool(pool: &Value, used: u64, capacity: u64, name: &str) {
    assert_eq!(
        (&pool["used"], &pool["capacity"]),
        (&json!(used), &json!(capacity)),
        "{name}"
    );
    let usage = used as f64 / capacity as f64;
    assert!(
        (pool["usage"].as_f64().unwrap() - usage).abs() < 1e-12,
        "{name}: {pool}"
    );
}

/// The plugin exit status for a usage, as `--warning`/`--critical` define it.
fn level(usage: f64) -> i32 {
    if usage >= CRITICAL / 100.0 {
        2
    } else if usage >= WARNING / 100.0 {
        1
    } else {
        0
    }
}

fn status_agrees_with_ss(tw_reuse: u8) {
    let ns = mixed(&tw_reuse.to_string());
    assert_eq!(ns.sysctl(RANGE_KEY), "40000\t40099");
    assert_eq!(ns.sysctl(RESERVED_KEY), "40007-40008,50000");
    assert_eq!(ns.sysctl("net.ipv4.tcp_tw_reuse"), tw_reuse.to_string());

    let before = ss::parse(&ns.ss(&["-tuanH"]));
    let out = ns.portd_output(&[
        "status",
        "--json",
        "--top",
        "0",
        "--warning",
        &WARNING.to_string(),
        "--critical",
        &CRITICAL.to_string(),
    ]);
    let after = ss::parse(&ns.ss(&["-tuanH"]));
    assert_eq!(
        before, after,
        "sockets changed state while portd and ss looked"
    );
    let report = stdout_json(&out);
    let reserved: BTreeSet<u16> = RESERVED.into();
    let m = ss::model(&after, RANGE, &reserved, tw_reuse);

    // The scenario is what it claims to be, so that agreement means something.
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let busiest = &m.dests[&(lo, lo, 5001)];
    assert_eq!(
        busiest.states,
        BTreeMap::from([("ESTABLISHED".to_string(), 34)])
    );
    assert_eq!(m.listeners_in_range, [40007, 40050]);
    assert_eq!(m.capacity, 97);
    let counted_in = |state: &str| {
        m.dests
            .values()
            .filter_map(|d| d.states.get(state))
            .sum::<u64>()
    };
    for state in ["TIME_WAIT", "FIN_WAIT2", "CLOSE_WAIT", "SYN_SENT"] {
        assert!(counted_in(state) > 0, "the scenario has no counted {state}");
    }
    let reusable: u64 = m.dests.values().map(|d| d.reusable_time_wait).sum();
    assert_eq!(reusable > 0, tw_reuse == 2);
    assert!(m.accepted_excluded > 0 && m.udp_pool > 0);

    // Exactly what ss shows.
    assert_eq!(report["range"], json!({"low": 40000, "high": 40099}));
    assert_eq!(report["range_size"], 100);
    assert_eq!(report["reserved_in_range"], 2);
    assert_eq!(report["listeners_in_range"], json!(m.listeners_in_range));
    assert_eq!(report["capacity"], m.capacity, "capacity");
    assert_eq!(reported_dests(&report, m.capacity), m.dests, "destinations");
    assert_eq!(report["destination_count"], m.dests.len());
    assert_pool(
        &report["pools"]["tcp"],
        m.tcp_pool,
        m.pool_capacity,
        "TCP pool",
    );
    assert_pool(
        &report["pools"]["udp"],
        m.udp_pool,
        m.pool_capacity,
        "UDP pool",
    );
    assert_eq!(
        report["accepted_excluded"], m.accepted_excluded,
        "accepted_excluded"
    );
    assert_eq!(report["reusable_time_wait"], reusable, "reusable_time_wait");
    assert_eq!(
        report["time_wait_in_range"], m.time_wait_in_range,
        "time_wait_in_range"
    );
    assert_eq!(report["sockets_in_range"], m.sockets, "sockets_in_range");
    let hazard_ports = report["hazards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["kind"] == "listeners_in_range")
        .map(|h| h["ports"].clone());
    let unreserved_listener = json!(40050);
    assert!(
        hazard_ports
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|p| p.contains(&unreserved_listener)),
        "no hazard names the listener at 40050: {}",
        report["hazards"]
    );

    // The headline: the worst destination against the UDP pool.
    let (worst_key, worst) = m.dests.iter().max_by_key(|(_, d)| d.used()).unwrap();
    assert_eq!(
        m.dests
            .values()
            .filter(|d| d.used() == worst.used())
            .count(),
        1
    );
    let dest_usage = worst.used() as f64 / m.capacity as f64;
    let udp_usage = m.udp_pool as f64 / m.pool_capacity as f64;
    assert!(
        dest_usage > udp_usage,
        "the scenario's headline should be a destination"
    );
    let headline = &report["headline"];
    assert_eq!(headline["used"], worst.used());
    assert_eq!(headline["capacity"], m.capacity);
    assert_eq!(headline["cause"]["kind"], "destination");
    assert_eq!(key_of(&headline["cause"]["destination"]), *worst_key);
    assert!((headline["usage"].as_f64().unwrap() - dest_usage).abs() < 1e-12);

    let expected = level(dest_usage);
    assert_eq!(expected, 1, "the scenario is built to be a warning");
    assert_eq!(out.status.code(), Some(expected), "exit status");
    assert_eq!(report["exit_code"], expected);
    assert_eq!(report["status"], "warning");
}

#[test]
fn status_matches_ss_exactly() {
    // tcp_tw_reuse=0: every TIME_WAIT holds its 4-tuple.
    root_test!();
    status_agrees_with_ss(0);
}

#[test]
fn status_matches_ss_with_loopback_time_wait_reuse() {
    // tcp_tw_reuse=2 (the default): loopback TIME_WAIT is reported apart.
    root_test!();
    status_agrees_with_ss(2);
}

#[test]
fn exhaustion_is_reported_at_100_percent_before_eaddrnotavail() {
    root_test!();
    // Range 40000-40009: ten connections to 127.0.0.1:5001 are open.
    // In a PID namespace of its own too: the namespaces of other processes
    // that status may look at are then the sandbox's only.
    let ns = Sandbox::builder()
        .pid_namespace()
        .range("40000 40009")
        .reserved("")
        .listen(5001)
        .start();
    let (ports, failed) = ns.connect(10);
    assert_eq!(failed, None, "the 10th connect() should succeed");
    let ports: BTreeSet<u16> = ports.into_iter().collect();
    assert_eq!(ports, (40000..=40009).collect());

    let full = |ns: &Sandbox, when: &str| {
        let out = ns.portd_output(&["status", "--json", "--top", "0"]);
        let report = stdout_json(&out);
        let dest = &report["destinations"][0];
        assert_eq!(
            (key_of(dest), &dest["used"], &dest["usage"]),
            (
                (
                    "127.0.0.1".parse().unwrap(),
                    "127.0.0.1".parse().unwrap(),
                    5001
                ),
                &json!(10),
                &json!(1.0)
            ),
            "{when}: {report:#}"
        );
        assert_eq!(report["capacity"], 10);
        assert_eq!(report["headline"]["usage"], 1.0);
        assert_eq!(report["status"], "critical", "{when}");
        assert_eq!(out.status.code(), Some(2), "{when}");
    };
    full(&ns, "after the 10th connect()");

    let eleventh = ns.connect(1);
    assert_eq!(
        eleventh,
        (vec![], Some("EADDRNOTAVAIL".to_string())),
        "the 11th connect() should fail with EADDRNOTAVAIL"
    );
    full(&ns, "after the failed 11th connect()");
}
