//! The macro benchmark (results: docs/benchmarks.md). Builds N real
//! TCP sockets in a private network namespace and times, in the same run and
//! interleaved round by round:
//!
//! - `portd status --json` with the netlink and the procfs source,
//! - `ss -tan`, `cat /proc/net/tcp /proc/net/tcp6`, and the procfs crate's
//!   `tcp()` + `tcp6()` (examples/procfs_tables.rs),
//!
//! whole process against whole process (wall time, CPU and peak RSS from
//! `wait4`), then censuses in-process (portd's library, each source and
//! netlink variant), and optionally the daemon's CPU with idle sockets and
//! with a steady rate of new connections. It prints medians and ratios as
//! Markdown. It times; it asserts nothing about speed.
//!
//! Run it through `benches/macro.sh`. It must start inside a network namespace
//! of its own (`unshare -n`), and refuses otherwise: every sysctl it writes
//! (port range, reserved ports, somaxconn, ehash size) is per namespace.
//! The sockets are loopback connections held by worker processes (this
//! program, re-executed), at most 9,500 per worker because the open-file
//! limit is 20,000; workers die with it (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use portd::base::host::Host;
use portd::base::ports::PortSet;
use portd::observe::census::netlink::{NetlinkOptions, NetlinkSource};
use portd::observe::census::procfs::ProcfsSource;
use portd::observe::census::{KernelSettings, ScanScope, SocketSource};
use portd::observe::usage::{UsageOptions, census_ports, take_census};

/// Connections per worker: two fds each, under the 20,000 open-file limit.
const PAIRS_PER_WORKER: usize = 9_500;
/// Workers listen on 10000+i (IPv4) and 20000+i (IPv6); the churn
/// listeners on 10900+j. All reserved, so connect() never takes them.
const V4_PORT_BASE: u16 = 10_000;
const V6_PORT_BASE: u16 = 20_000;
const CHURN_PORT_BASE: u16 = 10_900;
const CHURN_LISTENERS: u16 = 8;

#[derive(Parser)]
#[command(about = "portd's macro benchmark (run it through benches/macro.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the sockets level by level and time everything.
    Run(Box<RunArgs>),
    /// Internal: hold connections until stdin closes.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Internal: open and close connections at a steady rate.
    #[command(hide = true)]
    Churn(ChurnArgs),
    /// Internal: spawn and time the commands it reads on stdin.
    #[command(hide = true)]
    Spawner,
    /// The reference: one raw legacy sock_diag dump of TCP, messages
    /// counted and not decoded (the kernel's floor for a full census).
    RawDump(RawDumpArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The `net:[...]` link of the namespace the caller runs in; this
    /// program refuses to run in it.
    #[arg(long)]
    outer_netns: String,
    /// The portd binary to time.
    #[arg(long)]
    portd: PathBuf,
    /// The procfs_tables example binary (skipped if absent).
    #[arg(long)]
    procfs_tables: Option<PathBuf>,
    /// Table sizes: lines of /proc/net/tcp + tcp6 (both ends of each
    /// connection, plus the listeners).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,300000")]
    sizes: Vec<usize>,
    /// Timed rounds per level (every command once per round).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Rounds run first and not counted.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// In-process censuses per variant and level.
    #[arg(long, default_value_t = 7)]
    inproc_runs: usize,
    /// Share of the connections made over IPv6 (::1), in percent.
    #[arg(long, default_value_t = 0)]
    v6_percent: usize,
    /// Leave the workers' listener ports unreserved (they lie inside the
    /// range 1024-65535): then the accepted ends of the connections are on
    /// ports a census reads too, and the kernel's port filter skips
    /// nothing (the worst case for the netlink census; by default half the
    /// entries, the accepted ends, are on reserved ports, as the inbound
    /// half of a proxy's sockets are on its service ports).
    #[arg(long)]
    listeners_in_range: bool,
    /// Established-hash buckets of a nested namespace of its own, so that
    /// other namespaces' sockets stay out of the walks (0: share the host's).
    #[arg(long, default_value_t = 262_144)]
    ehash: u32,
    /// Seconds of daemon CPU measurement with idle sockets (0: skip).
    #[arg(long, default_value_t = 0)]
    daemon_seconds: u64,
    /// Level at which the daemon is measured (default: the largest level
    /// up to 300,000).
    #[arg(long)]
    daemon_at: Option<usize>,
    /// The portd binary whose daemon is measured (default: --portd), e.g.
    /// a build whose daemon uses another census source.
    #[arg(long)]
    daemon_portd: Option<PathBuf>,
    /// New connections per second while the daemon is measured again.
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    churn_rates: Vec<u32>,
    /// Seconds per churn rate.
    #[arg(long, default_value_t = 30)]
    churn_seconds: u64,
    /// A shell command to run in the namespace after the last level, with
    /// its sockets still open (profiling: `--then 'perf record ...'`).
    #[arg(long, value_name = "COMMAND")]
    then: Option<String>,
    /// More commands to time: NAME=PROGRAM ARG... (split on spaces).
    #[arg(long, value_name = "NAME=COMMAND")]
    extra: Vec<String>,
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long)]
    index: u16,
    #[arg(long)]
    v4_pairs: usize,
    #[arg(long)]
    v6_pairs: usize,
}

