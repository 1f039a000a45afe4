//! The only code that writes to the system: `/proc/sys` values, portd's
//! sysctl.d drop-in, and (through `state`) its state file.
//!
//! Rules (docs/kernel.md §1.2, §2.1, §7.3; docs/DESIGN.md, "Safety rules
//! for actuation"): reserved ports first (the complete list, one fd, offset
//! 0), then the range (one write of `"low high\n"` at offset 0 of a fresh
//! open); read both back; if the range write fails, restore the reserved
//! list. The drop-in is written atomically and never where a later sysctl.d
//! file would override it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::act::state::{State, Values, Written};
use crate::base::fsutil;
use crate::base::host::Host;
use crate::base::kernel;
use crate::base::ports::{PortRange, PortSet};
use crate::base::shutdown;
use crate::judge::planner::{ForeignDropin, Pin, Plan};
use crate::observe::census::KernelSettings;
use crate::observe::sysctld::{self, Assignment, Scan};

/// First line of the drop-in; rollback removes only a file that starts with it.
pub const DROPIN_HEADER: &str =
    "# Managed by portd. Do not edit: portd rewrites this file and `portd rollback` removes it.";

#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("writing {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {value:?} to {}: the kernel took {written} of {len} bytes", path.display())]
    ShortWrite {
        path: PathBuf,
        value: String,
        written: usize,
        len: usize,
    },
    #[error("{}: wrote {expected:?} but read back {found:?}", path.display())]
    ReadBack {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{first}; the reserved ports were restored to {restored:?}, so nothing changed")]
    RangeFailedRestored {
        first: Box<ActuateError>,
        restored: String,
    },
    #[error("{first}; restoring the reserved ports to {restored:?} ALSO failed: {second}")]
    RangeFailedRestoreFailed {
        first: Box<ActuateError>,
        restored: String,
        second: Box<ActuateError>,
    },
    #[error(
        "cannot record the original and planned values before writing ({0}); nothing was written"
    )]
    Record(crate::act::state::StateError),
    /// SIGTERM arrived between two writes (shutdown.rs): the rest is not
    /// written, and the recorded values are settled at the next start.
    #[error("portd is stopping; the writes still to do are left to the next start")]
    Stopped,
    #[error("{0}")]
    Invalid(String),
}

/// One `write()` at offset 0 of a fresh open; a short count is an error
/// (docs/kernel.md §1.2: a second write at offset > 0 is ignored, or OR-ed for
/// bitmaps, so the whole value must go in one call).
fn write_once(path: &std::path::Path, value: &str) -> Result<(), ActuateError> {
    let err = |source| ActuateError::Write {
        path: path.to_owned(),
        value: value.to_string(),
        source,
    };
    // O_TRUNC changes nothing on /proc/sys (as with `echo >` or `sysctl -w`);
    // on a fixture tree's regular file it gives the kernel's "replaced
    // whole" semantic, so a shorter value leaves no tail of the old one.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    let written = f.write(value.as_bytes()).map_err(err)?;
    if written != value.len() {
        return Err(ActuateError::ShortWrite {
            path: path.to_owned(),
            value: value.to_string(),
            written,
            len: value.len(),
        });
    }
    Ok(())
}

fn read(path: &std::path::Path) -> Result<String, ActuateError> {
    crate::observe::census::reader::read_proc_value(path).map_err(|source| ActuateError::Write {
        path: path.to_owned(),
        value: "(read back)".into(),
        source,
    })
}

pub fn write_reserved(host: &Host, set: &PortSet) -> Result<(), ActuateError> {
    let path = host.proc_sys(kernel::KEY_RESERVED_PORTS);
    // An empty write changes nothing; a lone newline clears the list.
    let value = format!("{}\n", set.to_sysctl_list());
    if value.len() > 4095 {
        // The kernel consumes longer input in chunks, OR-ing later ones
        // (docs/kernel.md §2.1); portd's lists are runs, far shorter than this.
        return Err(ActuateError::Invalid(format!(
            "reserved port list of {} bytes is longer than one write can carry",
            value.len()
        )));
    }
    write_once(&path, &value)?;
    let back = read(&path)?;
    match PortSet::parse(&back) {
        Ok(s) if &s == set => Ok(()),
        _ => Err(ActuateError::ReadBack {
            path,
            expected: set.to_sysctl_list(),
            found: back.trim_end().to_string(),
        }),
    }
}

