//! The forecast lives in time, on every channel: `portd run` with the
//! shipped policy (in advise mode) on a 100-port range in the sandbox. A
//! burst of connections that is then held must stop showing a time to
//! exhaustion within a couple of polls, though no census comes until
//! `max_staleness`; and the time to exhaustion the journal, STATUS=, the
//! live view and the metrics give at one poll is one number. Needs root.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::daemon_metrics::parse_textfile;
use super::portd_child::{Notify, Portd, start_ready, status_of};
use super::sandbox::Sandbox;
use super::util::{root_test, summary, write_policy};

const SECOND: Duration = Duration::from_secs(1);
const LIVE: &str = "/run/portd/live.json";

/// The shipped policy (config/portd.toml) in advise mode, its metrics
/// written to `metrics`.
fn shipped_advise(metrics: &Path) -> String {
    let shipped = include_str!("../../config/portd.toml");
    let text = shipped
        .replace("mode = \"auto\"", "mode = \"advise\"")
        .replace(
            "file = \"\"",
            &format!("file = {:?}", metrics.display().to_string()),
        );
    assert!(text.contains("mode = \"advise\"") && text.contains(".prom\""));
    text
}

fn start(sandbox: &Sandbox, dir: &Path) -> (Portd, Notify, std::path::PathBuf) {
    let policy = dir.join("policy.toml");
    let metrics = dir.join("portd.prom");
    write_policy(&policy, &shipped_advise(&metrics));
    let cmd = sandbox.portd(&["--config", policy.to_str().unwrap(), "run"]);
    let (portd, notify) = start_ready(cmd, dir, true);
    (portd, notify, metrics)
}

/// "runs out in Ns" of a STATUS= line, in seconds.
fn status_time(status: &str) -> Option<f64> {
    let rest = status.split_once("runs out in ")?.1;
    rest.split_once('s')?.0.parse().ok()
}

/// `portd_time_to_exhaustion_seconds` of the metrics file (+Inf: none).
fn metrics_time(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let samples = parse_textfile(&text);
    let t = samples
        .iter()
        .find(|s| s.name == "portd_time_to_exhaustion_seconds")?
        .value;
    Some(t)
}

/// `forecast.time_to_exhaustion_seconds` of a live view or `status
/// --json` (null: none, `INFINITY`).
fn json_time(v: &Value) -> f64 {
    v["forecast"]["time_to_exhaustion_seconds"]
        .as_f64()
        .unwrap_or(f64::INFINITY)
}

fn live_view(sandbox: &Sandbox) -> Value {
    let text = sandbox.read_file(LIVE).expect("the live view");
    serde_json::from_str(&text).unwrap()
}

/// portd's usage events of the journal.
fn usage_events(sandbox: &Sandbox) -> Vec<Value> {
    sandbox
        .portd_alerts()
        .into_iter()
        .filter(|e| {
            e["PORTD_EVENT"]
                .as_str()
                .is_some_and(|k| k.starts_with("usage-"))
        })
        .collect()
}

#[test]
fn a_burst_then_held_shows_no_time_to_exhaustion_on_any_channel() {
    root_test!();
    let sandbox = Sandbox::with_range("40000 40099", true);
    let dir = tempfile::tempdir().unwrap();
    let (mut portd, mut notify, metrics) = start(&sandbox, dir.path());
    // A pool of 30 opened at once, then held (30 % of 100 ports).
    let (opened, error) = sandbox.connect(30);
    assert_eq!((opened.len(), error), (30, None));
    let burst = Instant::now();
    // The censuses that measure the burst (the fast path's `Growing`) come
    // within a couple of polls; the load is flat from here on.
    let early = notify.collect(10 * SECOND);
    assert!(
        early
            .iter()
            .filter_map(|m| status_of(m))
            .any(|s| s.contains("usage 30")),
        "no census saw the burst: {early:#?}"
    );
    assert!(burst.elapsed() >= 10 * SECOND);
    // After 10 s of flat load: every channel, over two more polls.
    let late = notify.collect(5 * SECOND);
    // STATUS= is sent when it changes: the service manager shows the last
    // one sent, whenever it came.
    let mut statuses: Vec<&str> = late.iter().filter_map(|m| status_of(m)).collect();
    let shown = (notify.seen.iter().rev())
        .find_map(|(_, m)| status_of(m))
        .unwrap_or_else(|| panic!("no STATUS= at all: {:#?}", notify.seen));
    statuses.push(shown);
    for s in &statuses {
        assert!(
            status_time(s).is_none_or(|t| t >= 300.0),
            "STATUS= after 10 s of flat load: {s:?}"
        );
    }
    let m = metrics_time(&metrics).expect("the metrics file");
    assert!(m >= 300.0, "portd_time_to_exhaustion_seconds {m}");
    let live = live_view(&sandbox);
    assert!(
        json_time(&live) >= 300.0,
        "live view: {:#}",
        live["forecast"]
    );
    let out = sandbox.portd_output(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json_time(&status) >= 300.0, "status --json: {status:#}");
    // The journal: no usage event, and no time to exhaustion under 300 s.
    let events = usage_events(&sandbox);
    assert!(events.is_empty(), "{}", summary(&events));
    for e in sandbox.portd_alerts() {
        let t = e["PORTD_TIME_TO_EXHAUSTION"]
            .as_str()
            .map(|t| t.parse::<f64>().unwrap());
        assert!(t.is_none_or(|t| t >= 300.0), "{e:#}");
    }
    assert!(portd.stop().0.success());
}

