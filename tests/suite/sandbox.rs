//! The one sandbox of the tests that need root: a private network and mount
//! namespace (and PID namespace, when asked), tmpfs over everything portd
//! writes or reads policy from, an optional systemd-journald of its own,
//! sockets held by the test, and `portd` run inside it (docs/DESIGN.md,
//! "Testing in a namespace").
//!
//! Safe by default, with no way out: the namespaces are held by a `cat`
//! started under `unshare`, and before anything is written the sandbox
//! asserts that it is in a network and mount namespace other than the
//! host's. Every write then goes into those namespaces only: programs run
//! under `nsenter -t PID -n -m`, sysctls and sockets come from a thread
//! moved into the sandbox's network namespace (`setns` changes only that
//! thread), and files are written through `/proc/PID/root` under one of the
//! sandbox's own tmpfs mounts.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::portd_child::{Portd, wait_for};
use super::util::{assert_private_namespaces, catalog_path, nsenter, text};
use sockets::{Held, Ramp};

mod sockets;

pub const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";
pub const RESERVED_KEY: &str = "net.ipv4.ip_local_reserved_ports";
pub const DROPIN: &str = "/etc/sysctl.d/60-portd.conf";
pub const STATE: &str = "/var/lib/portd/state.json";
/// Where a sandbox keeps the policy given to [`SandboxBuilder::policy`] (a
/// tmpfs, owned by root, 0644).
pub const POLICY: &str = "/var/lib/portd-test/policy.toml";
/// The listener the actuation tests connect to: outside every range they use.
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

/// Directories covered by a fresh tmpfs in every sandbox: all that portd
/// writes (the drop-in, its state, lock and live view) and every sysctl.d
/// directory it reads, so the machine's own files play no part.
const TMPFS: [&str; 4] = ["/etc/sysctl.d", "/var/lib", "/run", "/usr/lib/sysctl.d"];

/// How a [`Sandbox`] is set up; [`SandboxBuilder::start`] makes it.
pub struct SandboxBuilder {
    /// Mount point → tmpfs options ("" for the defaults).
    tmpfs: Vec<(&'static str, &'static str)>,
    pid: bool,
    sysctls: Vec<(&'static str, String)>,
    journald: bool,
    policy: Option<&'static str>,
    listen: Vec<u16>,
}

impl SandboxBuilder {
    /// Mounts the tmpfs over `path` (one of the defaults, or another
    /// directory) with `options`, e.g. "ro" or "size=4k".
    pub fn tmpfs(mut self, path: &'static str, options: &'static str) -> Self {
        match self.tmpfs.iter_mut().find(|(p, _)| *p == path) {
            Some(mount) => mount.1 = options,
            None => self.tmpfs.push((path, options)),
        }
        self
    }

    /// A private PID namespace with its own /proc, so that process and
    /// namespace discovery sees only the sandbox's processes.
    pub fn pid_namespace(mut self) -> Self {
        self.pid = true;
        self
    }

    /// Sets a `net.*` sysctl of the sandbox once it is up.
    pub fn sysctl(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.sysctls.push((key, value.into()));
        self
    }

    /// `net.ipv4.ip_local_port_range`, e.g. "40000 40099".
    pub fn range(self, range: &str) -> Self {
        self.sysctl(RANGE_KEY, range)
    }

    /// `net.ipv4.ip_local_reserved_ports`, e.g. "40500" or "" for none.
    pub fn reserved(self, reserved: &str) -> Self {
        self.sysctl(RESERVED_KEY, format!("{reserved}\n"))
    }

    /// A systemd-journald of the sandbox's own, with portd's catalog as its
    /// only one.
    pub fn journald(mut self) -> Self {
        self.journald = true;
        self.tmpfs("/usr/lib/systemd/catalog", "")
    }

    /// Writes `text` to [`POLICY`]; [`Sandbox::portd`] then passes it with
    /// `--config`.
    pub fn policy(mut self, text: &'static str) -> Self {
        self.policy = Some(text);
        self
    }

    /// Listens on 127.0.0.1:`port`; the first such port is where
    /// [`Sandbox::connect`] and [`Sandbox::ramp`] connect to.
    pub fn listen(mut self, port: u16) -> Self {
        self.listen.push(port);
        self
    }

    /// The actuation tests' sandbox: `range` and `reserved`, [`FAST_POLICY`],
    /// a listener on [`TARGET_PORT`].
    pub fn actuation(self, range: &str, reserved: &str) -> Self {
        self.range(range)
            .reserved(reserved)
            .policy(FAST_POLICY)
            .listen(TARGET_PORT)
    }

