use super::*;

fn at(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

/// A view written by this test's own process (which runs).
fn live(written_at: f64, interval: f64) -> Live {
    let pid = std::process::id();
    Live {
        format_version: FORMAT_VERSION,
        written_at,
        pid,
        start_time: process(pid).map(|p| p.start_time),
        namespaces_of_daemon: Some(Namespaces::of_this_process()),
        interval_seconds: interval,
        ..Live::default()
    }
}

/// The pid of a process that has exited and been reaped.
fn exited_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

fn now() -> f64 {
    unix_seconds(SystemTime::now())
}

#[test]
fn a_view_rewritten_only_on_change_is_fresh_for_two_refresh_periods() {
    let l = Live {
        refresh_seconds: 5.0,
        ..live(1000.0, 0.5)
    };
    assert_eq!(fresh(&l, at(1009.0)), Ok(Duration::from_secs(9)));
    assert!(fresh(&l, at(1010.5)).is_err());
}

#[test]
fn the_policy_digest_tells_an_edit_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portd.toml");
    assert_eq!(policy_digest(&path), None);
    std::fs::write(&path, "mode = \"advise\"\n").unwrap();
    let before = policy_digest(&path).unwrap();
    assert!(before.starts_with("fnv1a64:"), "{before}");
    assert_eq!(policy_digest(&path), Some(before.clone()));
    std::fs::write(&path, "mode = \"auto\"\n").unwrap();
    assert_ne!(policy_digest(&path), Some(before));
}

#[test]
fn status_says_when_the_policy_on_disk_differs_from_the_one_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portd.toml");
    std::fs::write(&path, "mode = \"advise\"\n").unwrap();
    let l = Live {
        policy: Some(PolicyView {
            path: path.display().to_string(),
            digest: policy_digest(&path),
        }),
        ..live(now(), 5.0)
    };
    let view = |l: &Live| DaemonView::Running {
        live: Box::new(l.clone()),
        age: Duration::ZERO,
    };
    assert_eq!(l.policy_changed(), None);
    assert!(!view(&l).line().contains("policy file"));
    std::fs::write(&path, "mode = \"auto\"\n").unwrap();
    let line = view(&l).line();
    assert!(
        line.contains("differs from the one the daemon runs"),
        "{line}"
    );
    assert!(view(&l).report().policy_changed.is_some());
    std::fs::remove_file(&path).unwrap();
    assert!(
        l.policy_changed()
            .unwrap()
            .contains("is gone or unreadable")
    );
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
        DaemonView::NotRunning(why).line(),
        "daemon: not running (its live view /run/portd/live.json is 95s old, older than two polls of 30s): no rates, no witnessed failures"
    );
}