#[derive(Args)]
struct RawDumpArgs {
    /// Let the kernel drop sockets on the reserved ports of the workers'
    /// listeners (bytecode), as a census that skips non-usable ports could.
    #[arg(long)]
    skip_reserved: bool,
    /// Dumps to run; more than one prints the median.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// State mask (`1 << state`); 0x800 (CLOSING only) matches nothing and
    /// measures the walk alone.
    #[arg(long, default_value = "0x1ffe", value_parser = parse_hex)]
    states: u32,
}

fn parse_hex(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Args)]
struct ChurnArgs {
    #[arg(long)]
    rate: u32,
    #[arg(long)]
    seconds: u64,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(args) => run(&args),
        Cmd::Worker(args) => worker(&args),
        Cmd::Churn(args) => churn(&args),
        Cmd::Spawner => spawner(),
        Cmd::RawDump(args) => raw_dump(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("census_bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl std::fmt::Display) -> Res<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

// ---------------------------------------------------------------- namespace

fn netns_link() -> Res<String> {
    ctx(std::fs::read_link("/proc/self/ns/net"), "/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
}

/// Refuses to touch anything unless this is a namespace of our own.
fn check_private_netns(outer: &str) -> Res<()> {
    let own = netns_link()?;
    let init = std::fs::read_link("/proc/1/ns/net")
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    if own == outer || init.as_deref() == Some(own.as_str()) {
        return Err(format!(
            "refusing to run in network namespace {own}: it is not a private one (start me under `unshare -n`)"
        ));
    }
    Ok(())
}

/// Only ever called after `check_private_netns`.
fn sysctl(key: &str, value: &str) -> Res<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ctx(std::fs::write(&path, value), &path)
}

fn setup_namespace(args: &RunArgs) -> Res<()> {
    check_private_netns(&args.outer_netns)?;
    if args.ehash > 0 {
        // Read by the kernel when a child namespace is created
        // (tcp_child_ehash_entries, per namespace): the nested one gets a
        // table of its own, as in the setup of docs/benchmarks.md (a child
        // that shares the host's table walks it whole: docs/kernel.md §5.4).
        let before = netns_link()?;
        sysctl("net.ipv4.tcp_child_ehash_entries", &args.ehash.to_string())?;
        // SAFETY: unshare(2) with a flag, no pointers; single-threaded here.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        if netns_link()? == before {
            return Err("unshare(CLONE_NEWNET) left the namespace unchanged".into());
        }
    }
    let ip = ctx(
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status(),
        "ip link set lo up",
    )?;
    if !ip.success() {
        return Err(format!("ip link set lo up: {ip}"));
    }
    sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    if !args.listeners_in_range {
        sysctl(
            "net.ipv4.ip_local_reserved_ports",
            &format!(
                "{}-{},{}-{}",
                V4_PORT_BASE,
                V4_PORT_BASE + 999,
                V6_PORT_BASE,
                V6_PORT_BASE + 999
            ),
        )?;
    }
    sysctl("net.core.somaxconn", "65535")?;
    // TIME_WAIT of the churn phase holds its 4-tuple and is counted.
    sysctl("net.ipv4.tcp_tw_reuse", "0")
}

// ------------------------------------------------------------------ workers

/// The processes holding the connections of the current level.
struct Generator {
    workers: Vec<(Child, ChildStdin)>,
    next_index: u16,
    pairs: usize,
    v6_percent: usize,
}

impl Generator {
    fn grow_to(&mut self, pairs: usize) -> Res<()> {
        let exe = ctx(std::env::current_exe(), "current_exe")?;
        // Two workers build at once (one per core).
        let mut building: Vec<(Child, ChildStdin, ChildStdout)> = Vec::new();
        while self.pairs < pairs || !building.is_empty() {
            if self.pairs < pairs && building.len() < 2 {
                let n = PAIRS_PER_WORKER.min(pairs - self.pairs);
                let v6 = n * self.v6_percent / 100;
                let mut child = ctx(
                    Command::new(&exe)
                        .args(["worker", "--index", &self.next_index.to_string()])
                        .args(["--v4-pairs", &(n - v6).to_string()])
                        .args(["--v6-pairs", &v6.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn(),
                    "spawning a worker",
                )?;
                let stdin = child.stdin.take().ok_or("worker stdin")?;
                let stdout = child.stdout.take().ok_or("worker stdout")?;
                building.push((child, stdin, stdout));
                self.next_index += 1;
                self.pairs += n;
                continue;
            }
            let (child, stdin, stdout) = building.remove(0);
            let mut line = String::new();
            ctx(BufReader::new(stdout).read_line(&mut line), "worker")?;
            if !line.starts_with("ready") {
                return Err(format!(
                    "worker {} failed (see its message above)",
                    child.id()
                ));
            }
            self.workers.push((child, stdin));
        }
        Ok(())
    }
}

impl Drop for Generator {
    /// Closing stdin ends each worker; killed by pid if it lingers.
    fn drop(&mut self) {
        for (mut child, stdin) in self.workers.drain(..) {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn die_with_parent_and_raise_nofile() -> Res<()> {
    // SAFETY: prctl and rlimit calls with plain integers and a local struct.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err("prctl(PR_SET_PDEATHSIG)".into());
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    Ok(())
}

fn worker_addrs(index: u16) -> (SocketAddr, SocketAddr) {
    let v4 = Ipv4Addr::new(127, 0, (index / 200) as u8, (index % 200 + 2) as u8);
    (
        SocketAddr::from((v4, V4_PORT_BASE + index)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, V6_PORT_BASE + index)),
    )
}

fn worker(args: &WorkerArgs) -> Res<()> {
    die_with_parent_and_raise_nofile()?;
    let (a4, a6) = worker_addrs(args.index);
    let mut held = Vec::with_capacity(2 * (args.v4_pairs + args.v6_pairs));
    let mut listeners = Vec::new();
    for (addr, pairs) in [(a4, args.v4_pairs), (a6, args.v6_pairs)] {
        if pairs == 0 {
            continue;
        }
        let listener = ctx(TcpListener::bind(addr), format!("listen on {addr}"))?;
        for _ in 0..pairs {
            let client = ctx(TcpStream::connect(addr), format!("connect to {addr}"))?;
            let (server, _) = ctx(listener.accept(), "accept")?;
            held.push(client);
            held.push(server);
        }
        listeners.push(listener);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush().ok();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Opens connections to the churn listeners round robin at `rate` per
/// second; the client closes first, so each leaves a TIME_WAIT behind.
fn churn(args: &ChurnArgs) -> Res<()> {
    die_with_parent_and_raise_nofile()?;
    let listeners: Vec<(SocketAddr, TcpListener)> = (0..CHURN_LISTENERS)
        .map(|j| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, CHURN_PORT_BASE + j));
            ctx(TcpListener::bind(addr), format!("listen on {addr}")).map(|l| (addr, l))
        })
        .collect::<Res<_>>()?;
    println!("ready");
    std::io::stdout().flush().ok();
    let start = Instant::now();
    let total = u64::from(args.rate) * args.seconds;
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / f64::from(args.rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (addr, listener) = &listeners[k as usize % listeners.len()];
        let client = ctx(TcpStream::connect(addr), format!("connect to {addr}"))?;
        let (server, _) = ctx(listener.accept(), "accept")?;
        drop(client);
        drop(server);
    }
    println!("done {total}");
    Ok(())
}

// --------------------------------------------------------------- reference

/// One `TCPDIAG_GETSOCK` dump (docs/kernel.md §5) written against libc alone,
/// independent of portd's module; returns the number of sockets.
fn raw_dump_once(skip_reserved: bool, states: u32) -> Res<usize> {
    let bytecode = if skip_reserved {
        raw_dump_bytecode()
    } else {
        Vec::new()
    };
    let attr_len = if bytecode.is_empty() {
        0
    } else {
        4 + bytecode.len()
    };
    let len = 16 + 60 + attr_len;
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&18u16.to_ne_bytes()); // TCPDIAG_GETSOCK
    req.extend_from_slice(&0x301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0; 52]); // family, lens, ext, socket id
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    if !bytecode.is_empty() {
        req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        req.extend_from_slice(&1u16.to_ne_bytes()); // INET_DIAG_REQ_BYTECODE
        req.extend_from_slice(&bytecode);
    }
    // SAFETY: plain syscalls on a socket this function owns, with pointers
    // to local buffers of the lengths given.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if sent < 0 {
            libc::close(fd);
            return Err(format!("sendto: {}", std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut count = 0;
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n < 0 {
                libc::close(fd);
                return Err(format!("recv: {}", std::io::Error::last_os_error()));
            }
            let mut off = 0;
            while off + 16 <= n as usize {
                let l = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default());
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if kind == 2 || kind == 3 {
                    libc::close(fd);
                    return Ok(count);
                }
                count += 1;
                off += (l as usize + 3) & !3;
            }
        }
    }
}

/// Accept unless 10000 <= sport <= 10999 or 20000 <= sport <= 20999, as
/// `inet_diag_bc_op`s {code, yes, no}, each followed by one holding the port
/// (S_GE = 2). `yes` goes on to the next op; a `no` jump to the end accepts,
/// past it (length + 4) rejects (`inet_diag_bc_run`, `inet_diag_bc_audit`).
fn raw_dump_bytecode() -> Vec<u8> {
    let ops: [(u8, u8, u16); 8] = [
        (2, 8, 32), // sport >= 10000, else accept
        (0, 0, 10_000),
        (2, 8, 28), // sport >= 11000, else reject
        (0, 0, 11_000),
        (2, 8, 16), // sport >= 20000, else accept
        (0, 0, 20_000),
        (2, 8, 12), // sport >= 21000: accept, else reject
        (0, 0, 21_000),
    ];
    ops.iter()
        .flat_map(|(code, yes, no)| {
            let mut b = vec![*code, *yes];
            b.extend_from_slice(&no.to_ne_bytes());
            b
        })
        .collect()
}

fn raw_dump(args: &RawDumpArgs) -> Res<()> {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        count = raw_dump_once(args.skip_reserved, args.states)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if args.runs > 1 {
        println!("{count} sockets, median {:.1} ms", median(times));
    }
    Ok(())
}

// ------------------------------------------------------------------- timing

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    max_rss_kib: i64,
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Runs `argv` with stdout and stderr to /dev/null; wall time from spawn to
/// reap, CPU and peak RSS from `wait4`.
fn time_once(argv: &[OsString]) -> Res<(Sample, i32)> {
    let start = Instant::now();
    let child = ctx(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn(),
        argv[0].to_string_lossy(),
    )?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: pointers to locals that outlive the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let sample = Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    };
    Ok((sample, code))
}

/// The timed commands are started by this small process, started before
/// the benchmark grows: a child's peak RSS (`ru_maxrss`) includes the memory
/// of the process that spawned it (exec records the old mm's high-water
/// mark), so spawning from the benchmark itself would report its RSS.
/// One request per line on stdin (a JSON array of arguments), one answer.
fn spawner() -> Res<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = ctx(line, "spawner stdin")?;
        let argv: Vec<String> = ctx(serde_json::from_str(&line), "spawner request")?;
        let argv: Vec<OsString> = argv.into_iter().map(OsString::from).collect();
        let answer = match time_once(&argv) {
            Ok((s, code)) => serde_json::json!({
                "wall": s.wall, "cpu": s.cpu, "rss": s.max_rss_kib, "code": code
            }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        ctx(writeln!(out, "{answer}"), "spawner stdout")?;
        ctx(out.flush(), "spawner stdout")?;
    }
    Ok(())
}

struct Spawner {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Spawner {
    fn start() -> Res<Spawner> {
        let exe = ctx(std::env::current_exe(), "current_exe")?;
        let mut child = ctx(
            Command::new(exe)
                .arg("spawner")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn(),
            "spawner",
        )?;
        let stdin = child.stdin.take().ok_or("spawner stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("spawner stdout")?);
        Ok(Spawner {
            child,
            stdin,
            stdout,
        })
    }

    fn time(&mut self, argv: &[OsString], ok_codes: &[i32]) -> Res<Sample> {
        let request: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let request = ctx(serde_json::to_string(&request), "request")?;
        ctx(writeln!(self.stdin, "{request}"), "spawner")?;
        let mut line = String::new();
        ctx(self.stdout.read_line(&mut line), "spawner")?;
        let v: serde_json::Value = ctx(serde_json::from_str(&line), "spawner answer")?;
        if let Some(e) = v.get("error") {
            return Err(e.to_string());
        }
        let code = v["code"].as_i64().unwrap_or(-1) as i32;
        if !ok_codes.contains(&code) {
            return Err(format!("{request} exited with status {code}"));
        }
        Ok(Sample {
            wall: v["wall"].as_f64().unwrap_or(f64::NAN),
            cpu: v["cpu"].as_f64().unwrap_or(f64::NAN),
            max_rss_kib: v["rss"].as_i64().unwrap_or(0),
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing stdin ends it.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Timed {
    name: String,
    argv: Vec<OsString>,
    ok_codes: Vec<i32>,
    samples: Vec<Sample>,
}

impl Timed {
    fn new(name: &str, argv: &[&std::ffi::OsStr], ok_codes: &[i32]) -> Timed {
        Timed {
            name: name.to_string(),
            argv: argv.iter().map(|a| a.to_os_string()).collect(),
            ok_codes: ok_codes.to_vec(),
            samples: Vec::new(),
        }
    }
    fn wall_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.wall * 1e3).collect())
    }
    fn cpu_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| s.cpu * 1e3).collect())
    }
    fn rss_mib(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.max_rss_kib)
            .max()
            .unwrap_or(0) as f64
            / 1024.0
    }
}

