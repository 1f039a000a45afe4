//! What the watch over the other network namespaces writes to the journal:
//! a namespace's alert, with where and how to set its range, and the end of
//! an alert whose namespace is gone.

use crate::judge::level::Level;
use crate::judge::planner::{Action, Decision};
use crate::observe::netns::Namespace;
use crate::observe::usage::Usage;
use crate::publish::events::Entry;

/// The sysctl the advice is about.
const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";

/// Where and how to set the range in `ns`: a pod's securityContext, a
/// container's `--sysctl`, a named namespace's `ip netns exec`.
pub(super) fn advice(ns: &Namespace, decision: &Decision) -> Option<String> {
    if decision.alert.level < Level::Warning {
        return None;
    }
    let plan = match &decision.action {
        Action::Hold { plan: Some(p), .. } | Action::Apply { plan: p } => p,
        Action::Hold { plan: None, reason } => {
            return Some(format!(
                "the range cannot be widened ({reason}): fewer connections towards the worst destination, or more destination addresses"
            ));
        }
        Action::Nothing => return None,
    };
    let value = format!("{} {}", plan.to.low(), plan.to.high());
    let reserve = if plan.newly_reserved.is_empty() {
        String::new()
    } else {
        format!(
            " (reserve its listeners first: net.ipv4.ip_local_reserved_ports={})",
            plan.reserved
        )
    };
    let id = &ns.identity;
    let r#where = if id.pod.is_some() || id.pod_uid.is_some() {
        format!(
            "in the pod's spec: securityContext.sysctls: [{{name: {RANGE_KEY}, value: \"{value}\"}}]"
        )
    } else if let Some(c) = id.container() {
        let runtime = c.split(':').next().unwrap_or("docker");
        let tool = if runtime == "podman" {
            "podman"
        } else {
            "docker"
        };
        format!(
            "when the container ({c}) is started: `{tool} run --sysctl {RANGE_KEY}=\"{value}\" ...` (compose: sysctls:)"
        )
    } else if let Some(name) = ns.names.first() {
        format!("`ip netns exec {name} sysctl -w {RANGE_KEY}=\"{value}\"`")
    } else if let Some(pid) = ns.pid {
        format!(
            "`nsenter -t {pid} -n sysctl -w {RANGE_KEY}=\"{value}\"` (lost with the namespace: set it where it is created)"
        )
    } else {
        return None;
    };
    Some(format!(
        "set {RANGE_KEY} to \"{value}\" (was {}){reserve} {where}; portd writes nothing in other namespaces, and /etc/sysctl.d applies only to the host's",
        plan.from
    ))
}

/// The journal entry for a change of a namespace's confirmed level.
pub(super) fn alert(ns: &Namespace, usage: &Usage, d: &Decision, advice: Option<&str>) {
    if let Some(entry) = Entry::namespace_level(ns, usage, d, advice) {
        entry.emit();
    }
}

/// A namespace that had a raised alert and is gone: its process exited (or
/// its name was deleted) and discovery no longer finds it.
pub(in super::super) struct Gone {
    pub ns: Namespace,
    pub level: Level,
    /// Its last census, when it had one.
    pub usage: Option<Usage>,
}

/// The journal entry that closes the alert of a namespace that is gone: no
/// recovery follows, and its reminders stop.
pub(super) fn gone(g: &Gone) {
    Entry::namespace_gone(&g.ns, g.level, g.usage.as_ref()).emit();
}
