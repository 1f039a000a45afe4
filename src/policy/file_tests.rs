use std::fs::{self, Permissions};
use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::base::ports::{Port, PortRange, Ratio};
use crate::policy::load::shell_quote;
use crate::policy::{Floor, Mode, Thresholds};

const SHIPPED: &str = include_str!("../../config/portd.toml");
const THREE_ERRORS: &str = include_str!("../../tests/fixtures/policy/three-errors.toml");

fn path() -> &'static Path {
    Path::new("/etc/portd.toml")
}

fn errors(text: &str) -> Vec<String> {
    match parse(path(), text) {
        Ok(policy) => panic!("expected errors, got {policy:?}"),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

/// The one error of `text`, checked to start with `prefix` and to hold every part.
fn one_error(text: &str, prefix: &str, parts: &[&str]) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(prefix),
        "{:?} lacks {prefix:?}",
        errors[0]
    );
    for part in parts {
        assert!(errors[0].contains(part), "{:?} lacks {part:?}", errors[0]);
    }
}

#[test]
fn shipped_file_is_exactly_the_defaults() {
    assert_eq!(
        parse(Path::new("config/portd.toml"), SHIPPED),
        Ok(Policy::default())
    );
}

#[test]
fn shipped_file_sets_every_key() {
    // Every key of the schema appears uncommented, so the file documents them all.
    for key in [
        "[poll]",
        "interval",
        "max_staleness",
        "[thresholds]",
        "warning",
        "critical",
        "clear",
        "hold",
        "tcp_pool",
        "[widen]",
        "mode",
        "floor",
        "ceiling",
        "target",
        "cooldown",
        "max_changes_per_hour",
        "protected",
        "[persist]",
        "enabled",
        "file",
        "[alerts]",
        "reminder",
        "[metrics]",
        "[namespaces]",
        "select",
    ] {
        assert!(
            SHIPPED.lines().any(|l| l.trim_start().starts_with(key)),
            "config/portd.toml does not set {key}"
        );
    }
}

#[test]
fn empty_or_comment_only_file_is_the_defaults() {
    assert_eq!(parse(path(), ""), Ok(Policy::default()));
    assert_eq!(
        parse(path(), "# nothing here\n\n[widen]\n"),
        Ok(Policy::default())
    );
}

#[test]
fn missing_keys_take_the_defaults() {
    let policy = parse(path(), "[widen]\nmode = \"advise\"\n").unwrap();
    assert_eq!(
        policy,
        Policy {
            mode: Mode::Advise,
            ..Policy::default()
        }
    );
}

#[test]
fn every_key_is_read() {
    let text = r#"
        [poll]
        interval = "2s"
        max_staleness = "1h 30m"
        [thresholds]
        warning = 60
        critical = 75.5
        clear = 45
        hold = "0s"
        tcp_pool = true
        [widen]
        mode = "advise"
        floor = 10000
        ceiling = 60999
        target = 12.5
        cooldown = "10m"
        max_changes_per_hour = 2
        protected = [8080, "9000-9100", "9200", " 9300 - 9301 "]
        [persist]
        enabled = false
        file = "70-portd.conf"
        [alerts]
        reminder = "2h"
        [metrics]
        file = "/run/portd/metrics.prom"
        [namespaces]
        mode = "auto"
        select = ["netns:blue"]
    "#;
    let range = |l, h| PortRange::new(l, h).unwrap();
    let expected = Policy {
        interval: Duration::from_secs(2),
        max_staleness: Duration::from_secs(5400),
        thresholds: Thresholds::new(
            Ratio::from_percent(60.0).unwrap(),
            Ratio::from_percent(75.5).unwrap(),
            Ratio::from_percent(45.0).unwrap(),
        )
        .unwrap(),
        hold: Duration::ZERO,
        tcp_pool_alerts: true,
        mode: Mode::Advise,
        floor: Floor::Port(10000),
        ceiling: Port::new(60999).unwrap(),
        target: Ratio::from_percent(12.5).unwrap(),
        cooldown: Duration::from_secs(600),
        max_changes_per_hour: NonZeroU32::new(2).unwrap(),
        protected: vec![
            range(8080, 8080),
            range(9000, 9100),
            range(9200, 9200),
            range(9300, 9301),
        ],
        persist: false,
        dropin_name: "70-portd.conf".to_string(),
        reminder: Duration::from_secs(7200),
        metrics_file: Some(PathBuf::from("/run/portd/metrics.prom")),
        namespaces: crate::policy::NamespacePolicy {
            mode: Mode::Auto,
            select: vec![crate::policy::namespaces::Selector::parse("netns:blue").unwrap()],
        },
    };
    assert_eq!(parse(path(), text), Ok(expected));
}

