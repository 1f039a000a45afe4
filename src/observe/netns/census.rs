//! The census of another network namespace: the same census (src/observe/usage.rs,
//! src/observe/census/) on a dedicated thread that entered the namespace with
//! `setns`, so its netlink socket, its `/proc/sys` (range, reserved ports)
//! and its `/proc/thread-self/net` are that namespace's. The process's other
//! threads stay where they are.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::base::fsutil;
use crate::base::host::Host;
use crate::observe::census::reader::{Fresh, KeptOpen, ProcRead, VALUE_MAX};
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

/// The files of one namespace kept open between polls, so that a quiet
/// namespace's look opens nothing (docs/benchmarks.md, "Other network
/// namespaces"): its counters, `/proc/<pid>/net/{sockstat,sockstat6,snmp}`,
/// whose namespace is fixed when they are opened (docs/kernel.md §4.1),
/// and its settings, `/proc/sys/net/...`, opened once from a thread inside
/// it: a `/proc/sys` file keeps the table of the namespace it was opened in
/// (`proc_sys_lookup` takes the table of the opener's namespace, a read
/// goes through the file's), so it is re-read with `pread` from any thread
/// without `setns`. Eight descriptors at most; they hold the namespace
/// until dropped, which the daemon does once discovery no longer finds it.
#[derive(Default)]
pub struct Files {
    /// The process the counters were opened through: another one (the
    /// first exited) opens them anew.
    pid: Option<u32>,
    counters: KeptOpen,
    /// The process was still in the namespace after its counters' files
    /// were opened: they are that namespace's for as long as they are kept.
    verified: bool,
    /// Each settings file with the size its last read needed; `None`: not
    /// in this namespace (an older kernel's). Empty until opened inside.
    settings: HashMap<PathBuf, Option<(File, usize)>>,
    buf: Vec<u8>,
}

impl Files {
    /// The process its counters were opened through.
    pub fn through(&self) -> Option<u32> {
        self.pid
    }

    /// Whether its counters are proven to be the namespace's: the process
    /// they were opened through was found in it after they were opened.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// The process was found in the namespace after its counters' files
    /// were opened.
    pub fn verify(&mut self) {
        self.verified = self.pid.is_some();
    }
}

/// The O(1) counters of `ns` as [`counters`] reads them, through files kept
/// open in `files`. With `unchanged`, the counters of the last poll of a
/// namespace they proved quiet: when its socket totals are the same,
/// `ActiveOpens` is taken from them instead of `snmp` (the kernel writes
/// out every protocol's counters for it, the larger part of a look): its
/// totals alone prove it quiet, and any growth changes them.
pub fn counters_kept(
    host: &Host,
    ns: &Namespace,
    files: &mut Files,
    unchanged: Option<(Totals, Option<u64>)>,
) -> Option<(Totals, Option<u64>)> {
    if ns.own {
        return counters(host, ns);
    }
    let pid = ns.pid?;
    if files.pid != Some(pid) {
        files.pid = Some(pid);
        files.counters = KeptOpen::default();
        files.verified = false;
    }
    let view = host.with_net_dir(pid.to_string());
    let totals = sockstat::read_totals(&view, &mut files.counters).ok()?;
    if let Some((before, opens)) = unchanged
        && before == totals
    {
        return Some((totals, opens));
    }
    let opens = sockstat::read_active_opens(&view, &mut files.counters).ok();
    Some((totals, opens))
}

/// Opens each settings file it is asked for (from a thread inside the
/// namespace) and keeps it in the namespace's [`Files`].
struct Opening<'a>(&'a mut Files);

impl ProcRead for Opening<'_> {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        match fsutil::open_regular(path) {
            Ok(file) => {
                self.0
                    .settings
                    .insert(path.to_owned(), Some((file, FIRST_READ)));
                Opened(self.0).read_text(path)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    self.0.settings.insert(path.to_owned(), None);
                }
                Err(e)
            }
        }
    }
}

/// Reads the settings files opened inside the namespace, from any thread;
/// never opens one (from outside it would be another namespace's).
struct Opened<'a>(&'a mut Files);

/// What the first read of a settings file asks for (one byte under a page,
/// as reader.rs).
const FIRST_READ: usize = 4096 - 1;

