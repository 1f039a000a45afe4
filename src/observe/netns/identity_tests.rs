//! Golden tests of the names from each runtime's own files: a host root per
//! runtime under `tests/fixtures/netns-names/` (each README cites the
//! upstream source and version it follows), and for each namespace found
//! there its identity (as `status --json` shows it), its label (the status
//! line's and the live view's name), its metric labels and its journal
//! fields. Hostile names (quotes, a newline,
//! a huge length, an oversized file) are tested from a temporary root.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::base::host::Host;
use crate::observe::netns::{self, Namespace};
use crate::publish::events::Fields;
use crate::publish::metrics::{self, NetnsRow, NetnsRows};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netns-names")
        .join(name)
}

/// The metric labels of `ns`, as `portd_netns_usage_ratio` shows them.
fn metric_labels(ns: &Namespace) -> String {
    let id = &ns.identity;
    let rows = NetnsRows {
        top: vec![NetnsRow {
            inode: ns.inode,
            container: id.container_label().unwrap_or_default(),
            pod: id.pod_label().unwrap_or_default(),
            pod_namespace: id.pod_namespace.clone().unwrap_or_default(),
            usage: 0.5,
            used: 1,
            level: crate::judge::level::Level::Ok,
            time_to_exhaustion: None,
        }],
        ..NetnsRows::default()
    };
    let text = metrics::text(&metrics::netns(&rows));
    let line = text
        .lines()
        .find(|l| l.starts_with("portd_netns_usage_ratio{"))
        .expect("a row");
    line["portd_netns_usage_ratio".len()..]
        .rsplit_once(' ')
        .expect("a value")
        .0
        .to_string()
}

fn journal(ns: &Namespace) -> Vec<String> {
    let f = Fields::default().in_namespace(ns);
    [
        ("PORTD_NETNS", f.netns),
        ("PORTD_CONTAINER", f.container),
        ("PORTD_POD", f.pod),
        ("PORTD_POD_NAMESPACE", f.pod_namespace),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(format!("{k}={}", v?)))
    .collect()
}

/// Every namespace but portd's own, those of a process first: a named
/// namespace's inode (the fixture file's) is written `INODE`.
fn render(root: &Path) -> String {
    let (mut list, unreadable) = netns::all(&Host::new(root));
    assert_eq!(unreadable, 0);
    list.retain(|n| !n.own);
    list.sort_by_key(|n| (n.pid.is_none(), n.inode));
    let mut out = String::new();
    for ns in &list {
        let inode = format!("net:[{}]", ns.inode);
        let shown = |s: &str| {
            if ns.pid.is_none() {
                s.replace(&inode, "net:[INODE]")
            } else {
                s.to_string()
            }
        };
        let pid = ns.pid.map_or("no pid".into(), |p| format!("pid {p}"));
        let _ = writeln!(out, "{} {pid}", shown(&inode));
        let identity = serde_json::to_string(&ns.identity).expect("json");
        let _ = writeln!(out, "identity: {identity}");
        let _ = writeln!(out, "label: {}", ns.label);
        let _ = writeln!(out, "metric: {}", shown(&metric_labels(ns)));
        for field in journal(ns) {
            let _ = writeln!(out, "journal: {}", shown(&field));
        }
    }
    out
}

#[test]
fn each_runtimes_fixture_gives_its_names_on_every_channel() {
    let cases = [
        "docker-systemd-v2",
        "docker-cgroupfs-v1",
        "podman-systemd-v2",
        "podman-cgroupfs-v1",
        "podman-rootless-v2",
        "containerd-systemd-v2",
        "containerd-cgroupfs-v1",
        "crio-systemd-v2",
        "crio-cgroupfs-v1",
        "unknown-runtime",
    ];
    for case in cases {
        let dir = fixture(case);
        let want = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        assert_eq!(render(&dir.join("root")), want, "{case}");
    }
}

#[test]
fn a_pod_is_found_by_its_names() {
    let (list, _) = netns::all(&Host::new(fixture("crio-cgroupfs-v1").join("root")));
    let pod = list.iter().find(|n| n.inode == 20).expect("the pod");
    assert!(pod.matches("shop/checkout-7f9c"));
    assert!(pod.matches("pod shop/checkout-7f9c, container envoy"));
    assert!(pod.matches("envoy"), "a container's name");
    assert!(!pod.matches("POD"), "the sandbox is no container of it");
    assert_eq!(
        pod.identity.runtime,
        Some(netns::identity::Runtime::Crio),
        "the cgroupfs path does not say which runtime; its files do"
    );
}

const ID: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

/// A copy of the Docker fixture whose container config says `config`.
fn docker_with(config: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture("docker-systemd-v2").join("root");
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::write(
        dir.path()
            .join(format!("var/lib/docker/containers/{ID}/config.v2.json")),
        config,
    )
    .unwrap();
    dir
}

fn docker_namespace(root: &Path) -> Namespace {
    let (list, _) = netns::all(&Host::new(root));
    list.into_iter()
        .find(|n| n.inode == 50)
        .expect("the container")
}

