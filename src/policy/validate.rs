//! From the raw file to the policy: defaults for what is missing, then the
//! relations between keys, each error blaming the key the file sets.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::diagnostics::DiagnosticReport;
use super::raw::{
    Opt, RawAlerts, RawMetrics, RawNamespaces, RawPolicy, RawPoll, RawThresholds, RawWiden, Section,
};
use super::values::shown;
use super::values::{HumanDuration, Percent, ProtectedEntry, ProtectedList, SelectorValue};
use super::{Floor, NamespacePolicy, Policy, Thresholds};
use crate::base::ports::{Port, PortRange, Ratio};

fn value<T, U>(raw: &Opt<T>, convert: impl FnOnce(&T) -> U, default: U) -> U {
    raw.as_ref().map_or(default, |v| convert(v.get_ref()))
}

pub(super) fn validate(raw: RawPolicy, report: &mut DiagnosticReport<'_>) -> Policy {
    let RawPolicy {
        poll: Section(poll),
        thresholds: Section(thresholds),
        widen: Section(widen),
        persist: Section(persist),
        alerts: Section(alerts),
        metrics: Section(metrics),
        namespaces: Section(namespaces),
    } = raw;
    let d = Policy::default();
    let duration = |v: &HumanDuration| v.0;

    check_durations(report, &poll, &alerts);
    check_metrics_file(report, &metrics);
    let (levels, target) = percentages(report, &thresholds, &widen);
    let (floor, ceiling) = bounds(report, &widen);
    let protected = match &widen.protected {
        Some(list) => protected_ranges(report, list.get_ref()),
        None => d.protected.clone(),
    };

    Policy {
        interval: value(&poll.interval, duration, d.interval),
        max_staleness: value(&poll.max_staleness, duration, d.max_staleness),
        thresholds: levels,
        hold: value(&thresholds.hold, duration, d.hold),
        tcp_pool_alerts: value(&thresholds.tcp_pool, |f| f.0, d.tcp_pool_alerts),
        mode: value(&widen.mode, |m| m.0, d.mode),
        floor,
        ceiling,
        target,
        cooldown: value(&widen.cooldown, duration, d.cooldown),
        max_changes_per_hour: value(&widen.max_changes_per_hour, |n| n.0, d.max_changes_per_hour),
        protected,
        persist: value(&persist.enabled, |f| f.0, d.persist),
        dropin_name: value(&persist.file, |n| n.0.clone(), d.dropin_name),
        reminder: value(&alerts.reminder, duration, d.reminder),
        metrics_file: value(&metrics.file, |m| m.0.clone(), d.metrics_file),
        namespaces: namespace_policy(report, &namespaces),
    }
}

/// `[namespaces]`: advise and nothing selected unless the file says so;
/// every bad selector reported with its place.
fn namespace_policy(report: &mut DiagnosticReport<'_>, raw: &RawNamespaces) -> NamespacePolicy {
    let d = NamespacePolicy::default();
    let mut select = Vec::new();
    for entry in raw.select.as_ref().map_or(&[][..], |l| &l.get_ref().0) {
        match &entry.get_ref().0 {
            Ok(SelectorValue(s)) => select.push(s.clone()),
            Err(message) => {
                report.error(Some(entry.span()), format!("namespaces.select: {message}"))
            }
        }
    }
    NamespacePolicy {
        mode: value(&raw.mode, |m| m.0, d.mode),
        select,
    }
}

/// `metrics.file` must not name a file portd or the kernel keeps.
fn check_metrics_file(report: &mut DiagnosticReport<'_>, metrics: &RawMetrics) {
    if let Some(metrics_file) = &metrics.file
        && let Some(path) = &metrics_file.get_ref().0
        && let Some(owner) = portd_file(path, report.path)
    {
        report.error(
            Some(metrics_file.span()),
            format!(
                "metrics.file: {} is {owner}; portd would overwrite it with metrics. \
                 Use a file of its own, such as \"/run/portd/metrics.prom\"",
                shown(&path.display().to_string())
            ),
        );
    }
}