#[test]
fn dotted_and_inline_keys_are_the_same_keys() {
    let policy = parse(
        path(),
        "widen = { ceiling = 61001 }\nthresholds.hold = \"1m\"\n",
    )
    .unwrap();
    assert_eq!(policy.ceiling.get(), 61001);
    assert_eq!(policy.hold, Duration::from_secs(60));
}

#[test]
fn syntax_error_is_one_line_with_the_parsers_position() {
    one_error(
        "[poll]\ninterval = \"10s\"\nwarning = = 3\n",
        "/etc/portd.toml:3:",
        &["TOML syntax error"],
    );
    one_error("[widen\n", "/etc/portd.toml:1:", &["TOML syntax error"]);
    one_error(
        "[poll]\ninterval = \"1s\"\ninterval = \"2s\"\n",
        "/etc/portd.toml:3:1: ",
        &["TOML syntax error", "duplicate key"],
    );
}

#[test]
fn unknown_key_lists_the_allowed_keys() {
    one_error(
        "[widen]\nmode = \"auto\"\nflor = 2000\n",
        "/etc/portd.toml:3:1: unknown key `flor` in [widen], expected one of ",
        &["`floor`", "`ceiling`", "`protected`"],
    );
}

#[test]
fn unknown_section_lists_the_sections() {
    one_error(
        "[poll]\n[widn]\nmode = \"auto\"\n",
        "/etc/portd.toml:2:2: unknown key `widn` at the top level, expected one of ",
        &["`poll`", "`widen`", "`metrics`"],
    );
}

#[test]
fn section_that_is_not_a_table() {
    one_error(
        "[[widen]]\nmode = \"auto\"\n",
        "/etc/portd.toml:1:1: widen: invalid type: array, ",
        &["expected a table, written once as [widen]"],
    );
    one_error(
        "poll = 5\n",
        "/etc/portd.toml:1:8: poll: invalid type: integer `5`, ",
        &["expected a table, written once as [poll]"],
    );
}