pub fn write_range(host: &Host, range: PortRange) -> Result<(), ActuateError> {
    let path = host.proc_sys(kernel::KEY_PORT_RANGE);
    write_once(&path, &range.to_sysctl_value())?;
    let back = read(&path)?;
    match PortRange::parse(&back) {
        Ok(r) if r == range => Ok(()),
        _ => Err(ActuateError::ReadBack {
            path,
            expected: range.to_sysctl_value().trim_end().to_string(),
            found: back.trim_end().to_string(),
        }),
    }
}

/// Writes reserved ports then range; on a failed range write, puts the
/// reserved ports back so the pair stays as it was.
pub fn write_pair(
    host: &Host,
    current: &KernelSettings,
    range: PortRange,
    reserved: &PortSet,
) -> Result<(), ActuateError> {
    // ipv4_local_port_range() rejects low < ip_unprivileged_port_start
    // (docs/kernel.md §1.3); portd never lowers that setting, so such a range is
    // refused here rather than half-applied.
    if range.low() < current.unprivileged_port_start {
        return Err(ActuateError::Invalid(format!(
            "range {range} starts below ip_unprivileged_port_start {}",
            current.unprivileged_port_start
        )));
    }
    let reserved_changed = reserved != &current.reserved_ports;
    if reserved_changed {
        write_reserved(host, reserved)?;
        // The reserved ports alone are harmless, and recorded as pending.
        if shutdown::requested() {
            return Err(ActuateError::Stopped);
        }
    }
    if range != current.port_range
        && let Err(first) = write_range(host, range)
    {
        if !reserved_changed {
            return Err(first);
        }
        let restored = current.reserved_ports.to_sysctl_list();
        return Err(match write_reserved(host, &current.reserved_ports) {
            Ok(()) => ActuateError::RangeFailedRestored {
                first: Box::new(first),
                restored,
            },
            Err(second) => ActuateError::RangeFailedRestoreFailed {
                first: Box::new(first),
                restored,
                second: Box::new(second),
            },
        });
    }
    Ok(())
}

/// Applies a plan at runtime, recording it first: the state with the
/// original and the planned values is saved (and fsynced) before the first
/// kernel write, so that no crash or full disk can lose the originals. If it
/// cannot be saved, nothing is written. On success `state` holds the new
/// values, saved by the caller; on a failed write, `state` is as before.
pub fn apply_plan(
    host: &Host,
    state: &mut State,
    current: &KernelSettings,
    plan: &Plan,
    now: SystemTime,
    reason: &str,
) -> Result<(), ActuateError> {
    let before = state.clone();
    let found = Values {
        range: current.port_range,
        reserved: current.reserved_ports.clone(),
    };
    state.record_widening(found, plan, now, reason);
    if let Err(e) = state.save(host) {
        *state = before;
        return Err(ActuateError::Record(e));
    }
    // Like a crash at this point: the record stays, settle_pending reads it.
    if shutdown::requested() {
        return Err(ActuateError::Stopped);
    }
    if let Err(e) = write_pair(host, current, plan.to, &plan.reserved) {
        if matches!(e, ActuateError::Stopped) {
            return Err(e);
        }
        // Nothing changed (write_pair restores what it wrote): the record
        // is withdrawn. Should this save fail, the pending record left on
        // disk still settles to "not written" against the live values.
        *state = before;
        let _ = state.save(host);
        return Err(e);
    }
    state.confirm_written();
    Ok(())
}