impl ProcRead for Opened<'_> {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        let files = &mut *self.0;
        let Some(kept) = files.settings.get_mut(path) else {
            return Err(io::Error::other("not opened inside the namespace"));
        };
        let Some((file, size)) = kept else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let read = read_whole(file, &mut files.buf, size);
        if read.is_err() {
            files.settings.clear();
        }
        read
    }
}

/// One `pread` at offset 0 of a whole value, asking for four times as much
/// while a read fills what it asked for (a longer reserved-ports list), up
/// to [`VALUE_MAX`] (the rule of reader.rs).
fn read_whole(file: &File, buf: &mut Vec<u8>, size: &mut usize) -> io::Result<String> {
    loop {
        let want = (*size).clamp(1, VALUE_MAX);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = loop {
            match file.read_at(&mut buf[..want], 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n < want {
            return std::str::from_utf8(&buf[..n])
                .map(str::to_owned)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"));
        }
        if want == VALUE_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "value too long"));
        }
        *size = ((want + 1) * 4 - 1).min(VALUE_MAX);
    }
}

/// The settings of each of `namespaces`, read through `files` (one per
/// namespace): from the files kept open where they are, with no `setns`;
/// the others (never read, or their files failed) from one thread that
/// enters them in turn and opens their files to keep ([`settings_each`]).
pub fn settings_kept(
    host: &Host,
    namespaces: &[&Namespace],
    files: &mut [&mut Files],
) -> Vec<Result<KernelSettings, String>> {
    let view = host.with_net_dir("thread-self");
    let mut out: Vec<Option<Result<KernelSettings, String>>> = namespaces
        .iter()
        .zip(files.iter_mut())
        .map(|(ns, f)| {
            if ns.own || f.settings.is_empty() {
                return None;
            }
            let read = KernelSettings::read_with(&view, &mut Opened(f));
            if read.is_err() {
                f.settings.clear();
            }
            read.ok().map(Ok)
        })
        .collect();
    let inside: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
    if !inside.is_empty() {
        let list: Vec<&Namespace> = inside.iter().map(|i| namespaces[*i]).collect();
        let mut opening: Vec<&mut Files> = Vec::with_capacity(inside.len());
        for (i, f) in files.iter_mut().enumerate() {
            if inside.contains(&i) {
                opening.push(&mut **f);
            }
        }
        let read = enter_each(host, &list, |view, k| {
            match opening.get_mut(k) {
                Some(f) => KernelSettings::read_with(view, &mut Opening(f)),
                None => KernelSettings::read(view),
            }
            .map_err(|e| e.to_string())
        });
        for (i, r) in inside.into_iter().zip(read) {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not read".into())))
        .collect()
}

/// The settings of each of `namespaces` from one thread that enters them
/// in turn (the daemon's poll: one thread, not one per namespace). The
/// thread ends after the last: nothing else ever runs in them. Under a
/// fixture root nothing can be entered: each is an error.
pub fn settings_each(
    host: &Host,
    namespaces: &[&Namespace],
) -> Vec<Result<KernelSettings, String>> {
    enter_each(host, namespaces, |view, _| {
        KernelSettings::read(view).map_err(|e| e.to_string())
    })
}

/// `read(view, k)` for the `k`-th of `namespaces`, from one thread that
/// enters each in turn (a fixture root: none can be entered, each is an
/// error). The thread ends after the last: nothing else ever runs in them.
fn enter_each(
    host: &Host,
    namespaces: &[&Namespace],
    mut read: impl FnMut(&Host, usize) -> Result<KernelSettings, String> + Send,
) -> Vec<Result<KernelSettings, String>> {
    if host.root() != Path::new("/") {
        return namespaces
            .iter()
            .enumerate()
            .map(|(k, ns)| within(host, ns, |view| read(view, k)))
            .collect();
    }
    let view = host.with_net_dir("thread-self");
    let files: Vec<Result<(std::fs::File, std::path::PathBuf), String>> =
        namespaces.iter().map(|ns| open_ns(host, ns)).collect();
    std::thread::scope(|s| {
        s.spawn(move || {
            files
                .iter()
                .enumerate()
                .map(|(k, f)| {
                    let (file, path) = f.as_ref().map_err(Clone::clone)?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| setns_error(path, e))?;
                    read(&view, k)
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
