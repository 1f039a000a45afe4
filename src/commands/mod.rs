//! The command line: `portd run | status | check | rollback`, each a thin
//! command over the parts below.
//!
//! May import every other part.

pub(crate) mod check;
pub mod cli;
pub(crate) mod status;
pub(crate) mod status_netns;
pub(crate) mod status_watch;