/// Jiffies (busy, total) of all CPUs, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn busy_since(then: (u64, u64)) -> f64 {
    let now = cpu_jiffies();
    let total = now.1.saturating_sub(then.1).max(1);
    100.0 * now.0.saturating_sub(then.0) as f64 / total as f64
}

fn table_entries() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| b.iter().filter(|c| **c == b'\n').count().saturating_sub(1))
                .unwrap_or(0)
        })
        .sum()
}

// --------------------------------------------------------------- in-process

struct InProc {
    name: &'static str,
    wall_ms: f64,
    cpu_ms: f64,
    sockets: u64,
}

fn self_cpu() -> f64 {
    // SAFETY: an all-zero rusage is valid and getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// What an in-process variant times.
enum Mode {
    /// A whole census (`take_census`).
    Census,
    /// One scan of the ports a census reads, sockets counted.
    ScanCensusPorts,
    /// One scan of every port, sockets counted (what a census cost before
    /// it asked only for its ports).
    ScanEverything,
}

fn in_process(runs: usize) -> Res<Vec<InProc>> {
    let host = Host::default();
    let netlink = |bound_inactive, single_walk| {
        NetlinkSource::open(
            &host,
            NetlinkOptions {
                bound_inactive,
                single_walk,
            },
        )
        .map_err(|e| e.to_string())
    };
    let default = netlink(false, true)?;
    println!(
        "sock_diag: single walk {}, port filter in the kernel {}",
        yes_no(default.single_walk()),
        yes_no(default.filters())
    );
    let sources: Vec<(&'static str, Box<dyn SocketSource>, Mode)> = vec![
        (
            "netlink census (single walk; default)",
            Box::new(netlink(false, true)?),
            Mode::Census,
        ),
        (
            "netlink census, two per-family dumps",
            Box::new(netlink(false, false)?),
            Mode::Census,
        ),
        (
            "netlink census, single walk + bound-inactive",
            Box::new(netlink(true, true)?),
            Mode::Census,
        ),
        (
            "netlink census, two dumps + bound-inactive",
            Box::new(netlink(true, false)?),
            Mode::Census,
        ),
        (
            "netlink scan only (no aggregation)",
            Box::new(netlink(false, true)?),
            Mode::ScanCensusPorts,
        ),
        (
            "netlink scan only, every port (no kernel filter)",
            Box::new(netlink(false, true)?),
            Mode::ScanEverything,
        ),
        (
            "procfs census (streaming parser)",
            Box::new(ProcfsSource::new(&host)),
            Mode::Census,
        ),
        (
            "procfs scan only (no aggregation)",
            Box::new(ProcfsSource::new(&host)),
            Mode::ScanCensusPorts,
        ),
    ];
    let mut out = Vec::new();
    for (name, source, mode) in &sources {
        let (mut walls, mut cpus, mut sockets) = (Vec::new(), Vec::new(), 0);
        for _ in 0..runs.max(1) {
            let settings = ctx(KernelSettings::read(&host), "kernel settings")?;
            let (c0, t0) = (self_cpu(), Instant::now());
            let mut n = 0u64;
            match mode {
                Mode::Census => {
                    let usage = ctx(
                        take_census(source.as_ref(), settings, UsageOptions::default()),
                        name,
                    )?;
                    n = usage.sockets_in_range;
                }
                Mode::ScanCensusPorts => {
                    let ports = census_ports(&settings);
                    ctx(source.scan(ScanScope::Ports(&ports), &mut |_| n += 1), name)?;
                }
                Mode::ScanEverything => {
                    let ports = PortSet::all();
                    ctx(source.scan(ScanScope::Ports(&ports), &mut |_| n += 1), name)?;
                }
            }
            sockets = n;
            walls.push(t0.elapsed().as_secs_f64() * 1e3);
            cpus.push((self_cpu() - c0) * 1e3);
        }
        out.push(InProc {
            name,
            wall_ms: median(walls),
            cpu_ms: median(cpus),
            sockets,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------- daemon

struct DaemonPhase {
    label: String,
    seconds: f64,
    cpu_percent: f64,
    ticks: usize,
    censuses: usize,
    clock: &'static str,
}

/// CPU time of a process over a window. Each thread's run time in
/// nanoseconds (`/proc/PID/task/TID/schedstat`) is polled while the window
/// lasts, so a thread that exits inside it (the daemon's census threads
/// live 10 s after use) keeps the time it had at the last poll. Without
/// schedstat: `utime + stime` from /proc/PID/stat, in 10 ms steps.
struct CpuTracker {
    pid: u32,
    start: std::collections::HashMap<String, u64>,
    last: std::collections::HashMap<String, u64>,
    stat_start: f64,
}

impl CpuTracker {
    fn new(pid: u32) -> Res<CpuTracker> {
        let mut t = CpuTracker {
            pid,
            start: Default::default(),
            last: Default::default(),
            stat_start: stat_cpu(pid)?,
        };
        t.poll();
        t.start = t.last.clone();
        Ok(t)
    }

    fn poll(&mut self) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for task in tasks.flatten() {
            let ns = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                self.last
                    .insert(task.file_name().to_string_lossy().into_owned(), ns);
            }
        }
    }

    /// Seconds of CPU since `new`, and how they were measured.
    fn seconds(&mut self) -> Res<(f64, &'static str)> {
        self.poll();
        if self.last.is_empty() {
            return Ok((stat_cpu(self.pid)? - self.stat_start, "stat"));
        }
        let ns: u64 = self
            .last
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.start.get(tid).copied().unwrap_or(0)))
            .sum();
        Ok((ns as f64 / 1e9, "schedstat"))
    }
}

/// `utime + stime` of a process in seconds (/proc/PID/stat, dead threads
/// included).
fn stat_cpu(pid: u32) -> Res<f64> {
    let text = ctx(
        std::fs::read_to_string(format!("/proc/{pid}/stat")),
        "daemon stat",
    )?;
    let after = text.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf with a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// TIME_WAIT and FIN_WAIT2 minisockets of the namespace (`tw` of sockstat).
fn time_wait_now() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut it = line.split_whitespace();
            while let Some(k) = it.next() {
                if k == "tw" {
                    return it.next()?.parse().ok();
                }
            }
            None
        })
        .unwrap_or(0)
}

