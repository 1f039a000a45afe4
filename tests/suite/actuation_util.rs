//! Harness of the actuation tests: a private network AND mount namespace
//! held by `tests/helpers/actuation_ns.py`, with tmpfs over every directory
//! portd writes to, and `portd run` daemons started inside it.
//!
//! Nothing here writes a path or a sysctl of the machine: files and sysctls
//! are written by the helper, which refuses unless its namespaces are
//! private, and every other program runs under `nsenter -t HELPER -n -m`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::util::{LineHelper, nsenter, tests_dir};

pub const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";
pub const RESERVED_KEY: &str = "net.ipv4.ip_local_reserved_ports";
pub const DROPIN: &str = "/etc/sysctl.d/60-portd.conf";
pub const STATE: &str = "/var/lib/portd/state.json";
/// Where the tests keep their policy file (a tmpfs, owned by root, 0644).
pub const POLICY: &str = "/var/lib/portd-test/policy.toml";
/// The listener the test connections go to: outside every range used here.
pub const TARGET_PORT: u16 = 8080;

/// Fast polls, no hold, no cooldown: a widening happens within a poll or two.
/// Max staleness stays long: a failed persist must be retried on every poll,
/// even when the fast path skips the census.
pub const FAST_POLICY: &str = r#"
[poll]
interval = "200ms"
max_staleness = "5m"

[thresholds]
hold = "0s"

[widen]
cooldown = "0s"
max_changes_per_hour = 100
"#;

/// What a command wrote, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Directories covered by a fresh tmpfs in every test namespace: all that
/// portd writes (the drop-in, its state and lock) and all sysctl.d
/// directories it reads, so the machine's own files play no part.
pub fn default_mounts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("/etc/sysctl.d", ""),
        ("/var/lib", ""),
        ("/run", ""),
        ("/usr/lib/sysctl.d", ""),
    ]
}

/// A private network + mount namespace, held open by the helper until drop.
pub struct Ns {
    helper: LineHelper,
}

impl Ns {
    /// Mounts `mounts` (path, tmpfs options), brings `lo` up, sets the range
    /// and the reserved ports, writes [`FAST_POLICY`] and listens on
    /// [`TARGET_PORT`].
    pub fn start(mounts: &[(&str, &str)], range: &str, reserved: &str) -> Ns {
        let ns_link = |kind: &str| {
            std::fs::read_link(format!("/proc/self/ns/{kind}"))
                .unwrap()
                .into_os_string()
        };
        let setup = json!({
            "mounts": mounts,
            "sysctls": { RANGE_KEY: range, RESERVED_KEY: format!("{reserved}\n") },
        });
        let mut cmd = Command::new("unshare");
        cmd.arg("-nm")
            .arg("python3")
            .arg("-u")
            .arg(tests_dir().join("helpers/actuation_ns.py"))
            .arg(ns_link("net"))
            .arg(ns_link("mnt"))
            .arg(setup.to_string());
        let (helper, _) = LineHelper::spawn(
            "namespace helper",
            cmd,
            Duration::from_secs(5),
            &["net", "mnt"],
        );
        let mut ns = Ns { helper };
        ns.write_file(POLICY, FAST_POLICY);
        ns.listen(TARGET_PORT);
        ns
    }

    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    pub fn request(&mut self, request: Value) -> Value {
        self.helper.request(request)
    }

    pub fn sysctl(&mut self, key: &str) -> String {
        let v = self.request(json!({"op": "sysctl", "key": key}));
        v["value"].as_str().unwrap().trim_end().to_string()
    }

    /// The range as the kernel prints it, with a space: "40000 40099".
    pub fn range(&mut self) -> String {
        self.sysctl(RANGE_KEY).replace('\t', " ")
    }

    pub fn reserved(&mut self) -> String {
        self.sysctl(RESERVED_KEY)
    }

    /// Writes a sysctl of the namespace as an administrator would.
    pub fn set_sysctl(&mut self, key: &str, value: &str) {
        let v = self.request(json!({"op": "sysctl", "key": key, "value": value}));
        assert_eq!(v["ok"], true, "writing {key} = {value:?}: {v}");
    }

    pub fn listen(&mut self, port: u16) {
        let v = self.request(json!({"op": "listen", "port": port}));
        assert_eq!(v["ok"], true, "listen on {port}: {v}");
    }

    /// Binds and listens on `port`; the errno name when the kernel refuses.
    pub fn try_listen(&mut self, port: u16) -> Result<(), String> {
        let v = self.request(json!({"op": "listen", "port": port}));
        match v["ok"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(v["errno"].as_str().unwrap_or("?").to_string()),
        }
    }

    pub fn unlisten(&mut self, port: u16) {
        self.request(json!({"op": "unlisten", "port": port}));
    }

