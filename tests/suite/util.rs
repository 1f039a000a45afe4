//! The harness: the portd binary, the root rule, the namespace guard, fixture
//! trees (real ones and fake `/proc` trees) and policies. The namespaces
//! themselves are the sandbox's (`sandbox.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `program` run by `nsenter` in the `namespaces` (`-n`, `-m`, `-p`) of
/// process `pid`. Without the variables through which portd would take the
/// caller's root, journal or service manager for its own.
pub fn nsenter(pid: u32, namespaces: &[&str], program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t").arg(pid.to_string()).args(namespaces);
    cmd.arg("--").arg(program);
    for var in [
        "PORTD_ROOT",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The `portd` binary built for this test run, with a clean environment
/// for the options it reads from it.
pub fn portd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portd"));
    cmd.env_remove("PORTD_ROOT");
    cmd
}

/// The name of the test function it stands in (the last segment of the
/// function's path), so that no test spells its own name by hand.
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// The first line of a test that needs root: returns from the test, with a
/// visible `SKIP` line naming it, when not root; fails it when `CI` is set,
/// so CI can never pass by skipping it.
macro_rules! root_test {
    () => {
        if !$crate::suite::util::have_root($crate::suite::util::test_name!()) {
            return;
        }
    };
}

pub(crate) use {root_test, test_name};

/// Whether `test` can run: true when `present` (root, a tool) is. When it is
/// not, says `SKIP (needs NEEDS): TEST`; when `CI` is set it fails instead,
/// so CI can never pass by skipping.
pub fn can_run(test: &str, needs: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {needs}, and CI is set: refusing to skip it"
    );
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIP (needs {needs}): {test}");
    false
}

/// Whether `test` can run as root: see [`can_run`] and [`root_test`].
pub fn have_root(test: &str) -> bool {
    can_run(test, "root", rustix::process::geteuid().is_root())
}

/// Whether `test` can run with strace: see [`can_run`].
pub fn have_strace(test: &str) -> bool {
    let present = Command::new("strace").arg("-V").output().is_ok();
    can_run(test, "strace", present)
}

/// The namespace of `kind` (`net`, `mnt`) of the process at `proc`
/// (`/proc/PID`, `/proc/self`), as its link reads: `net:[4026531840]`.
fn namespace(proc: &str, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("{proc}/ns/{kind}")).ok()
}

/// The guard of every sandbox, called before it writes anything: panics
/// unless process `pid` is in a namespace of each of `kinds` other than the
/// host's, that is other than this test process's and PID 1's.
pub fn assert_private_namespaces(pid: u32, kinds: &[&str]) {
    for kind in kinds {
        let theirs = namespace(&format!("/proc/{pid}"), kind)
            .unwrap_or_else(|| panic!("cannot read the {kind} namespace of process {pid}"));
        for host in ["/proc/self", "/proc/1"] {
            if let Some(ours) = namespace(host, kind) {
                assert_ne!(
                    theirs, ours,
                    "process {pid} shares the {kind} namespace of {host}: refusing to write in it"
                );
            }
        }
    }
}

pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// A host tree with the fake `proc/` of the status fixture
/// `01-two-destinations-tw-reuse-off` and no policy (built-in defaults).
pub fn fixture_host() -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    copy_tree(
        &tests_dir().join("fixtures/status/01-two-destinations-tw-reuse-off/proc"),
        &temp.path().join("proc"),
    );
    temp
}

/// `sh tests/helpers/SCRIPT PORTD_BINARY` in a private PID, network and
/// mount namespace with its own /proc (`unshare --pid --fork --mount-proc
/// --net --mount`); the caller adds the script's other arguments.
pub fn helper_in_private_namespaces(script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--net", "--mount", "sh"])
        .arg(tests_dir().join("helpers").join(script))
        .arg(env!("CARGO_BIN_EXE_portd"))
        .env_remove("PORTD_ROOT");
    cmd
}

/// Copies a fixture tree, so that nothing a run does can change the original.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes `files` (path relative to `root`, contents) under `root`.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Where two JSON values differ, one `path: expected X, got Y` a line.
pub fn json_differences(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => json_differences(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: expected {ev}, missing")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{path}.{k}: not expected, got {av}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                json_differences(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ if expected != actual => out.push(format!("{path}: expected {expected}, got {actual}")),
        _ => {}
    }
}

