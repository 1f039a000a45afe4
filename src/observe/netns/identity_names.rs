//! The names a container's runtime keeps for it, read through the host
//! root: Docker's and Podman's container names, and for a Kubernetes pod
//! (containerd, CRI-O) its namespace, its name and its containers' names.
//!
//! Each file holds text a container's owner chose (names, annotations): it
//! is read with a size cap (`fsutil::read_regular`, regular files only),
//! parsed leniently (what cannot be read names nothing), and every name is
//! escaped and bounded (`identity::display_name`). Ids joined into paths
//! are 64 hexadecimal digits (identity.rs checked them).
//!
//! Where each runtime writes, as its source says (the fixtures under
//! `tests/fixtures/netns-names/` cite the same files and versions):
//! - Docker: `<root>/containers/<id>/config.v2.json`, field `Name` with a
//!   leading `/` (moby daemon/container/container.go, `configFileName`).
//! - containerd's CRI: the task's OCI bundle
//!   `<state>/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`
//!   (core/runtime/v2/bundle.go), annotations of
//!   internal/cri/annotations/annotations.go (`DefaultCRIAnnotations`).
//! - CRI-O: the container's storage run directory
//!   `/run/containers/storage/overlay-containers/<id>/userdata/config.json`
//!   (server/container_create.go, server/sandbox_run_linux.go save the spec
//!   there), the kubelet's labels copied into its annotations.
//! - Podman: containers/storage's `containers.json` (and
//!   `volatile-containers.json`) under `<graphroot>/<driver>-containers/`,
//!   entry `names` (podman libpod/storage.go creates the container with its
//!   name; its OCI config carries no name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::identity::{self, Identity, Runtime, display_name};
use crate::base::fsutil;
use crate::base::host::Host;

/// The most bytes read of one container's config.
const CONFIG_MAX_BYTES: u64 = 1024 * 1024;
/// `containers.json` lists every container of the storage.
const STORE_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The most cgroups of one pod looked at, and the most names kept.
const POD_ENTRIES_MAX: usize = 64;
const PASSWD_MAX_BYTES: u64 = 4 * 1024 * 1024;
const POD_CONTAINERS_MAX: usize = 8;

