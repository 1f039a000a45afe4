//! The failure witness (docs/DESIGN.md "The failure witness"): counts failed
//! ephemeral-port allocations in the kernel, per network namespace, kind,
//! local address, destination or pool, and process name (the last pid is
//! kept beside the count, so short-lived processes share one counter).
//!
//! The kernel's counters are drained: each key carries the generation it was
//! counted in; every [`Witness::read`] starts the next generation, takes
//! what is new in the last two, and reads and deletes the keys of older
//! ones (left at least one poll ago, so no program is still adding to
//! them; one that did finds its generation two behind after counting and
//! counts itself as dropped too). The maps hold what failed in the last two
//! polls, never the history. When the per-process map is full, a failure is
//! counted per destination or pool alone (the name not kept), so a
//! destination not seen yet still has room; when that is full too, it is
//! counted as dropped.
//!
//! Attach points, best first, as the machine allows:
//! 1. fexit of `__inet_hash_connect` and the bind(0)/UDP autobind paths
//!    (BPF_PROG_TYPE_TRACING, kernel 5.5+ with BTF; sees io_uring too).
//!    Not built yet: the development machines refuse tracing programs
//!    (EPERM: lockdown plus a BPF LSM), so it could not be tested.
//! 2. the `connect`/`bind`/`sendto` syscall exit tracepoints
//!    (bpf/witness.bpf.c): the result first (anything but the three errors
//!    returns at once), then the arguments from the registers saved at entry,
//!    the sockaddr from the caller's memory and the socket through its fd.
//!    Needs x86_64, kernel 5.15+ with BTF (CO-RE, `bpf_task_pt_regs`,
//!    `bpf_get_current_task_btf`, bounded loops), tracefs mounted
//!    (`/sys/kernel/tracing`), CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN) and
//!    `bpf()`/`perf_event_open()` allowed. io_uring connects and
//!    `sendmsg`/`sendmmsg` are not seen on this path. A socket bound with
//!    `bind(addr, 0)` whose later connect() finds its 4-tuple taken loses its
//!    port in that failure and is counted too (the exit cannot tell it from
//!    an unbound one).
//!
//! Without any, portd says once why and works from the census alone.
//! The programs fire machine-wide; only namespaces portd watches are put in
//! the `watch_netns` map, so other namespaces are never counted.

pub(crate) mod tally;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};

/// The tracepoint object, built by bpf/build.sh from bpf/witness.bpf.c
/// (committed; .ci/run rebuilds it and diffs).
static TRACEPOINT_OBJECT: &[u8] = include_bytes!("bpf/witness.bpf.o");

/// (program, tracepoint) pairs of the tracepoint path.
const TRACEPOINTS: [(&str, &str); 3] = [
    ("exit_connect", "sys_exit_connect"),
    ("exit_bind", "sys_exit_bind"),
    ("exit_sendto", "sys_exit_sendto"),
];

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// TCP `connect()` on a socket without a local port: EADDRNOTAVAIL.
    TcpConnect,
    /// `bind(addr, 0)`: EADDRINUSE.
    Bind0,
    /// UDP `connect()`/`sendto()` on an unbound socket: EAGAIN.
    UdpAutobind,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::TcpConnect => "tcp_connect",
            FailureKind::Bind0 => "bind0",
            FailureKind::UdpAutobind => "udp_autobind",
        }
    }

    /// The error the caller saw.
    pub fn errno(self) -> &'static str {
        match self {
            FailureKind::TcpConnect => "EADDRNOTAVAIL",
            FailureKind::Bind0 => "EADDRINUSE",
            FailureKind::UdpAutobind => "EAGAIN",
        }
    }

    fn from_raw(v: u8) -> Option<FailureKind> {
        match v {
            1 => Some(FailureKind::TcpConnect),
            2 => Some(FailureKind::Bind0),
            3 => Some(FailureKind::UdpAutobind),
            _ => None,
        }
    }
}