/// The alert thresholds and the widening target, and their order. Each
/// broken relation is reported against the key the file sets; the
/// [`Thresholds`] constructor then holds the same rules for every caller.
fn percentages(
    report: &mut DiagnosticReport<'_>,
    thresholds: &RawThresholds,
    widen: &RawWiden,
) -> (Thresholds, Ratio) {
    let d = Policy::default();
    let warning = PercentKey::new(
        "thresholds.warning",
        &thresholds.warning,
        d.thresholds.warning(),
    );
    let critical = PercentKey::new(
        "thresholds.critical",
        &thresholds.critical,
        d.thresholds.critical(),
    );
    let clear = PercentKey::new("thresholds.clear", &thresholds.clear, d.thresholds.clear());
    let target = PercentKey::new("widen.target", &widen.target, d.target);
    check_order(
        report,
        &clear,
        &warning,
        Order::Below,
        "an alert clears only when usage falls below clear",
    );
    check_order(
        report,
        &warning,
        &critical,
        Order::AtMost,
        "a level is warning before it is critical",
    );
    check_order(
        report,
        &target,
        &warning,
        Order::Below,
        "widening must bring usage below the warning level",
    );
    // Refused only when a problem was reported above, and then the
    // policy is refused with it: the defaults stand in.
    let levels =
        Thresholds::new(warning.ratio, critical.ratio, clear.ratio).unwrap_or(d.thresholds);
    (levels, target.ratio)
}

/// `widen.floor` and `widen.ceiling`: the floor at most the ceiling.
fn bounds(report: &mut DiagnosticReport<'_>, widen: &RawWiden) -> (Floor, Port) {
    let d = Policy::default();
    let floor = value(&widen.floor, |f| f.0, d.floor);
    let ceiling = value(&widen.ceiling, |c| c.0, d.ceiling);
    if let (Some(raw_floor), Floor::Port(low)) = (&widen.floor, floor)
        && low > ceiling.get()
        && !report.is_dropped("widen.ceiling")
    {
        report.error(
            Some(raw_floor.span()),
            format!(
                "widen.floor: floor {low} is above widen.ceiling ({ceiling}); \
                 the floor must be at most the ceiling"
            ),
        );
    }
    (floor, ceiling)
}

/// Shortest poll interval: shorter only burns CPU (each poll reads /proc).
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Shortest reminder: a shorter one repeats the alert on every census.
pub const REMINDER_MIN: Duration = Duration::from_secs(1);

/// The floors of the durations, and their relations: a full census at
/// least every `max_staleness` is only possible at a poll, so it is at
/// least `poll.interval`; a reminder more often than the polls that
/// could send it means every poll.
fn check_durations(report: &mut DiagnosticReport<'_>, poll: &RawPoll, alerts: &RawAlerts) {
    let d = Policy::default();
    let interval = value(&poll.interval, |v| v.0, d.interval);
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if let Some(raw) = &poll.interval
        && raw.get_ref().0 < INTERVAL_MIN
    {
        report.error(
            Some(raw.span()),
            format!(
                "poll.interval: {} is below the minimum, {}; a shorter interval only burns CPU \
                 (the shipped policy uses \"2s\")",
                show(raw.get_ref().0),
                show(INTERVAL_MIN)
            ),
        );
        report.dropped.push("poll.interval".to_string());
    }
    let interval_ok = !report.is_dropped("poll.interval");
    if let Some(raw) = &poll.max_staleness
        && interval_ok
        && raw.get_ref().0 < interval
    {
        report.error(
            Some(raw.span()),
            format!(
                "poll.max_staleness: {} is below poll.interval ({}); a census can only happen \
                 at a poll, so the minimum is the interval",
                show(raw.get_ref().0),
                show(interval)
            ),
        );
    }
    if let Some(raw) = &alerts.reminder {
        let reminder = raw.get_ref().0;
        let minimum = if interval_ok {
            REMINDER_MIN.max(interval)
        } else {
            REMINDER_MIN
        };
        if reminder < minimum {
            report.error(
                Some(raw.span()),
                format!(
                    "alerts.reminder: {} is below the minimum, {} (at least 1s and at least \
                     poll.interval); a shorter one repeats the alert on every census \
                     (the shipped policy uses \"1h\")",
                    show(reminder),
                    show(minimum)
                ),
            );
        }
    }
}