#[test]
fn written_views_read_back_fresh_under_the_host_root() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    assert_eq!(
        read(&host, at(1000.0)),
        DaemonView::NotRunning(NotRunning::Absent)
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
        DaemonView::Running {
            live: Box::new(l.clone()),
            age: Duration::from_secs(2)
        }
    );
    assert_eq!(
        daemon.line(),
        format!(
            "daemon: running (pid {}), mode auto, last census 5s ago",
            std::process::id()
        )
    );
    assert!(matches!(
        read(&host, at(1011.0)),
        DaemonView::NotRunning(NotRunning::Stale { .. })
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
    let DaemonView::Unreadable(why) = read(&host, at(1000.0)) else {
        panic!("format 2 read as portd's");
    };
    assert!(why.contains("format_version 2"), "{why}");
    std::fs::write(dir.path().join("run/portd/live.json"), "{").unwrap();
    assert!(matches!(read(&host, at(1000.0)), DaemonView::Unreadable(_)));
}

#[test]
fn the_forecast_reads_back_and_the_line_says_when_ports_run_out() {
    let mut l = live(1000.0, 10.0);
    l.forecast = Some(Outlook {
        time_to_exhaustion_seconds: Some(42.4),
        connect_attempts_total: Some(123_456),
        targets: vec![TargetView {
            target: "destination 10.0.0.1 -> 10.0.0.2:80".into(),
            used: 9000,
            capacity: 28232,
            growth_per_second: 470.0,
            connection_rate: 470.0,
            steady_state: Some(28300),
            time_to_exhaustion_seconds: Some(42.4),
        }],
        remedies: vec![RemedyView {
            id: "connection-reuse".into(),
            effect: 9000,
            closes_gap: true,
            advice: "reuse connections".into(),
        }],
    });
    let text = serde_json::to_string(&l).unwrap();
    let back: Live = serde_json::from_str(&text).unwrap();
    assert_eq!(back, l);
    let running = DaemonView::Running {
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
    let ns = |inode, level, usage| NamespaceView {
        inode,
        level: Some(level),
        headline: Some(HeadlineView {
            usage,
            ..HeadlineView::default()
        }),
        ..NamespaceView::default()
    };
    let daemon = DaemonView::Running {
        live: Box::new(Live {
            namespaces: vec![
                ns(1, Level::Warning, 0.85),
                ns(2, Level::Critical, 0.95),
                ns(3, Level::Critical, 0.91),
                NamespaceView {
                    inode: 4,
                    ..NamespaceView::default()
                },
            ],
            ..Live::default()
        }),
        age: Duration::ZERO,
    };
    assert_eq!(worst_namespace(&daemon).map(|n| n.inode), Some(2));
}

#[test]
fn a_killed_daemon_is_not_running_however_fresh_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    let mut l = live(now(), 3600.0);
    l.pid = exited_pid();
    write(&host, &l).unwrap();
    let daemon = read(&host, SystemTime::now());
    assert_eq!(
        daemon,
        DaemonView::NotRunning(NotRunning::Exited { pid: l.pid })
    );
    assert_eq!(
        daemon.line(),
        format!(
            "daemon: not running (pid {}, which wrote the live view /run/portd/live.json, has exited): no rates, no witnessed failures",
            l.pid
        )
    );
}

#[test]
fn a_pid_that_names_another_process_or_a_zombie_is_not_the_daemon() {
    let l = live(now(), 5.0);
    let pid = l.pid;
    let other = |start_time, zombie| move |_| Some(Process { start_time, zombie });
    let start = l.start_time.unwrap();
    assert_eq!(
        judge(
            l.clone(),
            SystemTime::now(),
            Namespaces::default(),
            other(start + 1, false)
        ),
        DaemonView::NotRunning(NotRunning::Replaced { pid })
    );
    assert_eq!(
        judge(
            l.clone(),
            SystemTime::now(),
            Namespaces::default(),
            other(start, true)
        ),
        DaemonView::NotRunning(NotRunning::Exited { pid })
    );
    assert!(matches!(
        judge(
            l,
            SystemTime::now(),
            Namespaces::default(),
            other(start, false)
        ),
        DaemonView::Running { .. }
    ));
}

#[test]
fn the_start_time_is_read_past_a_command_with_spaces_and_parentheses() {
    let stat = b"812 (a) b (c) S 1 812 812 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 1000 50";
    assert_eq!(
        parse_stat(stat),
        Some(Process {
            start_time: 123456,
            zombie: false
        })
    );
    assert_eq!(parse_stat(b"1 (x) Z 0"), None);
    let own = process(std::process::id()).unwrap();
    assert!(own.start_time > 0 && !own.zombie);
    assert_eq!(process(exited_pid()), None);
}

#[test]
fn a_view_from_far_in_the_future_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    write(&host, &live(now() + 3600.0, 5.0)).unwrap();
    let DaemonView::Unreadable(why) = read(&host, SystemTime::now()) else {
        panic!("a view an hour ahead was trusted");
    };
    assert!(
        why.starts_with("/run/portd/live.json set aside: written 3600s ahead of this host's clock"),
        "{why}"
    );
    // Within two polls ahead (a clock stepped back a little): written now.
    write(&host, &live(now() + 8.0, 5.0)).unwrap();
    assert!(matches!(
        read(&host, SystemTime::now()),
        DaemonView::Running { .. }
    ));
}

