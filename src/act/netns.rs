//! The one writer inside other network namespaces (`[namespaces]`, mode
//! `auto`; docs/DESIGN.md, "Other network namespaces"): the range and
//! reserved ports of a selected namespace, written from a thread that
//! entered it with `setns` (the same thread as its census,
//! observe/netns/census.rs), so that `/proc/sys/net` is that namespace's.
//! The host's rules hold (docs/DESIGN.md, "Safety rules for actuation"):
//! the plan keeps the floor and ceiling and reserves listeners first
//! (`actuator::write_pair`: reserved ports, then the range, read back);
//! the first values are recorded (keyed by inode and identity) and saved
//! before the write; someone else's change makes portd yield there; and
//! `rollback` restores the namespaces that still exist. There is no
//! sysctl.d in another namespace: nothing is persisted.

use std::time::{Duration, SystemTime};

use crate::act::actuator::{self, ActuateError};
use crate::act::state::{NamespaceKey, NamespaceRecord, State, Values, Yield};
use crate::base::host::Host;
use crate::judge::planner::Plan;
use crate::observe::census::KernelSettings;
use crate::observe::netns::{self, Namespace, census};
use crate::policy::Policy;
use crate::policy::namespaces::Names;

/// What portd calls `ns` in its state.
pub fn key_of(ns: &Namespace) -> NamespaceKey {
    NamespaceKey {
        inode: ns.inode,
        names: ns.names.clone(),
        container_id: ns.identity.container_id.clone(),
        pod_uid: ns.identity.pod_uid.clone(),
        label: ns.label.clone(),
    }
}

/// The names `namespaces.select` matches `ns` by: its netns names, its
/// pod and the pod's namespace, and its container by the names its runtime
/// gives it (in a pod, each of its containers), the full id, the short id
/// and `RUNTIME:SHORT-ID`.
pub fn names_of(ns: &Namespace) -> Names {
    let id = &ns.identity;
    let container = id
        .containers
        .iter()
        .cloned()
        .chain(
            id.container_id
                .iter()
                .flat_map(|full| [full.clone(), full.chars().take(12).collect()]),
        )
        .chain(id.container())
        .collect();
    let pod_namespace = id.pod_namespace.clone().or_else(|| {
        id.pod
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .map(|(n, _)| n.to_string())
    });
    Names {
        netns: ns.names.clone(),
        pod: id.pod.clone(),
        pod_namespace,
        container,
    }
}

/// What a widening in another namespace came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Widening {
    /// The plan is in place.
    Widened,
    /// Someone else changed the values portd wrote there: portd stops
    /// writing there (until rollback), and says why once.
    Yielded(String),
    /// Not now, and why (a yield in force, the cooldown, the hourly cap,
    /// a range changed since the census).
    Held(String),
}

fn values(s: &KernelSettings) -> Values {
    Values {
        range: s.port_range,
        reserved: s.reserved_ports.clone(),
    }
}

/// A write recorded but never confirmed (portd stopped in between): the
/// live range says whether it happened. Reserved ports portd added and
/// that are not live were never added.
fn settle(r: &mut NamespaceRecord, live: &KernelSettings) {
    if let Some(p) = r.pending.take() {
        if p.range == live.port_range {
            r.last_written = Some(p);
        } else {
            r.added_reserved = r.added_reserved.intersection_of(&live.reserved_ports);
        }
    }
}

/// Someone else's change since portd's last write there.
fn changed_by_someone_else(r: &NamespaceRecord, live: &KernelSettings) -> Option<String> {
    let written = r.last_written.as_ref()?;
    if written.range != live.port_range {
        return Some(format!(
            "ip_local_port_range in {} changed from {} (written by portd) to {} by someone else",
            r.key.label, written.range, live.port_range
        ));
    }
    let missing = r.added_reserved.difference(&live.reserved_ports);
    (!missing.is_empty()).then(|| {
        format!(
            "ports portd reserved in {} ({missing}) were removed by someone else",
            r.key.label
        )
    })
}

/// The cooldown or the hourly cap of `[widen]`, counted per namespace.
fn waiting(r: &NamespaceRecord, policy: &Policy, now: SystemTime) -> Option<String> {
    let ago = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    let last = r.changes.last()?;
    if ago(last.at) < policy.cooldown {
        return Some(format!(
            "cooldown: the last change there was {}s ago",
            ago(last.at).as_secs()
        ));
    }
    let in_hour = r
        .changes
        .iter()
        .filter(|c| ago(c.at) < Duration::from_secs(3600))
        .count();
    (in_hour >= policy.max_changes_per_hour.get() as usize)
        .then(|| format!("{in_hour} changes there in the last hour"))
}

