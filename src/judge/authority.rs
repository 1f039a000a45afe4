//! One answer to "may portd write now, and if not, why": computed once per
//! poll by the daemon (and by `check --plan`), handed to the planner, and
//! shown by the STATUS line and the metrics, so that they never disagree.

use crate::policy::Mode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// portd may change the range (the planner still applies cooldown, the
    /// hourly cap, bounds and pins).
    Write,
    /// portd only says what it would do.
    Advise(Why),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The policy says `mode = "advise"`.
    Policy,
    /// `portd run --dry-run`.
    DryRun,
    /// Someone else changed the values portd wrote; until a policy reload.
    Yielded(String),
    /// The state file cannot be read, so the original values could not be
    /// recorded before a write.
    StateUnreadable(String),
}

impl Authority {
    /// `--dry-run` first (the operator asked for it), then an unreadable
    /// state, then a yield to the admin, then the policy's mode.
    pub fn of(
        mode: Mode,
        dry_run: bool,
        state_unreadable: Option<&str>,
        yielded: Option<&str>,
    ) -> Authority {
        let why = if dry_run {
            Why::DryRun
        } else if let Some(reason) = state_unreadable {
            Why::StateUnreadable(reason.to_string())
        } else if let Some(reason) = yielded {
            Why::Yielded(reason.to_string())
        } else if mode == Mode::Advise {
            Why::Policy
        } else {
            return Authority::Write;
        };
        Authority::Advise(why)
    }

    pub fn may_write(&self) -> bool {
        *self == Authority::Write
    }

    /// The mode as the STATUS line and the journal show it.
    pub fn describe(&self) -> &'static str {
        match self {
            Authority::Write => "auto",
            Authority::Advise(Why::Policy) => "advise",
            Authority::Advise(Why::DryRun) => "dry-run",
            Authority::Advise(Why::Yielded(_)) => "advise (yielded to the admin)",
            Authority::Advise(Why::StateUnreadable(_)) => "advise (state unreadable)",
        }
    }

    /// The `mode` label of `portd_info`: "auto", "advise" or "dry-run".
    pub fn mode_label(&self) -> &'static str {
        match self {
            Authority::Write => "auto",
            Authority::Advise(Why::DryRun) => "dry-run",
            Authority::Advise(_) => "advise",
        }
    }

    /// The `advise_reason` label of `portd_info`: empty while portd may write.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Authority::Write => "",
            Authority::Advise(Why::Policy) => "policy",
            Authority::Advise(Why::DryRun) => "dry-run",
            Authority::Advise(Why::Yielded(_)) => "yielded",
            Authority::Advise(Why::StateUnreadable(_)) => "state-unreadable",
        }
    }

    pub fn yielded(&self) -> bool {
        matches!(self, Authority::Advise(Why::Yielded(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_with_a_readable_state_and_no_yield_may_write() {
        assert_eq!(
            Authority::of(Mode::Auto, false, None, None),
            Authority::Write
        );
    }

    #[test]
    fn advise_mode_only_advises() {
        assert_eq!(
            Authority::of(Mode::Advise, false, None, None),
            Authority::Advise(Why::Policy)
        );
    }

    #[test]
    fn a_yield_to_the_admin_advises_whatever_the_mode() {
        for mode in [Mode::Auto, Mode::Advise] {
            assert_eq!(
                Authority::of(mode, false, None, Some("admin wrote 40000 40199")),
                Authority::Advise(Why::Yielded("admin wrote 40000 40199".into()))
            );
        }
    }

    #[test]
    fn an_unreadable_state_advises_even_when_yielded() {
        assert_eq!(
            Authority::of(Mode::Auto, false, Some("bad json"), Some("admin")),
            Authority::Advise(Why::StateUnreadable("bad json".into()))
        );
    }

    #[test]
    fn dry_run_comes_first() {
        assert_eq!(
            Authority::of(Mode::Advise, true, Some("bad json"), Some("admin")),
            Authority::Advise(Why::DryRun)
        );
    }

    #[test]
    fn status_and_metrics_say_the_same_for_each_authority() {
        let cases = [
            (Authority::Write, "auto", "auto", "", false),
            (
                Authority::Advise(Why::Policy),
                "advise",
                "advise",
                "policy",
                false,
            ),
            (
                Authority::Advise(Why::DryRun),
                "dry-run",
                "dry-run",
                "dry-run",
                false,
            ),
            (
                Authority::Advise(Why::Yielded("admin".into())),
                "advise (yielded to the admin)",
                "advise",
                "yielded",
                true,
            ),
            (
                Authority::Advise(Why::StateUnreadable("bad json".into())),
                "advise (state unreadable)",
                "advise",
                "state-unreadable",
                false,
            ),
        ];
        for (authority, status, mode, reason, yielded) in cases {
            assert_eq!(authority.describe(), status, "{authority:?}");
            assert_eq!(authority.mode_label(), mode, "{authority:?}");
            assert_eq!(authority.reason_label(), reason, "{authority:?}");
            assert_eq!(authority.yielded(), yielded, "{authority:?}");
            assert_eq!(authority.may_write(), mode == "auto", "{authority:?}");
        }
    }
}
