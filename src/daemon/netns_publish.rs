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
            container: w.ns.identity.container(),
            pod: w.ns.identity.pod.clone(),
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
/// measured, worst first.
pub(super) fn metrics_rows(list: &[&Watched], watched: usize, censuses: u64) -> metrics::NetnsRows {
    let top = list
        .iter()
        .copied()
        .filter(|w| measured(w))
        .take(TOP_NAMESPACES)
        .map(|w| metrics::NetnsRow {
            inode: w.ns.inode,
            container: w.ns.identity.container().unwrap_or_default(),
            pod: w
                .ns
                .identity
                .pod
                .clone()
                .or_else(|| w.ns.identity.pod_uid.clone())
                .unwrap_or_default(),
            usage: usage_of(w),
            used: w.last.as_ref().map_or(0, |l| l.usage.headline.used),
            level: w.alert.level,
            time_to_exhaustion: w.time_to_exhaustion(),
        })
        .collect();
    metrics::NetnsRows {
        top,
        watched,
        censuses,
    }
}
