use super::*;

fn at(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn live(written_at: f64, interval: f64) -> Live {
    Live {
        format_version: FORMAT_VERSION,
        written_at,
        pid: 42,
        interval_seconds: interval,
        ..Live::default()
    }
}

#[test]
fn a_view_is_fresh_for_two_polls_and_no_longer() {
    let l = live(1000.0, 5.0);
    assert_eq!(fresh(&l, at(1000.0)), Ok(Duration::ZERO));
    assert_eq!(fresh(&l, at(1004.0)), Ok(Duration::from_secs(4)));
    // written_at + 2 × interval ≥ now: the boundary still counts.
    assert_eq!(fresh(&l, at(1010.0)), Ok(Duration::from_secs(10)));
    assert_eq!(
        fresh(&l, at(1010.5)),
        Err(NotRunning::Stale {
            age: Duration::from_millis(10_500),
            interval: Duration::from_secs(5),
        })
    );
}

#[test]
fn a_view_from_the_future_counts_as_written_now() {
    assert_eq!(fresh(&live(2000.0, 5.0), at(1000.0)), Ok(Duration::ZERO));
}

#[test]
fn a_stale_view_says_how_old_it_is() {
    let why = fresh(&live(1000.0, 30.0), at(1095.0)).unwrap_err();
    assert_eq!(
        why.to_string(),
        "its live view /run/portd/live.json is 95s old, older than two polls of 30s"
    );
    assert_eq!(
        Daemon::NotRunning(why).line(),
        "daemon: not running (its live view /run/portd/live.json is 95s old, older than two polls of 30s): no rates, no witnessed failures"
    );
}

#[test]
fn written_views_read_back_fresh_under_the_host_root() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    assert_eq!(
        read(&host, at(1000.0)),
        Daemon::NotRunning(NotRunning::Absent)
    );
    let mut l = live(1000.0, 5.0);
    l.census.last_at = Some(997.0);
    l.authority.describe = "auto".into();
    write(&host, &l).unwrap();
    let file = dir.path().join("run/portd/live.json");
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let daemon = read(&host, at(1002.0));
    assert_eq!(
        daemon,
        Daemon::Running {
            live: Box::new(l.clone()),
            age: Duration::from_secs(2)
        }
    );
    assert_eq!(
        daemon.line(),
        "daemon: running (pid 42), mode auto, last census 5s ago"
    );
    assert!(matches!(
        read(&host, at(1011.0)),
        Daemon::NotRunning(NotRunning::Stale { .. })
    ));
}

#[test]
fn fields_added_later_are_absent_from_older_files_and_unknown_ones_ignored() {
    let l: Live = serde_json::from_str(
        r#"{"format_version": 1, "written_at": 5.5, "pid": 7, "forecast": {"eta": 3}}"#,
    )
    .unwrap();
    assert_eq!(l.pid, 7);
    assert_eq!(l.headline, None);
    assert_eq!(l.census, Census::default());
}

#[test]
fn another_format_version_or_garbage_is_unreadable_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    let mut l = live(1000.0, 5.0);
    l.format_version = 2;
    write(&host, &l).unwrap();
    let Daemon::Unreadable(why) = read(&host, at(1000.0)) else {
        panic!("format 2 read as portd's");
    };
    assert!(why.contains("format_version 2"), "{why}");
    std::fs::write(dir.path().join("run/portd/live.json"), "{").unwrap();
    assert!(matches!(read(&host, at(1000.0)), Daemon::Unreadable(_)));
}

#[test]
fn the_forecast_reads_back_and_the_line_says_when_ports_run_out() {
    let mut l = live(1000.0, 10.0);
    l.forecast = Some(Outlook {
        time_to_exhaustion_seconds: Some(42.4),
        connect_attempts_total: Some(123_456),
        targets: vec![Target {
            target: "destination 10.0.0.1 -> 10.0.0.2:80".into(),
            used: 9000,
            capacity: 28232,
            growth_per_second: 470.0,
            connection_rate: 470.0,
            steady_state: Some(28300),
            time_to_exhaustion_seconds: Some(42.4),
        }],
        remedies: vec![Remedy {
            id: "connection-reuse".into(),
            effect: 9000,
            closes_gap: true,
            advice: "reuse connections".into(),
        }],
    });
    let text = serde_json::to_string(&l).unwrap();
    let back: Live = serde_json::from_str(&text).unwrap();
    assert_eq!(back, l);
    let running = Daemon::Running {
        live: Box::new(l),
        age: Duration::from_secs(1),
    };
    assert!(
        running.line().ends_with(", runs out in 42s"),
        "{}",
        running.line()
    );
    // A view written before forecasts existed reads without one.
    let old: Live = serde_json::from_str(r#"{"format_version":1,"written_at":1000.0}"#).unwrap();
    assert_eq!(old.forecast, None);
}

#[test]
fn the_worst_namespace_of_a_view_is_the_one_with_the_highest_usage_at_the_worst_level() {
    let ns = |inode, level, usage| Namespace {
        inode,
        level: Some(level),
        headline: Some(Headline {
            usage,
            ..Headline::default()
        }),
        ..Namespace::default()
    };
    let daemon = Daemon::Running {
        live: Box::new(Live {
            namespaces: vec![
                ns(1, Level::Warning, 0.85),
                ns(2, Level::Critical, 0.95),
                ns(3, Level::Critical, 0.91),
                Namespace {
                    inode: 4,
                    ..Namespace::default()
                },
            ],
            ..Live::default()
        }),
        age: Duration::ZERO,
    };
    assert_eq!(worst_namespace(&daemon).map(|n| n.inode), Some(2));
}
