//! The fast path (docs/DESIGN.md, "The usage model"): between full censuses
//! `portd run` reads only `/proc/net/sockstat` and `Tcp: ActiveOpens`, and
//! skips the census while they prove no destination can have reached the
//! warning level, up to the policy's maximum staleness. Real sockets in a
//! private network + mount namespace (needs root).

use std::time::Duration;

use super::portd_child::{Notify, Portd, start_ready, status_of};
use super::sandbox::Sandbox;
use super::util::{root_test, write_policy};

const SECOND: Duration = Duration::from_secs(1);

/// Advise mode, 100 ms polls, the given maximum staleness.
fn policy(max_staleness: &str) -> String {
    format!(
        "[poll]\ninterval = \"100ms\"\nmax_staleness = \"{max_staleness}\"\n\n\
         [thresholds]\nhold = \"0s\"\n\n[widen]\nmode = \"advise\"\n"
    )
}

fn is_skipped(status: &str) -> bool {
    status.contains("(census skipped: at most ")
}

/// Starts portd in the sandbox with a notify socket; returns once READY.
fn start(sandbox: &Sandbox, dir: &std::path::Path, policy_text: &str) -> (Portd, Notify) {
    let policy = dir.join("policy.toml");
    write_policy(&policy, policy_text);
    let mut cmd = sandbox.portd(&["--config", policy.to_str().unwrap(), "run"]);
    cmd.env("PORTD_LOG", "debug");
    start_ready(cmd, dir, false)
}

#[test]
fn an_idle_namespace_skips_the_census_until_connections_ramp() {
    root_test!();
    let mut sandbox = Sandbox::with_range("40000 40199", false);
    sandbox.ramp(10, 200);
    assert_eq!(sandbox.wait_ramp(), (10, None));
    let dir = tempfile::tempdir().unwrap();
    // Staleness out of reach: only the bounds can call for a census.
    let (mut portd, mut notify) = start(&sandbox, dir.path(), &policy("1h"));

    let idle = portd.polls(1500 * Duration::from_millis(1));
    assert!(idle.len() >= 8, "too few polls in 1.5 s: {idle:#?}");
    assert!(
        idle.iter().all(|s| is_skipped(s)),
        "an idle namespace must not be censused: {idle:#?}"
    );
    // 10 connections held, none opened since: the bound is the worst
    // destination's count at the census.
    assert!(
        idle[0].starts_with("usage 5.0% (10/200) destination 127.0.0.1 -> 127.0.0.1:5001;")
            && idle[0].ends_with(
                "mode advise (census skipped: at most 10 of 200 ports towards any destination)"
            ),
        "{}",
        idle[0]
    );

    // 80 connections is the warning level (40 % of 200).
    sandbox.ramp(100, 250);
    let census = notify.wait_for("a census after the ramp", 3 * SECOND, |m| {
        status_of(m).is_some_and(|s| !is_skipped(s))
    });
    let used: u64 = status_of(&census)
        .and_then(|s| s.split_once('(').map(|(_, r)| r))
        .and_then(|r| r.split_once('/').map(|(u, _)| u))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("{census:?}"));
    // Skipped while 10 + ActiveOpens < 80: the census sees the warning level.
    assert!(used >= 80, "{census:?}");
    assert_eq!(sandbox.wait_ramp(), (100, None));
    // A raised alert takes a census every poll.
    // (On the debug log: the census after the ramp may have said it on
    // STATUS= already, which is sent only when it changes.)
    portd.wait_line(&["poll: usage 50.0% (100/200)"], 3 * SECOND);
    let raised = portd.polls(700 * Duration::from_millis(1));
    assert!(raised.len() >= 4, "{raised:#?}");
    assert!(!raised.iter().any(|s| is_skipped(s)), "{raised:#?}");
    portd.assert_stderr_has("ephemeral ports critical");
    assert!(portd.stop().0.success());
}

#[test]
fn an_idle_namespace_is_still_censused_at_the_maximum_staleness() {
    root_test!();
    let mut sandbox = Sandbox::with_range("40000 40199", false);
    sandbox.ramp(5, 200);
    sandbox.wait_ramp();
    let dir = tempfile::tempdir().unwrap();
    let (mut portd, _notify) = start(&sandbox, dir.path(), &policy("500ms"));
    let seen = portd.polls(2 * SECOND);
    let full = seen.iter().filter(|s| !is_skipped(s)).count();
    let skipped = seen.len() - full;
    // About one census every 500 ms, the polls between them skipped.
    assert!((2..=6).contains(&full), "{full} censuses in 2 s: {seen:#?}");
    assert!(
        skipped >= 2 * full,
        "{skipped} skipped, {full} censuses: {seen:#?}"
    );
    assert!(portd.stop().0.success());
}
