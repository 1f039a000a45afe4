//! The census of another network namespace: the same census (src/observe/usage.rs,
//! src/observe/census/) on a dedicated thread that entered the namespace with
//! `setns`, so its netlink socket, its `/proc/sys` (range, reserved ports)
//! and its `/proc/thread-self/net` are that namespace's. The process's other
//! threads stay where they are.

use std::os::fd::AsFd;
use std::path::Path;

use crate::base::host::Host;
use crate::observe::census::reader::Fresh;
use crate::observe::census::sockstat::{self, Totals};
use crate::observe::census::{self, KernelSettings};
use crate::observe::usage::{self, Usage, UsageOptions};

use super::Namespace;

/// The namespace file to enter: `/proc/<pid>/ns/net`, or `/run/netns/NAME`.
fn ns_file(host: &Host, ns: &Namespace) -> Option<std::path::PathBuf> {
    match (ns.pid, ns.names.first()) {
        (Some(pid), _) => Some(host.proc(&format!("{pid}/ns/net"))),
        (None, Some(name)) => Some(host.path("/run/netns").join(name)),
        (None, None) => None,
    }
}

/// Opens the namespace file of `ns`, checking that it is still that
/// namespace: a pid whose process exited may already name another
/// process, in another namespace.
fn open_ns(host: &Host, ns: &Namespace) -> Result<(std::fs::File, std::path::PathBuf), String> {
    use std::os::unix::fs::MetadataExt;
    let path = ns_file(host, ns).ok_or("the namespace has no process and no name")?;
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let inode = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ino();
    if inode != ns.inode {
        return Err(format!(
            "{} is now net:[{inode}], not net:[{}]: the namespace's process exited",
            path.display(),
            ns.inode
        ));
    }
    Ok((file, path))
}

/// Whether `ns` is still where its census enters it: its pid's `ns/net`
/// still links to its inode, or one of its names is still under
/// `/run/netns`. False once its process exited (or the pid was reused
/// elsewhere): what failed then is not an error, the namespace is gone
/// (or lives on in another process, which the next discovery finds).
pub fn still_there(host: &Host, ns: &Namespace) -> bool {
    if ns.own {
        return true;
    }
    let by_pid = ns.pid.is_some_and(|pid| {
        std::fs::read_link(host.proc(&format!("{pid}/ns/net")))
            .ok()
            .and_then(|link| link.to_str().and_then(super::discovery::parse_link))
            == Some(ns.inode)
    });
    by_pid
        || ns
            .names
            .iter()
            .any(|name| host.path("/run/netns").join(name).exists())
}

/// Runs `f` on a new thread inside `ns`, with a host view whose `/proc/net`
/// is that thread's. The thread ends with `f`: nothing else ever runs in
/// the namespace.
pub fn within<T: Send>(
    host: &Host,
    ns: &Namespace,
    f: impl FnOnce(&Host) -> Result<T, String> + Send,
) -> Result<T, String> {
    if ns.own {
        return f(host);
    }
    if host.root() != Path::new("/") {
        return Err(format!(
            "cannot enter a network namespace under the fixture root {}",
            host.root().display()
        ));
    }
    let (file, path) = open_ns(host, ns)?;
    let view = host.with_net_dir("thread-self");
    std::thread::scope(|s| {
        s.spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| setns_error(&path, e))?;
            f(&view)
        })
        .join()
        .map_err(|_| "the namespace's census thread panicked".to_string())?
    })
}

/// Settings and census of `ns`: netlink inside it, procfs as fallback.
pub fn take(host: &Host, ns: &Namespace, options: UsageOptions) -> Result<Usage, String> {
    within(host, ns, |view| {
        let settings = KernelSettings::read(view).map_err(|e| e.to_string())?;
        let source = census::best_source(view);
        usage::take_census(source.as_ref(), settings, options).map_err(|e| e.to_string())
    })
}