/// Counts the daemon's STATUS notifications for `seconds`: one per poll,
/// "census skipped" when the sockstat/ActiveOpens bounds spared a census.
fn watch(notify: &UnixDatagram, pid: u32, seconds: u64, label: &str) -> Res<DaemonPhase> {
    let (mut cpu, t0) = (CpuTracker::new(pid)?, Instant::now());
    let (mut ticks, mut censuses) = (0, 0);
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(seconds) {
        cpu.poll();
        if let Ok(n) = notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.contains("STATUS=") {
                ticks += 1;
                if !msg.contains("census skipped") {
                    censuses += 1;
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (used, clock) = cpu.seconds()?;
    Ok(DaemonPhase {
        label: label.to_string(),
        seconds: secs,
        cpu_percent: 100.0 * used / secs,
        clock,
        ticks,
        censuses,
    })
}

fn daemon_phases(args: &RunArgs) -> Res<Vec<DaemonPhase>> {
    let dir = std::env::temp_dir().join(format!("census-bench-{}", std::process::id()));
    ctx(std::fs::create_dir_all(&dir), dir.display())?;
    let result = daemon_phases_in(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn daemon_phases_in(args: &RunArgs, dir: &Path) -> Res<Vec<DaemonPhase>> {
    let policy = dir.join("portd.toml");
    ctx(
        std::fs::write(&policy, "[poll]\ninterval = \"1s\"\n"),
        policy.display(),
    )?;
    ctx(
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)),
        policy.display(),
    )?;
    let sock_path = dir.join("notify.sock");
    let notify = ctx(UnixDatagram::bind(&sock_path), sock_path.display())?;
    ctx(
        notify.set_read_timeout(Some(Duration::from_millis(100))),
        "notify socket",
    )?;
    // In a private mount namespace with a tmpfs over /run: the daemon's
    // live view (/run/portd/live.json) must not replace the host's. unshare
    // and sh exec, so `pid` is portd's.
    let mut daemon = ctx(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && exec \"$0\" \"$@\"")
            .arg(args.daemon_portd.as_ref().unwrap_or(&args.portd))
            .args(["run", "--dry-run", "--log-target", "stderr", "--config"])
            .arg(&policy)
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("PORTD_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn(),
        "portd run",
    )?;
    let pid = daemon.id();
    let result = (|| {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if Instant::now() > deadline {
                return Err("portd run never sent READY=1".to_string());
            }
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
            {
                break;
            }
        }
        // Let the first census's thread and allocations settle.
        std::thread::sleep(Duration::from_secs(2));
        while notify.recv(&mut buf).is_ok() {}
        let mut phases = vec![watch(&notify, pid, args.daemon_seconds, "idle")?];
        let exe = ctx(std::env::current_exe(), "current_exe")?;
        for rate in &args.churn_rates {
            let mut churn = ctx(
                Command::new(&exe)
                    .args(["churn", "--rate", &rate.to_string()])
                    .args(["--seconds", &args.churn_seconds.to_string()])
                    .stdout(Stdio::piped())
                    .spawn(),
                "churn",
            )?;
            let mut out = BufReader::new(churn.stdout.take().ok_or("churn stdout")?);
            let mut line = String::new();
            ctx(out.read_line(&mut line), "churn")?;
            let phase = watch(
                &notify,
                pid,
                args.churn_seconds,
                &format!("{rate} new connections/s"),
            );
            let _ = churn.wait();
            phases.push(phase?);
        }
        Ok(phases)
    })();
    // SAFETY: a signal to our own child, by its pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();
    result
}

// ---------------------------------------------------------------------- run

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn describe_machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?", |(_, m)| m.trim());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().next().unwrap_or("?").to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs, {model}; {}\nkernel: {}\nss: {}\nload average at start: {}",
        mem.split_whitespace().collect::<Vec<_>>().join(" "),
        kernel.trim(),
        first_line("ss", &["-V"]),
        load.trim()
    )
}