/// One counter's key: TCP connects by destination, bind(0) and UDP by pool
/// (namespace, protocol, local address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailureKey {
    /// Network namespace inode.
    pub netns: u64,
    pub kind: FailureKind,
    /// The local address the socket was bound to (unspecified: the route
    /// chooses); for bind(0), the address asked for.
    pub local: IpAddr,
    /// TCP connect only.
    pub destination: Option<SocketAddr>,
    /// The process's (thread group leader's) name; None where the witness's
    /// per-process map was full and the failure was counted per destination
    /// or pool alone.
    pub comm: Option<String>,
    /// "tcp" or "udp", from the socket's type.
    pub protocol: &'static str,
}

impl FailureKey {
    /// The destination (TCP) or the pool, as operators read it.
    pub fn target(&self) -> String {
        match self.destination {
            Some(d) => d.to_string(),
            None => format!("{} pool {}", self.protocol, self.local),
        }
    }
}

/// Failures under one key since the previous read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    pub key: FailureKey,
    /// Failures since the previous read.
    pub new: u64,
    /// The last process counted: its tgid as portd's PID namespace numbers
    /// it (None when it is not visible from there; never a metric label)...
    pub pid: Option<u32>,
    /// ...and its name.
    pub process: String,
}

/// One read of the kernel's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// What is new since the previous read (the maps are drained).
    pub counts: Vec<FailureCount>,
    /// Failures not counted since the witness started, because both its
    /// maps were full, plus those counted into a generation that may have
    /// been drained already (at most missed).
    pub dropped: u64,
}

/// The attach point in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPath {
    SyscallTracepoints,
}

impl AttachPath {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachPath::SyscallTracepoints => "syscall tracepoints",
        }
    }

    /// What this path cannot see, for `status`.
    pub fn blind_spots(self) -> &'static str {
        match self {
            AttachPath::SyscallTracepoints => {
                "io_uring connects and sendmsg/sendmmsg are not seen on this path"
            }
        }
    }
}

/// Why the witness is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RawKey {
    netns: u32,
    /// The generation it was counted in.
    generation: u32,
    kind: u8,
    family: u8,
    dport: u16,
    sotype: u8,
    pad: [u8; 3],
    laddr: [u8; 16],
    daddr: [u8; 16],
    comm: [u8; 16],
}

// SAFETY: plain old data, repr(C), no padding the kernel's key lacks
// (wkey in bpf/witness.bpf.c is the same 64 bytes).
unsafe impl aya::Pod for RawKey {}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawValue {
    count: u64,
    /// The last process counted, and its name.
    pid: u32,
    pad: u32,
    comm: [u8; 16],
}

// SAFETY: plain old data, repr(C), no padding (wval in bpf/witness.bpf.c,
// 32 bytes).
unsafe impl aya::Pod for RawValue {}

/// The kernel's maps of counters: per process name, and per destination or
/// pool alone for what the first had no room for.
const COUNTER_MAPS: [&str; 2] = ["failures", "targets"];

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fn addr(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// The key; `per_process`: from the map keyed by process name too.
fn decode(raw: &RawKey, per_process: bool) -> Option<FailureKey> {
    let kind = FailureKind::from_raw(raw.kind)?;
    let local = addr(raw.family, &raw.laddr)?;
    let destination = match kind {
        FailureKind::TcpConnect => Some(SocketAddr::new(addr(raw.family, &raw.daddr)?, raw.dport)),
        _ => None,
    };
    Some(FailureKey {
        netns: u64::from(raw.netns),
        kind,
        local,
        destination,
        comm: per_process.then(|| comm(&raw.comm)),
        protocol: match raw.sotype {
            1 => "tcp",
            2 => "udp",
            _ => return None,
        },
    })
}

/// The loaded, attached programs (detached when dropped: the links are
/// owned by this process, nothing is pinned).
pub struct Witness {
    ebpf: Ebpf,
    path: AttachPath,
    watched: Vec<u64>,
    /// The generation the programs count in now.
    generation: u32,
    /// Counts of the current generation's keys at the last read.
    seen: std::collections::HashMap<RawKey, u64>,
}

fn ns_inode(path: &str) -> Result<u64, Unavailable> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| Unavailable(format!("cannot read {path}: {e}")))
}

/// Where the kernel's tracepoint ids are, as the loader will look.
fn tracefs_present() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|p| std::path::Path::new(p).join("events/syscalls").is_dir())
}

