//! Which processes hold the sockets of the top destinations, via
//! `/proc/<pid>/fd`. A [`HolderCache`] remembers socket inode → pid between
//! looks and reads again only the fd directories that changed (their size,
//! the fd count on Linux ≥ 6.2, or their mtime) and new processes, within a
//! CPU budget; `status --processes` uses a fresh one with no budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::base::host::Host;
use crate::observe::census::{CensusError, ScanScope, SocketSource};
use crate::observe::usage::{Counting, DestKey, Usage, counting};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessShare {
    pub pid: i32,
    pub command: String,
    pub uid: u32,
    /// Sockets of this destination whose fd this process holds.
    pub sockets: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DestAttribution {
    /// Largest holders first.
    pub processes: Vec<ProcessShare>,
    /// Sockets with inode 0 (TIME_WAIT, orphans): counted, but no process holds them.
    pub without_inode: u32,
    /// Sockets with an inode that no readable `/proc/<pid>/fd` holds
    /// (a process that exited meanwhile, or one we may not inspect).
    pub not_found: u32,
}

/// What the cache knows of one process.
#[derive(Debug)]
struct Held {
    /// The fd directory's size and mtime when it was last read.
    mark: (u64, i64, i64),
    command: String,
    uid: u32,
    sockets: Vec<u64>,
}

/// Socket inode → holders, kept between looks (see the module doc).
#[derive(Debug, Default)]
pub struct HolderCache {
    processes: HashMap<i32, Held>,
    /// Where the sweep over unchanged processes goes on next time.
    cursor: i32,
    /// fd directories read by the last refresh (for tests and the benchmark).
    pub last_read: usize,
    /// Whether the last refresh ran out of its budget.
    pub last_cut: bool,
}

impl HolderCache {
    /// Brings the cache up to date: drops processes that ended, reads the
    /// fd directories of new and changed processes; then, while some of
    /// `wanted` has no known holder (an fd closed and another opened leave
    /// the count as it was), reads unchanged ones from where the last sweep
    /// stopped. Stops once `cpu` (the thread's CPU time) says `budget` is spent;
    /// what is left waits for the next refresh.
    pub fn refresh(
        &mut self,
        host: &Host,
        wanted: &HashSet<u64>,
        budget: Duration,
        cpu: &dyn Fn() -> Duration,
    ) {
        let start = cpu();
        let spent = || cpu().saturating_sub(start) >= budget;
        self.last_read = 0;
        self.last_cut = false;
        let mut pids: Vec<(i32, (u64, i64, i64))> = Vec::new();
        if let Ok(dir) = std::fs::read_dir(host.proc("")) {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Ok(m) = std::fs::metadata(host.proc(&format!("{pid}/fd"))) {
                    use std::os::unix::fs::MetadataExt;
                    pids.push((pid, (m.size(), m.mtime(), m.mtime_nsec())));
                }
            }
        }
        pids.sort_unstable();
        let alive: HashSet<i32> = pids.iter().map(|(p, _)| *p).collect();
        self.processes.retain(|pid, _| alive.contains(pid));
        for (pid, mark) in &pids {
            if self.processes.get(pid).is_some_and(|h| h.mark == *mark) {
                continue;
            }
            if spent() {
                self.last_cut = true;
                return;
            }
            self.read(host, *pid, *mark);
        }
        let mut found = self.found(wanted);
        if found.len() == wanted.len() || pids.is_empty() {
            return;
        }
        // The sweep: unchanged processes, from the cursor on, once round.
        let from = pids.partition_point(|(p, _)| *p <= self.cursor);
        for (pid, mark) in pids[from..].iter().chain(&pids[..from]) {
            if spent() {
                self.last_cut = true;
                return;
            }
            self.read(host, *pid, *mark);
            self.cursor = *pid;
            if let Some(h) = self.processes.get(pid) {
                found.extend(h.sockets.iter().filter(|i| wanted.contains(i)));
            }
            if found.len() == wanted.len() {
                return;
            }
        }
    }

    fn read(&mut self, host: &Host, pid: i32, mark: (u64, i64, i64)) {
        self.last_read += 1;
        let mut sockets = Vec::new();
        if let Ok(dir) = std::fs::read_dir(host.proc(&format!("{pid}/fd"))) {
            for entry in dir.flatten() {
                if let Some(inode) = std::fs::read_link(entry.path())
                    .ok()
                    .and_then(|t| socket_inode(&t.to_string_lossy()))
                {
                    sockets.push(inode);
                }
            }
        }
        // Read again with the fds: a pid may have been reused.
        let (command, uid) = identity(host, pid);
        self.processes.insert(
            pid,
            Held {
                mark,
                command,
                uid,
                sockets,
            },
        );
    }

    /// The sockets of `wanted` some process is known to hold.
    fn found(&self, wanted: &HashSet<u64>) -> HashSet<u64> {
        self.processes
            .values()
            .flat_map(|h| h.sockets.iter().copied())
            .filter(|i| wanted.contains(i))
            .collect()
    }
}