fn run(args: &RunArgs) -> Res<()> {
    setup_namespace(args)?;
    let mut spawner = Spawner::start()?;
    println!("# portd census benchmark\n\n```\n{}", describe_machine());
    println!(
        "namespace: private, ehash {} buckets, range 1024-65535, {} % of connections over IPv6\n```",
        if args.ehash > 0 {
            args.ehash.to_string()
        } else {
            "shared".into()
        },
        args.v6_percent
    );
    let portd = args.portd.as_os_str();
    let mut commands = vec![
        Timed::new(
            "portd status --json (netlink)",
            &[
                portd,
                "--source".as_ref(),
                "netlink".as_ref(),
                "status".as_ref(),
                "--json".as_ref(),
            ],
            &[0, 1, 2],
        ),
        Timed::new(
            "portd status --json (procfs)",
            &[
                portd,
                "--source".as_ref(),
                "procfs".as_ref(),
                "status".as_ref(),
                "--json".as_ref(),
            ],
            &[0, 1, 2],
        ),
        Timed::new("ss -tan", &["ss".as_ref(), "-tan".as_ref()], &[0]),
        Timed::new(
            "cat /proc/net/tcp /proc/net/tcp6",
            &[
                "cat".as_ref(),
                "/proc/net/tcp".as_ref(),
                "/proc/net/tcp6".as_ref(),
            ],
            &[0],
        ),
    ];
    let exe = ctx(std::env::current_exe(), "current_exe")?;
    commands.push(Timed::new(
        "reference: raw sock_diag dump, not decoded",
        &[exe.as_os_str(), "raw-dump".as_ref()],
        &[0],
    ));
    commands.push(Timed::new(
        "reference: raw dump, kernel skips reserved ports",
        &[
            exe.as_os_str(),
            "raw-dump".as_ref(),
            "--skip-reserved".as_ref(),
        ],
        &[0],
    ));
    if let Some(p) = args.procfs_tables.as_ref().filter(|p| p.exists()) {
        commands.push(Timed::new(
            "procfs crate tcp()+tcp6()",
            &[p.as_os_str()],
            &[0],
        ));
    }
    for extra in &args.extra {
        let (name, cmd) = extra
            .split_once('=')
            .ok_or_else(|| format!("--extra {extra:?}: expected NAME=COMMAND"))?;
        let argv: Vec<&std::ffi::OsStr> = cmd.split_whitespace().map(|s| s.as_ref()).collect();
        if argv.is_empty() {
            return Err(format!("--extra {extra:?}: empty command"));
        }
        commands.push(Timed::new(name, &argv, &[0]));
    }

    let daemon_at = args
        .daemon_at
        .or_else(|| args.sizes.iter().copied().filter(|n| *n <= 300_000).max());
    let mut generator = Generator {
        workers: Vec::new(),
        next_index: 0,
        pairs: 0,
        v6_percent: args.v6_percent.min(100),
    };
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let mut summary = Vec::new();
    for &size in &sizes {
        let t0 = Instant::now();
        generator.grow_to(size / 2)?;
        std::thread::sleep(Duration::from_millis(500));
        let entries = table_entries();
        println!(
            "\n## {size} sockets\n\nbuilt in {:.1} s: {entries} lines in /proc/net/tcp + tcp6, {} workers",
            t0.elapsed().as_secs_f64(),
            generator.workers.len()
        );
        // The two sources must agree before their timings mean anything.
        let mut seen = Vec::new();
        for source in ["netlink", "procfs"] {
            let out = ctx(
                Command::new(portd)
                    .args(["--source", source, "status", "--json", "--top", "0"])
                    .output(),
                "portd status",
            )?;
            let v: serde_json::Value = ctx(serde_json::from_slice(&out.stdout), "status JSON")?;
            seen.push(format!(
                "{source}: {} sockets seen, {} destinations, headline {}",
                v["sockets_in_range"], v["destination_count"], v["headline"]["usage"]
            ));
        }
        println!("{}", seen.join("; "));

        let jiffies = cpu_jiffies();
        for c in &mut commands {
            c.samples.clear();
        }
        for round in 0..args.warmup + args.runs {
            for c in &mut commands {
                let s = spawner.time(&c.argv, &c.ok_codes)?;
                if round >= args.warmup {
                    c.samples.push(s);
                }
            }
        }
        let busy = busy_since(jiffies);
        println!(
            "\nWhole process, median of {} rounds (machine busy {busy:.0} % of 2 CPUs during the block; 50 % = one CPU = the benchmark alone):\n",
            args.runs
        );
        println!("| command | wall ms | CPU ms | peak RSS MiB | ns/entry (wall) |");
        println!("|---|---:|---:|---:|---:|");
        for c in &commands {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} |",
                c.name,
                c.wall_ms(),
                c.cpu_ms(),
                c.rss_mib(),
                c.wall_ms() * 1e6 / entries.max(1) as f64
            );
        }
        let w = |i: usize| commands[i].wall_ms();
        let ratios = (w(0) / w(2), w(0) / w(3), w(1) / w(3));
        println!(
            "\nratios: netlink status / ss -tan = {:.2} (target <= 0.3), netlink status / cat = {:.2} (target <= 0.5), procfs status / cat = {:.2} (target <= 1.3)",
            ratios.0, ratios.1, ratios.2
        );

        let jiffies = cpu_jiffies();
        let inproc = in_process(args.inproc_runs)?;
        println!(
            "\nIn-process census, median of {} (machine busy {:.0} %):\n",
            args.inproc_runs,
            busy_since(jiffies)
        );
        println!("| variant | wall ms | CPU ms | ns/entry (wall) | sockets seen |");
        println!("|---|---:|---:|---:|---:|");
        for r in &inproc {
            println!(
                "| {} | {:.1} | {:.1} | {:.0} | {} |",
                r.name,
                r.wall_ms,
                r.cpu_ms,
                r.wall_ms * 1e6 / entries.max(1) as f64,
                r.sockets
            );
        }
        summary.push((size, entries, ratios, commands[0].rss_mib()));

        if args.daemon_seconds > 0 && Some(size) == daemon_at {
            let phases = daemon_phases(args)?;
            if sizes.last() != Some(&size) {
                // TIME_WAIT lives 60 s: let the churn's go before the next level.
                let deadline = Instant::now() + Duration::from_secs(75);
                while time_wait_now() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            println!(
                "\nDaemon (`portd run --dry-run` of {}, interval 1 s) at {entries} entries:\n",
                args.daemon_portd.as_ref().unwrap_or(&args.portd).display()
            );
            println!(
                "| load | seconds | polls | full censuses | CPU % of one core | measured by |"
            );
            println!("|---|---:|---:|---:|---:|---|");
            for p in phases {
                println!(
                    "| {} | {:.0} | {} | {} | {:.3} | {} |",
                    p.label, p.seconds, p.ticks, p.censuses, p.cpu_percent, p.clock
                );
            }
        }
    }
    if let Some(then) = &args.then {
        let status = ctx(Command::new("sh").args(["-c", then]).status(), then)?;
        println!("\n`{then}`: {status}");
    }
    println!("\n## Summary\n");
    println!(
        "| sockets | entries | netlink/ss | netlink/cat | procfs/cat | netlink status peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (size, entries, r, rss) in summary {
        println!(
            "| {size} | {entries} | {:.2} | {:.2} | {:.2} | {rss:.1} |",
            r.0, r.1, r.2
        );
    }
    println!(
        "\nload average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