/// Only the settings of `ns` (range, reserved ports): a few `/proc/sys`
/// reads, no socket walk.
pub fn settings(host: &Host, ns: &Namespace) -> Result<KernelSettings, String> {
    within(host, ns, |view| {
        KernelSettings::read(view).map_err(|e| e.to_string())
    })
}

/// The O(1) counters of `ns` (`/proc/<pid>/net/sockstat{,6}`, `snmp`): per
/// namespace without `setns`. A named namespace without a process has none
/// to read them through.
pub fn counters(host: &Host, ns: &Namespace) -> Option<(Totals, Option<u64>)> {
    let view = if ns.own {
        host.clone()
    } else {
        host.with_net_dir(ns.pid?.to_string())
    };
    let totals = sockstat::read_totals(&view, &mut Fresh).ok()?;
    let opens = sockstat::read_active_opens(&view, &mut Fresh).ok();
    Some((totals, opens))
}

/// The settings of each of `namespaces` from one thread that enters them
/// in turn (the daemon's poll: one thread, not one per namespace). The
/// thread ends after the last: nothing else ever runs in them. Under a
/// fixture root nothing can be entered: each is an error.
pub fn settings_each(
    host: &Host,
    namespaces: &[&Namespace],
) -> Vec<Result<KernelSettings, String>> {
    if host.root() != Path::new("/") {
        return namespaces
            .iter()
            .map(|ns| {
                within(host, ns, |view| {
                    KernelSettings::read(view).map_err(|e| e.to_string())
                })
            })
            .collect();
    }
    let view = host.with_net_dir("thread-self");
    let files: Vec<Result<(std::fs::File, std::path::PathBuf), String>> =
        namespaces.iter().map(|ns| open_ns(host, ns)).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            files
                .iter()
                .map(|f| {
                    let (file, path) = f.as_ref().map_err(Clone::clone)?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| setns_error(path, e))?;
                    KernelSettings::read(&view).map_err(|e| e.to_string())
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|_| {
            namespaces
                .iter()
                .map(|_| Err("the namespaces' settings thread panicked".to_string()))
                .collect()
        })
    })
}

/// `setns` refused: with EPERM, what it needs.
pub fn setns_error(path: &Path, e: rustix::io::Errno) -> String {
    format!(
        "setns({}): {e} (entering another network namespace needs CAP_SYS_ADMIN)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::observe::netns::Identity;

    fn namespace(inode: u64, pid: u32) -> Namespace {
        Namespace {
            inode,
            pid: Some(pid),
            comm: None,
            processes: 1,
            names: Vec::new(),
            own: false,
            identity: Identity::default(),
            label: format!("pid {pid}"),
            enter: String::new(),
        }
    }

    /// A pid that exited and went to a process in another namespace leads
    /// to that namespace: it is never entered in place of the one watched.
    #[test]
    fn a_namespace_is_entered_only_through_a_file_that_is_still_it() {
        let dir = tempfile::tempdir().unwrap();
        let ns_dir = dir.path().join("proc/7/ns");
        std::fs::create_dir_all(&ns_dir).unwrap();
        // Under a fixture root the file's own inode stands for the namespace's.
        std::fs::write(ns_dir.join("net"), "").unwrap();
        let inode = std::fs::metadata(ns_dir.join("net")).unwrap().ino();
        let host = Host::new(dir.path());
        assert!(open_ns(&host, &namespace(inode, 7)).is_ok());
        let err = open_ns(&host, &namespace(inode + 1, 7)).unwrap_err();
        assert!(
            err.ends_with(&format!(
                "proc/7/ns/net is now net:[{inode}], not net:[{}]: the namespace's process exited",
                inode + 1
            )),
            "{err}"
        );
        assert!(
            open_ns(&host, &namespace(inode, 8))
                .unwrap_err()
                .contains("proc/8/ns/net: No such file")
        );
    }
}