/// Whether portd may widen `ns` now, its record brought up to date with
/// the live values: `None` to go on, else the outcome.
fn may_widen(
    state: &mut State,
    key: &NamespaceKey,
    live: &KernelSettings,
    plan: &Plan,
    policy: &Policy,
    now: SystemTime,
) -> Option<Widening> {
    if let Some(r) = state
        .namespaces
        .iter_mut()
        .find(|r| r.key.inode == key.inode && r.key.same(key))
    {
        settle(r, live);
        if let Some(y) = &r.yielded {
            return Some(Widening::Held(format!("yielded: {}", y.reason)));
        }
        if let Some(reason) = changed_by_someone_else(r, live) {
            // The admin's values become the baseline, as on the host.
            r.last_written = Some(values(live));
            r.yielded = Some(Yield {
                at: now,
                reason: reason.clone(),
            });
            return Some(Widening::Yielded(reason));
        }
        if let Some(why) = waiting(r, policy, now) {
            return Some(Widening::Held(why));
        }
    }
    (plan.from != live.port_range).then(|| {
        Widening::Held(format!(
            "the range is {} now, not the {} the plan started from",
            live.port_range, plan.from
        ))
    })
}

/// Widens `ns` by `plan`: its live values read from inside it, the record
/// saved before the write, the write from a thread inside it, then the
/// record confirmed. A state that cannot be saved stops the write; a
/// failed write withdraws the record. The caller saves `state` after
/// any outcome (a yield is recorded).
pub fn widen(
    host: &Host,
    state: &mut State,
    ns: &Namespace,
    plan: &Plan,
    policy: &Policy,
    now: SystemTime,
    reason: &str,
) -> Result<Widening, ActuateError> {
    let outside = |e: String| ActuateError::Invalid(format!("{}: {e}", ns.label));
    let live = census::settings(host, ns).map_err(outside)?;
    let key = key_of(ns);
    if let Some(outcome) = may_widen(state, &key, &live, plan, policy, now) {
        return Ok(outcome);
    }
    let before = state.clone();
    state.record_namespace_widening(key, values(&live), plan, now, reason);
    if let Err(e) = state.save(host) {
        *state = before;
        return Err(ActuateError::Record(e));
    }
    let written = census::within(host, ns, |view| {
        let current = KernelSettings::read(view).map_err(|e| e.to_string())?;
        if current.port_range != live.port_range {
            return Err(format!(
                "the range changed to {} while portd was about to write",
                current.port_range
            ));
        }
        actuator::write_pair(view, &current, plan.to, &plan.reserved).map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        *state = before;
        let _ = state.save(host);
        return Err(outside(e));
    }
    state.confirm_namespace(ns.inode);
    Ok(Widening::Widened)
}

/// `portd rollback` for the other namespaces: each recorded one that still
/// exists (the same inode and identity) gets its first range back and
/// portd's reserved ports removed, from a thread inside it; those gone are
/// named and forgotten. A namespace whose values are no longer portd's is
/// refused (kept for a later `--force`). Returns what was done and what
/// was refused or failed.
pub fn rollback(host: &Host, state: &mut State, force: bool) -> (Vec<String>, Vec<String>) {
    let (present, _) = netns::all(host);
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let mut kept = Vec::new();
    for mut r in std::mem::take(&mut state.namespaces) {
        let label = format!("{} (net:[{}])", r.key.label, r.key.inode);
        let Some(ns) = present.iter().find(|ns| r.key.same(&key_of(ns))) else {
            done.push(format!(
                "{label} is gone: nothing to restore there (its range went with it)"
            ));
            continue;
        };
        match census::within(host, ns, |view| restore(view, &mut r, force)) {
            Ok(lines) => done.extend(lines.into_iter().map(|l| format!("{label}: {l}"))),
            Err(e) => {
                failed.push(format!("{label}: {e}"));
                kept.push(r);
            }
        }
    }
    state.namespaces = kept;
    (done, failed)
}

/// Inside the namespace: the range narrowed back first, then portd's
/// reserved ports removed (so no port is ever in the range and
/// unreserved that was not before).
fn restore(view: &Host, r: &mut NamespaceRecord, force: bool) -> Result<Vec<String>, String> {
    let live = KernelSettings::read(view).map_err(|e| e.to_string())?;
    settle(r, &live);
    let changed = r
        .yielded
        .as_ref()
        .map(|y| y.reason.clone())
        .or_else(|| changed_by_someone_else(r, &live));
    if let Some(reason) = changed
        && !force
    {
        return Err(format!(
            "refusing to roll back: {reason}; use --force to restore {} anyway",
            r.original.range
        ));
    }
    let mut done = Vec::new();
    if live.port_range != r.original.range {
        actuator::write_range(view, r.original.range).map_err(|e| e.to_string())?;
        // Recorded at once: should the next step fail, a second rollback
        // takes the live range for portd's, not for someone else's.
        if let Some(w) = &mut r.last_written {
            w.range = r.original.range;
        }
        done.push(format!(
            "restored ip_local_port_range {} -> {}",
            live.port_range, r.original.range
        ));
    }
    let reserved = live.reserved_ports.difference(&r.added_reserved);
    if reserved != live.reserved_ports {
        actuator::write_reserved(view, &reserved).map_err(|e| e.to_string())?;
        done.push(format!(
            "removed portd's reserved ports {}",
            r.added_reserved
        ));
    }
    if done.is_empty() {
        done.push("the live values were already the original ones".into());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::state::Change;
    use crate::base::ports::{PortRange, PortSet, Ratio};

    fn range(low: u16, high: u16) -> PortRange {
        PortRange::new(low, high).unwrap()
    }

    fn settings(r: PortRange, reserved: &str) -> KernelSettings {
        KernelSettings {
            port_range: r,
            reserved_ports: PortSet::parse(reserved).unwrap(),
            unprivileged_port_start: 1024,
            tcp_tw_reuse: crate::base::kernel::TwReuse::Off,
            tcp_timestamps: true,
        }
    }

    fn key() -> NamespaceKey {
        NamespaceKey {
            inode: 4026532242,
            names: vec!["sel".into()],
            container_id: None,
            pod_uid: None,
            label: "netns sel".into(),
        }
    }

    fn plan(from: PortRange, to: PortRange) -> Plan {
        Plan {
            from,
            to,
            reserved: PortSet::parse("40030").unwrap(),
            newly_reserved: PortSet::parse("40030").unwrap(),
            expected_usage: Ratio::from_percent(25.0).unwrap(),
            reaches_target: true,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A state in which portd widened `sel` 40000-40019 -> 40000-40059
    /// (reserving 40030) at 1000 s.
    fn widened_once() -> State {
        let mut s = State::default();
        let found = settings(range(40000, 40019), "");
        let p = plan(range(40000, 40019), range(40000, 40059));
        s.record_namespace_widening(key(), values(&found), &p, at(1000), "busy");
        s.confirm_namespace(key().inode);
        s
    }

    fn policy() -> Policy {
        Policy {
            cooldown: Duration::from_secs(300),
            ..Policy::default()
        }
    }

    #[test]
    fn a_first_widening_may_go_when_the_plan_starts_from_the_live_range() {
        let mut s = State::default();
        let live = settings(range(40000, 40019), "");
        let p = plan(range(40000, 40019), range(40000, 40059));
        assert_eq!(may_widen(&mut s, &key(), &live, &p, &policy(), at(0)), None);
        let moved = settings(range(40000, 40029), "");
        assert!(matches!(
            may_widen(&mut s, &key(), &moved, &p, &policy(), at(0)),
            Some(Widening::Held(why)) if why.contains("40000-40029")
        ));
    }

    #[test]
    fn someone_elses_range_makes_portd_yield_there_and_stay_yielded() {
        let mut s = widened_once();
        let admin = settings(range(40000, 40499), "40030");
        let p = plan(range(40000, 40499), range(40000, 40999));
        let first = may_widen(&mut s, &key(), &admin, &p, &policy(), at(5000));
        assert!(
            matches!(&first, Some(Widening::Yielded(why)) if why.contains("changed from 40000-40059 (written by portd) to 40000-40499")),
            "{first:?}"
        );
        let r = s.namespace(key().inode).unwrap();
        assert_eq!(
            r.last_written.as_ref().map(|w| w.range),
            Some(range(40000, 40499))
        );
        assert_eq!(
            r.original.range,
            range(40000, 40019),
            "rollback still knows"
        );
        assert!(matches!(
            may_widen(&mut s, &key(), &admin, &p, &policy(), at(6000)),
            Some(Widening::Held(why)) if why.starts_with("yielded: ")
        ));
        assert!(s.clear_yields());
        assert_eq!(
            may_widen(&mut s, &key(), &admin, &p, &policy(), at(6000)),
            None
        );
    }

    #[test]
    fn removed_reservations_are_someone_elses_change_too() {
        let mut s = widened_once();
        let live = settings(range(40000, 40059), "");
        let p = plan(range(40000, 40059), range(40000, 40099));
        assert!(matches!(
            may_widen(&mut s, &key(), &live, &p, &policy(), at(5000)),
            Some(Widening::Yielded(why)) if why.contains("(40030) were removed")
        ));
    }

    #[test]
    fn the_cooldown_and_the_hourly_cap_count_per_namespace() {
        let mut s = widened_once();
        let live = settings(range(40000, 40059), "40030");
        let p = plan(range(40000, 40059), range(40000, 40099));
        assert!(matches!(
            may_widen(&mut s, &key(), &live, &p, &policy(), at(1100)),
            Some(Widening::Held(why)) if why.starts_with("cooldown")
        ));
        let r = &mut s.namespaces[0];
        r.changes = (0..4)
            .map(|i| Change {
                at: at(1000 + i * 400),
                from: range(40000, 40019),
                to: range(40000, 40059),
                reserved_added: PortSet::new(),
                reason: String::new(),
            })
            .collect();
        assert!(matches!(
            may_widen(&mut s, &key(), &live, &p, &policy(), at(2800)),
            Some(Widening::Held(why)) if why.contains("4 changes there in the last hour")
        ));
        assert_eq!(
            may_widen(&mut s, &key(), &live, &p, &policy(), at(10_000)),
            None
        );
    }

    #[test]
    fn a_write_recorded_before_a_crash_is_settled_by_the_live_range() {
        let mut s = State::default();
        let found = settings(range(40000, 40019), "");
        let p = plan(range(40000, 40019), range(40000, 40059));
        s.record_namespace_widening(key(), values(&found), &p, at(1000), "busy");
        let mut written = s.clone();
        settle(
            &mut written.namespaces[0],
            &settings(range(40000, 40059), "40030"),
        );
        let r = &written.namespaces[0];
        assert_eq!(
            (r.pending.clone(), r.last_written.as_ref().map(|w| w.range)),
            (None, Some(range(40000, 40059)))
        );
        settle(&mut s.namespaces[0], &found);
        let r = &s.namespaces[0];
        assert_eq!((r.pending.clone(), r.last_written.clone()), (None, None));
        assert!(r.added_reserved.is_empty(), "never reserved");
    }

    /// A pod's namespace as the names engineer's identity gives it: the pod,
    /// its Kubernetes namespace and its containers' names select it.
    #[test]
    fn a_pod_is_selected_by_its_namespace_its_name_and_its_containers_names() {
        use crate::observe::netns::identity::Identity;
        use crate::policy::Mode;
        use crate::policy::namespaces::{NamespacePolicy, Selector};
        let ns = Namespace {
            inode: 4026532291,
            pid: Some(4242),
            comm: Some("envoy".into()),
            processes: 3,
            names: Vec::new(),
            own: false,
            identity: Identity {
                container_id: Some("ab".repeat(32)),
                pod: Some("shop/checkout-7f9c".into()),
                pod_namespace: Some("shop".into()),
                pod_name: Some("checkout-7f9c".into()),
                containers: vec!["envoy".into(), "app".into()],
                ..Identity::default()
            },
            label: "pod shop/checkout-7f9c".into(),
            enter: String::new(),
        };
        let names = names_of(&ns);
        let selects = |text: &str| {
            NamespacePolicy {
                mode: Mode::Auto,
                select: vec![Selector::parse(text).unwrap()],
            }
            .widens(&names)
            .is_some()
        };
        assert!(selects("pod_namespace:shop"));
        assert!(selects("pod:shop/checkout-*"));
        assert!(selects("container:envoy"));
        assert!(selects("container:abababababab"));
        assert!(!selects("container:redis"));
        assert!(!selects("pod_namespace:kube-system"));
    }
}