    /// Opens up to `count` connections to [`TARGET_PORT`], stopping at the
    /// first failure: (local ports of those opened, errno name of the failure).
    pub fn connect(&mut self, count: usize) -> (Vec<u16>, Option<String>) {
        let v = self.request(json!({"op": "connect", "to": TARGET_PORT, "count": count}));
        let ports = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u16)
            .collect();
        (ports, v["errno"].as_str().map(str::to_string))
    }

    /// Writes a file under one of the helper's tmpfs mounts (mode 0644).
    pub fn write_file(&mut self, path: &str, text: &str) {
        self.request(json!({"op": "write_file", "path": path, "text": text}));
    }

    /// Runs `cmd` with `sh -c` in the namespaces; panics unless it succeeds.
    pub fn sh(&mut self, cmd: &str) -> String {
        let v = self.request(json!({"op": "sh", "cmd": cmd}));
        assert_eq!(v["rc"], 0, "`{cmd}` failed: {v}");
        v["stdout"].as_str().unwrap().to_string()
    }

    /// A file as the namespace sees it (read through /proc/PID/root).
    pub fn read_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.host_path(path)).ok()
    }

    fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid()))
    }

    pub fn state(&self) -> Value {
        self.try_state()
            .unwrap_or_else(|| panic!("{STATE} is missing"))
    }

    /// state.json, or None while portd has not written one yet.
    pub fn try_state(&self) -> Option<Value> {
        let text = self.read_file(STATE)?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{STATE}: {e}\n{text}")))
    }

    /// `program` run inside both namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        nsenter(self.pid(), true, program)
    }

    /// `portd --config POLICY ARGS` inside the namespaces.
    pub fn portd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_portd"));
        cmd.arg("--config").arg(POLICY).args(args);
        cmd
    }

    /// `portd run` in the background, logging to stderr.
    /// `portd rollback ARGS` in the namespace.
    pub fn rollback(&self, args: &[&str]) -> Output {
        let mut all = vec!["rollback"];
        all.extend_from_slice(args);
        self.portd(&all).output().unwrap()
    }

    /// `portd rollback ARGS`, which must exit 0 and say each of `said`;
    /// its stdout.
    pub fn rollback_ok(&self, args: &[&str], said: &[&str]) -> String {
        let out = self.rollback(args);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        for said in said {
            assert!(
                stdout.contains(said),
                "rollback must say {said:?}:\n{stdout}"
            );
        }
        stdout
    }

    pub fn start_daemon(&self) -> Daemon {
        Daemon::spawn(self.portd(&["run", "--log-target", "stderr"]))
    }

    /// [`Ns::start_daemon`], then waits until it has widened `from` and
    /// persisted the drop-in.
    pub fn start_daemon_until_persisted(&self, from: &str) -> Daemon {
        let mut daemon = self.start_daemon();
        daemon.wait_widened(from);
        self.wait_persisted();
        daemon
    }

    /// Waits up to 10 s for the state to say the drop-in is persisted.
    pub fn wait_persisted(&self) {
        wait_for(
            "the drop-in to be persisted",
            Duration::from_secs(10),
            || {
                self.try_state()
                    .filter(|s| s["last_written"]["persisted"] == true)
            },
        );
    }
}

/// An strace attached to a portd; its stderr stays open (and unread) until
/// it is dropped.
pub struct Strace {
    child: Child,
    _stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Strace {
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

/// A `portd run` started by a test; its stderr is collected as it comes.
/// Dropping it kills it (by pid) if it still runs.
pub struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr has a line containing every one of `parts`;
    /// returns that line. Panics with the whole stderr after `timeout`.
    pub fn wait_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            if Instant::now() >= deadline || !self.running() {
                panic!(
                    "no line with {parts:?} within {timeout:?} (daemon running: {}); stderr:\n{text}",
                    self.running()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Daemon::wait_line`] for each of `lines` in turn, each within
    /// `timeout`.
    pub fn wait_lines(&mut self, lines: &[&str], timeout: Duration) {
        for line in lines {
            self.wait_line(&[line], timeout);
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// `strace` (built by the caller: `ns.command("strace").args(…)`)
    /// attached to this portd with `-p`; returns once strace says it
    /// traces it.
    pub fn attach_strace(&self, strace: &mut Command) -> Strace {
        let mut child = strace
            .arg("-p")
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // strace says "Process N attached" once it traces portd.
        let mut attached = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut attached, &mut line).unwrap();
        assert!(line.contains("attached"), "strace: {line}");
        Strace {
            child,
            _stderr: attached,
        }
    }

    /// Waits up to 10 s for the line saying portd widened the range `from`
    /// ("40000-40099"); returns it.
    pub fn wait_widened(&mut self, from: &str) -> String {
        self.wait_line(
            &[&format!("widened ip_local_port_range {from} ->")],
            Duration::from_secs(10),
        )
    }

    /// [`Daemon::stop`], which must exit 0; the whole stderr.
    pub fn stop_ok(self) -> String {
        let (code, stderr) = self.stop();
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    }

    /// SIGTERM, then waits; returns the exit code and the whole stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "portd did not stop within 5 s of SIGTERM; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code(), self.stderr())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
