//! The one writer: the actuator, the only code that writes `/proc/sys` and
//! `/etc/sysctl.d`, and the state file that remembers what portd found and
//! changed, so that `rollback` can restore it; `netns` writes the range of
//! another network namespace that the policy selects, from inside it.
//!
//! May import `base`, `policy`, `observe` and `judge`.

pub mod actuator;
pub mod netns;
pub mod state;
