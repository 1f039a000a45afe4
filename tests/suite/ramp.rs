//! Load ramps against `portd run` with the policy as shipped (only `mode`
//! set), from a cold start, in a private network + mount namespace
//! (`tests/helpers/ramp_ns.py`): a real client opens new connections to one
//! destination and closes first, so each leaves a TIME_WAIT on its side for
//! 60 s (`tcp_tw_reuse=0`); every failed `connect()` is counted, and usage is
//! counted with `ss` as ground truth.
//!
//! The rising load is sized from the shipped policy, so that without portd
//! the range runs out three times later than portd's slowest reaction
//! (poll interval + census + hold). A rate *step* cannot do that: a
//! TIME_WAIT load that runs out at all runs out within 60 s of its step. So
//! the rate rises steadily from the start (the step) instead, a + a + a ...
//! per second, which runs out at any chosen time.
//!
//! A load no widening can hold below the critical level is warned below
//! 50 % with a remedy. Three loads must raise nothing: a burst to 45 % that
//! drains within the hold, a flat 30 % load, and a high total rate spread
//! over 20 destinations, none near its own limit.
//!
//! The tests take one lock and run one after the other, so their timing is
//! not disturbed by each other. With the shipped policy of 83fa88c (2 s
//! interval, 30 s hold: the rising load runs out at 99 s) the two ramps ran
//! 197 s together and the three quiet loads 232 s (measured).

use std::io::Write;
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::util::{root_test, tests_dir};

/// One load at a time: the ramp tests and the Prometheus harness
/// (`prom_alerts.rs`) take it.
pub(super) static SERIAL: Mutex<()> = Mutex::new(());

/// The namespace's range: small, so the arithmetic works at modest rates.
const RANGE: (u32, u32) = (40000, 41999);
/// Allowance for one full census (they take milliseconds at these sizes).
const CENSUS: f64 = 1.0;

fn shipped_policy() -> std::path::PathBuf {
    tests_dir().join("../config/portd.toml")
}

/// portd's slowest reaction with the shipped policy: a poll interval, a
/// census and the hold.
fn slowest_reaction() -> f64 {
    let text = std::fs::read_to_string(shipped_policy()).unwrap();
    let policy: toml::Table = text.parse().unwrap();
    let seconds = |table: &str, key: &str| {
        let value = policy[table][key]
            .as_str()
            .unwrap_or_else(|| panic!("config/portd.toml: no [{table}] {key} string"));
        humantime::parse_duration(value).unwrap().as_secs_f64()
    };
    seconds("poll", "interval") + CENSUS + seconds("thresholds", "hold")
}

/// The load: its rate rises by `accel` per second every second from the
/// step, so that the TIME_WAIT sockets (those of the last 60 s) fill
/// `capacity` ports at `exhaust` seconds.
struct Load {
    accel: f64,
    capacity: f64,
}

impl Load {
    fn exhausting_at(capacity: f64, exhaust: f64) -> Load {
        // Ports in use at t: connections of the last 60 s, the integral of
        // accel*s over [max(0, t-60), t].
        let accel = if exhaust <= 60.0 {
            2.0 * capacity / (exhaust * exhaust)
        } else {
            capacity / (60.0 * (exhaust - 30.0))
        };
        Load { accel, capacity }
    }

    fn ports_at(&self, t: f64) -> f64 {
        let from = (t - 60.0).max(0.0);
        self.accel * (t * t - from * from) / 2.0
    }