    pub fn start(self) -> Sandbox {
        raise_fd_limit();
        let (holder, pid) = spawn_holder(self.pid);
        let mut sandbox = Sandbox {
            holder,
            pid,
            pid_namespace: self.pid,
            tmpfs: Vec::new(),
            policy: self.policy.is_some(),
            held: Arc::new(Mutex::new(Held::default())),
            target: self.listen.first().copied(),
            ramp: None,
            journald: None,
            logs: tempfile::tempdir().unwrap(),
            daemons: AtomicUsize::new(0),
        };
        // The guard: nothing below writes before it has passed.
        let mut kinds = vec!["net", "mnt"];
        if self.pid {
            kinds.push("pid");
        }
        assert_private_namespaces(pid, &kinds);
        sandbox.run(&["mount", "--make-rprivate", "/"]);
        for (path, options) in &self.tmpfs {
            sandbox.mount_tmpfs(path, options);
        }
        sandbox.run(&["ip", "link", "set", "lo", "up"]);
        for (key, value) in &self.sysctls {
            sandbox.set_sysctl(key, value);
        }
        if let Some(text) = self.policy {
            sandbox.write_file(POLICY, text);
        }
        for port in self.listen {
            sandbox.listen(port);
        }
        if self.journald {
            let catalog = std::fs::read_to_string(catalog_path()).unwrap();
            sandbox.write_file("/usr/lib/systemd/catalog/portd.catalog", &catalog);
            sandbox.start_journald();
        }
        sandbox
    }
}

/// Raises this process's soft limit on open files to its hard limit: the
/// sandboxes' sockets are held by the test process itself.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// `unshare -n -m [--pid --fork --mount-proc] cat`, reading a pipe that
/// closes when the test ends; returns it and the pid of the `cat`, the
/// process whose namespaces the sandbox enters.
fn spawn_holder(pid_namespace: bool) -> (Child, u32) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount"]);
    if pid_namespace {
        cmd.args(["--pid", "--fork", "--mount-proc"]);
    }
    cmd.args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    die_with_the_test(&mut cmd);
    let holder = cmd.spawn().expect("cannot start unshare");
    let unshare = holder.id();
    let cat = wait_for(
        "the sandbox's holder to start",
        Duration::from_secs(5),
        || {
            let pid = if pid_namespace {
                let children =
                    std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                        .ok()?;
                children.split_whitespace().next()?.parse().ok()?
            } else {
                unshare
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "cat").then_some(pid)
        },
    );
    (holder, cat)
}

/// `cmd` gets SIGKILL when the test thread that starts it ends, should the
/// test die before the sandbox's drop stops it.
fn die_with_the_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A private network and mount namespace; see the module doc. Dropping it
/// stops its journald and its holder (by pid) and closes its sockets.
pub struct Sandbox {
    holder: Child,
    pid: u32,
    pid_namespace: bool,
    tmpfs: Vec<String>,
    policy: bool,
    held: Arc<Mutex<Held>>,
    target: Option<u16>,
    ramp: Option<Ramp>,
    journald: Option<Child>,
    /// Where the daemons' stderr goes (on the host: it is the test's).
    logs: tempfile::TempDir,
    daemons: AtomicUsize,
}