#[test]
fn a_view_others_could_write_is_set_aside() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    write(&host, &live(now(), 5.0)).unwrap();
    let file = path(&host);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let DaemonView::Unreadable(why) = read(&host, SystemTime::now()) else {
        panic!("a world-writable view was trusted");
    };
    assert!(
        why.contains("set aside: its mode 0666 lets group or others write it"),
        "{why}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        read(&host, SystemTime::now()),
        DaemonView::Running { .. }
    ));
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&file, Some(4321), None).unwrap();
        let DaemonView::Unreadable(why) = read(&host, SystemTime::now()) else {
            panic!("another user's view was trusted");
        };
        assert!(
            why.contains("owned by uid 4321, neither root nor the user reading it (uid 0)"),
            "{why}"
        );
    }
}

#[test]
fn lists_are_capped_on_read_and_texts_escaped_on_print() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    let mut l = live(now(), 5.0);
    l.witness = Some(WitnessView {
        active: true,
        failures: (0..300)
            .map(|_| WitnessedFailure {
                comm: "evil\n\u{1b}]0;owned\u{7}".into(),
                ..WitnessedFailure::default()
            })
            .collect(),
        ..WitnessView::default()
    });
    // Compact, as a forger would write it: 9000 rows fit in the read limit.
    write(&host, &Live::default()).unwrap();
    let mut value = serde_json::to_value(&l).unwrap();
    value["namespaces"] = (0..9000)
        .map(|i| serde_json::json!({"inode": i, "label": "pid 8 (x|y=1\nOK - \u{1b}[2J)", "level": "ok"}))
        .collect();
    std::fs::write(path(&host), serde_json::to_vec(&value).unwrap()).unwrap();
    let daemon = read(&host, SystemTime::now());
    let DaemonView::Running { live, .. } = &daemon else {
        panic!("{daemon:?}");
    };
    assert_eq!(live.namespaces.len(), NAMESPACES_SHOWN);
    let w = live.witness.as_ref().unwrap();
    assert_eq!(
        (w.failures.len(), w.failures_not_listed),
        (WITNESS_ROWS, 250)
    );
    let line = daemon.line();
    assert_eq!(
        line.lines()
            .filter(|l| l.starts_with("daemon: netns "))
            .count(),
        50
    );
    assert!(
        line.contains("daemon: netns pid 8 (x\\x7cy=1\\x0aOK - \\x1b[2J) net:[0] OK"),
        "{line}"
    );
    assert!(
        line.contains("  evil\\x0a\\x1b]0;owned\\x07 (pid not visible)"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}') && !line.contains('|'), "{line}");
}

#[test]
fn a_view_from_another_network_or_pid_namespace_is_set_aside() {
    let l = live(now(), 5.0);
    let ours = Namespaces::of_this_process();
    assert!(ours.net.is_some() && ours.pid.is_some(), "{ours:?}");
    let alive = |_| process(std::process::id());
    assert!(matches!(
        judge(l.clone(), SystemTime::now(), ours, alive),
        DaemonView::Running { .. }
    ));
    let elsewhere = |net: u64, pid: u64| Namespaces {
        net: ours.net.map(|n| n + net),
        pid: ours.pid.map(|p| p + pid),
    };
    let DaemonView::Unreadable(why) = judge(l.clone(), SystemTime::now(), elsewhere(1, 0), alive)
    else {
        panic!("a view of another network namespace was trusted");
    };
    assert!(
        why.contains("set aside: it is the view of the daemon pid "),
        "{why}"
    );
    let DaemonView::Unreadable(why) = judge(l.clone(), SystemTime::now(), elsewhere(0, 1), alive)
    else {
        panic!("a pid of another PID namespace was checked here");
    };
    assert!(
        why.contains("set aside: its daemon runs in another PID namespace"),
        "{why}"
    );
    // A view of an older portd names no namespaces: the pid alone.
    let old = Live {
        namespaces_of_daemon: None,
        ..l
    };
    assert!(matches!(
        judge(old, SystemTime::now(), elsewhere(1, 1), alive),
        DaemonView::Running { .. }
    ));
}