/// What a command printed, stdout then stderr, as one text.
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "portd did not print JSON ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The name (`comm`) of this test process, as portd reports the process
/// that holds a sandbox's sockets.
pub fn own_comm() -> String {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    comm.trim_end().to_string()
}

/// The file `name` under `dir`, which must be there.
pub fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What a command wrote, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An IPv4 TCP socket as `/proc/net/tcp` shows it.
pub struct FakeConn {
    pub local: [u8; 4],
    pub local_port: u16,
    pub remote: [u8; 4],
    pub remote_port: u16,
    /// The kernel's state code: 0x01 ESTABLISHED, 0x06 TIME_WAIT.
    pub state: u8,
}

/// Writes a fake `proc/` under `root`: the sysctls `KernelSettings` reads and
/// the four socket tables, with `conns` in `net/tcp`. No sockstat or snmp, so
/// portd takes a full census on every poll.
pub fn fake_proc(root: &Path, range: (u16, u16), conns: &[FakeConn]) {
    let sys = root.join("proc/sys/net/ipv4");
    std::fs::create_dir_all(&sys).unwrap();
    for (name, value) in [
        ("ip_local_port_range", format!("{}\t{}\n", range.0, range.1)),
        ("ip_local_reserved_ports", "\n".to_string()),
        ("ip_unprivileged_port_start", "1024\n".to_string()),
        ("tcp_tw_reuse", "0\n".to_string()),
        ("tcp_timestamps", "1\n".to_string()),
    ] {
        std::fs::write(sys.join(name), value).unwrap();
    }
    let net = root.join("proc/net");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("tcp"), tcp_table(conns)).unwrap();
    let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    std::fs::write(net.join("tcp6"), v6).unwrap();
    let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n";
    std::fs::write(net.join("udp"), udp).unwrap();
    std::fs::write(net.join("udp6"), v6).unwrap();
}

pub fn tcp_table(conns: &[FakeConn]) -> String {
    let hex = |a: [u8; 4], port: u16| format!("{:08X}:{port:04X}", u32::from_le_bytes(a));
    let mut text = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for (i, c) in conns.iter().enumerate() {
        text.push_str(&format!(
            "{i:4}: {} {} {:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            hex(c.local, c.local_port),
            hex(c.remote, c.remote_port),
            c.state,
            // TIME_WAIT sockets have no inode.
            if c.state == 0x06 { 0 } else { 50000 + i }
        ));
    }
    text
}

/// `n` connections from 10.0.0.5 to `remote`:`remote_port`, on ports from `first`.
pub fn conns_to(remote: [u8; 4], remote_port: u16, first: u16, n: u16) -> Vec<FakeConn> {
    (0..n)
        .map(|i| FakeConn {
            local: [10, 0, 0, 5],
            local_port: first + i,
            remote,
            remote_port,
            state: 0x01,
        })
        .collect()
}

/// Writes a policy file (mode 0644: portd refuses group/other-writable ones).
pub fn write_policy(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A policy's text: a poll every `interval`, a census at least every
/// `max_staleness`, then `tables` (more TOML tables).
pub fn poll_policy(interval: &str, max_staleness: &str, tables: &str) -> String {
    format!("[poll]\ninterval = \"{interval}\"\nmax_staleness = \"{max_staleness}\"\n{tables}")
}

/// One line per alert: event, priority, message (for failure messages).
pub fn summary(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|e| {
            format!(
                "  {} p{} {}",
                e["PORTD_EVENT"].as_str().unwrap_or("?"),
                e["PRIORITY"].as_str().unwrap_or("?"),
                e["MESSAGE"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `MESSAGE_ID`s of `packaging/portd.catalog`.
pub fn catalog_ids() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/portd.catalog");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .map(|id| id.trim().to_string())
        .collect()
}

pub fn catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/portd.catalog")
}

/// The (low, high) of a range in state.json's form (`{"low": L, "high": H}`).
pub fn state_range(v: &Value) -> String {
    format!("{} {}", v["low"], v["high"])
}

/// The `key = value` assignments of a sysctl.d file, in order; panics on
/// any line that is neither a comment, blank, nor an assignment.
pub fn parse_dropin(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not an assignment: {l:?} in\n{text}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}