impl Sandbox {
    /// A sandbox with tmpfs over every directory portd writes and `lo` up.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            tmpfs: TMPFS.iter().map(|p| (*p, "")).collect(),
            pid: false,
            sysctls: Vec::new(),
            journald: false,
            policy: None,
            listen: Vec::new(),
        }
    }

    /// See [`SandboxBuilder::actuation`].
    pub fn actuation(range: &str, reserved: &str) -> Sandbox {
        Sandbox::builder().actuation(range, reserved).start()
    }

    /// The daemon tests' sandbox: `range`, no reserved ports, `tcp_tw_reuse`
    /// 0, a listener on 127.0.0.1:5001; with `journal`, a journald of its own.
    pub fn with_range(range: &str, journal: bool) -> Sandbox {
        let builder = Sandbox::builder()
            .range(range)
            .reserved("")
            .sysctl("net.ipv4.tcp_tw_reuse", "0")
            .listen(5001);
        if journal {
            builder.journald().start()
        } else {
            builder.start()
        }
    }

    /// The process holding the namespaces (as the host numbers it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `program` inside the sandbox's namespaces (with the PID namespace,
    /// nsenter forks it: another pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let namespaces: &[&str] = if self.pid_namespace {
            &["-n", "-m", "-p"]
        } else {
            &["-n", "-m"]
        };
        nsenter(self.pid, namespaces, program)
    }

    /// Runs `args` in the sandbox; panics unless it succeeds.
    fn run(&self, args: &[&str]) {
        let out = self.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }

    /// `ip ARGS` in the sandbox (addresses and routes of its network).
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip"];
        all.extend_from_slice(args);
        self.run(&all);
    }

    fn mount_tmpfs(&mut self, path: &str, options: &str) {
        if !self.host_path(path).is_dir() {
            return;
        }
        let mut args = vec!["mount", "-t", "tmpfs"];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend(["tmpfs", path]);
        self.run(&args);
        let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap();
        let on_top = mountinfo
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(path))
            .unwrap_or_else(|| panic!("{path} is not mounted:\n{mountinfo}"));
        assert!(
            on_top.contains(" - tmpfs "),
            "{path} is not a tmpfs: {on_top}"
        );
        self.tmpfs.push(path.to_string());
    }

    /// Mounts a tracefs of the sandbox's own mount namespace, for the
    /// failure witness (not mounted on the machine; a systemd host has it at
    /// /sys/kernel/tracing).
    pub fn mount_tracefs(&self) {
        self.run(&["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"]);
    }

    /// Runs `f` on a thread moved into the sandbox's network namespace:
    /// sockets it creates and `/proc/sys/net` files it opens are the
    /// sandbox's.
    pub fn in_net<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let netns = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_net(&netns);
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn host_path(&self, path: &str) -> PathBuf {
        assert!(path.starts_with('/'), "not absolute: {path}");
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// A file as the sandbox sees it (read through /proc/PID/root).
    pub fn read_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.host_path(path)).ok()
    }

    /// Writes a file (mode 0644) under one of the sandbox's tmpfs mounts;
    /// panics for any other path.
    pub fn write_file(&self, path: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            !path.contains("/..")
                && self.tmpfs.iter().any(|m| path
                    .strip_prefix(m.as_str())
                    .is_some_and(|r| r.starts_with('/'))),
            "refusing to write {path}: not under a tmpfs of the sandbox ({:?})",
            self.tmpfs
        );
        let file = self.host_path(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Runs `cmd` with `sh -c` in the sandbox; panics unless it succeeds;
    /// its stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.command("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "`{cmd}` failed: {out:?}");
        text(&out.stdout)
    }

    /// A sysctl of the sandbox, without its trailing newline.
    pub fn sysctl(&self, key: &str) -> String {
        let path = sysctl_path(key);
        // One read() into a buffer large enough for any value: a sysctl
        // read in pieces may come back cut (a reserved list at 32 bytes).
        let value = self.in_net(|| {
            let mut buf = vec![0u8; 1 << 20];
            let n = File::open(&path)?.read(&mut buf)?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        value
            .unwrap_or_else(|e| panic!("reading {key}: {e}"))
            .trim_end()
            .to_string()
    }

    /// Writes a `net.*` sysctl of the sandbox, as an administrator would.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        assert!(key.starts_with("net."), "not a per-namespace key: {key}");
        let path = sysctl_path(key);
        self.in_net(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("writing {key} = {value:?}: {e}"));
    }

    /// The range as the kernel prints it, with a space: "40000 40099".
    pub fn range(&self) -> String {
        self.sysctl(RANGE_KEY).replace('\t', " ")
    }

    pub fn reserved(&self) -> String {
        self.sysctl(RESERVED_KEY)
    }

    /// `ss ARGS` in the sandbox; its stdout.
    pub fn ss(&self, args: &[&str]) -> String {
        let out = self.command("ss").args(args).output().unwrap();
        assert!(out.status.success(), "ss failed: {out:?}");
        text(&out.stdout)
    }

    fn start_journald(&mut self) {
        self.write_file(
            "/run/systemd/journald.conf.d/50-portd-test.conf",
            "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\n\
             ForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\nRateLimitIntervalSec=0\n",
        );
        std::fs::create_dir_all(self.host_path("/run/systemd/journal")).unwrap();
        let mut cmd = self.command("/usr/lib/systemd/systemd-journald");
        cmd.env("SYSTEMD_LOG_TARGET", "console")
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        die_with_the_test(&mut cmd);
        let journald = cmd.spawn().expect("cannot start systemd-journald");
        self.journald = Some(journald);
        let socket = self.host_path("/run/systemd/journal/socket");
        wait_for("journald's socket", Duration::from_secs(5), || {
            socket.exists().then_some(())
        });
    }

    /// `portd [--config POLICY] ARGS` in the sandbox (nsenter execs it: same
    /// pid).
    pub fn portd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_portd"));
        if self.policy {
            cmd.arg("--config").arg(POLICY);
        }
        cmd.args(args);
        cmd
    }

    /// `portd ARGS` run to its end; fails the test if it wrote to stderr.
    pub fn portd_output(&self, args: &[&str]) -> Output {
        let out = self.portd(args).output().unwrap();
        assert!(
            out.stderr.is_empty(),
            "portd wrote to stderr: {}",
            text(&out.stderr)
        );
        out
    }

    /// Spawns `cmd` (a `portd … run` built from [`Sandbox::portd`] or
    /// [`Sandbox::command`]), its stderr in a file of the test's.
    pub fn spawn_daemon(&self, cmd: Command) -> Portd {
        let n = self.daemons.fetch_add(1, Ordering::Relaxed);
        Portd::spawn(cmd, &self.logs.path().join(format!("stderr.{n}")))
    }

    /// `portd run` in the background, logging to stderr.
    pub fn start_daemon(&self) -> Portd {
        self.spawn_daemon(self.portd(&["run", "--log-target", "stderr"]))
    }

    /// [`Sandbox::start_daemon`], then waits until it has widened `from`
    /// and persisted the drop-in.
    pub fn start_daemon_until_persisted(&self, from: &str) -> Portd {
        let mut daemon = self.start_daemon();
        daemon.wait_widened(from);
        self.wait_persisted();
        daemon
    }

    /// `portd rollback ARGS` in the sandbox.
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

    pub fn state(&self) -> Value {
        self.try_state()
            .unwrap_or_else(|| panic!("{STATE} is missing"))
    }

    /// state.json, or None while portd has not written one yet.
    pub fn try_state(&self) -> Option<Value> {
        let text = self.read_file(STATE)?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{STATE}: {e}\n{text}")))
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

    /// Every entry of the sandbox's journal (`journalctl -o json`).
    pub fn journal(&self) -> Vec<Value> {
        let out = self
            .command("journalctl")
            .args(["-D", "/run/log/journal", "-o", "json", "--no-pager"])
            .output()
            .unwrap();
        assert!(out.status.success(), "journalctl failed: {out:?}");
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// portd's alerts in the journal: its entries with a `MESSAGE_ID`, but
    /// for its notes about itself (start, stop, what fails).
    pub fn portd_alerts(&self) -> Vec<Value> {
        let note = |e: &Value| {
            portd::publish::events::Kind::ALL
                .iter()
                .any(|k| k.is_note() && e["PORTD_EVENT"] == k.name())
        };
        self.journal()
            .into_iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "portd" && e.get("MESSAGE_ID").is_some())
            .filter(|e| !note(e))
            .collect()
    }

    /// Waits until the journal holds `count` alerts with this
    /// `PORTD_EVENT`; returns all portd alerts then.
    pub fn wait_alerts(&self, event: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.portd_alerts();
            if alerts.iter().filter(|e| e["PORTD_EVENT"] == event).count() >= count {
                return alerts;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} {event} alert(s) within {timeout:?}; alerts so far:\n{}",
                super::util::summary(&alerts)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The file of sysctl `key` (`net.ipv4.x` → `/proc/sys/net/ipv4/x`).
fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Moves this thread into the network namespace `netns`, then asserts that
/// it is not the host's.
fn enter_net(netns: &File) {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
        .expect("setns into the sandbox's network namespace");
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    for host in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if let Ok(theirs) = std::fs::read_link(host) {
            assert_ne!(
                ours, theirs,
                "the sandbox thread is in {host}: refusing to go on"
            );
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ramp();
        if let Some(mut journald) = self.journald.take() {
            stop_child(&mut journald, rustix::process::Signal::TERM);
        }
        // Closing its stdin ends the `cat`, and the namespaces with it.
        self.holder.stdin.take();
        stop_child(&mut self.holder, rustix::process::Signal::TERM);
    }
}

/// Stops a child of the test (by pid): `signal`, then SIGKILL when it still
/// runs 5 s later.
pub fn stop_child(child: &mut Child, signal: rustix::process::Signal) {
    if let Ok(None) = child.try_wait() {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}
