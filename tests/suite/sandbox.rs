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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
use serde_json::Value;

use super::portd_child::{Portd, wait_for};
use super::util::{assert_private_namespaces, catalog_path, nsenter, text};

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

/// The sockets a sandbox holds; dropping them closes them.
#[derive(Default)]
struct Held {
    listeners: BTreeMap<u16, TcpListener>,
    /// Connections to a listener of the sandbox: (client, accepted peer).
    pairs: Vec<(TcpStream, TcpStream)>,
    /// Everything else a scenario keeps open.
    other: Vec<OwnedFd>,
}

/// A connection ramp running in the background.
struct Ramp {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<String>>,
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

    /// portd's entries of the journal: those with a `MESSAGE_ID`.
    pub fn portd_alerts(&self) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["SYSLOG_IDENTIFIER"] == "portd" && e.get("MESSAGE_ID").is_some())
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

/// The name of an errno, as the tests compare it.
pub fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(98) => "EADDRINUSE".into(),
        Some(99) => "EADDRNOTAVAIL".into(),
        Some(111) => "ECONNREFUSED".into(),
        Some(115) => "EINPROGRESS".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

/// A socket of the sandbox's network namespace (call it inside
/// [`Sandbox::in_net`]).
pub fn socket(addr: &SocketAddr, kind: SocketType) -> OwnedFd {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    rustix::net::socket_with(family, kind, SocketFlags::CLOEXEC, None).unwrap()
}

/// Sockets: listeners, connections held, ramps.
impl Sandbox {
    /// Listens on 127.0.0.1:`port`; panics when the kernel refuses.
    pub fn listen(&self, port: u16) {
        self.try_listen(port)
            .unwrap_or_else(|e| panic!("listen on {port}: {e}"));
    }

    /// Binds (SO_REUSEADDR) and listens on 127.0.0.1:`port`; the errno name
    /// when the kernel refuses.
    pub fn try_listen(&self, port: u16) -> Result<(), String> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = self.in_net(|| {
            let fd = socket(&addr, SocketType::STREAM);
            sockopt::set_socket_reuseaddr(&fd, true)?;
            rustix::net::bind(&fd, &addr)?;
            rustix::net::listen(&fd, 4096)?;
            Ok::<_, rustix::io::Errno>(TcpListener::from(fd))
        });
        let listener = listener.map_err(|e| errno_name(&e.into()))?;
        self.held.lock().unwrap().listeners.insert(port, listener);
        Ok(())
    }

    /// A listener of the sandbox (IPv4 or IPv6, `dual_stack` or not) on
    /// `addr`, held until the sandbox is dropped.
    pub fn listen_on(&self, addr: SocketAddr, dual_stack: bool) -> TcpListener {
        let fd = self.in_net(|| {
            let fd = socket(&addr, SocketType::STREAM);
            if addr.is_ipv6() {
                sockopt::set_ipv6_v6only(&fd, !dual_stack).unwrap();
            }
            rustix::net::bind(&fd, &addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            rustix::net::listen(&fd, 512).unwrap();
            fd
        });
        let listener = TcpListener::from(fd);
        self.hold(listener.try_clone().unwrap().into());
        listener
    }

    /// Closes the listener on `port` opened by [`Sandbox::listen`].
    pub fn unlisten(&self, port: u16) {
        self.held.lock().unwrap().listeners.remove(&port);
    }

    /// Keeps `fd` open until the sandbox is dropped.
    pub fn hold(&self, fd: OwnedFd) {
        self.held.lock().unwrap().other.push(fd);
    }

    /// A TCP connection to `to` from the sandbox, bound first to `from`
    /// (port 0) when given; with `listener`, also its accepted peer.
    pub fn connect_from(
        &self,
        to: SocketAddr,
        from: Option<SocketAddr>,
        listener: Option<&TcpListener>,
    ) -> std::io::Result<(TcpStream, Option<TcpStream>)> {
        let client = self.in_net(|| {
            let fd = socket(&to, SocketType::STREAM);
            if let Some(from) = from {
                rustix::net::bind(&fd, &from)?;
            }
            rustix::net::connect(&fd, &to)?;
            Ok::<_, rustix::io::Errno>(TcpStream::from(fd))
        })?;
        let peer = listener.map(|l| l.accept().unwrap().0);
        Ok((client, peer))
    }

    /// Opens up to `count` connections to the sandbox's first listener,
    /// holding both ends, stopping at the first failure: (local ports of
    /// those opened, errno name of the failure).
    pub fn connect(&self, count: usize) -> (Vec<u16>, Option<String>) {
        let port = self.target.expect("the sandbox has no listener");
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut held = self.held.lock().unwrap();
        let listener = &held.listeners[&port].try_clone().unwrap();
        let opened = self.in_net(|| {
            let mut pairs = Vec::new();
            for _ in 0..count {
                match TcpStream::connect(to) {
                    Ok(client) => pairs.push((client, listener.accept().unwrap().0)),
                    Err(e) => return (pairs, Some(errno_name(&e))),
                }
            }
            (pairs, None)
        });
        let ports = opened
            .0
            .iter()
            .map(|(c, _)| c.local_addr().unwrap().port())
            .collect();
        held.pairs.extend(opened.0);
        (ports, opened.1)
    }

    /// Starts opening connections to the sandbox's first listener at `rate`
    /// per second until `to` are held (or `connect()` fails).
    pub fn ramp(&mut self, to: usize, rate: u32) {
        let port = self.target.expect("the sandbox has no listener");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = self.held.lock().unwrap().listeners[&port]
            .try_clone()
            .unwrap();
        let held = Arc::clone(&self.held);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let netns = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        let thread = std::thread::spawn(move || {
            enter_net(&netns);
            let step = Duration::from_secs(1) / rate;
            let mut due = Instant::now();
            while !stopped.load(Ordering::Relaxed) && held.lock().unwrap().pairs.len() < to {
                let client = match TcpStream::connect(addr) {
                    Ok(client) => client,
                    Err(e) => return Some(errno_name(&e)),
                };
                let peer = listener.accept().unwrap().0;
                held.lock().unwrap().pairs.push((client, peer));
                due += step;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            None
        });
        self.ramp = Some(Ramp { stop, thread });
    }

    /// Waits (up to 30 s) for the ramp to end: (connections held, errno name
    /// of the failed `connect()` if one failed).
    pub fn wait_ramp(&mut self) -> (usize, Option<String>) {
        let ramp = self.ramp.take().expect("no ramp");
        wait_for("the ramp to end", Duration::from_secs(30), || {
            ramp.thread.is_finished().then_some(())
        });
        let error = ramp.thread.join().unwrap();
        (self.held.lock().unwrap().pairs.len(), error)
    }

    /// Stops the ramp and resets every connection (no TIME_WAIT is left).
    pub fn release(&mut self) {
        if let Some(ramp) = self.ramp.take() {
            ramp.stop.store(true, Ordering::Relaxed);
            let _ = ramp.thread.join();
        }
        let (clients, peers): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held.lock().unwrap().pairs)
                .into_iter()
                .unzip();
        for client in &clients {
            sockopt::set_socket_linger(client, Some(Duration::ZERO)).unwrap();
        }
        // The clients' ports go with the resets, in as short a time as can be,
        // so that a census sees them held or gone, seldom half-way.
        drop(clients);
        drop(peers);
    }
}