#[test]
fn wrong_type_says_what_is_allowed() {
    one_error(
        "[thresholds]\nwarning = \"forty\"\n",
        "/etc/portd.toml:2:11: thresholds.warning: invalid type: string \"forty\", ",
        &["expected a percentage above 0 and at most 100"],
    );
    one_error(
        "[thresholds]\ntcp_pool = \"no\"\n",
        "/etc/portd.toml:2:12: thresholds.tcp_pool: invalid type: string \"no\", ",
        &["expected true or false"],
    );
    one_error(
        "[widen]\nceiling = \"65535\"\n",
        "/etc/portd.toml:2:11: widen.ceiling: invalid type: string \"65535\", ",
        &["expected a port number from 1 to 65535"],
    );
    one_error(
        "[widen]\nprotected = 8080\n",
        "/etc/portd.toml:2:13: widen.protected: invalid type: integer `8080`, ",
        &[r#"expected a list of ports and port ranges, such as [8080, "9000-9100"]"#],
    );
    one_error(
        "[widen]\nmode = 1\n",
        "/etc/portd.toml:2:8: widen.mode: invalid type: integer `1`, ",
        &[r#"expected "auto" or "advise""#],
    );
}

#[test]
fn bad_enumerated_values_list_the_choices() {
    one_error(
        "[widen]\nmode = \"automatic\"\n",
        "/etc/portd.toml:2:8: widen.mode: unknown mode \"automatic\"; ",
        &[r#"use "auto""#, r#""advise""#],
    );
    one_error(
        "[widen]\nfloor = \"lowest\"\n",
        "/etc/portd.toml:2:9: widen.floor: unknown floor \"lowest\"; ",
        &[r#"use "initial""#, "1 to 65535"],
    );
}

#[test]
fn durations_are_humantime_strings() {
    one_error(
        "[thresholds]\nhold = \"thirty\"\n",
        "/etc/portd.toml:2:8: thresholds.hold: invalid duration \"thirty\"",
        &[r#"write it like "30s", "5m" or "1h 30m""#],
    );
    one_error(
        "[widen]\ncooldown = 300\n",
        "/etc/portd.toml:2:12: widen.cooldown: invalid type: integer `300`, ",
        &[r#"expected a duration such as "30s""#],
    );
    one_error(
        "[alerts]\nreminder = \"2years\"\n",
        "/etc/portd.toml:2:12: alerts.reminder: ",
        &["longer than a year"],
    );
}

#[test]
fn zero_interval_is_refused() {
    one_error(
        "[poll]\ninterval = \"0s\"\n",
        "/etc/portd.toml:2:12: poll.interval: 0s is below the minimum, 100ms",
        &[],
    );
}

#[test]
fn durations_below_their_minimum_are_refused_and_name_it() {
    one_error(
        "[poll]\ninterval = \"1ns\"\n",
        "/etc/portd.toml:2:12: poll.interval: 1ns is below the minimum, 100ms",
        &["burns CPU"],
    );
    one_error(
        "[alerts]\nreminder = \"0s\"\n",
        "/etc/portd.toml:2:12: alerts.reminder: 0s is below the minimum, 2s",
        &["at least poll.interval", "every census"],
    );
    one_error(
        "[poll]\ninterval = \"100ms\"\n[alerts]\nreminder = \"500ms\"\n",
        "/etc/portd.toml:4:12: alerts.reminder: 500ms is below the minimum, 1s",
        &[],
    );
    one_error(
        "[poll]\nmax_staleness = \"0s\"\n",
        "/etc/portd.toml:2:17: poll.max_staleness: 0s is below poll.interval (2s)",
        &["minimum is the interval"],
    );
    // At the minimums: accepted (the test suite's daemons poll this fast).
    let policy = parse(
        path(),
        "[poll]\ninterval = \"100ms\"\nmax_staleness = \"100ms\"\n[alerts]\nreminder = \"1s\"\n",
    )
    .unwrap();
    assert_eq!(policy.interval, INTERVAL_MIN);
    assert_eq!(policy.reminder, REMINDER_MIN);
    // A bad interval is not also blamed in the relations.
    one_error(
        "[poll]\ninterval = \"1ns\"\nmax_staleness = \"50ms\"\n",
        "/etc/portd.toml:2:12: poll.interval: ",
        &[],
    );
}

#[test]
fn percentages_are_above_zero_and_at_most_a_hundred() {
    one_error(
        "[thresholds]\ncritical = 150\n",
        "/etc/portd.toml:2:12: thresholds.critical: 150 is not a usable percentage",
        &["above 0 and at most 100"],
    );
    one_error(
        "[thresholds]\nclear = 0\n",
        "/etc/portd.toml:2:9: thresholds.clear: 0 is not a usable percentage",
        &[],
    );
    one_error(
        "[thresholds]\nclear = nan\n",
        "/etc/portd.toml:2:9: ",
        &["NaN"],
    );
}

#[test]
fn floor_above_ceiling_points_at_the_floor() {
    one_error(
        "[widen]\nfloor = 40000\nceiling = 30000\n",
        "/etc/portd.toml:2:9: widen.floor: floor 40000 is above widen.ceiling (30000)",
        &["at most the ceiling"],
    );
}

#[test]
fn ports_are_between_one_and_65535() {
    one_error(
        "[widen]\nceiling = 70000\n",
        "/etc/portd.toml:2:11: widen.ceiling: 70000 is not a port number; use 1 to 65535",
        &[],
    );
    one_error(
        "[widen]\nfloor = 0\n",
        "/etc/portd.toml:2:9: widen.floor: 0 is not a port number",
        &[],
    );
}

#[test]
fn clear_must_be_below_warning() {
    one_error(
        "[thresholds]\nclear = 45\n",
        "/etc/portd.toml:2:9: thresholds.clear: 45% must be below thresholds.warning (40%)",
        &["clears"],
    );
    // Only warning is set: it is the key to fix.
    one_error(
        "[thresholds]\nwarning = 28\n",
        "/etc/portd.toml:2:11: thresholds.warning: 28% must be above thresholds.clear (30%)",
        &[],
    );
}

#[test]
fn warning_must_not_exceed_critical() {
    one_error(
        "[thresholds]\nwarning = 45\ncritical = 42.5\n",
        "/etc/portd.toml:2:11: thresholds.warning: 45% must be at most \
         thresholds.critical (42.5%)",
        &[],
    );
    assert!(parse(path(), "[thresholds]\nwarning = 50\ncritical = 50\n").is_ok());
}

#[test]
fn target_must_be_below_warning() {
    one_error(
        "[widen]\ntarget = 40\n",
        "/etc/portd.toml:2:10: widen.target: 40% must be below thresholds.warning (40%)",
        &[],
    );
}

#[test]
fn every_bad_protected_entry_is_reported() {
    let errors =
        errors("[widen]\nprotected = [\"9100-9000\", 8080, \"x\", 70000, true, [1], \"1-2-3\"]\n");
    let columns: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').nth(2).unwrap())
        .collect();
    assert_eq!(columns, ["14", "33", "38", "45", "51", "56"], "{errors:#?}");
    for (error, part) in errors.iter().zip([
        "written backwards",
        "\"x\" is not a port",
        "70000 is not a port number",
        "invalid type: boolean `true`",
        "invalid type: array",
        "\"1-2-3\" is not a port",
    ]) {
        assert!(error.contains("widen.protected: "), "{error}");
        assert!(error.contains(part), "{error} lacks {part}");
    }
}

#[test]
fn backwards_protected_range_says_write_it_low_high() {
    one_error(
        "[widen]\nprotected = [8080, \"9100-9000\"]\n",
        "/etc/portd.toml:2:20: widen.protected: range \"9100-9000\" is written backwards; \
         write it low-high: \"9000-9100\"",
        &[],
    );
    one_error(
        "[widen]\nprotected = [\"80-x\"]\n",
        "/etc/portd.toml:2:14: widen.protected: \"80-x\" is not a port or a port range",
        &[],
    );
    one_error(
        "[widen]\nprotected = [70000]\n",
        "/etc/portd.toml:2:14: widen.protected: 70000 is not a port number",
        &[],
    );
}

#[test]
fn change_cap_is_at_least_one() {
    one_error(
        "[widen]\nmax_changes_per_hour = 99999999999999999999\n",
        "/etc/portd.toml:2:24: widen.max_changes_per_hour: 99999999999999999999 is not allowed",
        &[],
    );
    one_error(
        "[widen]\nmax_changes_per_hour = 0\n",
        "/etc/portd.toml:2:24: widen.max_changes_per_hour: 0 is not allowed",
        &[r#"mode = "advise""#],
    );
}

#[test]
fn dropin_name_is_a_bare_conf_file_name() {
    for bad in [
        "../60-portd.conf",
        "60-portd",
        ".conf",
        ".60-portd.conf",
        "/etc/x.conf",
    ] {
        let text = format!("[persist]\nfile = {bad:?}\n");
        one_error(
            &text,
            "/etc/portd.toml:2:8: persist.file: ",
            &["60-portd.conf"],
        );
    }
}

#[test]
fn dropin_name_with_a_newline_or_space_is_refused_naming_what_is_accepted() {
    for bad in [
        "60-portd\n.conf",
        "60 portd.conf",
        "60-portd.conf\n",
        "6\"0.conf",
    ] {
        let text = format!("[persist]\nfile = {bad:?}\n");
        one_error(
            &text,
            "/etc/portd.toml:2:8: persist.file: ",
            &["letters, digits and - _ . + @", "\".conf\""],
        );
    }
    let policy = parse(path(), "[persist]\nfile = \"61-portd_x+y@z.conf\"\n").unwrap();
    assert_eq!(policy.dropin_name, "61-portd_x+y@z.conf");
}

#[test]
fn metrics_file_refuses_portds_own_files() {
    for (own, what) in [
        ("/var/lib/portd/state.json", "state directory"),
        ("/var/lib/portd/lock", "state directory"),
        ("//var/lib/portd/./state.json", "state directory"),
        ("/etc/sysctl.d/60-portd.conf", "sysctl.d"),
        ("/usr/lib/sysctl.d/99-x.conf", "sysctl.d"),
        ("/etc/portd.toml", "policy"),
        ("/srv/policy.toml", "this policy file"),
        ("/proc/sys/net/ipv4/ip_local_port_range", "/proc"),
        ("/run/portd/live.json", "live view"),
        ("/run/portd//./live.json", "live view"),
        ("/run/portd", "runtime directory"),
        ("/run/portd/.live.json.portd-tmp-812", "temporary name"),
        ("/run/portd/.metrics.prom.portd-tmp-9", "temporary name"),
    ] {
        let text = format!("[metrics]\nfile = {own:?}\n");
        let errors = match parse(Path::new("/srv/policy.toml"), &text) {
            Ok(p) => panic!("{own} accepted: {p:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            errors.starts_with("/srv/policy.toml:2:8: metrics.file: ")
                && errors.contains(what)
                && errors.contains("/run/portd/metrics.prom"),
            "{errors}"
        );
    }
    one_error(
        "[metrics]\nfile = \"/run/portd/../../var/lib/portd/state.json\"\n",
        "/etc/portd.toml:2:8: metrics.file: ",
        &["without \"..\""],
    );
    let policy = parse(path(), "[metrics]\nfile = \"/run/portd//metrics.prom\"\n").unwrap();
    assert_eq!(
        policy.metrics_file,
        Some(PathBuf::from("/run/portd/metrics.prom"))
    );
}

#[test]
fn a_huge_value_is_shortened_in_the_error_line() {
    let huge = "a".repeat(5_000_000);
    for text in [
        format!("[widen]\nmode = \"{huge}\"\n"),
        format!("[widen]\nceiling = \"{huge}\"\n"),
        format!("[widen]\nprotected = [\"{huge}\"]\n"),
        format!("[poll]\ninterval = \"{huge}\"\n"),
        format!("[metrics]\nfile = \"{huge}\"\n"),
        format!("{huge} = 1\n"),
    ] {
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{}", &errors[0][..300]);
        assert!(errors[0].len() < 400, "{}", &errors[0][..400]);
        assert!(errors[0].contains("… (5000000 bytes)"), "{}", errors[0]);
    }
}

#[test]
fn thousands_of_unknown_keys_are_all_counted_and_the_list_is_capped() {
    let text: String = (0..20_000).map(|i| format!("key_{i} = 1\n")).collect();
    let error = parse(path(), &text).unwrap_err();
    assert_eq!(error.diagnostics.len(), DIAGNOSTICS_KEPT);
    assert_eq!(error.omitted, 20_000 - DIAGNOSTICS_KEPT);
    // The first ones in file order, each at its own line.
    for (i, d) in error.diagnostics.iter().enumerate() {
        assert_eq!(
            d.position,
            Some(Position {
                line: i + 1,
                column: 1
            })
        );
        assert!(d.message.contains(&format!("`key_{i}`")), "{d}");
    }
    let shown = error.to_string();
    assert_eq!(shown.lines().count(), DIAGNOSTICS_KEPT + 1);
    assert!(
        shown.ends_with(
            "and 19980 more problems in /etc/portd.toml (fix the ones above and check again)"
        ),
        "{shown}"
    );
    // Unknown keys inside sections too, with the known keys still read.
    let mut text = String::from("[widen]\nmode = \"bogus\"\n");
    text.extend((0..5_000).map(|i| format!("k{i} = 1\n")));
    let error = parse(path(), &text).unwrap_err();
    assert_eq!(error.diagnostics.len() + error.omitted, 5_001);
    assert!(error.diagnostics[0].message.contains("unknown mode"));
    assert!(
        error.diagnostics[1]
            .message
            .starts_with("unknown key `k0` in [widen]")
    );
}

#[test]
fn metrics_file_is_absolute_or_empty() {
    one_error(
        "[metrics]\nfile = \"metrics.prom\"\n",
        "/etc/portd.toml:2:8: metrics.file: \"metrics.prom\" is not an absolute path",
        &[],
    );
}

#[test]
fn typo_wrong_type_and_floor_above_ceiling_give_three_lines() {
    let errors = errors(THREE_ERRORS);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("/etc/portd.toml:12:1: unknown key `tcp_pol` in [thresholds]"));
    assert!(errors[1].starts_with("/etc/portd.toml:15:8: widen.mode: invalid type: boolean"));
    assert!(errors[2].starts_with("/etc/portd.toml:16:9: widen.floor: floor 61000 is above"));
}

#[test]
fn independent_errors_are_all_reported_in_file_order() {
    let text = "\
[widen]
protected = [\"9100-9000\"]
cooldown = \"5 minutes please\"
[poll]
interval = \"0s\"
colour = \"blue\"
[metrics]
file = \"x\"
[persist]
file = \"a/b.conf\"
";
    let lines: Vec<usize> = parse(path(), text)
        .unwrap_err()
        .diagnostics
        .iter()
        .map(|d| d.position.unwrap().line)
        .collect();
    assert_eq!(lines, [2, 3, 5, 6, 8, 10]);
}

#[test]
fn an_invalid_value_is_not_also_blamed_in_a_relation() {
    // warning is dropped as invalid; clear = 45 must not be compared with
    // the default warning (40%) the file never asked for.
    one_error(
        "[thresholds]\nwarning = \"high\"\nclear = 45\n",
        "/etc/portd.toml:2:11: thresholds.warning: invalid type",
        &[],
    );
}

#[test]
fn error_display_is_one_line_per_diagnostic() {
    let error = parse(path(), THREE_ERRORS).unwrap_err();
    assert_eq!(error.to_string().lines().count(), 3);
    let error = parse(path(), "[widen]\nprotected = [\"1\\n2\"]\n").unwrap_err();
    assert_eq!(error.to_string().lines().count(), 1);
}

// --- reading files: existence, ownership and mode

fn policy_file(text: &str, mode: u32) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    fs::set_permissions(file.path(), Permissions::from_mode(mode)).unwrap();
    file
}

#[test]
fn load_reads_a_safe_file() {
    let file = policy_file("[widen]\nmode = \"advise\"\n", 0o644);
    assert_eq!(load(file.path()).unwrap().mode, Mode::Advise);
    assert!(load_or_default(file.path()).unwrap().1);
}

#[test]
fn a_policy_over_the_size_limit_says_the_limit_and_what_to_do() {
    let comment: String = (0..20_000)
        .map(|i| format!("# note {i}: why this host's proxy needs what it needs\n"))
        .collect();
    let file = policy_file(&format!("{comment}[widen]\nmode = \"advise\"\n"), 0o644);
    let error = load(file.path()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}: the policy file is ", file.path().display()))
            && error.contains("more than the 1048576 (1 MiB) portd reads")
            && error.contains("comment"),
        "{error}"
    );
    let just_under = policy_file(&" ".repeat(1024 * 1024), 0o644);
    assert_eq!(load(just_under.path()).unwrap(), Policy::default());
}

#[test]
fn missing_file_gives_the_defaults_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("portd.toml");
    assert_eq!(load_or_default(&missing), Ok((Policy::default(), false)));
    let error = load(&missing).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}: cannot read", missing.display())),
        "{error}"
    );
}

#[test]
fn load_reports_errors_with_the_real_path() {
    let file = policy_file("[widen]\nfloor = 0\n", 0o600);
    let error = load(file.path()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:2:9: ", file.path().display())),
        "{error}"
    );
}

#[test]
fn world_or_group_writable_file_is_refused_with_the_fix() {
    for mode in [0o666, 0o646, 0o664] {
        let file = policy_file("", mode);
        let error = load(file.path()).unwrap_err();
        assert_eq!(error.diagnostics.len(), 1);
        let line = error.to_string();
        assert!(line.contains(&format!("mode {mode:04o}")), "{line}");
        assert!(
            line.ends_with(&format!("fix: chmod go-w {}", file.path().display())),
            "{line}"
        );
    }
}

#[test]
fn file_of_another_user_is_refused_with_the_fix() {
    let file = policy_file("", 0o644);
    let mut owner = file.as_file().metadata().unwrap().uid();
    if owner == 0 {
        // Root owns everything it creates; hand the file to nobody.
        std::os::unix::fs::chown(file.path(), Some(65534), None).unwrap();
        owner = 65534;
    }
    let metadata = fs::metadata(file.path()).unwrap();
    let error = check_file_safety(file.path(), &metadata, owner + 1).unwrap_err();
    assert_eq!(error.diagnostics.len(), 1);
    let line = error.to_string();
    assert!(line.contains(&format!("owned by uid {owner}")), "{line}");
    assert!(
        line.ends_with(&format!("fix: chown root: {}", file.path().display())),
        "{line}"
    );
    // The same file is fine for its owner.
    assert!(check_file_safety(file.path(), &metadata, owner).is_ok());
}

#[test]
fn root_owned_file_is_fine_for_any_user() {
    let file = policy_file("", 0o644);
    let metadata = fs::metadata(file.path()).unwrap();
    if metadata.uid() == 0 {
        assert!(check_file_safety(file.path(), &metadata, 1000).is_ok());
    }
}

#[test]
fn fix_commands_quote_odd_paths() {
    assert_eq!(shell_quote(Path::new("/etc/portd.toml")), "/etc/portd.toml");
    assert_eq!(
        shell_quote(Path::new("/tmp/my file's")),
        r"'/tmp/my file'\''s'"
    );
}

#[test]
fn non_utf8_file_points_at_the_bad_byte() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"[poll]\ninterval = \"1\xffs\"\n").unwrap();
    fs::set_permissions(file.path(), Permissions::from_mode(0o644)).unwrap();
    let error = load(file.path()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("{}:2:14: ", file.path().display())),
        "{error}"
    );
    assert!(error.contains("UTF-8"), "{error}");
}