    /// When usage reaches `share` of the capacity.
    fn time_of(&self, share: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, 10_000.0);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if self.ports_at(mid) < share * self.capacity {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

/// Runs one rising TIME_WAIT ramp in a fresh namespace; its summary (see
/// ramp_ns.py).
fn ramp(mode: &str, load: &Load, duration: f64) -> Value {
    cell(
        mode,
        json!({"load": "time_wait", "accel": load.accel, "duration": duration.ceil()}),
    )
}

/// Runs one cell of `load` (ramp_ns.py's load keys) with the shipped
/// policy in `mode`, in a fresh namespace; its summary.
fn cell(mode: &str, load: Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    let mut spec = json!({
        "portd": env!("CARGO_BIN_EXE_portd"),
        "policy": shipped_policy(),
        "mode": mode,
        "range": format!("{} {}", RANGE.0, RANGE.1),
        "warmup": 3,
        "dir": dir.path(),
    });
    spec.as_object_mut()
        .unwrap()
        .extend(load.as_object().unwrap().clone());
    let duration = spec["duration"].as_f64().unwrap();
    let out = Command::new("unshare")
        .args(["-n", "-m", "python3", "-u"])
        .arg(tests_dir().join("helpers/ramp_ns.py"))
        .arg(ns("net"))
        .arg(ns("mnt"))
        .arg(spec.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ramp_ns.py failed: {stderr}");
    let run: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ramp_ns.py printed no summary ({e}); stderr: {stderr}"));
    // Straight to the stderr handle (libtest captures eprintln!): the
    // timings are worth seeing in a passing run's log too.
    let _ = writeln!(
        std::io::stderr(),
        "{} {mode}: {duration:.0} s, first alert {}, widening {}, failed connects {}, peak {}",
        spec["load"].as_str().unwrap_or("?"),
        run["first_alert"]["t"],
        run["first_widening"]["t"],
        run["failed_connects"],
        run["peak_usage"]
    );
    run
}

/// The run without its per-second timeline, for failure messages.
fn brief(run: &Value) -> String {
    let mut run = run.clone();
    run.as_object_mut().unwrap().remove("timeline");
    serde_json::to_string_pretty(&run).unwrap()
}

/// The client really drove the load: it attempted (nearly) every connection
/// the schedule asked for, so a missing failure is not a slow client.
fn assert_load_driven(run: &Value, load: &Load, duration: f64) {
    let attempted: u64 = run["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ok"].as_u64().unwrap() + s["eaddrnotavail"].as_u64().unwrap())
        .sum();
    let scheduled = load.accel * duration * duration / 2.0;
    assert!(
        attempted as f64 >= 0.95 * scheduled,
        "the client attempted {attempted} of {scheduled:.0} scheduled connections:\n{}",
        brief(run)
    );
    assert_eq!(
        run["other_errors"],
        0,
        "connects failed otherwise:\n{}",
        brief(run)
    );
}

#[test]
fn ramp_auto_widens_before_any_connect_fails() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = f64::from(RANGE.1 - RANGE.0 + 1);
    let exhaust = 3.0 * slowest_reaction();
    let load = Load::exhausting_at(capacity, exhaust);
    // Past the point where the range would have run out, and at least 70 s.
    let duration = (exhaust + 15.0).max(70.0);
    let run = ramp("auto", &load, duration);

    assert_load_driven(&run, &load, duration);
    // Ground truth: the load outgrew the initial range (it would have failed
    // without portd) and fits within the shipped ceiling.
    let peak = run["peak_usage"].as_u64().unwrap();
    assert!(
        peak as f64 >= 0.95 * capacity && run["fits"] == true,
        "the load did not reach the initial capacity, or does not fit the ceiling:\n{}",
        brief(&run)
    );
    assert_eq!(
        run["failed_connects"],
        0,
        "connect() failed with EADDRNOTAVAIL in auto mode (range {} -> {}, {:.0} s to exhaustion without portd):\n{}",
        run["range_before"],
        run["range_after"],
        exhaust,
        brief(&run)
    );
    assert!(
        !run["range_changed"].is_null(),
        "no failed connect, yet the range never changed:\n{}",
        brief(&run)
    );
}

#[test]
fn ramp_advise_warns_below_half() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = f64::from(RANGE.1 - RANGE.0 + 1);
    let exhaust = 3.0 * slowest_reaction();
    let load = Load::exhausting_at(capacity, exhaust);
    // Past the 50 % mark, and at least 70 s.
    let duration = (load.time_of(0.5) + 10.0).max(70.0);
    let run = ramp("advise", &load, duration);

    assert_load_driven(&run, &load, duration);
    let peak = run["peak_usage"].as_u64().unwrap();
    assert!(
        peak as f64 >= 0.5 * capacity,
        "the load did not reach 50 %:\n{}",
        brief(&run)
    );
    assert!(
        run["range_changed"].is_null(),
        "advise mode changed the range:\n{}",
        brief(&run)
    );
    let alert = &run["first_alert"];
    assert!(
        !alert.is_null(),
        "no alert at all, with usage up to {peak}/{capacity}:\n{}",
        brief(&run)
    );
    let ratio = alert["ratio"].as_f64().unwrap();
    assert!(
        ratio < 0.5,
        "the first alert came at {:.1} % (ground truth, {} s after the step), not below 50 %:\n{}",
        ratio * 100.0,
        alert["t"],
        brief(&run)
    );
}

#[test]
fn ramp_load_runs_out_when_asked() {
    // The sizing the two ramps rely on, without root.
    let load = Load::exhausting_at(2000.0, 123.0);
    assert!((load.ports_at(123.0) - 2000.0).abs() < 1e-6);
    assert!((load.time_of(1.0) - 123.0).abs() < 1e-3);
    assert!(load.time_of(0.4) < load.time_of(0.5));
    let fast = Load::exhausting_at(2000.0, 45.0);
    assert!((fast.ports_at(45.0) - 2000.0).abs() < 1e-6);
    assert!(slowest_reaction() > CENSUS);
}

