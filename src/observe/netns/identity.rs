//! Who a network namespace belongs to, as a person knows it: the container
//! or pod from a process's cgroup path (`/proc/<pid>/cgroup`, v1 and v2),
//! the pod's namespace and name from `/var/log/pods`, or the systemd unit.
//! Pure parsing plus one directory listing; tested with golden fixtures.
//! The names the runtimes' own files give are read by `identity_names.rs`.

use std::path::Path;

use serde::Serialize;

/// A container runtime that names its cgroups after the container id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The systemd unit of the process (`nginx.service`, `docker-<id>.scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The full container id (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The Kubernetes pod UID (with dashes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `<namespace>/<name>` from the runtime's config or `/var/log/pods`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace (display text: escaped, bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The pod's name (display text: escaped, bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The container's name from its runtime's config (`api-1`), or in a
    /// pod the names of its containers but the sandbox's (pause), sorted
    /// (display text: escaped, bounded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

impl Identity {
    /// `docker:0123456789ab`: the runtime and the short id `docker ps` shows.
    pub fn container(&self) -> Option<String> {
        let id = self.container_id.as_deref()?;
        let short = &id[..id.len().min(12)];
        Some(match self.runtime {
            Some(r) => format!("{}:{short}", r.label()),
            None => short.to_string(),
        })
    }

    /// The `container` of a metric, journal entry or live view: the
    /// names (`envoy`, `app,envoy`), else the runtime and short id.
    pub fn container_label(&self) -> Option<String> {
        if self.containers.is_empty() {
            self.container()
        } else {
            Some(self.containers.join(","))
        }
    }

    /// The `pod` of a metric or journal entry: the pod's name, else its
    /// UID (the namespace is `pod_namespace`).
    pub fn pod_label(&self) -> Option<String> {
        self.pod_name.clone().or_else(|| self.pod_uid.clone())
    }

    /// Sets the pod's namespace and name (and `pod`, `<namespace>/<name>`)
    /// from text another party wrote: escaped and bounded.
    pub fn set_pod(&mut self, namespace: &str, name: &str) {
        let (namespace, name) = (display_name(namespace), display_name(name));
        self.pod = Some(format!("{namespace}/{name}"));
        self.pod_namespace = Some(namespace);
        self.pod_name = Some(name);
    }
}

/// The most characters of a name portd shows: a Kubernetes object name's
/// limit (a DNS subdomain, 253); longer ones end in `...`.
pub const NAME_MAX_CHARS: usize = 253;

/// A name from a file a container's owner controls, as display text: its
/// control characters escaped (as a process name's), at most
/// [`NAME_MAX_CHARS`] characters.
pub fn display_name(raw: &str) -> String {
    let shown = crate::base::untrusted::escape(raw);
    match shown.char_indices().nth(NAME_MAX_CHARS) {
        Some((at, _)) => format!("{}...", &shown[..at]),
        None => shown,
    }
}

/// The `(controllers, path)` of each line of a `/proc/<pid>/cgroup` text,
/// in the order they are trusted: the unified (v2, `0::`) line, then v1's
/// `name=systemd`, then every line as written (those two again included).
pub(crate) fn cgroup_lines(text: &str) -> Vec<(&str, &str)> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            Some((controllers, path))
        })
        .collect();
    lines
        .iter()
        .filter(|(c, _)| c.is_empty())
        .chain(lines.iter().filter(|(c, _)| *c == "name=systemd"))
        .chain(lines.iter())
        .copied()
        .collect()
}

/// The identity a `/proc/<pid>/cgroup` text gives. The unified (v2, `0::`)
/// line wins, then v1's `name=systemd`, then the first v1 line that names a
/// container or pod.
pub fn from_cgroup(text: &str) -> Identity {
    let mut best = Identity::default();
    for (_, path) in cgroup_lines(text) {
        let id = from_path(path);
        if id.container_id.is_some() || id.pod_uid.is_some() {
            return id;
        }
        if best.unit.is_none() {
            best = id;
        }
    }
    best
}

/// One cgroup path, e.g. `/kubepods.slice/kubepods-besteffort.slice/
/// kubepods-besteffort-pod1f0c_22.slice/cri-containerd-<id>.scope`.
fn from_path(path: &str) -> Identity {
    let mut id = Identity::default();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if let Some(uid) = pod_uid(part) {
            id.pod_uid = Some(uid);
        } else if let Some((runtime, cid)) = container(part) {
            id.runtime = Some(runtime);
            id.container_id = Some(cid.to_string());
        } else if is_hex_id(part) {
            // cgroupfs drivers: /docker/<id>, /kubepods/burstable/pod<uid>/<id>.
            id.container_id = Some(part.to_string());
        }
        if part.ends_with(".service") || part.ends_with(".scope") {
            id.unit = Some(part.to_string());
        }
    }
    if id.runtime.is_none() && id.container_id.is_some() {
        if path.starts_with("/docker/") {
            id.runtime = Some(Runtime::Docker);
        } else if id.pod_uid.is_none() {
            id.container_id = None;
        }
    }
    id
}