// --- arbitrary input: never a panic, always an error with its place

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    /// Fragments of policy files, so that generated text reaches the
    /// sections, keys and values and not only the TOML syntax errors.
    fn fragment() -> impl Strategy<Value = String> {
        let sections = prop_oneof![
            Just("[poll]"),
            Just("[thresholds]"),
            Just("[widen]"),
            Just("[persist]"),
            Just("[alerts]"),
            Just("[metrics]"),
            Just("[[widen]]"),
            Just("[poll.x]"),
        ];
        let keys = prop_oneof![
            Just("interval".to_string()),
            Just("max_staleness".to_string()),
            Just("warning".to_string()),
            Just("critical".to_string()),
            Just("clear".to_string()),
            Just("hold".to_string()),
            Just("tcp_pool".to_string()),
            Just("mode".to_string()),
            Just("floor".to_string()),
            Just("ceiling".to_string()),
            Just("target".to_string()),
            Just("cooldown".to_string()),
            Just("max_changes_per_hour".to_string()),
            Just("protected".to_string()),
            Just("enabled".to_string()),
            Just("file".to_string()),
            Just("reminder".to_string()),
            Just("poll.interval".to_string()),
            "[a-z_]{1,8}",
        ];
        let values = prop_oneof![
            Just("\"10s\"".to_string()),
            Just("\"1ns\"".to_string()),
            Just("\"auto\"".to_string()),
            Just("[8080, \"9000-9100\", \"x\"]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("\"/var/lib/portd/state.json\"".to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| format!("{s:?}")),
            ".{0,12}",
        ];
        prop_oneof![
            sections.prop_map(str::to_string),
            (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
            ".{0,20}",
        ]
    }

    fn check(text_len: usize, lines: usize, result: Result<Policy, PolicyError>) {
        let Err(error) = result else { return };
        assert!(!error.diagnostics.is_empty());
        for d in &error.diagnostics {
            let place = d.position.expect("every diagnostic names its place");
            assert!(place.line >= 1 && place.line <= lines + 1, "{d}");
            assert!(place.column >= 1 && place.column <= text_len + 1, "{d}");
            assert!(d.to_string().starts_with(&format!(
                "/etc/portd.toml:{}:{}: ",
                place.line, place.column
            )));
        }
        let shown = error.to_string();
        assert_eq!(
            shown.lines().count(),
            error.diagnostics.len() + usize::from(error.omitted > 0),
            "{shown}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_and_errors_name_the_place(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            let len = bytes.len();
            check(len, lines, parse_bytes(path(), bytes));
        }

        #[test]
        fn arbitrary_text_never_panics_and_errors_name_the_place(text in any::<String>()) {
            check(text.chars().count(), text.matches('\n').count(), parse(path(), &text));
        }

        #[test]
        fn policy_like_text_never_panics_and_errors_name_the_place(
            fragments in proptest::collection::vec(fragment(), 0..24)
        ) {
            let text = fragments.join("\n");
            check(text.chars().count(), text.matches('\n').count(), parse(path(), &text));
        }
    }
}

