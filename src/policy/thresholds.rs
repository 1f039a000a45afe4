//! The usage levels that raise and clear an alert, valid by construction:
//! the policy file and `status --warning/--critical` go through the same
//! rules, so neither can hand the planner or a status check a threshold of
//! 0 %, or a warning level above the critical one.

use std::fmt;

use serde::Serialize;

use crate::base::ports::Ratio;

/// `0 < clear <= warning <= critical <= 100 %`; [`Thresholds::new`], the
/// policy's rule, also keeps clear strictly below warning.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    warning: Ratio,
    critical: Ratio,
    /// An alert clears when usage falls below this (hysteresis).
    clear: Ratio,
}

/// Why a set of thresholds was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdError {
    /// Not above 0 and at most 100; the value in percent.
    NotAPercentage(f64),
    WarningAboveCritical {
        warning: Ratio,
        critical: Ratio,
    },
    ClearNotBelowWarning {
        clear: Ratio,
        warning: Ratio,
    },
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdError::NotAPercentage(percent) => write!(
                f,
                "{percent} is not a usable percentage; use a number above 0 and at most 100"
            ),
            ThresholdError::WarningAboveCritical { warning, critical } => write!(
                f,
                "warning threshold {warning} is above critical threshold {critical}"
            ),
            ThresholdError::ClearNotBelowWarning { clear, warning } => write!(
                f,
                "clear threshold {clear} is not below warning threshold {warning}"
            ),
        }
    }
}

impl std::error::Error for ThresholdError {}

/// A threshold written in percent, as a share of capacity: above 0 (a
/// threshold of 0 is always reached) and at most 100.
pub fn percent(percent: f64) -> Result<Ratio, ThresholdError> {
    match Ratio::from_percent(percent) {
        Ok(ratio) if percent > 0.0 && percent <= 100.0 => Ok(ratio),
        _ => Err(ThresholdError::NotAPercentage(percent)),
    }
}

fn share(ratio: Ratio) -> Result<Ratio, ThresholdError> {
    if ratio.fraction() > 0.0 && ratio.fraction() <= 1.0 {
        Ok(ratio)
    } else {
        Err(ThresholdError::NotAPercentage(ratio.percent()))
    }
}

impl Thresholds {
    pub fn new(warning: Ratio, critical: Ratio, clear: Ratio) -> Result<Self, ThresholdError> {
        let (warning, critical, clear) = (share(warning)?, share(critical)?, share(clear)?);
        if warning > critical {
            return Err(ThresholdError::WarningAboveCritical { warning, critical });
        }
        if clear >= warning {
            return Err(ThresholdError::ClearNotBelowWarning { clear, warning });
        }
        Ok(Thresholds {
            warning,
            critical,
            clear,
        })
    }

    /// These thresholds with other alert levels, as `status --warning
    /// --critical` asks. A one-shot status has no hysteresis, so a clear
    /// level that is no longer below the new warning level becomes the
    /// warning level itself: an alert then clears as soon as usage falls
    /// below warning.
    pub fn with_levels(
        self,
        warning: Option<Ratio>,
        critical: Option<Ratio>,
    ) -> Result<Self, ThresholdError> {
        let warning = share(warning.unwrap_or(self.warning))?;
        let critical = share(critical.unwrap_or(self.critical))?;
        if warning > critical {
            return Err(ThresholdError::WarningAboveCritical { warning, critical });
        }
        Ok(Thresholds {
            warning,
            critical,
            clear: if self.clear < warning {
                self.clear
            } else {
                warning
            },
        })
    }

    pub fn warning(&self) -> Ratio {
        self.warning
    }

    pub fn critical(&self) -> Ratio {
        self.critical
    }

    pub fn clear(&self) -> Ratio {
        self.clear
    }
}

impl Default for Thresholds {
    /// Warn well before the 50% mark where connect() to a destination
    /// becomes ~10x slower; critical at that mark.
    fn default() -> Self {
        Thresholds {
            warning: Ratio::whole_percent(40),
            critical: Ratio::whole_percent(50),
            clear: Ratio::whole_percent(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p: f64) -> Ratio {
        Ratio::from_percent(p).unwrap()
    }

    #[test]
    fn thresholds_in_order_are_accepted() {
        let t = Thresholds::new(pct(40.0), pct(50.0), pct(30.0)).unwrap();
        assert_eq!(
            (t.warning(), t.critical(), t.clear()),
            (pct(40.0), pct(50.0), pct(30.0))
        );
        // warning may equal critical, and 100 % is allowed.
        assert!(Thresholds::new(pct(100.0), pct(100.0), pct(99.0)).is_ok());
    }

    #[test]
    fn the_defaults_obey_the_constructor_rules() {
        let d = Thresholds::default();
        assert_eq!(Thresholds::new(d.warning(), d.critical(), d.clear()), Ok(d));
    }

    #[test]
    fn warning_above_critical_is_refused() {
        assert_eq!(
            Thresholds::new(pct(60.0), pct(50.0), pct(30.0)),
            Err(ThresholdError::WarningAboveCritical {
                warning: pct(60.0),
                critical: pct(50.0)
            })
        );
    }

    #[test]
    fn clear_must_be_strictly_below_warning() {
        for clear in [40.0, 45.0] {
            assert_eq!(
                Thresholds::new(pct(40.0), pct(50.0), pct(clear)),
                Err(ThresholdError::ClearNotBelowWarning {
                    clear: pct(clear),
                    warning: pct(40.0)
                })
            );
        }
    }

    #[test]
    fn zero_negative_over_100_and_nan_are_not_percentages() {
        for bad in [0.0, -5.0, 100.5, f64::NAN, f64::INFINITY] {
            assert!(percent(bad).is_err(), "{bad}");
            match Ratio::from_percent(bad) {
                // A Ratio cannot even hold a negative, NaN or infinite share.
                Err(_) => assert!(bad < 0.0 || !bad.is_finite(), "{bad}"),
                Ok(ratio) => assert!(
                    matches!(
                        Thresholds::new(pct(40.0), pct(50.0), ratio),
                        Err(ThresholdError::NotAPercentage(_))
                    ),
                    "{bad}"
                ),
            }
        }
        assert_eq!(percent(12.5), Ok(pct(12.5)));
        assert_eq!(percent(100.0), Ok(Ratio::FULL));
    }

    #[test]
    fn status_levels_override_warning_and_critical_under_the_same_rules() {
        let policy = Thresholds::default();
        let t = policy
            .with_levels(Some(pct(60.0)), Some(pct(80.0)))
            .unwrap();
        assert_eq!((t.warning(), t.critical()), (pct(60.0), pct(80.0)));
        assert_eq!(t.clear(), policy.clear());
        assert_eq!(
            policy.with_levels(Some(pct(70.0)), None),
            Err(ThresholdError::WarningAboveCritical {
                warning: pct(70.0),
                critical: pct(50.0)
            })
        );
        assert!(matches!(
            policy.with_levels(None, Some(Ratio::ZERO)),
            Err(ThresholdError::NotAPercentage(_))
        ));
    }

    #[test]
    fn a_status_warning_at_or_below_the_policys_clear_drops_the_hysteresis() {
        let t = Thresholds::default()
            .with_levels(Some(pct(30.0)), None)
            .unwrap();
        assert_eq!((t.warning(), t.clear()), (pct(30.0), pct(30.0)));
    }
}
