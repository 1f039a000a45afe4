//! Alert levels and the monitoring-plugin exit-status contract.

use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::base::ports::Ratio;

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
    pub fn exit(self) -> Exit {
        match self {
            Level::Ok => Exit::Ok,
            Level::Warning => Exit::Warning,
            Level::Critical => Exit::Critical,
            Level::Unknown => Exit::Unknown,
        }
    }

    pub fn exit_code(self) -> u8 {
        self.exit().code()
    }

    /// The order in which a report over several parts (namespaces) picks
    /// its worst: ok, warning, unknown, critical. A part that could not be
    /// measured outranks what was measured below critical (it may be
    /// worse), but a measured critical is the worst that can be said.
    pub fn rank(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Unknown => 2,
            Level::Critical => 3,
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

/// The exit status of every command, the monitoring-plugin contract
/// (cli.rs): `status` uses all four, `check` 0 fine / 1 warnings / 2 errors,
/// `run` and `rollback` 0 or 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Warning = 1,
    /// Critical usage, or a command that failed (an error).
    Critical = 2,
    /// Could not measure, or the command line was wrong.
    Unknown = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
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

    #[test]
    fn exit_statuses_follow_the_monitoring_plugin_contract() {
        let codes = [Exit::Ok, Exit::Warning, Exit::Critical, Exit::Unknown].map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3]);
        let levels = [Level::Ok, Level::Warning, Level::Critical, Level::Unknown];
        assert_eq!(levels.map(Level::exit_code), [0, 1, 2, 3]);
        assert!(Exit::Ok < Exit::Warning && Exit::Warning < Exit::Critical);
    }

    #[test]
    fn a_measured_critical_outranks_an_unknown_part_which_outranks_a_warning() {
        let ranked = [Level::Ok, Level::Warning, Level::Unknown, Level::Critical].map(Level::rank);
        assert!(ranked.windows(2).all(|w| w[0] < w[1]), "{ranked:?}");
    }
}
