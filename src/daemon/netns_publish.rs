//! What the watch over the other network namespaces publishes: the
//! namespaces in the live view, worst first, and the `portd_netns_*`
//! families of the metrics file, bounded to the worst few.

use super::Published;
use crate::judge::netns::{Known, TOP_NAMESPACES, Watched, measured, ordered, usage_of};
use crate::publish::live;
use crate::publish::metrics;

pub(super) fn publish(known: &Known, note: Option<String>, censuses: u64) -> Published {
    let list = ordered(known);
    let namespaces = list
        .iter()
        .take(live::NAMESPACES_SHOWN)
        .map(|w| live::Namespace {
            inode: w.ns.inode,
            label: w.ns.label.clone(),
            container: w.ns.identity.container(),
            pod: w.ns.identity.pod.clone(),
            enter: w.ns.enter.clone(),
            level: measured(w).then_some(w.alert.level),
            headline: w.last.as_ref().map(|l| live::Headline {
                usage: l.usage.headline.usage.fraction(),
                used: l.usage.headline.used,
                capacity: l.usage.headline.capacity,
                cause: l.usage.headline.cause.to_string(),
                level: Some(w.alert.level),
            }),
            bound: w.quiet.map(|q| {
                format!(
                    "at most {} of {} ports towards any destination ({}; sockstat, no census)",
                    q.bound, q.capacity, q.usage
                )
            }),
            advice: w.advice.clone(),
        })
        .collect();
    Published {
        namespaces,
        metrics: metrics_text(&list, known.len(), censuses),
        note,
    }
}

/// `portd_netns_*`: the top [`TOP_NAMESPACES`] of those measured,
/// labelled `netns`, `container`, `pod` (never `namespace`, never a pid).
pub(super) fn metrics_text(list: &[&Watched], watched: usize, censuses: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let top: Vec<&Watched> = list
        .iter()
        .copied()
        .filter(|w| measured(w))
        .take(TOP_NAMESPACES)
        .collect();
    let labels = |w: &Watched| {
        format!(
            "{{netns=\"net:[{}]\",container=\"{}\",pod=\"{}\"}}",
            w.ns.inode,
            metrics::label(&w.ns.identity.container().unwrap_or_default()),
            metrics::label(
                w.ns.identity
                    .pod
                    .as_deref()
                    .or(w.ns.identity.pod_uid.as_deref())
                    .unwrap_or_default()
            )
        )
    };
    let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&Watched) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for w in &top {
            let _ = writeln!(out, "{name}{} {}", labels(w), f(w));
        }
    };
    family(
        "portd_netns_usage_ratio",
        "gauge",
        "Worst destination or pool usage in another network namespace (0-1): its last census, or the bound its counters give when none was needed (top 20 namespaces).",
        &usage_of,
    );
    family(
        "portd_netns_used_ports",
        "gauge",
        "Ports in use by the worst destination or pool of another network namespace at its last census (0 without one).",
        &|w| {
            w.last
                .as_ref()
                .map_or(0.0, |l| l.usage.headline.used as f64)
        },
    );
    family(
        "portd_netns_alert_level",
        "gauge",
        "Confirmed level of another network namespace (hold and hysteresis applied): 0 ok, 1 warning, 2 critical.",
        &|w| f64::from(w.alert.level.exit_code()),
    );
    let _ = writeln!(
        out,
        "# HELP portd_netns_watched Other network namespaces portd watches.\n# TYPE portd_netns_watched gauge\nportd_netns_watched {watched}"
    );
    let _ = writeln!(
        out,
        "# HELP portd_netns_censuses_total Censuses of other network namespaces since portd started.\n# TYPE portd_netns_censuses_total counter\nportd_netns_censuses_total {censuses}"
    );
    out
}
