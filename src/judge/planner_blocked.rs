//! Why a widening the usage calls for is held, and the two facts of the
//! boot configuration that hold it: a later file pinning the range, a
//! foreign file at the drop-in's name.

use serde::Serialize;

/// A sysctl.d file that sets the range or the reserved ports after portd's
/// drop-in, so a change would not survive a reboot. `value` names the key:
/// `net.ipv4.ip_local_reserved_ports = 40010`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pin {
    pub file: String,
    pub value: String,
}

/// A file at the drop-in's name that portd did not write: portd never
/// overwrites it, so a change of the range would not survive a reboot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ForeignDropin {
    pub path: String,
    /// Why it is not portd's: "it does not start with portd's header ...".
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blocked {
    /// `mode = "advise"` (or `--dry-run`): the plan is what would be done.
    Advise,
    /// The range already spans floor..ceiling (as far as parity allows).
    AtBound,
    /// The current range lies outside the policy's floor/ceiling: the admin's
    /// range is left alone.
    OutsideBounds,
    Cooldown {
        remaining_secs: u64,
    },
    ChangeCap {
        per_hour: u32,
    },
    /// Someone else changed the values portd wrote.
    Yielded {
        reason: String,
    },
    PinnedBy {
        pin: Pin,
    },
    /// The drop-in's name is taken by a file portd did not write: a change
    /// could not be persisted and every reboot would undo it.
    ForeignDropin {
        dropin: ForeignDropin,
    },
    /// The state file cannot be read, so the original values could not be
    /// recorded before a write.
    StateUnreadable {
        reason: String,
    },
    /// The plan would leave fewer ports that `connect()` can use (range
    /// minus reserved minus listened-on ports) than there are now:
    /// reserving what the policy protects costs more than the growth brings.
    FewerUsablePorts {
        before: u32,
        after: u32,
    },
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocked::Advise => f.write_str("advise mode: nothing is written"),
            Blocked::AtBound => {
                f.write_str("the range already reaches the policy's floor and ceiling")
            }
            Blocked::OutsideBounds => f.write_str(
                "the current range lies outside the policy's floor/ceiling; portd leaves it alone",
            ),
            Blocked::Cooldown { remaining_secs } => {
                write!(f, "cooldown: next change allowed in {remaining_secs}s")
            }
            Blocked::ChangeCap { per_hour } => {
                write!(
                    f,
                    "change cap reached ({per_hour} changes in the last hour)"
                )
            }
            Blocked::Yielded { reason } => write!(f, "yielded to the admin: {reason}"),
            Blocked::PinnedBy { pin } => write!(
                f,
                "{} sets {} after portd's drop-in; a change would not survive a reboot",
                pin.file, pin.value
            ),
            Blocked::ForeignDropin { dropin } => write!(
                f,
                "{} is not portd's drop-in ({}) and portd never overwrites it, so a change \
                 would not survive a reboot: portd only advises until the file is moved aside \
                 or persist.file names another file (then reload)",
                dropin.path, dropin.why
            ),
            Blocked::StateUnreadable { reason } => write!(
                f,
                "the state file cannot be read ({reason}), so the original values cannot be recorded: portd only advises until it is fixed or moved aside"
            ),
            Blocked::FewerUsablePorts { before, after } => write!(
                f,
                "it would leave {after} usable ephemeral port(s) (range minus reserved and \
                 listened-on ports), fewer than the {before} now: the ports widen.protected asks \
                 it to reserve cover the span; narrow widen.protected (`portd check` shows it)"
            ),
        }
    }
}