#[test]
fn a_name_with_quotes_and_a_newline_is_escaped_on_every_channel() {
    let dir = docker_with(br#"{"ID":"x","Name":"/api\"1\"\nPORTD OK - |x=1\u001b[31m"}"#);
    let ns = docker_namespace(dir.path());
    let name = "api\"1\"\\x0aPORTD OK - \\x7cx=1\\x1b[31m";
    assert_eq!(ns.label, format!("docker container {name}"));
    assert_eq!(
        metric_labels(&ns),
        "{netns=\"net:[50]\",container=\"api\\\"1\\\"\\\\x0aPORTD OK - \\\\x7cx=1\\\\x1b[31m\",pod=\"\",pod_namespace=\"\"}"
    );
    assert_eq!(journal(&ns)[1], format!("PORTD_CONTAINER={name}"));
    assert!(!ns.label.chars().any(char::is_control));
}

#[test]
fn a_huge_name_is_cut_and_an_oversized_config_names_nothing() {
    let huge = "n".repeat(100_000);
    let dir = docker_with(format!("{{\"Name\":\"/{huge}\"}}").as_bytes());
    let ns = docker_namespace(dir.path());
    let name = &ns.identity.containers[0];
    assert_eq!(name.chars().count(), netns::identity::NAME_MAX_CHARS + 3);
    assert!(name.ends_with("nnn..."));
    assert_eq!(ns.label, format!("docker container {name}"));

    // More than the cap (1 MiB): not read, the runtime and short id remain.
    let padding = " ".repeat(1024 * 1024);
    let dir = docker_with(format!("{{\"Name\":\"/api-1\"{padding}}}").as_bytes());
    let ns = docker_namespace(dir.path());
    assert!(ns.identity.containers.is_empty());
    assert_eq!(ns.label, "container docker:a1a1a1a1a1a1");

    // Not JSON, or a FIFO where the file was: nothing either.
    for bad in [&b"{\"Name\": 7}"[..], b"\xff\xfe"] {
        let dir = docker_with(bad);
        assert_eq!(
            docker_namespace(dir.path()).label,
            "container docker:a1a1a1a1a1a1"
        );
    }
    let dir = docker_with(b"");
    let path = dir
        .path()
        .join(format!("var/lib/docker/containers/{ID}/config.v2.json"));
    std::fs::remove_file(&path).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert_eq!(
        docker_namespace(dir.path()).label,
        "container docker:a1a1a1a1a1a1"
    );
}

#[test]
fn a_pods_annotations_are_escaped_and_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture("crio-cgroupfs-v1").join("root");
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copy.success());
    let id = "4d".repeat(32);
    let long = "c".repeat(300);
    let config = serde_json::json!({
        "ociVersion": "1.2.0",
        "annotations": {
            "io.kubernetes.pod.name": long,
            "io.kubernetes.pod.namespace": "sh\"op\n",
            "io.kubernetes.container.name": "env\u{1b}]0;oy\u{7}",
            "io.kubernetes.cri-o.ContainerType": "container",
        }
    });
    std::fs::write(
        dir.path().join(format!(
            "run/containers/storage/overlay-containers/{id}/userdata/config.json"
        )),
        config.to_string(),
    )
    .unwrap();
    let (list, _) = netns::all(&Host::new(dir.path()));
    let ns = list.iter().find(|n| n.inode == 20).expect("the pod");
    // The pause's annotations (the lowest pid's) name the pod; its
    // container is the other's, escaped.
    assert_eq!(
        ns.identity.containers,
        vec!["env\\x1b]0;oy\\x07".to_string()]
    );
    assert_eq!(
        ns.label,
        "pod shop/checkout-7f9c, container env\\x1b]0;oy\\x07"
    );

    // The pod read from the container itself (the pause's files gone).
    let pause = "3c".repeat(32);
    std::fs::remove_dir_all(
        dir.path()
            .join(format!("run/containers/storage/overlay-containers/{pause}")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("proc/200/cgroup"),
        format!("0::/kubepods/burstable/pod5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9/crio-{id}\n"),
    )
    .unwrap();
    let (list, _) = netns::all(&Host::new(dir.path()));
    let ns = list.iter().find(|n| n.inode == 20).expect("the pod");
    let name = ns.identity.pod_name.as_deref().unwrap();
    assert_eq!(
        name,
        format!("{}...", "c".repeat(netns::identity::NAME_MAX_CHARS))
    );
    assert_eq!(ns.identity.pod_namespace.as_deref(), Some("sh\"op\\x0a"));
    assert!(!ns.label.chars().any(char::is_control), "{}", ns.label);
    let labels = metric_labels(ns);
    assert!(
        labels.contains(",pod_namespace=\"sh\\\"op\\\\x0a\"}"),
        "{labels}"
    );
    assert!(journal(ns).contains(&"PORTD_POD_NAMESPACE=sh\"op\\x0a".to_string()));
}