/// A load that must raise nothing: no alert, no exhaustion, no change of
/// the range and no planned change (the shipped policy in auto mode).
fn assert_quiet(run: &Value, what: &str) {
    let loud: Vec<&Value> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let event = e["event"].as_str().unwrap_or("");
            event.starts_with("usage-")
                || event.contains("exhaust")
                || event.starts_with("range-")
                || event.starts_with("widening-")
        })
        .collect();
    assert!(
        loud.is_empty() && run["range_changed"].is_null(),
        "{what} raised {loud:#?}:\n{}",
        brief(run)
    );
    assert_eq!(
        run["failed_connects"],
        0,
        "{what}: connects failed:\n{}",
        brief(run)
    );
}

/// The ground-truth seconds (per-second timeline) the busiest destination
/// spent at or above `share` of the capacity.
fn seconds_at_or_above(run: &Value, share: f64, capacity: f64) -> usize {
    run["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["usage"].as_f64().unwrap_or(0.0) >= share * capacity)
        .count()
}

#[test]
fn a_burst_to_45_percent_that_drains_within_the_hold_raises_nothing() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = f64::from(RANGE.1 - RANGE.0 + 1);
    // Opened at once, held 15 s (half the shipped hold), then reset; the
    // run goes on for the hold and more, so a late alert is seen too.
    let run = cell(
        "auto",
        json!({"load": "burst", "plateau": (0.45 * capacity) as u64, "hold_for": 15,
               "duration": 55}),
    );
    let peak = run["peak_usage"].as_f64().unwrap();
    let above = seconds_at_or_above(&run, 0.40, capacity);
    assert!(
        peak >= 0.42 * capacity && (10..25).contains(&above),
        "the burst did not stay above the warning level for 10-25 s ({above} s, peak {peak}):\n{}",
        brief(&run)
    );
    assert_quiet(&run, "a burst to 45 % draining within the hold");
}

#[test]
fn a_flat_30_percent_load_raises_nothing() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = f64::from(RANGE.1 - RANGE.0 + 1);
    // TIME_WAIT at a constant rate: it fills for 60 s to rate x 60 = 30 %,
    // then stays there.
    let run = cell(
        "auto",
        json!({"load": "time_wait", "rate": 0.30 * capacity / 60.0, "duration": 85}),
    );
    let peak = run["peak_usage"].as_f64().unwrap();
    assert!(
        (0.27 * capacity..0.40 * capacity).contains(&peak)
            && seconds_at_or_above(&run, 0.27, capacity) >= 15,
        "the load did not level off at 30 % for 15 s (peak {peak}):\n{}",
        brief(&run)
    );
    assert_quiet(&run, "a flat 30 % load");
}

#[test]
fn a_high_total_rate_over_many_destinations_raises_nothing() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = f64::from(RANGE.1 - RANGE.0 + 1);
    // 20 destinations at 30 % each: 200 connects/s, six times the range in
    // TIME_WAIT in all, none near its own limit.
    let destinations = 20;
    let run = cell(
        "auto",
        json!({"load": "time_wait", "rate": f64::from(destinations) * 0.30 * capacity / 60.0,
               "destinations": destinations, "duration": 80}),
    );
    let peak = run["peak_usage"].as_f64().unwrap();
    let total = run["peak_total"].as_f64().unwrap();
    assert!(
        peak < 0.40 * capacity && total >= 4.0 * capacity,
        "the load was not {destinations} destinations below warning with \
         {:.0} ports in all (busiest {peak}, all {total}):\n{}",
        4.0 * capacity,
        brief(&run)
    );
    assert_quiet(&run, "a high total rate over many destinations");
}

#[test]
fn a_load_beyond_the_bounds_is_warned_with_a_remedy_below_half() {
    root_test!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A range already at the shipped ceiling (65535): no widening can help
    // 300 connects/s, which needs 18 000 ports in TIME_WAIT; it passes 50 %
    // about 26 s after the step.
    let (low, high) = (50000u32, 65535u32);
    let capacity = f64::from(high - low + 1);
    let run = cell(
        "advise",
        json!({"load": "time_wait", "rate": 300, "range": format!("{low} {high}"),
               "duration": 35}),
    );
    let peak = run["peak_usage"].as_f64().unwrap();
    assert!(
        peak >= 0.5 * capacity,
        "the load did not pass 50 % (peak {peak}):\n{}",
        brief(&run)
    );
    let remedy = &run["first_remedy"];
    assert!(
        !remedy.is_null() && remedy["ratio"].as_f64().unwrap() < 0.5,
        "no alert naming a remedy below 50 % (first alert {}):\n{}",
        run["first_alert"],
        brief(&run)
    );
    assert!(
        remedy["remedy"]
            .as_str()
            .unwrap()
            .contains("connection-reuse"),
        "a TIME_WAIT load to one destination: connection reuse first:\n{}",
        brief(&run)
    );
}
