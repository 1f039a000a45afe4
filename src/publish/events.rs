//! The events portd reports, each with its own journald `MESSAGE_ID`
//! (explained in `packaging/portd.catalog`), a priority by severity and
//! `PORTD_*` fields. Logged through `tracing`; `logging.rs` decides whether
//! they go to the journal natively or to stderr as readable lines.

use crate::base::ports::PortRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    UsageWarning,
    UsageCritical,
    UsageRecovered,
    RangeWidened,
    WideningBlocked,
    ExternalChange,
    PersistFailed,
    PolicyReloaded,
    PolicyRejected,
    ConfigurationHazard,
    PortAllocationFailed,
    PortsExhausted,
    ExhaustionEnded,
    /// Another network namespace with a raised alert is gone: its alert
    /// ends with it.
    NetnsGone,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::UsageWarning,
        Kind::UsageCritical,
        Kind::UsageRecovered,
        Kind::RangeWidened,
        Kind::WideningBlocked,
        Kind::ExternalChange,
        Kind::PersistFailed,
        Kind::PolicyReloaded,
        Kind::PolicyRejected,
        Kind::ConfigurationHazard,
        Kind::PortAllocationFailed,
        Kind::PortsExhausted,
        Kind::ExhaustionEnded,
        Kind::NetnsGone,
    ];

    /// Stable ids: never change one once released (catalog and alert rules use them).
    pub fn message_id(self) -> &'static str {
        match self {
            Kind::UsageWarning => "49c2ccace7334c4abd0a8cf2dbe720af",
            Kind::UsageCritical => "836298aa8ba84dba8e0aad24fb3774d0",
            Kind::UsageRecovered => "6be9d11146dd4672b5a4cb7c76a8035a",
            Kind::RangeWidened => "d6b85f7829634a5bb5227482ec76a960",
            Kind::WideningBlocked => "ea473d0b77c34b3bb225b1a5423bfdd1",
            Kind::ExternalChange => "3ad14258dcd34abba0a9c61647b09ef8",
            Kind::PersistFailed => "545b32eee1154c59bcba6ce445f1d6ed",
            Kind::PolicyReloaded => "2bf45d51d74f46d0b751b4421bac85c7",
            Kind::PolicyRejected => "de422eefe5c9430bbc2e3f86a3eb0a61",
            Kind::ConfigurationHazard => "907f11ee18bd4dd49cb23d5c48049dda",
            Kind::PortAllocationFailed => "bc91379153534ca58f0c1d5d8a11bbbd",
            Kind::PortsExhausted => "fa44ff2d77104282ace1f520cadd61fc",
            Kind::ExhaustionEnded => "3da35bbbb0ff47d4a2f58643d702576e",
            Kind::NetnsGone => "cd41968b3ab14d38a3c968d6cede18ef",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::UsageWarning => "usage-warning",
            Kind::UsageCritical => "usage-critical",
            Kind::UsageRecovered => "usage-recovered",
            Kind::RangeWidened => "range-widened",
            Kind::WideningBlocked => "widening-blocked",
            Kind::ExternalChange => "external-change",
            Kind::PersistFailed => "persist-failed",
            Kind::PolicyReloaded => "policy-reloaded",
            Kind::PolicyRejected => "policy-rejected",
            Kind::ConfigurationHazard => "configuration-hazard",
            Kind::PortAllocationFailed => "port-allocation-failed",
            Kind::PortsExhausted => "ports-exhausted",
            Kind::ExhaustionEnded => "exhaustion-ended",
            Kind::NetnsGone => "netns-gone",
        }
    }

    /// syslog priority, as journald stores it (tracing-journald maps
    /// ERROR→3, WARN→4, INFO→5).
    pub fn severity(self) -> Severity {
        match self {
            Kind::UsageCritical
            | Kind::PersistFailed
            | Kind::PolicyRejected
            | Kind::PortAllocationFailed
            | Kind::PortsExhausted => Severity::Error,
            Kind::UsageWarning
            | Kind::WideningBlocked
            | Kind::ExternalChange
            | Kind::ConfigurationHazard => Severity::Warning,
            Kind::UsageRecovered
            | Kind::RangeWidened
            | Kind::PolicyReloaded
            | Kind::ExhaustionEnded
            | Kind::NetnsGone => Severity::Notice,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Notice,
}

impl Severity {
    pub fn priority(self) -> u8 {
        match self {
            Severity::Error => 3,
            Severity::Warning => 4,
            Severity::Notice => 5,
        }
    }
}

/// One event. Optional fields are left out of the entry when empty.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    pub usage: Option<String>,
    pub used: Option<u64>,
    pub capacity: Option<u64>,
    /// The worst destinations, most used first ("local -> remote:port").
    pub destination: Option<String>,
    pub process: Option<String>,
    pub range_before: Option<PortRange>,
    pub range_after: Option<PortRange>,
    pub reason: Option<String>,
    /// The policy file (reloads).
    pub policy: Option<String>,
    /// A repeat of an alert whose level has not changed (`PORTD_REMINDER=1`).
    pub reminder: bool,
    /// Another network namespace the event is about: `net:[INODE]` and
    /// what a person calls it (src/observe/netns/).
    pub netns: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    /// Seconds until the first destination or pool runs out, when the
    /// forecast says it will.
    pub time_to_exhaustion: Option<u64>,
    /// Remedy ids (remedy.rs), the first that closes the gap first.
    pub remedy: Option<String>,
}

/// Emits one event. `message` is the human text: one line, except the list
/// of errors of a rejected policy (one `PATH:LINE:COL` a line). `None` fields
/// are left out of the entry (tracing records nothing for them).
pub fn emit(kind: Kind, message: &str, f: &Fields) {
    let before = f.range_before.map(|r| r.to_string());
    let after = f.range_after.map(|r| r.to_string());
    macro_rules! ev {
        ($lvl:ident) => {
            tracing::$lvl!(
                message_id = kind.message_id(),
                portd_event = kind.name(),
                portd_usage = f.usage.as_deref(),
                portd_used = f.used,
                portd_capacity = f.capacity,
                portd_destination = f.destination.as_deref(),
                portd_process = f.process.as_deref(),
                portd_range_before = before.as_deref(),
                portd_range_after = after.as_deref(),
                portd_reason = f.reason.as_deref(),
                portd_policy = f.policy.as_deref(),
                portd_reminder = f.reminder.then_some(1u8),
                portd_netns = f.netns.as_deref(),
                portd_container = f.container.as_deref(),
                portd_pod = f.pod.as_deref(),
                portd_time_to_exhaustion = f.time_to_exhaustion,
                portd_remedy = f.remedy.as_deref(),
                "{message}"
            )
        };
    }
    match kind.severity() {
        Severity::Error => ev!(error),
        Severity::Warning => ev!(warn),
        Severity::Notice => ev!(info),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_128_bit_ids() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in Kind::ALL {
            let id = kind.message_id();
            assert_eq!(id.len(), 32, "{kind:?}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{kind:?}: {id} is not lower-case hex"
            );
            assert!(seen.insert(id), "{kind:?} shares its MESSAGE_ID");
        }
    }

    #[test]
    fn every_kind_is_listed_once() {
        let names: std::collections::BTreeSet<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
    }
}
