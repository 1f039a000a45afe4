//! The harness: the portd binary, the root rule, fixture trees, and private
//! network namespaces holding real sockets.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `program` run by `nsenter` in the namespaces of process `pid`: its
/// network namespace, and its mount namespace too with `mount`. Without the
/// variables through which portd would take the caller's root, journal or
/// service manager for its own.
pub fn nsenter(pid: u32, mount: bool, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t").arg(pid.to_string()).arg("-n");
    if mount {
        cmd.arg("-m");
    }
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
macro_rules! require_root {
    () => {
        if !$crate::suite::util::have_root($crate::suite::util::test_name!()) {
            return;
        }
    };
}

pub(crate) use {require_root, test_name};

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

/// Whether `test` can run as root: see [`can_run`] and [`require_root`].
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

/// A private network namespace, created by `unshare -n` for
/// `tests/helpers/netns_sockets.py`, which sets its sysctls, opens the
/// sockets of a scenario and holds them until this value is dropped.
pub struct Netns {
    helper: LineHelper,
    /// The helper's report once its sockets are open.
    pub ready: Value,
}

impl Netns {
    pub fn start(scenario: &str, args: &[&str]) -> Netns {
        // The helper refuses to touch any sysctl if it finds itself in this
        // namespace, i.e. if `unshare -n` did not give it a new one.
        let outer = std::fs::read_link("/proc/self/ns/net").unwrap();
        let script = tests_dir().join("helpers/netns_sockets.py");
        let mut cmd = Command::new("unshare");
        cmd.arg("-n")
            .arg("python3")
            .arg("-u")
            .arg(&script)
            .arg(scenario)
            .arg(&outer)
            .args(args);
        let (helper, ready) =
            LineHelper::spawn("socket helper", cmd, Duration::from_secs(5), &["net"]);
        Netns { helper, ready }
    }

    /// The helper's pid: a process inside the namespace.
    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    /// Sends one request line to the helper and returns its answer.
    pub fn request(&mut self, request: &str) -> Value {
        self.helper.request(request)
    }

    /// `program` run inside the namespace (`nsenter -t PID -n`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        nsenter(self.pid(), false, program)
    }

    /// `portd ARGS` inside the namespace.
    pub fn portd(&self, args: &[&str]) -> Output {
        let out = self
            .command(env!("CARGO_BIN_EXE_portd"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.stderr.is_empty(),
            "portd wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `ss ARGS` inside the namespace; its stdout.
    pub fn ss(&self, args: &[&str]) -> String {
        let out = self.command("ss").args(args).output().unwrap();
        assert!(out.status.success(), "ss failed: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A helper process the test talks to in JSON lines over its stdin and
/// stdout: its first line reports `"ready": true`, every request gets one
/// reply, and an `"error"` reply fails the test. Dropping it closes its
/// stdin, which tells it to stop (and release its sockets and namespaces);
/// it is killed by pid if it lingers past its grace period.
pub struct LineHelper {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    grace: Duration,
}

impl LineHelper {
    /// Starts `cmd` with piped stdio; returns it and its ready line. Before
    /// the test can ask it for anything, asserts that it runs in namespaces
    /// of each kind in `private` (`net`, `mnt`) other than the host's.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        grace: Duration,
        private: &[&str],
    ) -> (LineHelper, Value) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut helper = LineHelper {
            name,
            child,
            stdin,
            stdout,
            grace,
        };
        let ready = helper.read_reply();
        assert_eq!(ready["ready"], true, "{name}: {ready}");
        // The helper checked its own namespaces before its set-up wrote
        // anything; this checks them again from outside, before any request.
        assert_private_namespaces(helper.pid(), private);
        (helper, ready)
    }

    /// The helper's pid (a process inside its namespaces).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(&mut self, request: impl std::fmt::Display) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        self.read_reply()
    }

    fn read_reply(&mut self) -> Value {
        let name = self.name;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the {name} exited without a reply");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad {name} line {line:?}: {e}"));
        if let Some(e) = v.get("error") {
            panic!(
                "{name} failed: {}",
                e.as_str().map_or_else(|| e.to_string(), str::to_string)
            );
        }
        v
    }
}

impl Drop for LineHelper {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