/// Resolves a write that was recorded but never confirmed (portd was killed
/// between the record and the end of the write): the live values say
/// whether it happened. Returns what was concluded, for the log.
pub fn settle_pending(state: &mut State, live: &KernelSettings) -> Option<String> {
    let pending = state.pending.take()?;
    let planned = pending.values.range;
    // The range is written last: if it is the planned one, the write happened.
    if live.port_range == planned {
        state.last_written = Some(Written {
            values: pending.values,
            at: pending.at,
            persisted: false,
        });
        return Some(format!(
            "the write of {planned} recorded before portd stopped was completed"
        ));
    }
    let before = state
        .last_written
        .as_ref()
        .map(|w| w.values.range)
        .or(state.original.as_ref().map(|o| o.range));
    if before != Some(live.port_range) {
        // Neither portd's old nor its planned range: someone else's value,
        // which `external_change` compares with the planned one.
        state.last_written = Some(Written {
            values: pending.values,
            at: pending.at,
            persisted: false,
        });
        return Some(format!(
            "a write of {planned} was recorded before portd stopped, and the live range is {}",
            live.port_range
        ));
    }
    // The range was not written. Reserved ports are written first: those
    // already live are portd's; the others were never added.
    let kept = pending.newly_reserved.intersection_of(&live.reserved_ports);
    let never = pending.newly_reserved.difference(&kept);
    state.added_reserved = state.added_reserved.difference(&never);
    if state
        .changes
        .last()
        .is_some_and(|c| c.to == pending.values.range)
    {
        state.changes.pop();
    }
    if !kept.is_empty() {
        state.last_written = Some(Written {
            values: Values {
                range: live.port_range,
                reserved: live.reserved_ports.clone(),
            },
            at: pending.at,
            persisted: false,
        });
    } else if state.last_written.is_none() {
        // portd has changed nothing after all.
        state.original = None;
    }
    Some(format!(
        "the write of {planned} recorded before portd stopped did not happen; the range is still {}",
        live.port_range
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{} sets {key} = {value:?} after portd's drop-in (line {line}); portd does not fight it", file.display())]
    Overridden {
        file: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("refusing to overwrite {}: {why}; portd writes only its own drop-in (set persist.file to another name, or move the file aside)", path.display())]
    Foreign { path: PathBuf, why: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Scan(String),
}

/// A file portd did not write at the drop-in's name, when the policy
/// persists: portd would widen at runtime only, and a reboot would undo it.
pub fn foreign_dropin(host: &Host, persist: bool, dropin_name: &str) -> Option<ForeignDropin> {
    if !persist {
        return None;
    }
    match dropin_file(host, dropin_name) {
        DropinFile::Foreign(why) => Some(ForeignDropin {
            path: host
                .path(sysctld::DROPIN_DIR)
                .join(dropin_name)
                .display()
                .to_string(),
            why,
        }),
        DropinFile::Absent | DropinFile::Portd(_) => None,
    }
}

/// The first sysctl.d assignment that sorts after portd's drop-in and sets
/// one of its keys: it would win at boot.
pub fn pin(scan: &Scan, dropin_name: &str) -> Option<Pin> {
    overriding(scan, dropin_name).map(|(key, a)| Pin {
        file: format!("{}:{}", a.file.display(), a.line),
        value: format!("{key} = {}", a.value),
    })
}

/// The key of portd's drop-in that a later file sets, and the last line
/// that sets it (the range first).
fn overriding<'a>(scan: &'a Scan, dropin_name: &str) -> Option<(&'static str, &'a Assignment)> {
    [kernel::KEY_PORT_RANGE, kernel::KEY_RESERVED_PORTS]
        .into_iter()
        .find_map(|key| {
            scan.later_overrides(dropin_name, key)
                .last()
                .map(|a| (key, *a))
        })
}

/// The drop-in's text: reserved ports first (they must be in place before
/// the range grows over them), then the range. An empty `reserved` writes
/// no reserved-ports line.
pub fn dropin_text(
    range: PortRange,
    reserved: &PortSet,
    now: SystemTime,
    why: Option<&str>,
) -> String {
    let why = why
        .map(|w| format!("# Why: {}\n", w.replace(['\n', '\r'], " ")))
        .unwrap_or_default();
    // No reserved ports, no line: an empty assignment would clear what
    // other software reserved at runtime.
    let reserved = if reserved.is_empty() {
        String::new()
    } else {
        format!(
            "{} = {}\n",
            kernel::KEY_RESERVED_PORTS,
            reserved.to_sysctl_list()
        )
    };
    format!(
        "{DROPIN_HEADER}\n# Written {} by portd {}.\n{why}{reserved}{} = {}\n",
        humantime::format_rfc3339_seconds(now),
        env!("CARGO_PKG_VERSION"),
        kernel::KEY_PORT_RANGE,
        range.to_sysctl_value().trim_end(),
    )
}

/// What is at `/etc/sysctl.d/<name>`: portd writes and removes only a
/// drop-in it wrote itself, a regular file that starts with its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropinFile {
    Absent,
    /// portd's own, with its text.
    Portd(String),
    /// Someone else's: why it is not portd's.
    Foreign(String),
}

/// The largest drop-in portd reads back; its own are a few hundred bytes.
const DROPIN_READ_LIMIT: u64 = 64 * 1024;

pub fn dropin_file(host: &Host, name: &str) -> DropinFile {
    let path = host.path(sysctld::DROPIN_DIR).join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DropinFile::Absent,
        Err(e) => return DropinFile::Foreign(format!("it cannot be inspected ({e})")),
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&path)
            .map(|t| format!(" to {}", t.display()))
            .unwrap_or_default();
        return DropinFile::Foreign(format!(
            "it is a symbolic link{target}, which portd never writes"
        ));
    }
    if !meta.is_file() {
        return DropinFile::Foreign("it is not a regular file".into());
    }
    match fsutil::read_regular_text(&path, DROPIN_READ_LIMIT) {
        Ok(text) if text.starts_with(DROPIN_HEADER) => DropinFile::Portd(text),
        Ok(_) => DropinFile::Foreign(format!(
            "it does not start with portd's header {DROPIN_HEADER:?}"
        )),
        Err(e) => DropinFile::Foreign(format!("it cannot be read ({e})")),
    }
}

