//! portd: watches ephemeral-port usage per destination and safely widens
//! `net.ipv4.ip_local_port_range`. See DESIGN.md in the project docs.

pub mod attribution;
pub mod census;
pub mod cli;
pub mod host;
pub mod kernel;
pub mod level;
pub mod planner;
pub mod policy;
pub mod status;
pub mod usage;
