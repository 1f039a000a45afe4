//! Harness of the daemon tests: a fake `NOTIFY_SOCKET`, fake `/proc` trees,
//! a `portd run` child, and a private network + mount namespace (optionally
//! with a systemd-journald of its own) holding real sockets.
//!
//! Nothing here writes a path or a sysctl of the machine: the sandbox script
//! refuses to run unless its network and mount namespaces are private, mounts
//! tmpfs over every directory portd writes or reads policy from, and every
//! program that must see the sandbox runs under `nsenter -t PID -n -m`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::util::{LineHelper, nsenter, tests_dir};

/// A unix datagram socket standing in for systemd's notify socket.
pub struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far, with when it arrived.
    pub seen: Vec<(Instant, String)>,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        // A signal meant for another test's child can interrupt the wait
        // (EINTR): that is no answer, so wait again.
        let received = loop {
            match self.socket.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match received {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text.clone()));
                Some(text)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Receives until a datagram satisfies `pred`; panics after `timeout`
    /// with everything received so far.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within {timeout:?}; received: {:#?}",
                    self.seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
                );
            }
            if let Some(m) = self.recv(left)
                && pred(&m)
            {
                return m;
            }
        }
    }

    /// Everything that arrives within `period`.
    pub fn collect(&mut self, period: Duration) -> Vec<String> {
        let deadline = Instant::now() + period;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            if let Some(m) = self.recv(left) {
                got.push(m);
            }
        }
    }
}

/// The `STATUS=` text of a notify datagram.
pub fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
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

/// A running `portd run`, its stderr kept in a file. Killed (by its pid) if
/// the test ends without stopping it.
/// A policy's text: a poll every `interval`, a census at least every
/// `max_staleness`, then `tables` (more TOML tables).
pub fn poll_policy(interval: &str, max_staleness: &str, tables: &str) -> String {
    format!("[poll]\ninterval = \"{interval}\"\nmax_staleness = \"{max_staleness}\"\n{tables}")
}

pub struct Portd {
    child: Child,
    stderr: PathBuf,
}