/// How a connection ends, leaving the client's port in one TCP state.
impl Sandbox {
    /// The client closes first, then the server: the client's port ends in
    /// TIME_WAIT.
    pub fn client_time_wait(
        &self,
        to: SocketAddr,
        from: Option<SocketAddr>,
        listener: &TcpListener,
    ) {
        let (client, peer) = self.connect_from(to, from, Some(listener)).unwrap();
        drop(client);
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
    }

    /// The client half-closes and the server does not: client FIN_WAIT2
    /// (with an inode).
    pub fn client_fin_wait2(&self, to: SocketAddr, listener: &TcpListener) {
        let (client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
        self.hold(client.into());
        self.hold(peer.into());
    }

    /// The client closes and the server never does: an orphaned FIN_WAIT2
    /// (inode 0).
    pub fn orphaned_fin_wait2(&self, to: SocketAddr, listener: &TcpListener) {
        let (client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        drop(client);
        let mut peer = peer.unwrap();
        wait_eof(&mut peer);
        self.hold(peer.into());
    }

    /// The server closes first: the client's port sits in CLOSE_WAIT.
    pub fn client_close_wait(&self, to: SocketAddr, listener: &TcpListener) {
        let (mut client, peer) = self.connect_from(to, None, Some(listener)).unwrap();
        drop(peer);
        wait_eof(&mut client);
        self.hold(client.into());
    }

    /// A connect() that hangs in SYN_SENT (to an address nobody answers).
    pub fn syn_sent(&self, to: SocketAddr) {
        let fd = self.in_net(|| {
            let fd = rustix::net::socket_with(
                if to.is_ipv4() {
                    AddressFamily::INET
                } else {
                    AddressFamily::INET6
                },
                SocketType::STREAM,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            let rc = rustix::net::connect(&fd, &to);
            assert_eq!(
                rc,
                Err(rustix::io::Errno::INPROGRESS),
                "connect to {to} should hang"
            );
            fd
        });
        self.hold(fd);
    }

    /// A UDP socket, bound to `bind` and connected to `peer` when given.
    pub fn udp(&self, family: SocketAddr, bind: Option<SocketAddr>, peer: Option<SocketAddr>) {
        let fd = self.in_net(|| {
            let fd = socket(&family, SocketType::DGRAM);
            if let Some(bind) = bind {
                rustix::net::bind(&fd, &bind).unwrap();
            }
            if let Some(peer) = peer {
                rustix::net::connect(&fd, &peer).unwrap();
            }
            fd
        });
        self.hold(UdpSocket::from(fd).into());
    }
}

/// Reads until the peer closes (up to 5 s).
fn wait_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    while s.read(&mut buf).unwrap() > 0 {}
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(ramp) = self.ramp.take() {
            ramp.stop.store(true, Ordering::Relaxed);
            let _ = ramp.thread.join();
        }
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
