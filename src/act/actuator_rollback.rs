//! `portd rollback`: the values portd found (or an admin's later range it
//! widened over) restored, only portd's reserved ports removed, and only
//! its own drop-in.

use super::{
    DropinFile, KernelSettings, State, dropin_file, external_change, settle_pending, write_range,
    write_reserved,
};
use crate::base::fsutil;
use crate::base::host::Host;
use crate::base::ports::PortRange;
use crate::observe::sysctld;

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
    // A write recorded before a crash: the live values say whether it
    // happened, so that its values count as portd's and not someone else's.
    let settled = settle_pending(state, live);
    let Some(target) = state.rollback_target(force) else {
        return Ok(vec![NOTHING_TO_ROLL_BACK.into()]);
    };
    let first_found = state.original.as_ref().map(|o| o.range);
    // After a yield the daemon takes the admin's values as its baseline, so
    // `external_change` no longer sees them; the yield itself says the live
    // values are not portd's.
    let changed = state
        .yielded
        .as_ref()
        .map(|y| y.reason.clone())
        .or_else(|| external_change(sysctld::scan(host).ok().as_ref(), state, live));
    if let Some(reason) = changed
        && !force
    {
        return Err(format!(
            "refusing to roll back: {reason}. The live values are no longer portd's; use --force to restore {} anyway",
            target.range
        ));
    }
    let mut done: Vec<String> = settled.into_iter().collect();
    done.extend(which_range(state, first_found, target.range, force));
    // Keep reservations made by anyone else; remove only portd's additions.
    let reserved = live.reserved_ports.difference(&state.added_reserved);
    // Narrow the range before un-reserving, so no port is ever inside the
    // range and unreserved that was not before.
    if live.port_range != target.range {
        write_range(host, target.range).map_err(|e| e.to_string())?;
        // Recorded at once: if a later step fails, the state the caller
        // saves says the live range is portd's, so neither the daemon nor
        // a second rollback takes it for someone else's change.
        state.range_restored(target.range);
        done.push(format!(
            "restored ip_local_port_range {} -> {}",
            live.port_range, target.range
        ));
    }
    if reserved != live.reserved_ports {
        write_reserved(host, &reserved).map_err(|e| part_way(e.to_string(), &done))?;
        done.push(format!(
            "removed portd's reserved ports {} (ip_local_reserved_ports now {:?})",
            state.added_reserved,
            reserved.to_sysctl_list()
        ));
        state.reserved_restored(reserved);
    }
    remove_dropin(host, state, dropin_name, &mut done)?;
    state.rolled_back();
    if done.is_empty() {
        done.push("the live values were already the original ones".into());
    }
    Ok(done)
}

/// Which range the rollback restores when portd's first-found range and an
/// administrator's later one differ, said in words.
fn which_range(
    state: &State,
    first_found: Option<PortRange>,
    target: PortRange,
    force: bool,
) -> Option<String> {
    if let Some(first) = first_found.filter(|f| *f != target) {
        Some(format!(
            "keeping {target}, the range an administrator set after portd's first change, rather than \
             {first}, the range portd first found (--force restores that)"
        ))
    } else {
        state
            .admin
            .as_ref()
            .filter(|a| force && a.range != target)
            .map(|admin| {
                format!(
                    "--force: restoring {target}, the range portd first found; {}, the range an \
                     administrator set after portd's first change, is dropped",
                    admin.range
                )
            })
    }
}

/// Removes portd's own drop-in and nothing else, adding what it did to `done`.
fn remove_dropin(
    host: &Host,
    state: &State,
    dropin_name: &str,
    done: &mut Vec<String>,
) -> Result<(), String> {
    let dir = host.path("/etc/sysctl.d");
    // The drop-in portd recorded writing; a version 1 state did not record
    // one, and the policy's name stands in.
    let dropin_name = state.dropin.as_deref().unwrap_or(dropin_name);
    let path = dir.join(dropin_name);
    // The same judgement as persist's: a symlink (even to a file with
    // portd's header), a directory or an admin's file is never removed.
    match dropin_file(host, dropin_name) {
        DropinFile::Portd(_) => {
            fsutil::remove_in(&dir, dropin_name)
                .map_err(|e| part_way(format!("cannot remove {}: {e}", path.display()), done))?;
            done.push(format!("removed {}", path.display()));
        }
        DropinFile::Foreign(why) => done.push(format!("left {} alone: {why}", path.display())),
        DropinFile::Absent => {}
    }
    Ok(())
}
