//! Other network namespaces (docs/DESIGN.md, "Other network namespaces"):
//! discovery, whether portd may watch them from where it runs, who each
//! belongs to, and the census of each.

pub mod census;
pub mod discovery;
pub(crate) mod identity;
pub(crate) mod identity_names;
pub(crate) mod scope;

use serde::Serialize;

use crate::base::host::Host;
use crate::base::untrusted;

pub use discovery::{Discovery, Found};
pub use identity::Identity;

/// A network namespace with its identity and how to enter it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    /// `net:[INODE]`: what `ls -l /proc/PID/ns/net` and `lsns -t net` show.
    pub inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The command of that pid (`/proc/<pid>/comm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    pub processes: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// portd's own namespace (the host's, under its unit).
    pub own: bool,
    pub identity: Identity,
    /// What a person calls it: the pod, the container, the netns name, the
    /// unit, or the process.
    pub label: String,
    /// The command that runs a shell command inside it.
    pub enter: String,
}

impl Namespace {
    /// `--netns` matches the inode, a netns name, the container (its name,
    /// full or short id, with or without the runtime), the pod (`ns/name`
    /// or its UID) or the label.
    pub fn matches(&self, want: &str) -> bool {
        let id = &self.identity;
        want == self.inode.to_string()
            || want == format!("net:[{}]", self.inode)
            || want == self.label
            || self.names.iter().any(|n| n == want)
            || id.pod.as_deref() == Some(want)
            || id.pod_uid.as_deref() == Some(want)
            || id.container().as_deref() == Some(want)
            || id.containers.iter().any(|c| c == want)
            || id.unit.as_deref() == Some(want)
            || (want.len() >= 12
                && id
                    .container_id
                    .as_deref()
                    .is_some_and(|c| c.starts_with(want)))
    }
}

impl Namespace {
    /// Whether the namespace is gone: its process exited (or its pid now
    /// names a process of another namespace) and its netns name, if it had
    /// one, no longer leads to it. Such a namespace holds no sockets: it is
    /// left out of a report, not reported unknown.
    pub fn is_gone(&self, host: &Host) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.own {
            return false;
        }
        let by_pid = self
            .pid
            .is_some_and(|pid| discovery::pid_inode(host, pid) == Some(self.inode));
        let by_name = self.names.iter().any(|name| {
            std::fs::metadata(host.path("/run/netns").join(name))
                .is_ok_and(|m| m.ino() == self.inode)
        });
        !by_pid && !by_name
    }

    /// The same namespace entered through another of its processes, when
    /// the one discovery found has exited.
    pub fn through_another_pid(&self, host: &Host) -> Option<Namespace> {
        let pid = discovery::pid_in(host, self.inode)?;
        (Some(pid) != self.pid).then(|| Namespace {
            pid: Some(pid),
            enter: if self.names.is_empty() {
                format!("nsenter -t {pid} -n COMMAND")
            } else {
                self.enter.clone()
            },
            ..self.clone()
        })
    }
}

/// Names each namespace that discovery found.
pub fn describe(host: &Host, found: &Found) -> Namespace {
    let (identity, comm) = match found.pid {
        Some(pid) => {
            let cgroup =
                std::fs::read_to_string(host.proc(&format!("{pid}/cgroup"))).unwrap_or_default();
            let mut id = identity::from_cgroup(&cgroup);
            identity_names::complete(host, &cgroup, &mut id);
            if let Some(uid) = &id.pod_uid
                && id.pod.is_none()
                && let Some((ns, name)) = identity::pod_name(&host.path("/var/log/pods"), uid)
            {
                id.set_pod(&ns, &name);
            }
            // Any bytes: a process names itself.
            let comm = std::fs::read(host.proc(&format!("{pid}/comm")))
                .ok()
                .map(|c| String::from_utf8_lossy(c.strip_suffix(b"\n").unwrap_or(&c)).into_owned());
            (id, comm)
        }
        None => (Identity::default(), None),
    };
    // Display text from what others named (a process, a cgroup, a netns,
    // a runtime's names, already escaped in `identity`): it reaches the
    // plugin line, the journal and the terminal.
    let label = label(found, &identity, comm.as_deref());
    let enter = match (found.pid, found.names.first()) {
        _ if found.own => "(portd's own namespace)".to_string(),
        (_, Some(name)) => format!("ip netns exec {} COMMAND", untrusted::escape(name)),
        (Some(pid), None) => format!("nsenter -t {pid} -n COMMAND"),
        (None, None) => String::new(),
    };
    Namespace {
        inode: found.inode,
        pid: found.pid,
        comm,
        processes: found.processes,
        names: found.names.clone(),
        own: found.own,
        identity,
        label,
        enter,
    }
}

/// "pod shop/checkout-7f9c, container envoy", "docker container api-1",
/// "container docker:0123456789ab", "netns blue", "unit x.service",
/// "pid 8 (python3)": escaped display text.
fn label(found: &Found, id: &Identity, comm: Option<&str>) -> String {
    use untrusted::escape;
    if found.own {
        return "host".to_string();
    }
    let containers = match id.containers.as_slice() {
        [] => None,
        [one] => Some(format!("container {one}")),
        many => Some(format!("containers {}", many.join(","))),
    };
    if let Some(pod) = id.pod.as_ref().or(id.pod_uid.as_ref()) {
        return match containers {
            Some(c) => format!("pod {pod}, {c}"),
            None => format!("pod {pod}"),
        };
    }
    if let (Some(c), Some(runtime)) = (&containers, id.runtime) {
        return format!("{} {c}", runtime.label());
    }
    if let Some(c) = id.container() {
        return format!("container {c}");
    }
    if let Some(name) = found.names.first() {
        return format!("netns {}", escape(name));
    }
    if let Some(unit) = &id.unit {
        return format!("unit {}", escape(unit));
    }
    match (found.pid, comm) {
        (Some(pid), Some(comm)) => format!("pid {pid} ({})", escape(comm)),
        (Some(pid), None) => format!("pid {pid}"),
        _ => format!("net:[{}]", found.inode),
    }
}

/// Discovers and names every namespace.
pub fn all(host: &Host) -> (Vec<Namespace>, u32) {
    let d = discovery::discover(host);
    let list = d.namespaces.iter().map(|f| describe(host, f)).collect();
    (list, d.unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1f0c2a4e-5b6d-4e0f-9a1b-2c3d4e5f6a7b";

    fn process(root: &std::path::Path, pid: u32, netns: &str, cgroup: &str, comm: &str) {
        let dir = root.join(format!("proc/{pid}"));
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        symlink(netns, dir.join("ns/net")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    }

    /// A golden node: the host, a pod (pause process in a containerd
    /// scope of a kubepods slice, its log directory under /var/log/pods),
    /// a docker container, a named netns and a plain `unshare -n` child.
    #[test]
    fn names_each_namespace_as_a_person_knows_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        process(root, 1, "net:[10]", "0::/init.scope\n", "systemd");
        let pod_slice = UID.replace('-', "_");
        process(
            root,
            400,
            "net:[40]",
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_slice}.slice/cri-containerd-{ID}.scope\n"
            ),
            "pause",
        );
        process(
            root,
            500,
            "net:[50]",
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            "nginx",
        );
        process(
            root,
            600,
            "net:[60]",
            "0::/user.slice/session-1.scope\n",
            "sleep",
        );
        symlink("net:[10]", {
            std::fs::create_dir_all(root.join("proc/self/ns")).unwrap();
            root.join("proc/self/ns/net")
        })
        .unwrap();
        std::fs::create_dir_all(root.join(format!("var/log/pods/shop_checkout-7d9f_{UID}")))
            .unwrap();
        std::fs::create_dir_all(root.join("run/netns")).unwrap();
        std::fs::write(root.join("run/netns/blue"), "").unwrap();
        let (list, unreadable) = all(&Host::new(root));
        assert_eq!(unreadable, 0);
        let got: Vec<(&str, &str)> = list
            .iter()
            .map(|n| (n.label.as_str(), n.enter.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("host", "(portd's own namespace)"),
                ("pod shop/checkout-7d9f", "nsenter -t 400 -n COMMAND"),
                ("container docker:0123456789ab", "nsenter -t 500 -n COMMAND"),
                ("unit session-1.scope", "nsenter -t 600 -n COMMAND"),
                ("netns blue", "ip netns exec blue COMMAND"),
            ]
        );
        let pod = &list[1];
        assert!(pod.matches("shop/checkout-7d9f"));
        assert!(pod.matches(UID));
        assert!(pod.matches("40"));
        assert!(pod.matches("net:[40]"));
        assert!(!pod.matches("50"));
        assert!(list[2].matches("docker:0123456789ab"));
        assert!(list[2].matches(&ID[..12]));
        assert!(!list[2].matches(&ID[..4]));
        assert!(list[4].matches("blue"));
    }
}