impl Witness {
    /// Loads and attaches the best path the machine allows, watching
    /// portd's own network namespace.
    pub fn start() -> Result<Witness, Unavailable> {
        let pidns = ns_inode("/proc/self/ns/pid")?;
        let netns = ns_inode("/proc/self/ns/net")?;
        let pidns = u32::try_from(pidns)
            .map_err(|_| Unavailable(format!("PID namespace inode {pidns} exceeds 32 bits")))?;
        if !tracefs_present() {
            return Err(Unavailable(
                "the kernel's system call tracepoints cannot be used: tracefs is not \
                 mounted (no /sys/kernel/tracing/events/syscalls)"
                    .into(),
            ));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("pidns_ino", &pidns, true)
            .load(TRACEPOINT_OBJECT)
            .map_err(|e| {
                Unavailable(format!(
                    "cannot load the tracepoint programs: {}",
                    chain(&e)
                ))
            })?;
        for (prog, tp) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| Unavailable(format!("program {prog} missing from the object")))?
                .try_into()
                .map_err(|e| Unavailable(format!("program {prog}: {}", chain(&e))))?;
            p.load()
                .map_err(|e| Unavailable(format!("cannot load {prog}: {}", chain(&e))))?;
            p.attach("syscalls", tp).map_err(|e| {
                Unavailable(format!(
                    "cannot attach {prog} to syscalls:{tp}: {}",
                    chain(&e)
                ))
            })?;
        }
        let mut w = Witness {
            ebpf,
            path: AttachPath::SyscallTracepoints,
            watched: Vec::new(),
            generation: 0,
            seen: std::collections::HashMap::new(),
        };
        w.watch(netns)?;
        Ok(w)
    }

    pub fn path(&self) -> AttachPath {
        self.path
    }

    /// Counts failures in network namespace `netns` from now on.
    pub fn watch(&mut self, netns: u64) -> Result<(), Unavailable> {
        let ino = u32::try_from(netns)
            .map_err(|_| Unavailable(format!("network namespace inode {netns} exceeds 32 bits")))?;
        let map = self
            .ebpf
            .map_mut("watch_netns")
            .ok_or_else(|| Unavailable("map watch_netns missing from the object".into()))?;
        let mut map: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(|e| Unavailable(format!("map watch_netns: {e}")))?;
        map.insert(ino, 1, 0)
            .map_err(|e| Unavailable(format!("cannot watch network namespace {netns}: {e}")))?;
        self.watched.push(netns);
        Ok(())
    }

    /// Stops counting failures in network namespace `netns` (it is gone:
    /// its inode may be handed to the next one created).
    pub fn unwatch(&mut self, netns: u64) {
        self.watched.retain(|w| *w != netns);
        let (Ok(ino), Some(map)) = (u32::try_from(netns), self.ebpf.map_mut("watch_netns")) else {
            return;
        };
        if let Ok(mut map) = HashMap::<&mut MapData, u32, u8>::try_from(map) {
            // Already absent: nothing to undo.
            let _ = map.remove(&ino);
        }
    }

    /// The namespaces it counts failures in, portd's own first.
    pub fn watched(&self) -> &[u64] {
        &self.watched
    }

    /// What failed since the previous read: one pass over the kernel's
    /// maps, then the next generation starts (see the module's doc).
    pub fn read(&mut self) -> Result<Reading, String> {
        let next = self.generation.wrapping_add(1);
        let map = self
            .ebpf
            .map_mut("generation")
            .ok_or("map generation missing")?;
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(|e| format!("map generation: {e}"))?;
        map.set(0, next, 0)
            .map_err(|e| format!("map generation: {e}"))?;
        self.generation = next;
        let mut reading = Reading::default();
        for name in COUNTER_MAPS {
            self.drain(name, &mut reading)?;
        }
        let dropped = self.ebpf.map("dropped").ok_or("map dropped missing")?;
        let dropped: Array<&MapData, u64> =
            Array::try_from(dropped).map_err(|e| format!("map dropped: {e}"))?;
        for slot in [0, 1] {
            reading.dropped += dropped
                .get(&slot, 0)
                .map_err(|e| format!("map dropped: {e}"))?;
        }
        Ok(reading)
    }

    /// The new counts of map `name`: the keys of the current generation
    /// and the one before are read, older ones read and deleted.
    fn drain(&mut self, name: &str, reading: &mut Reading) -> Result<(), String> {
        let per_process = name == COUNTER_MAPS[0];
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| format!("map {name} missing"))?;
        let mut map: HashMap<&mut MapData, RawKey, RawValue> =
            HashMap::try_from(map).map_err(|e| format!("map {name}: {e}"))?;
        // Keys first: deleting while walking would restart the walk.
        let keys: Vec<RawKey> = map.keys().filter_map(Result::ok).collect();
        for raw in keys {
            let current = raw.generation == self.generation
                || raw.generation == self.generation.wrapping_sub(1);
            let Ok(value) = map.get(&raw, 0) else {
                continue; // gone meanwhile
            };
            // A key that cannot be deleted (gone meanwhile) is remembered
            // as read, so a later read counts only what it gained.
            let before = if current || map.remove(&raw).is_err() {
                self.seen.insert(raw, value.count)
            } else {
                self.seen.remove(&raw)
            };
            let new = value.count.saturating_sub(before.unwrap_or(0));
            let Some(key) = decode(&raw, per_process) else {
                continue;
            };
            if new > 0 && self.watched.contains(&key.netns) {
                reading.counts.push(FailureCount {
                    key,
                    new,
                    pid: (value.pid != 0).then_some(value.pid),
                    process: comm(&value.comm),
                });
            }
        }
        Ok(())
    }

    /// The programs' own cost so far: (total run time in ns, runs), summed
    /// over all programs. Zero unless BPF_ENABLE_STATS is held (see
    /// [`enable_stats`]).
    pub fn run_stats(&self) -> Result<(u64, u64), String> {
        let mut time = 0u64;
        let mut count = 0u64;
        for (name, prog) in self.ebpf.programs() {
            let info = prog.info().map_err(|e| format!("program {name}: {e}"))?;
            time += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            count += info.run_count();
        }
        Ok((time, count))
    }
}