/// What each channel said at one poll: when its STATUS= came, the STATUS=
/// time, and the metrics' and the live view's, read at once (both are
/// written before STATUS=, and the next poll is a second or more away;
/// the journal entries of a census may come later, see below).
struct Poll {
    at: SystemTime,
    status: String,
    metrics: Option<f64>,
    live: f64,
}

#[test]
fn one_poll_gives_one_time_to_exhaustion_on_every_channel() {
    root_test!();
    let mut sandbox = Sandbox::with_range("40000 40099", true);
    let dir = tempfile::tempdir().unwrap();
    let (mut portd, mut notify, metrics) = start(&sandbox, dir.path());
    // 20 long-lived connections a second up to 95 of 100 ports.
    sandbox.ramp(95, 20);
    let mut polls = Vec::new();
    let deadline = Instant::now() + 15 * SECOND;
    while Instant::now() < deadline {
        let Some(m) = notify.recv(SECOND) else {
            continue;
        };
        let Some(status) = status_of(&m) else {
            continue;
        };
        polls.push(Poll {
            at: SystemTime::now(),
            status: status.to_string(),
            metrics: metrics_time(&metrics),
            live: json_time(&live_view(&sandbox)),
        });
    }
    assert_eq!(sandbox.wait_ramp(), (95, None));
    let events = usage_events(&sandbox);
    let with_time: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("PORTD_TIME_TO_EXHAUSTION").is_some())
        .collect();
    assert!(!with_time.is_empty(), "{}", summary(&events));
    for e in with_time {
        let journal: u64 = e["PORTD_TIME_TO_EXHAUSTION"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let micros: u64 = e["__REALTIME_TIMESTAMP"].as_str().unwrap().parse().unwrap();
        let logged = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
        // The census's entries wait for its process lookup, so the entry
        // comes after that census's STATUS= and maybe after later polls'
        // (whose forecast is revised). That census's poll: the first of the
        // last polls before the entry that show its usage.
        let usage = format!(
            "({}/{})",
            e["PORTD_USED"].as_str().unwrap(),
            e["PORTD_CAPACITY"].as_str().unwrap()
        );
        let mut census = None;
        for (i, p) in polls.iter().enumerate().take_while(|(_, p)| p.at <= logged) {
            if !p.status.contains(&usage) {
                census = None;
            } else if census.is_none() {
                census = Some(i);
            }
        }
        let poll = &polls[census.unwrap_or_else(|| panic!("no STATUS= with {usage} before {e:#}"))];
        let metrics = poll.metrics.expect("the metrics file");
        // One number: serde_json's parser (without its float_roundtrip
        // feature) may land one unit in the last place off what Rust's
        // parser reads from the metrics' same shortest digits.
        assert!(
            (poll.live - metrics).abs() <= 1e-12 * metrics.abs().max(1.0) || poll.live == metrics,
            "live view {} and metrics {metrics} at {:?}",
            poll.live,
            poll.status
        );
        assert_eq!(
            status_time(&poll.status),
            Some(metrics.round()),
            "STATUS= {:?}, metrics {metrics}",
            poll.status
        );
        assert_eq!(
            journal as f64,
            metrics.ceil(),
            "journal {e:#}, metrics {metrics}"
        );
    }
    assert!(portd.stop().0.success());
}
