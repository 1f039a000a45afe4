//! Reading the live view back, and whether to trust it (see the parent
//! module's documentation): the file's owner and mode, the daemon's
//! process and namespaces, the clock, and caps on its lists.

use std::io;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    DIR, DaemonView, FILE, FORMAT_VERSION, LONGEST_INTERVAL, Live, NAMESPACES_SHOWN, NotRunning,
    READ_LIMIT, WITNESS_ROWS, fresh, path, unix_seconds,
};
use crate::base::fsutil;
use crate::base::host::Host;

/// The network and PID namespaces of a process, by inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespaces {
    pub net: Option<u64>,
    pub pid: Option<u64>,
}

impl Namespaces {
    /// Those of the calling process (the real `/proc/self`, whatever
    /// `--root` says).
    pub fn of_this_process() -> Namespaces {
        let inode = |kind: &str| {
            let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok()?;
            link.to_str()?
                .strip_prefix(kind)?
                .strip_prefix(":[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        };
        Namespaces {
            net: inode("net"),
            pid: inode("pid"),
        }
    }
}

pub use crate::base::kernel::ProcStat as Process;

/// Process `pid` of this machine (the real `/proc`, whatever `--root`
/// says: the daemon that wrote a view is a real process); `None` when
/// there is none.
pub fn process(pid: u32) -> Option<Process> {
    if pid == 0 {
        return None;
    }
    let stat =
        fsutil::read_regular(std::path::Path::new(&format!("/proc/{pid}/stat")), 4096).ok()?;
    crate::base::kernel::parse_proc_stat(&stat)
}

/// Reads the live view of `host` and judges it against `now` and the
/// processes of this machine.
pub fn read(host: &Host, now: SystemTime) -> DaemonView {
    read_with(host, now, Namespaces::of_this_process(), process)
}

/// [`read`] by a process in the namespaces `here`, with `processes`
/// telling which process has a pid.
pub fn read_with(
    host: &Host,
    now: SystemTime,
    here: Namespaces,
    processes: impl Fn(u32) -> Option<Process>,
) -> DaemonView {
    let path = path(host);
    let file = match fsutil::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return DaemonView::NotRunning(NotRunning::Absent);
        }
        Err(e) => return DaemonView::Unreadable(format!("cannot read {DIR}/{FILE}: {e}")),
    };
    let text = match file
        .metadata()
        .and_then(|meta| Ok((meta, fsutil::read_to_limit(file, READ_LIMIT)?)))
    {
        Ok((meta, text)) => {
            if let Err(why) = trusted_file(&meta, rustix::process::geteuid().as_raw()) {
                return DaemonView::Unreadable(format!("{DIR}/{FILE} set aside: {why}"));
            }
            text
        }
        Err(e) => return DaemonView::Unreadable(format!("cannot read {DIR}/{FILE}: {e}")),
    };
    let live: Live = match serde_json::from_slice(&text) {
        Ok(l) => l,
        Err(e) => return DaemonView::Unreadable(format!("{DIR}/{FILE}: {e}")),
    };
    if live.format_version != FORMAT_VERSION {
        return DaemonView::Unreadable(format!(
            "{DIR}/{FILE} has format_version {}; this portd reads {FORMAT_VERSION}",
            live.format_version
        ));
    }
    judge(live, now, here, processes)
}

/// Who may have written the view: root, or the reader itself; nobody else
/// may write it.
fn trusted_file(meta: &std::fs::Metadata, reader: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if owner != 0 && owner != reader {
        return Err(format!(
            "it is owned by uid {owner}, neither root nor the user reading it (uid {reader}); portd's daemon writes it as root"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "its mode {mode:04o} lets group or others write it; portd writes it 0644"
        ));
    }
    Ok(())
}

/// Whether the view's daemon runs and the view is recent: see the module
/// documentation. Lists are capped as the daemon caps them.
pub fn judge(
    mut live: Live,
    now: SystemTime,
    here: Namespaces,
    processes: impl Fn(u32) -> Option<Process>,
) -> DaemonView {
    if let Some(theirs) = live.namespaces_of_daemon {
        let differ = |a: Option<u64>, b: Option<u64>| a.zip(b).is_some_and(|(a, b)| a != b);
        if differ(theirs.net, here.net) {
            return DaemonView::Unreadable(format!(
                "{DIR}/{FILE} set aside: it is the view of the daemon pid {} of network namespace net:[{}], not this one (net:[{}]), and no daemon of this one has written its own (a dry run writes none)",
                live.pid,
                theirs.net.unwrap_or_default(),
                here.net.unwrap_or_default()
            ));
        }
        if differ(theirs.pid, here.pid) {
            return DaemonView::Unreadable(format!(
                "{DIR}/{FILE} set aside: its daemon runs in another PID namespace (pid:[{}], this is pid:[{}]), where its pid {} cannot be checked",
                theirs.pid.unwrap_or_default(),
                here.pid.unwrap_or_default(),
                live.pid
            ));
        }
    }
    let ahead = live.written_at - unix_seconds(now);
    let interval = live
        .interval_seconds
        .max(live.refresh_seconds)
        .clamp(0.0, LONGEST_INTERVAL);
    if ahead > 2.0 * interval && ahead > 1.0 {
        return DaemonView::Unreadable(format!(
            "{DIR}/{FILE} set aside: written {ahead:.0}s ahead of this host's clock, more than two polls of {}",
            humantime::format_duration(Duration::try_from_secs_f64(interval).unwrap_or_default())
        ));
    }
    match processes(live.pid) {
        Some(p) if p.zombie => return DaemonView::NotRunning(NotRunning::Exited { pid: live.pid }),
        Some(p) if live.start_time.is_some_and(|t| t != p.start_time) => {
            return DaemonView::NotRunning(NotRunning::Replaced { pid: live.pid });
        }
        Some(_) => {}
        None => return DaemonView::NotRunning(NotRunning::Exited { pid: live.pid }),
    }
    cap(&mut live);
    match fresh(&live, now) {
        Ok(age) => DaemonView::Running {
            live: Box::new(live),
            age,
        },
        Err(why) => DaemonView::NotRunning(why),
    }
}

/// The most rows of the forecast's lists read back (the daemon writes a
/// handful).
const FORECAST_ROWS: usize = 50;

/// Lists longer than the daemon writes are cut on read: a view is about a
/// kilobyte, and `status` prints each row.
fn cap(live: &mut Live) {
    if let Some(h) = live.history.as_mut() {
        h.cap();
    }
    live.namespaces.truncate(NAMESPACES_SHOWN);
    if let Some(w) = live.witness.as_mut()
        && w.failures.len() > WITNESS_ROWS
    {
        w.failures_not_listed = w
            .failures_not_listed
            .saturating_add(w.failures.len() - WITNESS_ROWS);
        w.failures.truncate(WITNESS_ROWS);
    }
    if let Some(f) = live.forecast.as_mut() {
        f.targets.truncate(FORECAST_ROWS);
        f.remedies.truncate(FORECAST_ROWS);
    }
}