#[test]
fn only_the_default_policy_path_may_be_absent() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("portd.toml");
    let (policy, found) = super::load_configured(&missing, false).unwrap();
    assert_eq!((policy, found), (Policy::default(), false));
    // Given with --config (at start, and at every reload): an error naming it.
    let e = super::load_configured(&missing, true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: the policy file given with --config does not exist; only the default /etc/portd.toml may be absent (the built-in defaults then apply): give an existing file, or leave --config out",
            missing.display()
        )
    );
    std::fs::write(&missing, "").unwrap();
    assert!(super::load_configured(&missing, true).unwrap().1);
}

#[test]
fn namespaces_select_nothing_and_advise_by_default() {
    let policy = parse(path(), "[namespaces]\n").unwrap();
    assert_eq!(policy.namespaces, crate::policy::NamespacePolicy::default());
    assert_eq!(policy.namespaces.mode, Mode::Advise);
    assert!(policy.namespaces.select.is_empty());
}

#[test]
fn namespaces_selectors_are_read_in_order() {
    let policy = parse(
        path(),
        "[namespaces]\nmode = \"auto\"\nselect = [\"netns:blue\", \"pod:shop/*\", \"pod_namespace:shop\", \"container:api-?\"]\n",
    )
    .unwrap();
    assert_eq!(policy.namespaces.mode, Mode::Auto);
    let shown: Vec<String> = policy
        .namespaces
        .select
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "netns:blue",
            "pod:shop/*",
            "pod_namespace:shop",
            "container:api-?"
        ]
    );
}

