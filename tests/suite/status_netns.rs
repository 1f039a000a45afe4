//! `portd status` against real sockets in a private network namespace,
//! checked against `ss` for the same namespace (needs root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};

use super::ss::{self, Dest, DestKey};
use super::util::{Netns, require_root, stdout_json};

/// What the `mixed` scenario of tests/helpers/netns_sockets.py sets.
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
    let ns = Netns::start("mixed", &[&tw_reuse.to_string()]);
    let sysctl = |key: &str| {
        let out = ns
            .command("cat")
            .arg(format!("/proc/sys/net/ipv4/{key}"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(sysctl("ip_local_port_range"), "40000\t40099\n");
    assert_eq!(sysctl("ip_local_reserved_ports"), "40007-40008,50000\n");
    assert_eq!(sysctl("tcp_tw_reuse"), format!("{tw_reuse}\n"));

    let before = ss::parse(&ns.ss(&["-tuanH"]));
    let out = ns.portd(&[
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
    require_root!();
    status_agrees_with_ss(0);
}

#[test]
fn status_matches_ss_with_loopback_time_wait_reuse() {
    // tcp_tw_reuse=2 (the default): loopback TIME_WAIT is reported apart.
    require_root!();
    status_agrees_with_ss(2);
}

#[test]
fn exhaustion_is_reported_at_100_percent_before_eaddrnotavail() {
    require_root!();
    // Range 40000-40009: ten connections to 127.0.0.1:5001 are open.
    let mut ns = Netns::start("exhaust", &[]);
    let ports: BTreeSet<u64> = ns.ready["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(ports, (40000..=40009).collect());

    let full = |ns: &Netns, when: &str| {
        let out = ns.portd(&["status", "--json", "--top", "0"]);
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

    let eleventh = ns.request("connect");
    assert_eq!(
        eleventh["errno"], 99,
        "the 11th connect() should fail with EADDRNOTAVAIL: {eleventh}"
    );
    full(&ns, "after the failed 11th connect()");
}