/// `kubepods-burstable-pod1f0c2a4e_5b6d_4e0f_9a1b_2c3d4e5f6a7b.slice`
/// (systemd driver, dashes of the UID written as underscores) or
/// `pod1f0c2a4e-5b6d-...` (cgroupfs driver).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let at = name.rfind("pod")?;
    if at > 0 && !name[..at].ends_with('-') {
        return None;
    }
    if at == 0 && part.ends_with(".slice") {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope` (systemd driver), or `crio-<id>` and `libpod-<id>`
/// (CRI-O's and Podman's cgroupfs driver: cri-o
/// internal/config/cgmgr/cgroupfs_linux.go, podman libpod/container.go).
fn container(part: &str) -> Option<(Runtime, &str)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (runtime, id) = if let Some(id) = name.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else if let Some(id) = name.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = name.strip_prefix("crio-") {
        (Runtime::Crio, id)
    } else if let Some(id) = name.strip_prefix("libpod-") {
        (Runtime::Podman, id)
    } else {
        return None;
    };
    // crio-conmon-<id>.scope is the monitor, not the container.
    is_hex_id(id).then_some((runtime, id))
}

/// The container id a cgroup directory's name gives (a pod's children:
/// `cri-containerd-<id>.scope`, `crio-<id>`, or `<id>` under cgroupfs).
pub(super) fn container_in(part: &str) -> Option<&str> {
    container(part)
        .map(|(_, id)| id)
        .or_else(|| is_hex_id(part).then_some(part))
}

/// Whether a cgroup directory's name is a pod's (`...-pod<uid>.slice`,
/// `pod<uid>`).
pub(super) fn is_pod_part(part: &str) -> bool {
    pod_uid(part).is_some()
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The namespace and name of the pod with `uid`, from the kubelet's log
/// directory `/var/log/pods/<namespace>_<name>_<uid>` (Kubernetes names
/// cannot contain `_`).
pub fn pod_name(log_pods: &Path, uid: &str) -> Option<(String, String)> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(log_pods).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        let rest = name.strip_suffix(&suffix)?;
        let (ns, pod) = rest.split_once('_')?;
        Some((ns.to_string(), pod.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1f0c2a4e-5b6d-4e0f-9a1b-2c3d4e5f6a7b";

    // A flat table of golden cases, one per cgroup layout.
    #[allow(clippy::too_many_lines)]
    #[test]
    fn golden_cgroup_paths() {
        let cases: Vec<(String, Identity)> = vec![
            (
                format!("0::/system.slice/docker-{ID}.scope\n"),
                Identity {
                    unit: Some(format!("docker-{ID}.scope")),
                    runtime: Some(Runtime::Docker),
                    container_id: Some(ID.into()),
                    ..Identity::default()
                },
            ),
            (
                // cgroup v1, docker's cgroupfs driver.
                format!(
                    "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"
                ),
                Identity {
                    runtime: Some(Runtime::Docker),
                    container_id: Some(ID.into()),
                    ..Identity::default()
                },
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
                Identity {
                    unit: Some(format!("cri-containerd-{ID}.scope")),
                    runtime: Some(Runtime::Containerd),
                    container_id: Some(ID.into()),
                    pod_uid: Some(UID.into()),
                    ..Identity::default()
                },
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
                    UID.replace('-', "_")
                ),
                Identity {
                    unit: Some(format!("crio-{ID}.scope")),
                    runtime: Some(Runtime::Crio),
                    container_id: Some(ID.into()),
                    pod_uid: Some(UID.into()),
                    ..Identity::default()
                },
            ),
            (
                // v1 with the kubelet's cgroupfs driver.
                format!("4:memory:/kubepods/burstable/pod{UID}/{ID}\n"),
                Identity {
                    container_id: Some(ID.into()),
                    pod_uid: Some(UID.into()),
                    ..Identity::default()
                },
            ),
            (
                "0::/system.slice/nginx.service\n".into(),
                Identity {
                    unit: Some("nginx.service".into()),
                    ..Identity::default()
                },
            ),
            (
                // v1 hybrid: name=systemd names the unit.
                "5:cpu:/\n1:name=systemd:/system.slice/haproxy.service\n0::/\n".into(),
                Identity {
                    unit: Some("haproxy.service".into()),
                    ..Identity::default()
                },
            ),
            (
                format!("0::/machine.slice/crio-conmon-{ID}.scope\n"),
                Identity {
                    unit: Some(format!("crio-conmon-{ID}.scope")),
                    ..Identity::default()
                },
            ),
            (
                format!(
                    "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
                ),
                Identity {
                    unit: Some(format!("libpod-{ID}.scope")),
                    runtime: Some(Runtime::Podman),
                    container_id: Some(ID.into()),
                    ..Identity::default()
                },
            ),
            ("0::/\n".into(), Identity::default()),
            ("garbage\n".into(), Identity::default()),
        ];
        for (text, want) in cases {
            assert_eq!(from_cgroup(&text), want, "{text}");
        }
    }

    #[test]
    fn container_label_is_runtime_and_short_id() {
        let id = from_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(id.container().as_deref(), Some("docker:0123456789ab"));
    }

    #[test]
    fn pod_name_from_var_log_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(format!("shop_checkout-7d9f_{UID}"))).unwrap();
        std::fs::create_dir(
            dir.path()
                .join("kube-system_coredns-1_00000000-0000-0000-0000-000000000000"),
        )
        .unwrap();
        assert_eq!(
            pod_name(dir.path(), UID),
            Some(("shop".into(), "checkout-7d9f".into()))
        );
        assert_eq!(
            pod_name(dir.path(), "11111111-1111-1111-1111-111111111111"),
            None
        );
        assert_eq!(pod_name(&dir.path().join("absent"), UID), None);
    }
}
