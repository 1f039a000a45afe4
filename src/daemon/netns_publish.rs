//! What the watch over the other network namespaces publishes: the
//! namespaces in the live view, worst first, and the `portd_netns_*`
//! rows of the metrics file, bounded to the worst few.

use super::Published;
use crate::judge::netns::{Known, TOP_NAMESPACES, Watched, measured, ordered, usage_of};
use crate::publish::live;
use crate::publish::metrics;

pub(super) fn publish(known: &Known, note: Option<String>, censuses: u64) -> Published {
    let list = ordered(known);
    let namespaces = list
        .iter()
        .take(live::NAMESPACES_SHOWN)
        .map(|w| live::NamespaceView {
            inode: w.ns.inode,
            label: w.ns.label.clone(),
            container: w.ns.identity.container_label(),
            pod: w.ns.identity.pod_label(),
            pod_namespace: w.ns.identity.pod_namespace.clone(),
            enter: w.ns.enter.clone(),
            level: measured(w).then_some(w.alert.level),
            headline: w.last.as_ref().map(|l| live::HeadlineView {
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
            time_to_exhaustion_seconds: w.time_to_exhaustion(),
        })
        .collect();
    Published {
        namespaces,
        metrics: Some(metrics_rows(&list, known.len(), censuses)),
        note,
    }
}

/// The rows of `portd_netns_*`: the top [`TOP_NAMESPACES`] of those
/// measured, worst first, and the worst of the rest in one `other` row.
pub(super) fn metrics_rows(list: &[&Watched], watched: usize, censuses: u64) -> metrics::NetnsRows {
    let used = |w: &Watched| w.last.as_ref().map_or(0, |l| l.usage.headline.used);
    let measured: Vec<&Watched> = list.iter().copied().filter(|w| measured(w)).collect();
    let (top, rest) = measured.split_at(measured.len().min(TOP_NAMESPACES));
    let top = top
        .iter()
        .map(|w| {
            let id = &w.ns.identity;
            metrics::NetnsRow {
                inode: w.ns.inode,
                container: id.container_label().unwrap_or_default(),
                pod: id.pod_label().unwrap_or_default(),
                pod_namespace: id.pod_namespace.clone().unwrap_or_default(),
                usage: usage_of(w),
                used: used(w),
                level: w.alert.level,
                time_to_exhaustion: w.time_to_exhaustion(),
            }
        })
        .collect();
    let other = rest
        .iter()
        .map(|w| metrics::NetnsOther {
            usage: usage_of(w),
            used: used(w),
            level: w.alert.level,
            time_to_exhaustion: w.time_to_exhaustion(),
        })
        .reduce(|a, b| metrics::NetnsOther {
            usage: a.usage.max(b.usage),
            used: a.used.max(b.used),
            level: a.level.max(b.level),
            time_to_exhaustion: soonest(a.time_to_exhaustion, b.time_to_exhaustion),
        });
    metrics::NetnsRows {
        top,
        other,
        watched,
        censuses,
    }
}

/// The sooner of two times to exhaustion (`None`: not growing).
fn soonest(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
