//! Reading safely: a `/proc/sys` value is read
//! whole in one read at offset 0, and a FIFO, device or oversized file where
//! portd expects a regular file is refused at once, naming the file, instead
//! of hanging `check`, `status` or the daemon.
//!
//! The reserved-port tests write sysctls, so they run in a private network
//! and mount namespace (sandbox.rs) and need root; the others use
//! fixture trees (`--root`) and need nothing.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use portd::base::ports::PortSet;
use portd::observe::census::reader::{Fresh, KeptOpen, ProcRead};

use super::portd_child::Portd;
use super::sandbox::{DROPIN, RESERVED_KEY, Sandbox};
use super::util::{conns_to, fake_proc, portd, root_test, stdout_json, text, write_policy};

/// 48 bytes: longer than the 32 that `std::fs::read_to_string` probes
/// first, after which the kernel's `proc_do_large_bitmap()` answers the read
/// at offset 32 with end of file (the list was read as "50,40010,...").
const ADMIN_RESERVED: &str = "40010,40020,50001,50003,50005,50007,50009,50011";

#[test]
fn status_reports_a_reserved_list_longer_than_32_bytes_exactly() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", ADMIN_RESERVED);
    let out = ns.portd(&["status", "--json"]).output().unwrap();
    let report = stdout_json(&out);
    assert_eq!(report["reserved_ports"], ADMIN_RESERVED, "{report:#}");
    assert_eq!(report["reserved_in_range"], 2, "{report:#}");
}

/// Every other port of 40001-41999: 1000 ports, about 6 KB as the kernel
/// prints it, more than a page (the daemon's reader read 4096-byte chunks).
#[test]
fn both_proc_readers_read_a_reserved_list_longer_than_a_page() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", "");
    let mut expected = PortSet::new();
    for port in (40001..42000).step_by(2) {
        expected.insert(port);
    }
    let list = expected.to_sysctl_list();
    assert!(list.len() > 4096, "{}", list.len());
    ns.set_sysctl(RESERVED_KEY, &format!("{list}\n"));

    // /proc/sys/net resolves in the network namespace of the thread that
    // opens it: read from a thread moved into the sandbox's namespace.
    let reads = ns.in_net(|| {
        let path = Path::new("/proc/sys/net/ipv4/ip_local_reserved_ports");
        let mut kept = KeptOpen::default();
        [
            Fresh.read_text(path).unwrap(),
            kept.read_text(path).unwrap(),
            // Again through the file and the buffer it keeps.
            kept.read_text(path).unwrap(),
        ]
    });
    for (read, got) in ["Fresh", "KeptOpen", "KeptOpen again"].iter().zip(reads) {
        assert_eq!(got.len(), list.len() + 1, "{read}: {got:?}");
        assert_eq!(PortSet::parse(&got).unwrap(), expected, "{read}");
    }
}

