//! Every distinct network namespace on the machine: those of processes
//! (`/proc/*/ns/net`, de-duplicated by inode) plus the named ones
//! (`/run/netns`). One `readlink` per process: cheap enough for each poll.

use std::collections::BTreeMap;
use std::path::Path;

use crate::base::host::Host;

/// One network namespace as discovery found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The namespace's inode (`net:[INODE]`): its identity while it lives.
    pub inode: u64,
    /// The lowest pid in it (the oldest process, usually the container's
    /// init or the pod's pause process); `None` for a named namespace
    /// without a process.
    pub pid: Option<u32>,
    /// How many processes are in it.
    pub processes: u32,
    /// Its names under `/run/netns` (`ip netns add NAME`).
    pub names: Vec<String>,
    /// It is the namespace portd itself runs in.
    pub own: bool,
}

/// What discovery saw, and what it could not see.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Sorted by inode, portd's own first.
    pub namespaces: Vec<Found>,
    /// Processes whose `ns/net` could not be read (not permitted: other
    /// users' processes need CAP_SYS_PTRACE, or `/proc` is mounted with
    /// `hidepid`/`ProtectProc=invisible`).
    pub unreadable: u32,
}

/// The inode in a `net:[4026531840]` link.
pub fn parse_link(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn link_inode(path: &Path) -> std::io::Result<Option<u64>> {
    let link = std::fs::read_link(path)?;
    Ok(link.to_str().and_then(parse_link))
}

/// The namespace portd runs in (`/proc/self/ns/net`).
pub fn own_inode(host: &Host) -> Option<u64> {
    link_inode(&host.proc("self/ns/net")).ok().flatten()
}

/// The host's namespace: that of pid 1 (`/proc/1/ns/net`).
pub fn pid1_inode(host: &Host) -> Option<u64> {
    link_inode(&host.proc("1/ns/net")).ok().flatten()
}

/// The namespace process `pid` is in now; `None` once it has exited (or
/// cannot be read).
pub fn pid_inode(host: &Host, pid: u32) -> Option<u64> {
    link_inode(&host.proc(&format!("{pid}/ns/net")))
        .ok()
        .flatten()
}

/// The lowest pid still in the namespace `inode`, if any: another way into
/// a namespace whose first process exited.
pub fn pid_in(host: &Host, inode: u64) -> Option<u32> {
    std::fs::read_dir(host.proc(""))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pid_inode(host, *pid) == Some(inode))
        .min()
}

/// Seconds since boot (`/proc/uptime`): the clock of [`started`].
pub fn uptime(host: &Host) -> Option<f64> {
    let text = std::fs::read_to_string(host.proc("uptime")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// When `pid` started, in seconds since boot (`/proc/<pid>/stat`, field 22
/// in clock ticks); `None` once it is gone.
pub fn started(host: &Host, pid: u32) -> Option<f64> {
    let stat = std::fs::read(host.proc(&format!("{pid}/stat"))).ok()?;
    let ticks = crate::base::kernel::parse_proc_stat(&stat)?.start_time;
    Some(ticks as f64 / procfs::ticks_per_second() as f64)
}

/// Lists the namespaces under `host`'s `/proc` and `/run/netns`.
pub fn discover(host: &Host) -> Discovery {
    let own = own_inode(host);
    let mut by_inode: BTreeMap<u64, Found> = BTreeMap::new();
    let mut unreadable = 0;
    if let Ok(entries) = std::fs::read_dir(host.proc("")) {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let inode = match link_inode(&entry.path().join("ns/net")) {
                Ok(Some(inode)) => inode,
                Ok(None) => continue,
                // Exited between the listing and the readlink.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            let found = by_inode.entry(inode).or_insert_with(|| Found {
                inode,
                pid: Some(pid),
                processes: 0,
                names: Vec::new(),
                own: Some(inode) == own,
            });
            found.processes += 1;
            found.pid = Some(found.pid.map_or(pid, |p| p.min(pid)));
        }
    }
    for (name, inode) in named(host) {
        by_inode
            .entry(inode)
            .or_insert_with(|| Found {
                inode,
                pid: None,
                processes: 0,
                names: Vec::new(),
                own: Some(inode) == own,
            })
            .names
            .push(name);
    }
    let mut namespaces: Vec<Found> = by_inode.into_values().collect();
    for f in &mut namespaces {
        f.names.sort();
    }
    namespaces.sort_by_key(|f| (!f.own, f.inode));
    Discovery {
        namespaces,
        unreadable,
    }
}