/// The assignment lines of a drop-in, without its comments (which carry the
/// time it was written).
fn assignments_of(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(['#', ';']))
        .collect()
}

/// The reserved ports portd's drop-in sets: none when portd reserved none
/// (an empty assignment would clear, at every `sysctl --system`, the ports
/// other software reserved at runtime); otherwise the union of what the
/// other sysctl.d files set at boot and portd's additions, so the admin's
/// reservations are never dropped at boot.
pub fn dropin_reserved(
    scan: &Scan,
    dropin_name: &str,
    added: &PortSet,
) -> Result<PortSet, sysctld::SysctldError> {
    if added.is_empty() {
        return Ok(PortSet::new());
    }
    let boot = scan
        .boot_value_excluding(dropin_name, kernel::KEY_RESERVED_PORTS)?
        .and_then(|a| PortSet::parse(&a.value).ok())
        .unwrap_or_default();
    Ok(boot.union(added))
}

/// What [`persist`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persisted {
    /// The drop-in already says what it should (or portd has written no
    /// value yet, or an admin removed the drop-in portd had written).
    Unchanged,
    Written {
        /// The drop-in of an earlier `persist.file`, removed once the new one
        /// was in place.
        removed: Option<PathBuf>,
    },
}

/// Writes portd's drop-in for what it last wrote, when it differs from what
/// is there; called on every poll, so that the reserved ports stay the union
/// with the other files as they change. Refuses to overwrite a file portd
/// did not write. After `persist.file` changed, removes the old drop-in
/// (the name recorded in `state`) once the new one is written. `scan` is
/// the poll's; writing the drop-in does not make it stale, since what is
/// asked of it (later files, the boot value without the drop-in) leaves the
/// drop-in out.
pub fn persist(
    host: &Host,
    scan: &Scan,
    dropin_name: &str,
    state: &State,
    now: SystemTime,
) -> Result<Persisted, PersistError> {
    let Some(written) = &state.last_written else {
        return Ok(Persisted::Unchanged);
    };
    if let Some((key, a)) = overriding(scan, dropin_name) {
        return Err(PersistError::Overridden {
            file: a.file.clone(),
            line: a.line,
            key,
            value: a.value.clone(),
        });
    }
    let reserved = dropin_reserved(scan, dropin_name, &state.added_reserved)
        .map_err(|e| PersistError::Scan(e.to_string()))?;
    let dir = host.path(sysctld::DROPIN_DIR);
    // The change that made the values: what an admin reading the file asks.
    let why = state
        .changes
        .last()
        .filter(|c| c.to == written.values.range)
        .map(|c| format!("widened {} -> {}: {}", c.from, c.to, c.reason));
    let text = dropin_text(written.values.range, &reserved, now, why.as_deref());
    let recorded = state.dropin.as_deref() == Some(dropin_name);
    let range_line = format!(
        "{} = {}",
        kernel::KEY_PORT_RANGE,
        written.values.range.to_sysctl_value().trim_end()
    );
    match dropin_file(host, dropin_name) {
        DropinFile::Foreign(why) => {
            return Err(PersistError::Foreign {
                path: dir.join(dropin_name),
                why,
            });
        }
        DropinFile::Portd(old) if assignments_of(&old) == assignments_of(&text) => {
            return Ok(Persisted::Unchanged);
        }
        // Persisted, but the live range is no longer the one in the file:
        // an admin's value (a yield made it the baseline), which is theirs to
        // persist. Only portd's own range is kept current.
        DropinFile::Portd(old)
            if written.persisted && !assignments_of(&old).contains(&range_line.as_str()) =>
        {
            return Ok(Persisted::Unchanged);
        }
        // Written once and since removed by someone else: not re-created
        // behind the admin's back.
        DropinFile::Absent if written.persisted && (recorded || state.dropin.is_none()) => {
            return Ok(Persisted::Unchanged);
        }
        DropinFile::Portd(_) | DropinFile::Absent => {}
    }
    // Temp files of writers killed mid-write (they are never read, but
    // would pile up); portd is the only writer (it holds the lock).
    fsutil::remove_stale_temps(&dir, dropin_name);
    fsutil::atomic_write(&dir, dropin_name, text.as_bytes(), 0o644).map_err(|source| {
        PersistError::Io {
            path: dir.join(dropin_name),
            source,
        }
    })?;
    let mut removed = None;
    if let Some(old) = state.dropin.as_deref().filter(|old| *old != dropin_name)
        && matches!(dropin_file(host, old), DropinFile::Portd(_))
    {
        fsutil::remove_in(&dir, old).map_err(|source| PersistError::Io {
            path: dir.join(old),
            source,
        })?;
        removed = Some(dir.join(old));
    }
    Ok(Persisted::Written { removed })
}