/// `socket:[12345]` → 12345.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn identity(host: &Host, pid: i32) -> (String, u32) {
    match procfs::process::Process::new_with_root(host.proc(&pid.to_string())) {
        Ok(p) => (command_of(host, &p), p.uid().unwrap_or(u32::MAX)),
        Err(_) => ("?".to_string(), u32::MAX),
    }
}

/// Attributes the sockets of `top` (destinations of `usage`). The result is
/// parallel to `top`. Processes that vanish or deny access are skipped; their
/// sockets show up in `not_found`. Reads every process (`status --processes`).
pub fn attribute(
    host: &Host,
    source: &dyn SocketSource,
    usage: &Usage,
    top: &[DestKey],
) -> Result<Vec<DestAttribution>, CensusError> {
    attribute_cached(host, source, usage, top, &mut HolderCache::default(), None)
}

/// As [`attribute`], with the holders `cache` knows, brought up to date
/// for the sockets of `top` within `budget` of this thread's CPU time (none:
/// no limit).
pub fn attribute_cached(
    host: &Host,
    source: &dyn SocketSource,
    usage: &Usage,
    top: &[DestKey],
    cache: &mut HolderCache,
    budget: Option<Duration>,
) -> Result<Vec<DestAttribution>, CensusError> {
    let index: HashMap<DestKey, usize> = top.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut result = vec![DestAttribution::default(); top.len()];
    let mut inodes: HashMap<u64, usize> = HashMap::new();
    source.scan(ScanScope::Ports(&usage.usable), &mut |s| {
        // Reusable TIME_WAIT sockets are not in `used`, so not attributed either.
        let Counting::Holds(key) = counting(&usage.usable, &usage.settings, s) else {
            return;
        };
        if let Some(&i) = index.get(&key) {
            if s.inode == 0 {
                result[i].without_inode += 1;
            } else {
                inodes.insert(s.inode, i);
            }
        }
    })?;
    let wanted: HashSet<u64> = inodes.keys().copied().collect();
    if !wanted.is_empty() {
        cache.refresh(host, &wanted, budget.unwrap_or(Duration::MAX), &thread_cpu);
    }
    Ok(shares_of(cache, &inodes, result))
}