/// The admin's list survives a widening that reserves a listener and the
/// rollback after it (before, rollback wrote back the cut list and exited 0).
#[test]
fn rollback_keeps_an_admins_reserved_list_longer_than_32_bytes() {
    root_test!();
    let ns = Sandbox::actuation("40000 40099", ADMIN_RESERVED);
    ns.write_file(
        "/etc/sysctl.d/50-admin.conf",
        &format!("{RESERVED_KEY} = {ADMIN_RESERVED}\n"),
    );
    ns.listen(40120);
    ns.connect(45);
    let daemon = ns.start_daemon_until_persisted("40000-40099");
    daemon.stop_ok();
    let with_listener = "40010,40020,40120,50001,50003,50005,50007,50009,50011";
    assert_eq!(ns.reserved(), with_listener);
    let dropin = ns.read_file(DROPIN).unwrap();
    assert!(
        dropin.contains(&format!("{RESERVED_KEY} = {with_listener}\n")),
        "{dropin}"
    );

    let out = ns.portd(&["rollback"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed portd's reserved ports 40120"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(ns.reserved(), ADMIN_RESERVED);
    assert_eq!(ns.range(), "40000 40099");
}

/// A fixture host: the kernel files `check` and `status` read, no sockets,
/// a policy, and an empty sysctl.d.
fn host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fake_proc(
        dir.path(),
        (40000, 40099),
        &conns_to([10, 1, 1, 1], 443, 40000, 3),
    );
    std::fs::create_dir_all(dir.path().join("etc/sysctl.d")).unwrap();
    write_policy(&dir.path().join("etc/portd.toml"), "");
    dir
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// `portd --root ROOT ARGS`, failing the test (not hanging it) unless it
/// ends within 10 s; killed by its pid then.
fn run_promptly(root: &Path, args: &[&str]) -> Output {
    let mut child = portd()
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "portd {args:?} still ran after 10 s; stdout:\n{}stderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What `check` and `status` printed, both streams.
fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// One hostile file: where it is, what to put there, and the exit codes
/// and words `check` and `status` must answer with (None: not read there).
struct Case {
    rel: &'static str,
    make: fn(&Path),
    check: (u8, &'static str),
    status: Option<(u8, &'static str)>,
}

fn fifo(path: &Path) {
    mkfifo(path);
}

fn dev_zero(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    // Only ever read, never chmod-ed or written.
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
}

fn huge(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    // Sparse: 64 MiB of zeros that take no space.
    file.set_len(64 << 20).unwrap();
}

const FIFO: &str = "not a regular file (a FIFO)";
const DEVICE: &str = "not a regular file (a character device)";

fn cases() -> Vec<Case> {
    vec![
        Case {
            rel: "etc/portd.toml",
            make: fifo,
            check: (2, FIFO),
            status: Some((3, FIFO)),
        },
        Case {
            rel: "etc/portd.toml",
            make: huge,
            check: (2, "more than the 1048576 (1 MiB) portd reads"),
            status: Some((3, "more than the 1048576 (1 MiB) portd reads")),
        },
        Case {
            rel: "etc/sysctl.d/50-fifo.conf",
            make: fifo,
            check: (
                1,
                "a FIFO, not a regular file; skipped as systemd-sysctl skips it",
            ),
            status: None,
        },
        Case {
            rel: "var/lib/portd/state.json",
            make: fifo,
            check: (2, FIFO),
            status: None,
        },
        Case {
            rel: "var/lib/portd/state.json",
            make: dev_zero,
            check: (2, DEVICE),
            status: None,
        },
        Case {
            rel: "var/lib/portd/state.json",
            make: huge,
            check: (2, "longer than 1048576 bytes"),
            status: None,
        },
        Case {
            rel: "proc/sys/net/ipv4/ip_local_port_range",
            make: fifo,
            check: (2, FIFO),
            status: Some((3, FIFO)),
        },
        Case {
            rel: "proc/sys/net/ipv4/ip_local_reserved_ports",
            make: dev_zero,
            check: (2, DEVICE),
            status: Some((3, DEVICE)),
        },
        Case {
            rel: "proc/sys/net/ipv4/tcp_tw_reuse",
            make: fifo,
            check: (2, FIFO),
            status: Some((3, FIFO)),
        },
        Case {
            rel: "proc/net/tcp",
            make: fifo,
            check: (2, FIFO),
            status: Some((3, FIFO)),
        },
        Case {
            rel: "proc/net/udp6",
            make: fifo,
            check: (2, FIFO),
            status: Some((3, FIFO)),
        },
    ]
}

#[test]
fn fifos_devices_and_oversized_files_are_refused_promptly_naming_the_file() {
    for case in cases() {
        let dir = host();
        let root = dir.path();
        let path = root.join(case.rel);
        (case.make)(&path);
        // sysctl.d files are named as systemd-sysctl names them, by host path.
        let file = if case.rel.starts_with("etc/sysctl.d/") {
            format!("/{}", case.rel)
        } else {
            path.display().to_string()
        };

        let out = run_promptly(root, &["check"]);
        let (code, words) = case.check;
        let got = said(&out);
        assert_eq!(
            out.status.code(),
            Some(code.into()),
            "check, {}: {got}",
            case.rel
        );
        let line = got
            .lines()
            .find(|l| l.contains(&file))
            .unwrap_or_else(|| panic!("check, {}: no line names {file}:\n{got}", case.rel));
        assert!(
            line.contains(words),
            "check, {}: {line:?} should say {words:?}",
            case.rel
        );

        let out = run_promptly(root, &["status"]);
        let got = said(&out);
        match case.status {
            Some((code, words)) => {
                assert_eq!(
                    out.status.code(),
                    Some(code.into()),
                    "status, {}: {got}",
                    case.rel
                );
                assert!(
                    got.contains(&file) && got.contains(words),
                    "status, {}: should name {file} and say {words:?}:\n{got}",
                    case.rel
                );
            }
            // Not a file status reads: it answers as usual.
            None => assert_eq!(out.status.code(), Some(0), "status, {}: {got}", case.rel),
        }
    }
}

/// The daemon with a FIFO at its state file: it says so, becomes ready
/// (advising only) and stops on SIGTERM; with a FIFO as its policy it
/// exits at once naming it.
#[test]
fn the_daemon_refuses_a_fifo_state_or_policy_without_hanging() {
    let dir = host();
    let root = dir.path();
    let state = root.join("var/lib/portd/state.json");
    mkfifo(&state);
    let policy = root.join("etc/portd.toml");
    write_policy(&policy, "[poll]\ninterval = \"200ms\"\n");
    let mut cmd = portd();
    cmd.arg("--root")
        .arg(root)
        .args(["run", "--dry-run", "--log-target", "stderr"]);
    let mut daemon = Portd::spawn(cmd, &root.join("stderr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = format!("{}: {FIFO}", state.display());
    while !daemon.stderr().contains(&refused) {
        assert!(
            Instant::now() < deadline && daemon.is_running(),
            "no {refused:?}; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status:?}: {}", daemon.stderr());

    mkfifo(&policy);
    let out = run_promptly(root, &["run", "--dry-run", "--log-target", "stderr"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains(&format!(
            "{}: cannot read the policy file: {FIFO}",
            policy.display()
        )),
        "{}",
        said(&out)
    );
}