/// Compares the live values with what portd last wrote. Returns a reason
/// (old value, new value and, where known, the file) when someone else
/// changed them. `scan` (none when sysctl.d could not be read) names the
/// file.
pub fn external_change(
    scan: Option<&Scan>,
    state: &State,
    live: &KernelSettings,
) -> Option<String> {
    let written = state.last_written.as_ref()?;
    if live.port_range != written.values.range {
        let source = scan
            .and_then(|scan| {
                scan.assignments_for(kernel::KEY_PORT_RANGE)
                    .into_iter()
                    .rev()
                    .find(|a| PortRange::parse(&a.value).ok() == Some(live.port_range))
            })
            .map(|a| format!(" (the value {}:{} sets)", a.file.display(), a.line))
            .unwrap_or_default();
        return Some(format!(
            "ip_local_port_range changed from {} (written by portd) to {} by someone else{source}",
            written.values.range, live.port_range
        ));
    }
    let missing = state.added_reserved.difference(&live.reserved_ports);
    if !missing.is_empty() {
        return Some(format!(
            "ports portd reserved ({missing}) were removed from ip_local_reserved_ports by someone else"
        ));
    }
    None
}

#[path = "actuator_rollback.rs"]
mod rollback;
pub use rollback::{NOTHING_TO_ROLL_BACK, rollback};

#[cfg(test)]
#[path = "actuator_tests.rs"]
mod tests;