/// Enables run-time statistics for as long as the returned fd is open:
/// the fd-scoped BPF_ENABLE_STATS command, never the global
/// kernel.bpf_stats_enabled sysctl.
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| chain(&e))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        // Some errors already print their source.
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_tcp_key_and_an_unbound_udp_pool() {
        let mut raw = RawKey {
            netns: 4026531840,
            generation: 42,
            kind: 1,
            family: AF_INET,
            dport: 8080,
            sotype: 1,
            pad: [0; 3],
            laddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
        };
        raw.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        raw.comm[..4].copy_from_slice(b"curl");
        let k = decode(&raw, true).expect("valid key");
        assert_eq!(k.destination, Some("10.0.0.2:8080".parse().expect("addr")));
        assert_eq!(k.local, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(k.comm.as_deref(), Some("curl"));
        assert_eq!(k.target(), "10.0.0.2:8080");
        assert_eq!(
            decode(&raw, false).expect("valid key").comm,
            None,
            "counted per destination alone"
        );

        raw.kind = 3;
        raw.sotype = 2;
        raw.family = AF_INET6;
        raw.laddr = Ipv6Addr::LOCALHOST.octets();
        let k = decode(&raw, true).expect("valid key");
        assert_eq!(k.destination, None);
        assert_eq!(k.target(), "udp pool ::1");

        raw.kind = 9;
        assert_eq!(decode(&raw, true), None, "unknown kind");
        raw.kind = 1;
        raw.family = 1;
        assert_eq!(decode(&raw, true), None, "AF_UNIX is no inet family");
    }

    #[test]
    fn the_raw_records_are_as_large_as_the_kernels() {
        // wkey and wval of bpf/witness.bpf.c.
        assert_eq!(std::mem::size_of::<RawKey>(), 64);
        assert_eq!(std::mem::size_of::<RawValue>(), 32);
    }

    #[test]
    fn embedded_object_is_the_bpf_elf() {
        assert_eq!(&TRACEPOINT_OBJECT[..4], b"\x7fELF");
        // e_machine 247: EM_BPF
        assert_eq!(
            u16::from_le_bytes([TRACEPOINT_OBJECT[18], TRACEPOINT_OBJECT[19]]),
            247
        );
    }
}