const DOCKER_CONTAINERS: &str = "/var/lib/docker/containers";
const CONTAINERD_K8S_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io";
const STORAGE_RUN: &str = "/run/containers/storage";
const STORAGE_ROOT: &str = "/var/lib/containers/storage";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Deserialize, Default)]
#[serde(default)]
struct OciSpec {
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DockerConfig {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StoredContainer {
    id: String,
    names: Vec<String>,
}

/// What a pod's container's annotations say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Kube {
    runtime: Option<Runtime>,
    sandbox: bool,
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
}

fn read_json<T: DeserializeOwned>(path: &Path, limit: u64) -> Option<T> {
    let bytes = fsutil::read_regular(path, limit).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Completes `id` (from `cgroup`, the text of the process's
/// `/proc/<pid>/cgroup`) with the names its runtime keeps.
pub fn complete(host: &Host, cgroup: &str, id: &mut Identity) {
    let Some(cid) = id.container_id.clone() else {
        return;
    };
    if id.pod_uid.is_some() {
        pod(host, cgroup, &cid, id);
        return;
    }
    let name = match id.runtime {
        Some(Runtime::Docker) => docker_name(host, &cid),
        Some(Runtime::Podman) => podman_name(host, &cid, cgroup),
        _ => None,
    };
    id.containers.extend(name);
}

/// A pod's process: the pod from its container's annotations, and the
/// names of the pod's containers but its sandbox (pause), found as the
/// pod's cgroup's children; this container's own name if they cannot be
/// listed.
fn pod(host: &Host, cgroup: &str, cid: &str, id: &mut Identity) {
    let Some(own) = kube(host, id.runtime, cid) else {
        return;
    };
    id.runtime = id.runtime.or(own.runtime);
    if let (Some(ns), Some(name)) = (&own.namespace, &own.pod) {
        id.set_pod(ns, name);
    }
    let mut names: Vec<String> = pod_containers(host, cgroup)
        .iter()
        .filter_map(|c| kube_container(&kube(host, id.runtime, c)?))
        .collect();
    if names.is_empty() {
        names.extend(kube_container(&own));
    }
    names.sort();
    names.dedup();
    names.truncate(POD_CONTAINERS_MAX);
    id.containers = names;
}

fn kube_container(k: &Kube) -> Option<String> {
    (!k.sandbox)
        .then_some(k.container.as_deref())
        .flatten()
        .map(display_name)
}

/// The annotations of the pod's container `cid`: containerd's, then
/// CRI-O's when the cgroup did not say which (cgroupfs driver).
fn kube(host: &Host, runtime: Option<Runtime>, cid: &str) -> Option<Kube> {
    let containerd = || {
        let path = host
            .path(CONTAINERD_K8S_TASKS)
            .join(cid)
            .join("config.json");
        let a = read_json::<OciSpec>(&path, CONFIG_MAX_BYTES)?.annotations;
        Some(Kube {
            runtime: Some(Runtime::Containerd),
            sandbox: a
                .get("io.kubernetes.cri.container-type")
                .map(String::as_str)
                == Some("sandbox"),
            namespace: a.get("io.kubernetes.cri.sandbox-namespace").cloned(),
            pod: a.get("io.kubernetes.cri.sandbox-name").cloned(),
            container: a.get("io.kubernetes.cri.container-name").cloned(),
        })
    };
    let crio = || {
        let path = storage_dirs(host, STORAGE_RUN)
            .into_iter()
            .map(|d| d.join(cid).join("userdata/config.json"))
            .find(|p| p.exists())?;
        let a = read_json::<OciSpec>(&path, CONFIG_MAX_BYTES)?.annotations;
        Some(Kube {
            runtime: Some(Runtime::Crio),
            sandbox: a
                .get("io.kubernetes.cri-o.ContainerType")
                .map(String::as_str)
                == Some("sandbox"),
            namespace: a.get("io.kubernetes.pod.namespace").cloned(),
            pod: a.get("io.kubernetes.pod.name").cloned(),
            container: a.get("io.kubernetes.container.name").cloned(),
        })
    };
    match runtime {
        Some(Runtime::Containerd) => containerd(),
        Some(Runtime::Crio) => crio(),
        None => containerd().or_else(crio),
        Some(Runtime::Docker | Runtime::Podman) => None,
    }
}

/// The container ids under the pod's cgroup (`.../kubepods-...-pod<uid>.slice`
/// or `.../pod<uid>`), read from the hierarchy the cgroup text names:
/// the unified one, else v1's `name=systemd`, else the first.
fn pod_containers(host: &Host, cgroup: &str) -> Vec<String> {
    let Some(dir) = pod_cgroup_dir(cgroup) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(host.path(&dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(POD_ENTRIES_MAX)
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            identity::container_in(name).map(str::to_string)
        })
        .collect()
}

/// The pod's cgroup directory under `/sys/fs/cgroup`, from a
/// `/proc/<pid>/cgroup` text.
fn pod_cgroup_dir(cgroup: &str) -> Option<String> {
    for (controllers, path) in identity::cgroup_lines(cgroup) {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(at) = parts.iter().position(|p| identity::is_pod_part(p)) else {
            continue;
        };
        let hierarchy = match controllers.strip_prefix("name=") {
            _ if controllers.is_empty() => String::new(),
            Some(name) => format!("/{name}"),
            None => format!("/{controllers}"),
        };
        return Some(format!(
            "{CGROUP_ROOT}{hierarchy}/{}",
            parts[..=at].join("/")
        ));
    }
    None
}

fn docker_name(host: &Host, cid: &str) -> Option<String> {
    let path = host
        .path(DOCKER_CONTAINERS)
        .join(cid)
        .join("config.v2.json");
    let config: DockerConfig = read_json(&path, CONFIG_MAX_BYTES)?;
    let name = config.name.strip_prefix('/').unwrap_or(&config.name);
    (!name.is_empty()).then(|| display_name(name))
}

/// Podman's name of `cid`: the first of its `names` in containers/storage's
/// list, rootful or of the rootless user whose systemd instance runs it.
fn podman_name(host: &Host, cid: &str, cgroup: &str) -> Option<String> {
    let mut roots = vec![STORAGE_ROOT.to_string(), STORAGE_RUN.to_string()];
    roots.extend(rootless_storage(host, cgroup));
    roots
        .iter()
        .flat_map(|root| storage_dirs(host, root))
        .flat_map(|dir| ["containers.json", "volatile-containers.json"].map(|f| dir.join(f)))
        .find_map(|path| {
            let list: Vec<StoredContainer> = read_json(&path, STORE_MAX_BYTES)?;
            let found = list.into_iter().find(|c| c.id == cid)?;
            found.names.first().map(|n| display_name(n))
        })
}

/// A rootless user's storage, `$HOME/.local/share/containers/storage`
/// (go.podman.io/storage types/options.go with pkg/homedir `GetDataHome`;
/// a user who set `XDG_DATA_HOME` elsewhere is not found): the user from
/// the cgroup (`user@<uid>.service`), the home from `/etc/passwd`.
fn rootless_storage(host: &Host, cgroup: &str) -> Option<String> {
    let uid = cgroup.split(['/', '\n']).find_map(|part| {
        part.strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse::<u32>()
            .ok()
    })?;
    let passwd = fsutil::read_regular_text(&host.path("/etc/passwd"), PASSWD_MAX_BYTES).ok()?;
    let home = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let home = *fields.get(5)?;
        (fields.get(2)?.parse::<u32>().ok()? == uid).then_some(home)
    })?;
    (home.starts_with('/') && !home.split('/').any(|p| p == ".."))
        .then(|| format!("{home}/.local/share/containers/storage"))
}

/// The `<driver>-containers` directories of a containers/storage root
/// (`overlay-containers` first: the default driver).
fn storage_dirs(host: &Host, root: &str) -> Vec<PathBuf> {
    let root = host.path(root);
    let mut dirs = vec![root.join("overlay-containers")];
    if let Ok(entries) = std::fs::read_dir(&root) {
        dirs.extend(
            entries
                .flatten()
                .take(POD_ENTRIES_MAX)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with("-containers") && n != "overlay-containers")
                }),
        );
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_cgroup_directory_is_found_in_each_hierarchy() {
        let uid = "1f0c2a4e_5b6d_4e0f_9a1b_2c3d4e5f6a7b";
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            pod_cgroup_dir(&format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{id}.scope\n"
            ))
            .as_deref(),
            Some(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f0c2a4e_5b6d_4e0f_9a1b_2c3d4e5f6a7b.slice"
            )
        );
        let dashed = uid.replace('_', "-");
        assert_eq!(
            pod_cgroup_dir(&format!(
                "12:pids:/kubepods/burstable/pod{dashed}/{id}\n1:name=systemd:/kubepods/burstable/pod{dashed}/{id}\n"
            ))
            .as_deref(),
            Some("/sys/fs/cgroup/systemd/kubepods/burstable/pod1f0c2a4e-5b6d-4e0f-9a1b-2c3d4e5f6a7b")
        );
        assert_eq!(
            pod_cgroup_dir(&format!("4:cpu,cpuacct:/kubepods/pod{dashed}/{id}\n")).as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1f0c2a4e-5b6d-4e0f-9a1b-2c3d4e5f6a7b")
        );
        assert_eq!(pod_cgroup_dir("0::/system.slice/nginx.service\n"), None);
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod fixture_tests;
