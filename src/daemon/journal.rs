//! The daemon's journal entries that keep no reporting state, shared by the
//! poll and the watch over the other namespaces: the usage fields, the
//! level event, exhaustion, a policy reloaded or rejected, and the "report
//! once" rule that keeps a condition from being logged on every poll.

use std::path::Path;

use crate::judge::authority::Authority;
use crate::judge::exhausted;
use crate::judge::level::Level;
use crate::judge::planner::Decision;
use crate::observe::usage::Usage;
use crate::policy::file::PolicyError;
use crate::publish::events::{self, Fields, Kind};

/// A condition reported once per distinct text, not once per poll.
#[derive(Debug, Default)]
pub(super) struct Once(Option<String>);

impl Once {
    /// True when `text` differs from what was reported last (then it is
    /// remembered as reported).
    pub fn is_new(&mut self, text: &str) -> bool {
        if self.0.as_deref() == Some(text) {
            return false;
        }
        self.0 = Some(text.to_string());
        true
    }

    /// The condition is over; true when one had been reported (so that its
    /// end can be reported too).
    pub fn clear(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// The usage fields of a journal entry: headline, busiest destinations,
/// range and cause (the daemon's and every namespace's alerts).
pub(super) fn usage_fields(usage: &Usage) -> Fields {
    let worst: Vec<String> = usage
        .destinations
        .iter()
        .take(3)
        .map(|d| format!("{} ({}, {})", d.key, d.usage, d.used))
        .collect();
    Fields {
        usage: Some(usage.headline.usage.to_string()),
        used: Some(usage.headline.used),
        capacity: Some(usage.headline.capacity),
        destination: (!worst.is_empty()).then(|| worst.join("; ")),
        range_before: Some(usage.settings.port_range),
        reason: Some(usage.headline.cause.to_string()),
        ..Fields::default()
    }
}

/// "ephemeral ports warning", with its kind and whether it is a reminder:
/// one entry per transition of the confirmed level, and a reminder at the
/// policy's interval while it stays raised; never one per poll.
pub(super) fn level_event(d: &Decision) -> Option<(Kind, &'static str, bool)> {
    Some(match (d.transition, d.alert.level) {
        (Some(_), Level::Critical) => (Kind::UsageCritical, "ephemeral ports critical", false),
        (Some((Level::Critical, _)), Level::Warning) => (
            Kind::UsageWarning,
            "ephemeral ports down from critical to warning",
            false,
        ),
        (Some(_), Level::Warning) => (Kind::UsageWarning, "ephemeral ports warning", false),
        (Some((from, _)), Level::Ok) if from > Level::Ok => {
            (Kind::UsageRecovered, "ephemeral ports recovered", false)
        }
        (None, Level::Critical) if d.remind => {
            (Kind::UsageCritical, "ephemeral ports still critical", true)
        }
        (None, Level::Warning) if d.remind => {
            (Kind::UsageWarning, "ephemeral ports still warning", true)
        }
        _ => return None,
    })
}

/// Exhaustion (exhausted.rs): one entry for every exhausted target.
pub(super) fn exhaustion(usage: &Usage, event: &exhausted::Event) {
    match event {
        exhausted::Event::Exhausted {
            targets,
            first,
            worsened,
        } => {
            let what = if *first {
                "ephemeral ports exhausted"
            } else if *worsened {
                "ephemeral port exhaustion worsened"
            } else {
                "ephemeral ports still exhausted"
            };
            events::emit(
                Kind::PortsExhausted,
                &format!(
                    "{what}: connect() fails now with EADDRNOTAVAIL towards {}; range {}",
                    targets.join("; "),
                    usage.settings.port_range
                ),
                &Fields {
                    destination: Some(targets.join("; ")),
                    reminder: !*first && !*worsened,
                    ..usage_fields(usage)
                },
            );
        }
        exhausted::Event::Recovered => events::emit(
            Kind::ExhaustionEnded,
            &format!(
                "ephemeral ports no longer exhausted: {} ({}/{}) at most",
                usage.headline.usage, usage.headline.used, usage.headline.capacity
            ),
            &usage_fields(usage),
        ),
    }
}

pub(super) fn reloaded(config: &Path, authority: &Authority, yield_cleared: bool) {
    events::emit(
        Kind::PolicyReloaded,
        &format!(
            "policy reloaded from {}: mode {}{}",
            config.display(),
            authority.describe(),
            if yield_cleared {
                "; the yield to the admin is cleared"
            } else {
                ""
            }
        ),
        &Fields {
            policy: Some(config.display().to_string()),
            ..Fields::default()
        },
    );
}

pub(super) fn rejected(config: &Path, error: &PolicyError) {
    events::emit(
        Kind::PolicyRejected,
        &format!("policy rejected, the previous one stays in force:\n{error}"),
        &Fields {
            policy: Some(config.display().to_string()),
            reason: Some(error.to_string()),
            ..Fields::default()
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::planner::AlertState;

    #[test]
    fn a_condition_is_reported_once_per_distinct_text() {
        let mut once = Once::default();
        assert!(once.is_new("cooldown"));
        assert!(!once.is_new("cooldown"));
        assert!(once.is_new("write failed: EPERM"));
        assert!(once.is_new("cooldown"));
    }

    #[test]
    fn clearing_says_whether_something_had_been_reported() {
        let mut once = Once::default();
        assert!(!once.clear());
        once.is_new("cannot write metrics");
        assert!(once.clear());
        assert!(!once.clear());
        assert!(
            once.is_new("cannot write metrics"),
            "reported again after it cleared"
        );
    }

    fn decision(transition: Option<(Level, Level)>, level: Level, remind: bool) -> Decision {
        Decision {
            raw_level: level,
            alert: AlertState {
                level,
                ..AlertState::default()
            },
            transition,
            remind,
            action: crate::judge::planner::Action::Nothing,
            urgent: None,
            overrode: None,
            unfit: None,
        }
    }

    #[test]
    fn the_journal_hears_of_level_transitions_and_reminders_only() {
        let what = |d: &Decision| level_event(d).map(|(_, what, reminder)| (what, reminder));
        use Level::{Critical, Ok, Warning};
        assert_eq!(
            what(&decision(Some((Ok, Warning)), Warning, false)),
            Some(("ephemeral ports warning", false))
        );
        assert_eq!(
            what(&decision(Some((Critical, Warning)), Warning, false)),
            Some(("ephemeral ports down from critical to warning", false))
        );
        assert_eq!(
            what(&decision(Some((Warning, Ok)), Ok, false)),
            Some(("ephemeral ports recovered", false))
        );
        assert_eq!(
            what(&decision(None, Critical, true)),
            Some(("ephemeral ports still critical", true))
        );
        assert_eq!(what(&decision(None, Warning, false)), None);
        assert_eq!(what(&decision(None, Ok, true)), None);
    }
}
