//! The advice for another namespace whose alert is raised: what to set its
//! range to and where (a pod's spec, a container's start, a named
//! namespace, its process). portd writes nothing in other namespaces.

use crate::judge::level::Level;
use crate::judge::planner::{Action, Decision};
use crate::observe::netns::Namespace;

/// The sysctl the advice is about.
const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";

/// Where and how to set the range in `ns`: a pod's securityContext, a
/// container's `--sysctl`, a named namespace's `ip netns exec`.
pub(crate) fn advice(ns: &Namespace, decision: &Decision) -> Option<String> {
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
    let r#where = where_to_set(ns, &value)?;
    Some(format!(
        "set {RANGE_KEY} to \"{value}\" (was {}){reserve} {where}; portd writes nothing in other namespaces, and /etc/sysctl.d applies only to the host's",
        plan.from
    ))
}

/// Where `value` is set for `ns`: its pod's spec, its container's start,
/// its name, or its process.
fn where_to_set(ns: &Namespace, value: &str) -> Option<String> {
    let id = &ns.identity;
    Some(if id.pod.is_some() || id.pod_uid.is_some() {
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
    })
}
