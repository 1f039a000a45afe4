//! Time: a state written while the clock was ahead (a bad RTC, a VM restored
//! from a snapshot) must not silence portd until the clock catches up.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::sandbox::{POLICY, STATE, Sandbox};
use super::util::root_test;

#[test]
fn a_state_from_a_day_ahead_holds_alerts_and_widening_no_longer_than_the_policy() {
    root_test!();
    let ns = Sandbox::actuation("40000 40009", "");
    ns.write_file(
        POLICY,
        r#"
[poll]
interval = "200ms"

[thresholds]
hold = "1s"

[widen]
cooldown = "2s"
max_changes_per_hour = 4
"#,
    );
    let ahead = SystemTime::now() + Duration::from_secs(86_400);
    let at = ahead
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = json!({"secs_since_epoch": at, "nanos_since_epoch": 0});
    let range = json!({"low": 40000, "high": 40009});
    // A critical level pending, an announcement and a change, all a day ahead.
    let state = json!({
        "format_version": 1,
        "initial_range": range,
        "original": null,
        "last_written": null,
        "added_reserved": "",
        "changes": [{"at": time, "from": range, "to": range, "reserved_added": "", "reason": "a day ahead"}],
        "yielded": null,
        "alert": {"level": "ok", "pending": ["critical", time], "announced": time},
    });
    ns.write_file(STATE, &state.to_string());
    let (ports, err) = ns.connect(11);
    assert_eq!((ports.len(), err.as_deref()), (10, Some("EADDRNOTAVAIL")));

    let started = Instant::now();
    let mut daemon = ns.start_daemon();
    let warned = daemon.wait_line(&["ahead of the clock"], Duration::from_secs(5));
    assert!(warned.contains(STATE), "{warned}");
    // hold 1 s, cooldown 2 s from start: well within 10 s, not a day.
    daemon.wait_line(&["ephemeral ports critical"], Duration::from_secs(10));
    daemon.wait_widened("40000-40009");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "widened {took:?} after start, before the cooldown of a change clamped to the start"
    );
    daemon.stop_ok();
    let saved = ns.state();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for c in saved["changes"].as_array().unwrap() {
        let t = c["at"]["secs_since_epoch"].as_u64().unwrap();
        assert!(t <= now, "a change stays in the future: {saved}");
    }
}
