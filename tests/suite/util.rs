//! The harness: the portd binary, the root rule, fixture trees, and private
//! network namespaces holding real sockets.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `portd` binary built for this test run, with a clean environment
/// for the options it reads from it.
pub fn portd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portd"));
    cmd.env_remove("PORTD_ROOT");
    cmd
}

/// Tests that need root call this first and return when it says false. When
/// `CI` is set they fail instead, so CI can never pass by skipping them.
pub fn have_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI is set: refusing to skip it"
    );
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIP (needs root): {test}");
    false
}

pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
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
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The helper's report once its sockets are open.
    pub ready: Value,
}

impl Netns {
    pub fn start(scenario: &str, args: &[&str]) -> Netns {
        // The helper refuses to touch any sysctl if it finds itself in this
        // namespace, i.e. if `unshare -n` did not give it a new one.
        let outer = std::fs::read_link("/proc/self/ns/net").unwrap();
        let script = tests_dir().join("helpers/netns_sockets.py");
        let mut child = Command::new("unshare")
            .arg("-n")
            .arg("python3")
            .arg("-u")
            .arg(&script)
            .arg(scenario)
            .arg(&outer)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unshare -n python3: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ns = Netns {
            child,
            stdin,
            stdout,
            ready: Value::Null,
        };
        ns.ready = ns.read_reply();
        assert_eq!(ns.ready["ready"], true, "helper: {}", ns.ready);
        ns
    }

    /// The helper's pid: a process inside the namespace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read_reply(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the socket helper exited without a reply");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad helper line {line:?}: {e}"));
        assert!(
            v.get("error").is_none(),
            "socket helper failed: {}",
            v["error"]
        );
        v
    }

    /// Sends one request line to the helper and returns its answer.
    pub fn request(&mut self, request: &str) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        self.read_reply()
    }

    /// `program` run inside the namespace (`nsenter -t PID -n`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .arg("-n")
            .arg("--")
            .arg(program)
            .env_remove("PORTD_ROOT");
        cmd
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

/// Ends a helper process the test started: closing its stdin tells it to
/// stop (and release its sockets and namespaces); killed by pid if it
/// lingers past `grace`.
pub fn end_helper(stdin: &mut Option<ChildStdin>, child: &mut Child, grace: Duration) {
    stdin.take();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Netns {
    /// Closing stdin ends the helper, which closes its sockets; the
    /// namespace goes with its last process. Killed by pid if it lingers.
    fn drop(&mut self) {
        end_helper(&mut self.stdin, &mut self.child, Duration::from_secs(5));
    }
}
