//! The policy: validated settings from `/etc/portd.toml`, with complete
//! built-in defaults so portd runs without a file.
//!
//! `file.rs` turns the TOML text into this type (raw serde structs, then
//! validation with `PATH:LINE:COL` errors); everything past that boundary
//! works with these domain types only.

mod diagnostics;
pub mod file;
mod load;
pub mod namespaces;
mod raw;
pub mod thresholds;
mod validate;
mod values;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::base::ports::{Port, PortRange, Ratio};

pub use namespaces::NamespacePolicy;
pub use thresholds::{ThresholdError, Thresholds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Alert and say what would be done; never write.
    Advise,
    /// Alert and widen the range within the policy's bounds.
    Auto,
}

/// Where the low end of the range may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Floor {
    /// The range's low as portd first found it: growth is upward only.
    Initial,
    Port(u16),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// How often the daemon looks.
    pub interval: Duration,
    /// Longest time the daemon may go without a full census, however idle.
    pub max_staleness: Duration,
    /// Warning, critical and clear (hysteresis) levels.
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// How long a level must hold before it counts.
    pub hold: Duration,
    /// Whether the TCP bind(0) pool counts towards the headline.
    pub tcp_pool_alerts: bool,
    pub mode: Mode,
    pub floor: Floor,
    pub ceiling: Port,
    /// Usage to aim for after growing.
    pub target: Ratio,
    pub cooldown: Duration,
    pub max_changes_per_hour: NonZeroU32,
    /// Never handed out; reserved when the range grows over them.
    pub protected: Vec<PortRange>,
    pub persist: bool,
    /// File name of the drop-in under `/etc/sysctl.d`.
    pub dropin_name: String,
    pub reminder: Duration,
    pub metrics_file: Option<PathBuf>,
    /// Other network namespaces: advised only unless selected here.
    pub namespaces: NamespacePolicy,
}

const FOUR_A_HOUR: NonZeroU32 = NonZeroU32::new(4).expect("4 is not 0");

impl Default for Policy {
    /// Safe on a host nobody has inspected (docs/DESIGN.md, "Default policy").
    fn default() -> Self {
        Policy {
            interval: Duration::from_secs(2),
            max_staleness: Duration::from_secs(300),
            thresholds: Thresholds::default(),
            hold: Duration::from_secs(30),
            tcp_pool_alerts: false,
            mode: Mode::Auto,
            floor: Floor::Initial,
            ceiling: Port::MAX,
            target: Ratio::whole_percent(25),
            cooldown: Duration::from_secs(300),
            max_changes_per_hour: FOUR_A_HOUR,
            protected: Vec::new(),
            persist: true,
            dropin_name: "60-portd.conf".to_string(),
            reminder: Duration::from_secs(3600),
            metrics_file: None,
            namespaces: NamespacePolicy::default(),
        }
    }
}
