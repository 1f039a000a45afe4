//! Which processes hold the sockets of the top destinations, via
//! `/proc/<pid>/fd` (procfs crate). On request only: it walks every process.

use std::collections::{BTreeMap, HashMap};

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

/// Attributes the sockets of `top` (destinations of `usage`). The result is
/// parallel to `top`. Processes that vanish or deny access are skipped; their
/// sockets show up in `not_found`.
pub fn attribute(
    host: &Host,
    source: &dyn SocketSource,
    usage: &Usage,
    top: &[DestKey],
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

    // (destination, pid) -> share; an inode can be shared by several pids
    // (fork, SCM_RIGHTS), so each holder is listed.
    let mut shares: BTreeMap<(usize, i32), ProcessShare> = BTreeMap::new();
    let mut found: HashMap<u64, ()> = HashMap::new();
    if let Ok(processes) = procfs::process::all_processes_with_root(host.proc("")) {
        for process in processes.flatten() {
            let Ok(fds) = process.fd() else { continue };
            for fd in fds.flatten() {
                let procfs::process::FDTarget::Socket(inode) = fd.target else {
                    continue;
                };
                let Some(&i) = inodes.get(&inode) else {
                    continue;
                };
                found.insert(inode, ());
                let share = shares
                    .entry((i, process.pid))
                    .or_insert_with(|| ProcessShare {
                        pid: process.pid,
                        command: command_of(host, &process),
                        uid: process.uid().unwrap_or(u32::MAX),
                        sockets: 0,
                    });
                share.sockets += 1;
            }
        }
    }
    for (inode, i) in &inodes {
        if !found.contains_key(inode) {
            result[*i].not_found += 1;
        }
    }
    for ((i, _), share) in shares {
        result[i].processes.push(share);
    }
    for r in &mut result {
        r.processes
            .sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
    }
    Ok(result)
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