/// `/run/netns/NAME`: a bind mount of the namespace, whose inode `stat`
/// gives (under a fixture root: the fixture file's own inode).
fn named(host: &Host) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(host.path("/run/netns")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let meta = std::fs::metadata(e.path()).ok()?;
            Some((name, meta.ino()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fixture /proc: each pid's `ns/net` is a dangling symlink whose
    /// text is what the kernel shows (it points at no real file).
    fn proc_tree(pids: &[(u32, &str)], own: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, link) in pids {
            let ns = dir.path().join(format!("proc/{pid}/ns"));
            std::fs::create_dir_all(&ns).unwrap();
            symlink(link, ns.join("net")).unwrap();
        }
        let ns = dir.path().join("proc/self/ns");
        std::fs::create_dir_all(&ns).unwrap();
        symlink(own, ns.join("net")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys")).unwrap();
        dir
    }

    #[test]
    fn a_process_start_is_read_past_any_command_name() {
        let dir = proc_tree(&[(7, "net:[100]")], "net:[100]");
        let tps = procfs::ticks_per_second() as f64;
        std::fs::write(
            dir.path().join("proc/7/stat"),
            "7 (a) b) 1 2 S) S 1 7 7 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 4200 1000 10\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("proc/uptime"), "61.50 100.00\n").unwrap();
        let host = Host::new(dir.path());
        assert_eq!(started(&host, 7), Some(4200.0 / tps));
        assert_eq!(started(&host, 8), None);
        assert_eq!(uptime(&host), Some(61.5));
    }

    #[test]
    fn parses_the_link_text() {
        assert_eq!(parse_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_link("mnt:[4026531840]"), None);
        assert_eq!(parse_link("net:[x]"), None);
        assert_eq!(parse_link("net:[1"), None);
    }

    #[test]
    fn deduplicates_by_inode_own_first_lowest_pid() {
        let dir = proc_tree(
            &[
                (1, "net:[100]"),
                (30, "net:[300]"),
                (7, "net:[200]"),
                (5, "net:[200]"),
                (9, "net:[300]"),
                (12, "net:[100]"),
            ],
            "net:[200]",
        );
        let d = discover(&Host::new(dir.path()));
        let got: Vec<(u64, Option<u32>, u32, bool)> = d
            .namespaces
            .iter()
            .map(|f| (f.inode, f.pid, f.processes, f.own))
            .collect();
        assert_eq!(
            got,
            vec![
                (200, Some(5), 2, true),
                (100, Some(1), 2, false),
                (300, Some(9), 2, false)
            ]
        );
        assert_eq!(d.unreadable, 0);
    }

    #[test]
    fn named_namespaces_without_processes_are_found() {
        let dir = proc_tree(&[(1, "net:[100]")], "net:[100]");
        let run = dir.path().join("run/netns");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("blue"), "").unwrap();
        std::fs::write(run.join("red"), "").unwrap();
        let d = discover(&Host::new(dir.path()));
        assert_eq!(d.namespaces.len(), 3);
        let mut names: Vec<&str> = d
            .namespaces
            .iter()
            .filter(|f| f.pid.is_none())
            .flat_map(|f| f.names.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        assert_eq!(names, vec!["blue", "red"]);
    }

    #[test]
    fn another_pid_of_the_same_namespace_is_found_once_the_first_exits() {
        let dir = proc_tree(
            &[(5, "net:[200]"), (9, "net:[200]"), (7, "net:[300]")],
            "net:[100]",
        );
        let host = Host::new(dir.path());
        assert_eq!(pid_in(&host, 200), Some(5));
        std::fs::remove_dir_all(dir.path().join("proc/5")).unwrap();
        assert_eq!(pid_inode(&host, 5), None);
        assert_eq!(pid_in(&host, 200), Some(9));
        assert_eq!(pid_in(&host, 400), None);
    }

    #[test]
    fn ignores_non_pid_entries_and_odd_links() {
        let dir = proc_tree(&[(1, "net:[100]"), (2, "pipe:[5]")], "net:[100]");
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        let d = discover(&Host::new(dir.path()));
        assert_eq!(d.namespaces.len(), 1);
        assert_eq!(d.namespaces[0].processes, 1);
    }
}