/// (destination, pid) -> share; an inode can be shared by several pids
/// (fork, SCM_RIGHTS), so each holder is listed.
fn shares_of(
    cache: &HolderCache,
    inodes: &HashMap<u64, usize>,
    mut result: Vec<DestAttribution>,
) -> Vec<DestAttribution> {
    let mut shares: BTreeMap<(usize, i32), ProcessShare> = BTreeMap::new();
    let mut found: HashSet<u64> = HashSet::new();
    for (pid, held) in &cache.processes {
        for inode in &held.sockets {
            let Some(&i) = inodes.get(inode) else {
                continue;
            };
            found.insert(*inode);
            shares
                .entry((i, *pid))
                .or_insert_with(|| ProcessShare {
                    pid: *pid,
                    command: held.command.clone(),
                    uid: held.uid,
                    sockets: 0,
                })
                .sockets += 1;
        }
    }
    for (inode, &i) in inodes {
        if !found.contains(inode) {
            result[i].not_found += 1;
        }
    }
    for ((i, _), share) in shares {
        result[i].processes.push(share);
    }
    for r in &mut result {
        r.processes
            .sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    }
    result
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn command_of(host: &Host, process: &procfs::process::Process) -> String {
    // The procfs crate opens `stat` blocking: a FIFO there (a hostile
    // `--root`) would hang. Real ones are regular files.
    let stat = host.proc(&format!("{}/stat", process.pid));
    if !std::fs::metadata(stat).is_ok_and(|m| m.is_file()) {
        return "?".to_string();
    }
    process
        .stat()
        .map(|s| s.comm)
        .unwrap_or_else(|_| "?".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A fixture `/proc`: `pid`'s fd `fd` is socket `inode`.
    fn hold(root: &Path, pid: i32, fd: u32, inode: u64) {
        let dir = root.join(format!("proc/{pid}/fd"));
        std::fs::create_dir_all(&dir).unwrap();
        symlink(format!("socket:[{inode}]"), dir.join(fd.to_string())).unwrap();
    }

    fn wanted(inodes: &[u64]) -> HashSet<u64> {
        inodes.iter().copied().collect()
    }

    fn holders_of(cache: &HolderCache, inode: u64) -> Vec<i32> {
        let mut pids: Vec<i32> = cache
            .processes
            .iter()
            .filter(|(_, h)| h.sockets.contains(&inode))
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    fn refresh(cache: &mut HolderCache, host: &Host, inodes: &[u64]) {
        cache.refresh(host, &wanted(inodes), Duration::MAX, &|| Duration::ZERO);
    }

    #[test]
    fn only_new_and_changed_fd_tables_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        hold(dir.path(), 100, 3, 11);
        hold(dir.path(), 200, 3, 22);
        let mut cache = HolderCache::default();
        refresh(&mut cache, &host, &[11, 22]);
        assert_eq!(cache.last_read, 2);
        assert_eq!(holders_of(&cache, 11), [100]);
        // Nothing changed: nothing is read.
        refresh(&mut cache, &host, &[11, 22]);
        assert_eq!(cache.last_read, 0);
        // A new fd in one process, a new process sharing a socket (fork);
        // past the file system's clock tick, so the mtime moves.
        std::thread::sleep(Duration::from_millis(20));
        hold(dir.path(), 100, 4, 12);
        hold(dir.path(), 300, 5, 22);
        refresh(&mut cache, &host, &[11, 12, 22]);
        assert_eq!(cache.last_read, 2);
        assert_eq!(holders_of(&cache, 12), [100]);
        assert_eq!(holders_of(&cache, 22), [200, 300]);
        // A process that ended holds nothing.
        std::fs::remove_dir_all(dir.path().join("proc/200")).unwrap();
        refresh(&mut cache, &host, &[22]);
        assert_eq!(cache.last_read, 0);
        assert_eq!(holders_of(&cache, 22), [300]);
    }

    #[test]
    fn a_socket_behind_an_unchanged_mark_is_found_by_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        hold(dir.path(), 100, 3, 11);
        hold(dir.path(), 200, 3, 21);
        let mut cache = HolderCache::default();
        refresh(&mut cache, &host, &[11, 21]);
        // pid 200 closes fd 3 and opens another socket on it: same count,
        // and its directory's mtime put back as it was.
        let fd_dir = dir.path().join("proc/200/fd");
        let mtime = std::fs::metadata(&fd_dir).unwrap().modified().unwrap();
        std::fs::remove_file(fd_dir.join("3")).unwrap();
        symlink("socket:[29]", fd_dir.join("3")).unwrap();
        std::fs::File::open(&fd_dir)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        // All wanted known: no sweep, the old answer stands.
        refresh(&mut cache, &host, &[11]);
        assert_eq!(cache.last_read, 0);
        // A wanted socket nobody is known to hold: the sweep reads the
        // unchanged tables until it is found.
        refresh(&mut cache, &host, &[11, 29]);
        assert_eq!(holders_of(&cache, 29), [200]);
        assert!(holders_of(&cache, 21).is_empty());
    }

    #[test]
    fn a_refresh_out_of_budget_stops_and_the_next_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        for pid in 1..=10 {
            hold(dir.path(), pid, 3, 1000 + pid as u64);
        }
        let all: Vec<u64> = (1001..=1010).collect();
        // Each look at the clock costs 1 ms of "CPU"; 3 ms of budget.
        let clock = std::cell::Cell::new(Duration::ZERO);
        let cpu = || {
            clock.set(clock.get() + Duration::from_millis(1));
            clock.get()
        };
        let mut cache = HolderCache::default();
        cache.refresh(&host, &wanted(&all), Duration::from_millis(3), &cpu);
        assert!(cache.last_cut);
        let first = cache.last_read;
        assert!((1..10).contains(&first), "{first}");
        cache.refresh(&host, &wanted(&all), Duration::MAX, &cpu);
        assert!(!cache.last_cut);
        assert_eq!(cache.last_read, 10 - first);
        assert!(all.iter().all(|i| !holders_of(&cache, *i).is_empty()));
    }

    #[test]
    fn only_socket_links_name_sockets() {
        assert_eq!(socket_inode("socket:[4711]"), Some(4711));
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