impl Portd {
    /// Spawns `cmd` (a `portd … run` command) with stderr to `stderr`.
    pub fn spawn(mut cmd: Command, stderr: &Path) -> Portd {
        let file = std::fs::File::create(stderr).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Portd {
            child,
            stderr: stderr.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test, showing the whole stderr, unless it contains `text`.
    pub fn assert_stderr_has(&self, text: &str) {
        let stderr = self.stderr();
        assert!(stderr.contains(text), "no {text:?} in stderr:\n{stderr}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; `None` if it takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status; panics unless it exits within 2 s.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait(Duration::from_secs(2)).unwrap_or_else(|| {
            panic!(
                "portd did not exit within 2 s of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        });
        (status, sent.elapsed())
    }
}

/// Starts `cmd` (a `portd … run`) with a notify socket in `dir` and its
/// stderr in `dir/stderr`; returns once portd says `READY=1`. With
/// `journal_stream`, `JOURNAL_STREAM` names that file as systemd names the
/// journal's stream, so portd takes its stderr for the journal.
pub fn start_ready(mut cmd: Command, dir: &Path, journal_stream: bool) -> (Portd, Notify) {
    let mut notify = Notify::bind(dir);
    let stderr = dir.join("stderr");
    cmd.env("NOTIFY_SOCKET", notify.path());
    if journal_stream {
        std::fs::write(&stderr, "").unwrap();
        let meta = std::fs::metadata(&stderr).unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let portd = Portd::spawn(cmd, &stderr);
    notify.wait_for("READY", Duration::from_secs(5), |m| m.contains("READY=1"));
    (portd, notify)
}

impl Drop for Portd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sandbox script: run only as `unshare -n -m python3 -c SCRIPT OUTER_NET
/// OUTER_MNT SETUP_JSON`. It refuses to touch anything unless both its
/// namespaces differ from the test's and from PID 1's.
///
/// Protocol: one JSON object a line. Once set up it prints
/// `{"ready": true, ...}`, then answers each request line read from stdin.
/// End of stdin (the test closed it, or died) stops journald, closes every
/// socket and exits; an alarm does the same after DEADLINE seconds.
const SANDBOX: &str = r###"
import ctypes, errno, json, os, shutil, signal, socket, subprocess, sys, threading, time

import sandbox
from sandbox import run, write

DEADLINE = 150
clients, accepted = [], []
lock = threading.Lock()
journald = None
listener = None
ramp = None


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def stop_journald():
    global journald
    sandbox.stop(journald)  # our own child, by pid
    journald = None


def fail(message):
    reply({"error": message})
    stop_journald()
    sys.exit(1)


def on_alarm(signum, frame):
    stop_journald()
    os._exit(3)


def setup(opts):
    global journald
    run("mount", "--make-rprivate", "/")
    # Everything portd writes, and every sysctl.d directory it reads.
    for path in ("/etc/sysctl.d", "/var/lib", "/run", "/usr/lib/sysctl.d"):
        if os.path.isdir(path):
            run("mount", "-t", "tmpfs", "tmpfs", path)
    facts = {}
    if opts.get("catalog"):
        run("mount", "-t", "tmpfs", "tmpfs", "/usr/lib/systemd/catalog")
        shutil.copy(opts["catalog"], "/usr/lib/systemd/catalog/portd.catalog")
    if opts.get("journald"):
        journald = sandbox.start_journald(fail)
        facts["journald_pid"] = journald.pid
    run("ip", "link", "set", "lo", "up")
    write("/proc/sys/net/ipv4/ip_local_port_range", opts["range"])
    write("/proc/sys/net/ipv4/ip_local_reserved_ports", "\n")
    write("/proc/sys/net/ipv4/tcp_tw_reuse", str(opts.get("tw_reuse", 0)))
    global listener
    listener = socket.socket()
    listener.bind(("127.0.0.1", opts.get("port", 5001)))
    listener.listen(4096)
    return facts


class Ramp(threading.Thread):
    """Opens connections to the listener at a fixed rate, holding them."""

    def __init__(self, to, rate):
        super().__init__(daemon=True)
        self.to, self.rate, self.error, self.stop = to, rate, None, False

    def run(self):
        step = 1.0 / self.rate
        due = time.monotonic()
        while not self.stop:
            with lock:
                if len(clients) >= self.to:
                    return
            c = socket.socket()
            try:
                c.connect(listener.getsockname())
            except OSError as e:
                c.close()
                self.error = errno.errorcode.get(e.errno, str(e.errno))
                return
            a, _ = listener.accept()
            with lock:
                clients.append(c)
                accepted.append(a)
            due += step
            time.sleep(max(0.0, due - time.monotonic()))


def release(n):
    """Closes n client connections with a reset: no TIME_WAIT is left."""
    with lock:
        n = len(clients) if n is None else min(n, len(clients))
        for _ in range(n):
            c, a = clients.pop(), accepted.pop()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
            a.close()
        return len(clients)


def handle(req):
    global ramp
    op = req["op"]
    if op == "ramp":
        ramp = Ramp(req["to"], req["rate"])
        ramp.start()
        return {"ok": True}
    if op == "wait_ramp":
        ramp.join(req.get("timeout", 30))
        with lock:
            return {"held": len(clients), "connect_error": ramp.error, "done": not ramp.is_alive()}
    if op == "release":
        if ramp is not None:
            ramp.stop = True
            ramp.join()
        return {"held": release(req.get("n"))}
    if op == "sysctl":
        path = "/proc/sys/" + req["key"].replace(".", "/")
        if "value" in req:
            write(path, req["value"])
        with open(path) as f:
            return {"value": f.read()}
    return {"error": f"unknown request {op!r}"}


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(DEADLINE)
    outer_net, outer_mnt, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    sandbox.check_private(outer_net, outer_mnt, fail, "the test's own")
    facts = setup(opts)
    reply({"ready": True, "pid": os.getpid(), **facts})
    for line in sys.stdin:
        try:
            reply(handle(json.loads(line)))
        except Exception as e:
            reply({"error": f"{type(e).__name__}: {e}"})
    stop_journald()


try:
    main()
except SystemExit:
    raise
except BaseException as e:
    reply({"error": f"{type(e).__name__}: {e}"})
    stop_journald()
    sys.exit(1)
"###;

pub struct SandboxOptions<'a> {
    /// `net.ipv4.ip_local_port_range`, e.g. "40000 40199".
    pub range: &'a str,
    pub tw_reuse: u8,
    /// Start a systemd-journald of the sandbox's own.
    pub journald: bool,
    /// A catalog file to install as the only one of the sandbox.
    pub catalog: Option<&'a Path>,
}

/// A private network + mount namespace held open by the sandbox script.
pub struct Sandbox {
    helper: LineHelper,
}

impl Sandbox {
    pub fn start(opts: &SandboxOptions<'_>) -> Sandbox {
        let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        let setup = json!({
            "range": opts.range,
            "tw_reuse": opts.tw_reuse,
            "journald": opts.journald,
            "catalog": opts.catalog,
        });
        let mut cmd = Command::new("unshare");
        cmd.args(["-n", "-m", "python3", "-u", "-c", SANDBOX])
            .arg(ns("net"))
            .arg(ns("mnt"))
            .arg(setup.to_string())
            // Where the script finds tests/helpers/sandbox.py.
            .env("PYTHONPATH", tests_dir().join("helpers"));
        let (helper, _) = LineHelper::spawn(
            "sandbox script",
            cmd,
            Duration::from_secs(8),
            &["net", "mnt"],
        );
        Sandbox { helper }
    }

    /// A sandbox with the range `range` and `tcp_tw_reuse` 0; with
    /// `journal`, a systemd-journald of its own and portd's catalog.
    pub fn with_range(range: &str, journal: bool) -> Sandbox {
        let catalog = catalog_path();
        Sandbox::start(&SandboxOptions {
            range,
            tw_reuse: 0,
            journald: journal,
            catalog: journal.then_some(catalog.as_path()),
        })
    }

    pub fn pid(&self) -> u32 {
        self.helper.pid()
    }

    /// Mounts a tracefs of the sandbox's own mount namespace, for the
    /// failure witness (not mounted on the machine; a systemd host has it at
    /// /sys/kernel/tracing).
    pub fn mount_tracefs(&self) {
        let out = self
            .command("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .output()
            .expect("mount tracefs");
        assert!(out.status.success(), "mount tracefs: {out:?}");
    }

    pub fn request(&mut self, request: Value) -> Value {
        self.helper.request(request)
    }

    /// Starts opening connections to the listener (127.0.0.1:5001) at `rate` per second until
    /// `to` are held (or `connect()` fails).
    pub fn ramp(&mut self, to: u32, rate: u32) {
        self.request(json!({"op": "ramp", "to": to, "rate": rate}));
    }

    /// Waits for the ramp to end: (connections held, errno name of the
    /// failed `connect()` if one failed).
    pub fn wait_ramp(&mut self) -> (u64, Option<String>) {
        let r = self.request(json!({"op": "wait_ramp", "timeout": 30}));
        assert_eq!(r["done"], true, "the ramp did not end: {r}");
        (
            r["held"].as_u64().unwrap(),
            r["connect_error"].as_str().map(str::to_string),
        )
    }

    /// Stops the ramp and resets all connections (no TIME_WAIT is left).
    pub fn release(&mut self) {
        self.request(json!({"op": "release"}));
    }

    pub fn sysctl(&mut self, key: &str) -> String {
        let r = self.request(json!({"op": "sysctl", "key": key}));
        r["value"].as_str().unwrap().trim().to_string()
    }

    /// Writes a sysctl of the sandbox, as an admin would.
    pub fn set_sysctl(&mut self, key: &str, value: &str) {
        self.request(json!({"op": "sysctl", "key": key, "value": value}));
    }

    /// `program` inside the sandbox's network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        nsenter(self.pid(), true, program)
    }

    /// `portd ARGS` inside the sandbox (nsenter execs it: same pid).
    pub fn portd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_portd"));
        cmd.args(args);
        cmd
    }

    /// Every entry of the sandbox's journal (`journalctl -o json`).
    pub fn journal(&self) -> Vec<Value> {
        let out = self
            .command("journalctl")
            .args(["-D", "/run/log/journal", "-o", "json", "--no-pager"])
            .output()
            .unwrap();
        assert!(out.status.success(), "journalctl failed: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// portd's entries of the journal: those with a `MESSAGE_ID`.
    pub fn portd_alerts(&self) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "portd" && e.get("MESSAGE_ID").is_some())
            .collect()
    }

    /// Waits until the journal holds an alert with this `PORTD_EVENT`
    /// (`count` of them); returns all portd alerts then.
    pub fn wait_alerts(&self, event: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.portd_alerts();
            if alerts.iter().filter(|e| e["PORTD_EVENT"] == event).count() >= count {
                return alerts;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {count} {event} alert(s) within {timeout:?}; alerts so far:\n{}",
                    summary(&alerts)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