/// The entries of `widen.protected`, reporting every bad one.
fn protected_ranges(report: &mut DiagnosticReport<'_>, list: &ProtectedList) -> Vec<PortRange> {
    let mut ranges = Vec::with_capacity(list.0.len());
    for entry in &list.0 {
        match &entry.get_ref().0 {
            Ok(ProtectedEntry(range)) => ranges.push(*range),
            Err(message) => report.error(Some(entry.span()), format!("widen.protected: {message}")),
        }
    }
    ranges
}

/// What portd itself keeps at `path`, if anything: its state directory
/// (state, lock), its live view, the sysctl.d directories (its drop-in, and
/// files systemd-sysctl would apply), the policy, the temporary names of
/// its atomic writes, and the kernel's files.
fn portd_file(path: &Path, policy: &Path) -> Option<&'static str> {
    const OWN: &[(&str, &str)] = &[
        (
            "/var/lib/portd",
            "inside portd's state directory (state.json, the lock)",
        ),
        (
            "/etc/sysctl.d",
            "inside a sysctl.d directory (portd's drop-in, boot settings)",
        ),
        (
            "/run/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/usr/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/usr/local/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/lib/sysctl.d",
            "inside a sysctl.d directory (boot settings)",
        ),
        (
            "/etc/sysctl.conf",
            "the boot settings file /etc/sysctl.conf",
        ),
        ("/etc/portd.toml", "portd's policy file"),
        ("/proc", "a kernel file under /proc"),
        ("/sys", "a kernel file under /sys"),
        ("/dev", "a device under /dev"),
    ];
    let policy: PathBuf = policy.components().collect();
    if path == policy {
        return Some("this policy file");
    }
    if path == Path::new("/run/portd/live.json") {
        return Some("portd's live view, which status and check read");
    }
    if path == Path::new("/run/portd") {
        return Some("portd's runtime directory");
    }
    // fsutil's atomic writes go through `.NAME.portd-tmp-PID` beside NAME.
    if path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.contains(".portd-tmp-"))
    {
        return Some("the temporary name of a file portd writes atomically");
    }
    OWN.iter()
        .find(|(own, _)| path.starts_with(own))
        .map(|(_, what)| *what)
}

/// A percentage key with its effective value and, if the file sets it, its span.
struct PercentKey<'k> {
    key: &'k str,
    ratio: Ratio,
    span: Option<Range<usize>>,
}

impl<'k> PercentKey<'k> {
    fn new(key: &'k str, raw: &Opt<Percent>, default: Ratio) -> Self {
        PercentKey {
            key,
            ratio: value(raw, Percent::ratio, default),
            span: raw.as_ref().map(Spanned::span),
        }
    }

    fn shown(&self) -> String {
        // Round away the binary noise of `percent()`: 0.07 * 100 is 7.000000000000001.
        format!("{}%", (self.ratio.percent() * 1e9).round() / 1e9)
    }
}

enum Order {
    Below,
    AtMost,
}

/// Checks `lower < higher` (or `<=`) and blames the key the file sets:
/// `lower` if it sets both.
fn check_order(
    report: &mut DiagnosticReport<'_>,
    lower: &PercentKey<'_>,
    higher: &PercentKey<'_>,
    order: Order,
    why: &str,
) {
    if report.is_dropped(lower.key) || report.is_dropped(higher.key) {
        return;
    }
    let (holds, relation) = match order {
        Order::Below => (lower.ratio < higher.ratio, "below"),
        Order::AtMost => (lower.ratio <= higher.ratio, "at most"),
    };
    if holds {
        return;
    }
    let (blamed, relation, other) = match (&lower.span, &higher.span) {
        (Some(_), _) => (lower, relation, higher),
        (None, Some(_)) => (higher, inverse(relation), lower),
        (None, None) => return, // the defaults themselves satisfy every relation
    };
    report.error(
        blamed.span.clone(),
        format!(
            "{}: {} must be {relation} {} ({}); {why}",
            blamed.key,
            blamed.shown(),
            other.key,
            other.shown()
        ),
    );
}

fn inverse(relation: &str) -> &'static str {
    if relation == "below" {
        "above"
    } else {
        "at least"
    }
}
