//! The only code that writes to the system: `/proc/sys` values, portd's
//! sysctl.d drop-in, and (through `state`) its state file.
//!
//! Rules (kernel.md §1.2, §2.1, §7.3; DESIGN.md "Safety rules"): reserved
//! ports first (the complete list, one fd, offset 0), then the range (one
//! write of `"low high\n"` at offset 0 of a fresh open); read both back; if
//! the range write fails, restore the reserved list. The drop-in is written
//! atomically and never where a later sysctl.d file would override it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::census::KernelSettings;
use crate::fsutil;
use crate::host::Host;
use crate::kernel::{self, PortRange, PortSet};
use crate::planner::{Pin, Plan};
use crate::state::{Change, State, Values, Written};
use crate::sysctld;

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
    #[error("{0}")]
    Invalid(String),
}

/// One `write()` at offset 0 of a fresh open; a short count is an error
/// (kernel.md §1.2: a second write at offset > 0 is ignored, or OR-ed for
/// bitmaps, so the whole value must go in one call).
fn write_once(path: &std::path::Path, value: &str) -> Result<(), ActuateError> {
    let err = |source| ActuateError::Write {
        path: path.to_owned(),
        value: value.to_string(),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(path).map_err(err)?;
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
    std::fs::read_to_string(path).map_err(|source| ActuateError::Write {
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
        // (kernel.md §2.1); portd's lists are runs, far shorter than this.
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
    // (kernel.md §1.3); portd never lowers that setting, so such a range is
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

/// Applies a plan at runtime and records it in `state` (not saved here).
pub fn apply_plan(
    host: &Host,
    state: &mut State,
    current: &KernelSettings,
    plan: &Plan,
    now: SystemTime,
    reason: &str,
) -> Result<(), ActuateError> {
    write_pair(host, current, plan.to, &plan.reserved)?;
    if state.original.is_none() {
        state.original = Some(Values {
            range: current.port_range,
            reserved: current.reserved_ports.clone(),
        });
    }
    state.added_reserved = state.added_reserved.union(&plan.newly_reserved);
    state.last_written = Some(Written {
        values: Values {
            range: plan.to,
            reserved: plan.reserved.clone(),
        },
        at: now,
        persisted: false,
    });
    state.record_change(Change {
        at: now,
        from: plan.from,
        to: plan.to,
        reserved_added: plan.newly_reserved.clone(),
        reason: reason.to_string(),
    });
    Ok(())
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
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Scan(String),
}

/// The first sysctl.d assignment that sorts after portd's drop-in and sets
/// one of its keys: it would win at boot.
pub fn pin(host: &Host, dropin_name: &str) -> Result<Option<Pin>, String> {
    for key in [kernel::KEY_PORT_RANGE, kernel::KEY_RESERVED_PORTS] {
        let later = sysctld::later_overrides(host, dropin_name, key).map_err(|e| e.to_string())?;
        if let Some(a) = later.last() {
            return Ok(Some(Pin {
                file: format!("{}:{}", a.file.display(), a.line),
                value: format!("{key} = {}", a.value),
            }));
        }
    }
    Ok(None)
}

/// The drop-in's text: reserved ports first (they must be in place before
/// the range grows over them), then the range.
pub fn dropin_text(
    range: PortRange,
    reserved: &PortSet,
    now: SystemTime,
    why: Option<&str>,
) -> String {
    let why = why
        .map(|w| format!("# Why: {}\n", w.replace(['\n', '\r'], " ")))
        .unwrap_or_default();
    format!(
        "{DROPIN_HEADER}\n# Written {} by portd {}.\n{why}{} = {}\n{} = {}\n",
        humantime::format_rfc3339_seconds(now),
        env!("CARGO_PKG_VERSION"),
        kernel::KEY_RESERVED_PORTS,
        reserved.to_sysctl_list(),
        kernel::KEY_PORT_RANGE,
        range.to_sysctl_value().trim_end(),
    )
}

/// Writes portd's drop-in for what it last wrote. The reserved ports are
/// the union of what the other sysctl.d files set at boot and portd's own
/// additions, so the admin's reservations are never dropped at boot.
pub fn persist(
    host: &Host,
    dropin_name: &str,
    state: &State,
    now: SystemTime,
) -> Result<(), PersistError> {
    let Some(written) = &state.last_written else {
        return Ok(());
    };
    for key in [kernel::KEY_PORT_RANGE, kernel::KEY_RESERVED_PORTS] {
        let later = sysctld::later_overrides(host, dropin_name, key)
            .map_err(|e| PersistError::Scan(e.to_string()))?;
        if let Some(a) = later.last() {
            return Err(PersistError::Overridden {
                file: a.file.clone(),
                line: a.line,
                key,
                value: a.value.clone(),
            });
        }
    }
    let boot_reserved =
        sysctld::boot_value_excluding(host, kernel::KEY_RESERVED_PORTS, dropin_name)
            .map_err(|e| PersistError::Scan(e.to_string()))?
            .and_then(|a| PortSet::parse(&a.value).ok())
            .unwrap_or_default();
    let reserved = boot_reserved.union(&state.added_reserved);
    let dir = host.path("/etc/sysctl.d");
    // The change that made the values: what an admin reading the file asks.
    let why = state
        .changes
        .last()
        .filter(|c| c.to == written.values.range)
        .map(|c| format!("widened {} -> {}: {}", c.from, c.to, c.reason));
    let text = dropin_text(written.values.range, &reserved, now, why.as_deref());
    // Temp files of writers killed mid-write (they are never read, but
    // would pile up); portd is the only writer (it holds the lock).
    fsutil::remove_stale_temps(&dir, dropin_name);
    fsutil::atomic_write(&dir, dropin_name, text.as_bytes(), 0o644).map_err(|source| {
        PersistError::Io {
            path: dir.join(dropin_name),
            source,
        }
    })
}

/// Compares the live values with what portd last wrote. Returns a reason
/// (old value, new value and, where known, the file) when someone else
/// changed them.
pub fn external_change(host: &Host, state: &State, live: &KernelSettings) -> Option<String> {
    let written = state.last_written.as_ref()?;
    if live.port_range != written.values.range {
        let source = sysctld::assignments_for(host, kernel::KEY_PORT_RANGE)
            .ok()
            .and_then(|all| {
                all.into_iter()
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

pub const NOTHING_TO_ROLL_BACK: &str =
    "portd has not changed this host's port range; nothing to roll back";

/// A rollback error after some steps were done says which, and that a
/// second rollback finishes the job.
fn part_way(error: String, done: &[String]) -> String {
    if done.is_empty() {
        return error;
    }
    format!(
        "{error} (done before it: {}); run `portd rollback` again once that is fixed",
        done.join("; ")
    )
}

/// What `portd rollback` did or would refuse. On an error part-way, `state`
/// records what was undone already, and the caller saves it either way.
pub fn rollback(
    host: &Host,
    dropin_name: &str,
    state: &mut State,
    live: &KernelSettings,
    force: bool,
) -> Result<Vec<String>, String> {
    let Some(original) = state.original.clone() else {
        return Ok(vec![NOTHING_TO_ROLL_BACK.into()]);
    };
    // After a yield the daemon takes the admin's values as its baseline, so
    // `external_change` no longer sees them; the yield itself says the live
    // values are not portd's.
    let changed = state
        .yielded
        .as_ref()
        .map(|y| y.reason.clone())
        .or_else(|| external_change(host, state, live));
    if let Some(reason) = changed
        && !force
    {
        return Err(format!(
            "refusing to roll back: {reason}. The live values are no longer portd's; use --force to restore {} anyway",
            original.range
        ));
    }
    let mut done = Vec::new();
    // Keep reservations made by anyone else; remove only portd's additions.
    let reserved = live.reserved_ports.difference(&state.added_reserved);
    // Narrow the range before un-reserving, so no port is ever inside the
    // range and unreserved that was not before.
    if live.port_range != original.range {
        write_range(host, original.range).map_err(|e| e.to_string())?;
        // Recorded at once: if a later step fails, the state the caller
        // saves says the live range is portd's, so neither the daemon nor
        // a second rollback takes it for someone else's change.
        if let Some(written) = state.last_written.as_mut() {
            written.values.range = original.range;
        }
        done.push(format!(
            "restored ip_local_port_range {} -> {}",
            live.port_range, original.range
        ));
    }
    if reserved != live.reserved_ports {
        write_reserved(host, &reserved).map_err(|e| part_way(e.to_string(), &done))?;
        done.push(format!(
            "removed portd's reserved ports {} (ip_local_reserved_ports now {:?})",
            state.added_reserved,
            reserved.to_sysctl_list()
        ));
        if let Some(written) = state.last_written.as_mut() {
            written.values.reserved = reserved.clone();
        }
        state.added_reserved = PortSet::new();
    }
    let dir = host.path("/etc/sysctl.d");
    let path = dir.join(dropin_name);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.starts_with(DROPIN_HEADER) => {
            fsutil::remove_in(&dir, dropin_name)
                .map_err(|e| part_way(format!("cannot remove {}: {e}", path.display()), &done))?;
            done.push(format!("removed {}", path.display()));
        }
        Ok(_) => done.push(format!(
            "left {} alone: it was not written by portd",
            path.display()
        )),
        Err(_) => {}
    }
    state.original = None;
    state.last_written = None;
    state.added_reserved = PortSet::new();
    state.yielded = None;
    if done.is_empty() {
        done.push("the live values were already the original ones".into());
    }
    Ok(done)
}