#[test]
fn every_bad_selector_is_reported_with_its_place_and_what_is_accepted() {
    let errors =
        errors("[namespaces]\nmode = \"yes\"\nselect = [\"blue\", \"host:x\", \"netns:\", 7]\n");
    assert_eq!(
        errors,
        [
            "/etc/portd.toml:2:8: namespaces.mode: unknown mode \"yes\"; use \"auto\" (widen the \
             range within the bounds) or \"advise\" (alert only, never write)",
            "/etc/portd.toml:3:11: namespaces.select: \"blue\": no KIND: before the pattern; \
             write \"KIND:PATTERN\" with KIND one of netns, pod, pod_namespace, container",
            "/etc/portd.toml:3:19: namespaces.select: \"host:x\": unknown kind \"host\"; use one \
             of netns, pod, pod_namespace, container (\"netns:blue\")",
            "/etc/portd.toml:3:29: namespaces.select: \"netns:\": the pattern is empty or holds a \
             space or a character other than printable ASCII; use the name, or a glob with * and ?",
            "/etc/portd.toml:3:39: namespaces.select: invalid type: integer `7`, expected \
             \"KIND:PATTERN\" with KIND one of netns, pod, pod_namespace, container, such as \
             \"netns:blue\" or \"pod:shop/checkout-*\"",
        ],
        "{errors:#?}"
    );
}

#[test]
fn namespaces_select_must_be_a_list() {
    one_error(
        "[namespaces]\nselect = \"netns:blue\"\n",
        "/etc/portd.toml:2:10: namespaces.select: invalid type: ",
        &["expected a list of selectors"],
    );
}
