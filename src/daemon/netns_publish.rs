//! What the watch over the other network namespaces publishes: the
//! namespaces in the live view, worst first, and the `portd_netns_*`
//! rows of the metrics file, bounded to the worst few.

use super::{Known, Published, TOP_NAMESPACES, Watched};
use crate::publish::live;
use crate::publish::metrics;

/// Worst first: the confirmed level, then the usage.
pub(super) fn ordered(known: &Known) -> Vec<&Watched> {
    let mut list: Vec<&Watched> = known.values().collect();
    list.sort_by(|a, b| {
        b.alert
            .level
            .cmp(&a.alert.level)
            .then(usage_of(b).total_cmp(&usage_of(a)))
            .then(a.ns.inode.cmp(&b.ns.inode))
    });
    list
}

/// The last census's headline usage, or the counters' bound.
pub(super) fn usage_of(w: &Watched) -> f64 {
    match (&w.last, &w.quiet) {
        (Some(l), _) => l.usage.headline.usage.fraction(),
        (None, Some(q)) => q.usage.fraction(),
        (None, None) => 0.0,
    }
}

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
        })
        .collect();
    Published {
        namespaces,
        metrics: Some(metrics_rows(&list, known.len(), censuses)),
        note,
    }
}

/// Its last census or its counters' bound is known.
pub(super) fn measured(w: &Watched) -> bool {
    w.last.is_some() || w.quiet.is_some()
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
        })
        .collect();
    metrics::NetnsRows {
        top,
        watched,
        censuses,
    }
}
