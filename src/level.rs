//! Alert levels and the monitoring-plugin exit-status contract.

use serde::{Deserialize, Serialize};

use crate::ports::Ratio;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
    /// Could not be measured (read error, bad usage).
    Unknown,
}

impl Level {
    /// A threshold is reached when usage is at or above it.
    pub fn of(usage: Ratio, warning: Ratio, critical: Ratio) -> Level {
        if usage >= critical {
            Level::Critical
        } else if usage >= warning {
            Level::Warning
        } else {
            Level::Ok
        }
    }

    /// Nagios/Icinga/Sensu plugin convention.
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
            Level::Unknown => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_at_equality() {
        let ratio = |f| Ratio::from_fraction(f).unwrap();
        let (w, c) = (ratio(0.4), ratio(0.5));
        assert_eq!(Level::of(ratio(0.399), w, c), Level::Ok);
        assert_eq!(Level::of(ratio(0.4), w, c), Level::Warning);
        assert_eq!(Level::of(ratio(0.5), w, c), Level::Critical);
        assert_eq!(Level::Unknown.exit_code(), 3);
    }
}
