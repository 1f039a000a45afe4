//! portd: watches ephemeral-port usage per destination and safely widens
//! `net.ipv4.ip_local_port_range`. The design is in docs/DESIGN.md,
//! the map of the parts in docs/ARCHITECTURE.md.
//!
//! The parts, lowest first; each may import only the parts above it in
//! this list (tests/suite/architecture.rs holds them to it):
//! - [`base`]: units, kernel facts, the host root, atomic files;
//! - [`policy`]: the validated settings;
//! - [`observe`]: what the kernel and the files say (census, witness,
//!   namespaces, sysctl.d);
//! - [`judge`]: pure judgement (no I/O, the clock as an input);
//! - [`act`]: the one writer and its memory;
//! - [`publish`]: every channel portd speaks on;
//! - [`daemon`]: the loop that sequences observe, judge, act, publish;
//! - [`commands`]: the command line.

// Functions stay short enough to read in one sitting (threshold in
// .clippy.toml; CI denies warnings): the few flat output lists say why.
#![warn(clippy::too_many_lines)]

pub mod act;
pub mod base;
pub mod commands;
pub(crate) mod daemon;
pub mod judge;
pub mod observe;
pub mod policy;
pub mod publish;
