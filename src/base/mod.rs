//! The bottom layer: unit types for ports and fractions, the kernel's facts
//! about ephemeral ports (each in one place, with its source), the host root
//! every path is resolved under, atomic file replacement and the one-writer
//! lock, the escape for text others chose, and the shutdown flag.
//!
//! Imports nothing of the crate's other parts.

pub(crate) mod fsutil;
pub mod host;
pub mod kernel;
pub mod ports;
pub(crate) mod shutdown;
pub(crate) mod untrusted;
