//! The events portd reports, each with its own journald `MESSAGE_ID`
//! (explained in `packaging/portd.catalog`), a priority by severity and
//! `PORTD_*` fields. Logged through `tracing`; `logging.rs` decides whether
//! they go to the journal natively or to stderr as readable lines.
//!
//! The daemon says what happened; the entries are built here: [`Fields`]
//! and its builders ([`Fields::usage`], [`Fields::in_namespace`]) give every
//! entry its `PORTD_*` fields, and one [`Entry`] constructor per event
//! gives its kind, text and fields.

use std::net::IpAddr;
use std::path::Path;

use crate::base::ports::PortRange;
use crate::judge::assess::Assessment;
use crate::judge::authority::Authority;
use crate::judge::exhausted;
use crate::judge::forecast::Forecast;
use crate::judge::level::Level;
use crate::judge::planner::{Blocked, Decision, Plan, Unfit};
use crate::judge::remedy::Remedy;
use crate::observe::netns::Namespace;
use crate::observe::usage::{Cause, Usage};
use crate::observe::witness::FailureKind;
use crate::observe::witness::tally::Row;
use crate::policy::file::PolicyError;

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
    /// Its start (mode, policy, the witness's path) and first census.
    Started,
    /// Its stop (SIGTERM), or a widening the stop cut short.
    Stopping,
    /// The failure witness cannot run: the socket census alone.
    WitnessOff,
    /// Other namespaces out of sight by the unit's design.
    NamespacesHidden,
    /// Other namespaces out of sight despite the containers drop-in.
    NamespacesNotWatched,
    /// Part of its work fails (a file, another namespace's census); it goes on.
    Degraded,
    /// A census or the state file fails: it cannot see or cannot record.
    DaemonFailed,
    /// What a degraded or failed note named works again.
    Restored,
}

impl Kind {
    pub const ALL: [Kind; 22] = [
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
        Kind::Started,
        Kind::Stopping,
        Kind::WitnessOff,
        Kind::NamespacesHidden,
        Kind::NamespacesNotWatched,
        Kind::Degraded,
        Kind::DaemonFailed,
        Kind::Restored,
    ];

    /// Stable ids: never change one once released (catalog and alert rules use them).
    pub fn message_id(self) -> &'static str {
        self.ids().0
    }

    /// `PORTD_EVENT`.
    pub fn name(self) -> &'static str {
        self.ids().1
    }

    fn ids(self) -> (&'static str, &'static str) {
        match self {
            Kind::UsageWarning => ("49c2ccace7334c4abd0a8cf2dbe720af", "usage-warning"),
            Kind::UsageCritical => ("836298aa8ba84dba8e0aad24fb3774d0", "usage-critical"),
            Kind::UsageRecovered => ("6be9d11146dd4672b5a4cb7c76a8035a", "usage-recovered"),
            Kind::RangeWidened => ("d6b85f7829634a5bb5227482ec76a960", "range-widened"),
            Kind::WideningBlocked => ("ea473d0b77c34b3bb225b1a5423bfdd1", "widening-blocked"),
            Kind::ExternalChange => ("3ad14258dcd34abba0a9c61647b09ef8", "external-change"),
            Kind::PersistFailed => ("545b32eee1154c59bcba6ce445f1d6ed", "persist-failed"),
            Kind::PolicyReloaded => ("2bf45d51d74f46d0b751b4421bac85c7", "policy-reloaded"),
            Kind::PolicyRejected => ("de422eefe5c9430bbc2e3f86a3eb0a61", "policy-rejected"),
            Kind::ConfigurationHazard => {
                ("907f11ee18bd4dd49cb23d5c48049dda", "configuration-hazard")
            }
            Kind::PortAllocationFailed => {
                ("bc91379153534ca58f0c1d5d8a11bbbd", "port-allocation-failed")
            }
            Kind::PortsExhausted => ("fa44ff2d77104282ace1f520cadd61fc", "ports-exhausted"),
            Kind::ExhaustionEnded => ("3da35bbbb0ff47d4a2f58643d702576e", "exhaustion-ended"),
            Kind::NetnsGone => ("cd41968b3ab14d38a3c968d6cede18ef", "netns-gone"),
            Kind::Started => ("b50d2a55e3c541179e1fbf18fd27b7bc", "started"),
            Kind::Stopping => ("ef7f7148423244acb4e5eb54f7c9df60", "stopping"),
            Kind::WitnessOff => ("f09c7f341f3a4105a97df28b7fb80915", "witness-off"),
            Kind::NamespacesHidden => ("1179defcd36b41e1bb64f76349cc3ef1", "namespaces-hidden"),
            Kind::NamespacesNotWatched => {
                ("e638bacfc9f64672a1047ebabe30e83c", "namespaces-not-watched")
            }
            Kind::Degraded => ("b1f5672f6a9a414683e3eee2f0bf6b67", "degraded"),
            Kind::DaemonFailed => ("bb3895e6f1bb4dce844641f7af23a9c6", "daemon-failed"),
            Kind::Restored => ("a661c7541ccd44c1afac680c2b94555e", "restored"),
        }
    }

    /// A note of the daemon about itself, not an alert (notes come last).
    pub fn is_note(self) -> bool {
        self as u8 >= Kind::Started as u8
    }

    /// syslog priority, as journald stores it (tracing-journald maps
    /// ERROR→3, WARN→4, INFO→5).
    pub fn severity(self) -> Severity {
        match self {
            Kind::UsageCritical
            | Kind::PersistFailed
            | Kind::PolicyRejected
            | Kind::PortAllocationFailed
            | Kind::PortsExhausted
            | Kind::DaemonFailed => Severity::Error,
            Kind::UsageWarning
            | Kind::WideningBlocked
            | Kind::ExternalChange
            | Kind::ConfigurationHazard
            | Kind::NamespacesNotWatched
            | Kind::Degraded => Severity::Warning,
            Kind::UsageRecovered
            | Kind::RangeWidened
            | Kind::PolicyReloaded
            | Kind::ExhaustionEnded
            | Kind::NetnsGone
            | Kind::Started
            | Kind::Stopping
            | Kind::WitnessOff
            | Kind::NamespacesHidden
            | Kind::Restored => Severity::Notice,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error = 3,
    Warning = 4,
    Notice = 5,
}

impl Severity {
    /// The syslog priority (the discriminant).
    pub fn priority(self) -> u8 {
        self as u8
    }
}

/// One event. Optional fields are left out of the entry when empty. Beside
/// the text the catalog shows ("60.0%", "net:[INODE]"), the raw values to
/// filter on: ratio, counts, addresses and port, the namespace's inode.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    pub usage: Option<String>,
    /// `used / capacity`, a fraction rounded to 4 places (`PORTD_USAGE_RATIO=0.6`).
    pub usage_ratio: Option<f64>,
    pub used: Option<u64>,
    pub capacity: Option<u64>,
    /// What `used` counts: the worst destination ("local -> remote:port"),
    /// the destinations and pools that ran out, or a failed target.
    pub destination: Option<String>,
    /// That destination's addresses and port (not a pool's).
    pub local_address: Option<IpAddr>,
    pub remote_address: Option<IpAddr>,
    pub remote_port: Option<u16>,
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
    /// That namespace's inode as a number (`PORTD_NETNS_INODE`).
    pub netns_inode: Option<u64>,
    /// The container's name (a pod's containers' names), else runtime
    /// and short id.
    pub container: Option<String>,
    /// The pod's name (else its uid) and its Kubernetes namespace.
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
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
                portd_usage_ratio = f.usage_ratio,
                portd_used = f.used,
                portd_capacity = f.capacity,
                portd_destination = f.destination.as_deref(),
                portd_local_address = f.local_address.map(tracing::field::display),
                portd_remote_address = f.remote_address.map(tracing::field::display),
                portd_remote_port = f.remote_port,
                portd_process = f.process.as_deref(),
                portd_range_before = before.as_deref(),
                portd_range_after = after.as_deref(),
                portd_reason = f.reason.as_deref(),
                portd_policy = f.policy.as_deref(),
                portd_reminder = f.reminder.then_some(1u8),
                portd_netns = f.netns.as_deref(),
                portd_netns_inode = f.netns_inode,
                portd_container = f.container.as_deref(),
                portd_pod = f.pod.as_deref(),
                portd_pod_namespace = f.pod_namespace.as_deref(),
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

/// A note of the daemon about itself: its kind and text, no fields.
pub fn note(kind: Kind, message: &str) {
    emit(kind, message, &Fields::default());
}

impl Fields {
    /// The usage fields: the headline as text and raw values, the
    /// destination it counts, range and cause (every usage alert).
    pub fn usage(usage: &Usage) -> Fields {
        let h = &usage.headline;
        let worst = match &h.cause {
            Cause::Destination { destination } => Some(destination),
            _ => None,
        };
        Fields {
            usage: Some(h.usage.to_string()),
            usage_ratio: Some((h.usage.fraction() * 1e4).round() / 1e4),
            used: Some(h.used),
            capacity: Some(h.capacity),
            destination: worst.map(ToString::to_string),
            local_address: worst.map(|d| d.local),
            remote_address: worst.map(|d| d.remote),
            remote_port: worst.map(|d| d.remote_port),
            range_before: Some(usage.settings.port_range),
            reason: Some(h.cause.to_string()),
            ..Fields::default()
        }
    }

    /// These fields, naming another network namespace: `net:[INODE]`, its
    /// container, its pod (or the pod's uid) and the pod's namespace
    /// (display text: escaped and bounded where read).
    pub fn in_namespace(self, ns: &Namespace) -> Fields {
        Fields {
            netns: Some(format!("net:[{}]", ns.inode)),
            netns_inode: Some(ns.inode),
            container: ns.identity.container_label(),
            pod: ns.identity.pod_label(),
            pod_namespace: ns.identity.pod_namespace.clone(),
            ..self
        }
    }
}

/// "ephemeral ports warning", with its kind and whether it is a reminder:
/// one entry per transition of the confirmed level, and a reminder at the
/// policy's interval while it stays raised; never one per poll.
pub fn level_event(d: &Decision) -> Option<(Kind, &'static str, bool)> {
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

/// "TARGET gains N ports/s, runs out in Ts": a forecast that decided,
/// with its own time to exhaustion (`then` joins the two).
pub fn gains(f: &Forecast, then: &str) -> String {
    format!(
        "{} gains {:.0} ports/s{}",
        f.target,
        f.growth_per_second,
        f.time_to_exhaustion
            .map(|t| format!("{then} runs out in {t:.0}s"))
            .unwrap_or_default()
    )
}

/// "; does not fit ...; remedy: ..." and the remedy ids, for a load the
/// policy's bounds cannot hold (the assessment's remedies for it).
pub(crate) fn unfit_text(u: &Unfit, remedies: &[Remedy]) -> (String, Option<String>) {
    let text = format!(
        "; {} does not fit below the critical level: forecast {} ports, {} of the {} the policy's floor and ceiling allow{}",
        u.forecast.target,
        u.demand,
        u.room,
        u.capacity_at_bounds,
        remedies
            .first()
            .map(|r| format!("; remedy {}: {}", r.id, r.advice))
            .unwrap_or_default()
    );
    let ids: Vec<&str> = remedies.iter().map(|r| r.id.as_str()).collect();
    (text, (!ids.is_empty()).then(|| ids.join(",")))
}

/// One journal entry, ready to be written.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub message: String,
    pub fields: Fields,
}

impl Entry {
    pub fn emit(&self) {
        emit(self.kind, &self.message, &self.fields);
    }

    /// A change of the confirmed level, if the decision makes one: the
    /// usage, who holds the ports, the forecast that confirmed it before the
    /// hold, and for a load the bounds cannot hold the remedies; the
    /// assessment's one time to exhaustion.
    pub fn level(usage: &Usage, a: &Assessment, processes: Option<&str>) -> Option<Entry> {
        let d = &a.decision;
        let (kind, what, reminder) = level_event(d)?;
        let processes = processes.filter(|_| kind != Kind::UsageRecovered);
        let held_by = processes
            .map(|p| format!("; held by {p}"))
            .unwrap_or_default();
        let forecast = match (&d.urgent, d.transition) {
            (Some(f), Some(_)) => format!("; confirmed before the hold: {}", gains(f, " and")),
            _ => String::new(),
        };
        let (unfit, remedy) = match (&d.unfit, kind) {
            (Some(u), Kind::UsageWarning | Kind::UsageCritical) => unfit_text(u, &a.remedies),
            _ => (String::new(), None),
        };
        Some(Entry {
            kind,
            message: format!(
                "{what}: {} of ephemeral ports in use ({}/{}), worst: {}{held_by}{forecast}{unfit}",
                usage.headline.usage,
                usage.headline.used,
                usage.headline.capacity,
                usage.headline.cause
            ),
            fields: Fields {
                process: processes.map(str::to_string),
                reminder,
                time_to_exhaustion: a.time_to_exhaustion.map(|t| t.ceil() as u64),
                remedy,
                ..Fields::usage(usage)
            },
        })
    }

    /// A configuration hazard a census found (same parity, listeners inside
    /// the range).
    pub fn hazard(usage: &Usage, hazard: &str) -> Entry {
        Entry {
            kind: Kind::ConfigurationHazard,
            message: format!("configuration hazard: {hazard}"),
            fields: Fields {
                range_before: Some(usage.settings.port_range),
                reason: Some(hazard.to_string()),
                ..Fields::default()
            },
        }
    }

    /// A widening the usage calls for is held: the plan, if there is one,
    /// and why.
    pub fn held(usage: &Usage, plan: Option<&Plan>, reason: &Blocked) -> Entry {
        let message = match plan {
            Some(p) => format!("would widen ip_local_port_range {p}, but {reason}"),
            None => format!(
                "cannot widen ip_local_port_range {}: {reason}",
                usage.settings.port_range
            ),
        };
        Entry {
            kind: Kind::WideningBlocked,
            message,
            fields: Fields {
                range_before: Some(usage.settings.port_range),
                range_after: plan.map(|p| p.to),
                reason: Some(reason.to_string()),
                ..Fields::usage(usage)
            },
        }
    }

    /// The range was widened, for `reason`.
    pub fn widened(usage: &Usage, plan: &Plan, reason: &str) -> Entry {
        let reserved = if plan.newly_reserved.is_empty() {
            String::new()
        } else {
            format!("; reserved {} first", plan.newly_reserved)
        };
        Entry {
            kind: Kind::RangeWidened,
            message: format!(
                "widened ip_local_port_range {} -> {} ({}; expected usage {}){reserved}",
                plan.from, plan.to, reason, plan.expected_usage
            ),
            fields: Fields {
                range_before: Some(plan.from),
                range_after: Some(plan.to),
                reason: Some(reason.to_string()),
                ..Fields::usage(usage)
            },
        }
    }

    /// The write of a planned widening failed with `error`.
    pub fn write_failed(usage: &Usage, plan: &Plan, error: &str) -> Entry {
        Entry {
            kind: Kind::WideningBlocked,
            message: format!("could not widen {} -> {}: {error}", plan.from, plan.to),
            fields: Fields {
                range_before: Some(plan.from),
                range_after: Some(plan.to),
                reason: Some(error.to_string()),
                ..Fields::usage(usage)
            },
        }
    }

    /// The drop-in for `range` could not be written; `was_persisted`: an
    /// earlier drop-in holds the range already.
    pub fn persist_failed(range: PortRange, was_persisted: bool, error: &str) -> Entry {
        let what = if was_persisted {
            "the drop-in cannot be brought up to date"
        } else {
            "the runtime change is in place but will not survive a reboot"
        };
        Entry {
            kind: Kind::PersistFailed,
            message: format!("{what}: {error}"),
            fields: Fields {
                reason: Some(error.to_string()),
                range_after: Some(range),
                ..Fields::default()
            },
        }
    }

    /// Someone else changed the range (from `written`, portd's, to `live`):
    /// portd yields.
    pub fn external_change(reason: &str, written: Option<PortRange>, live: PortRange) -> Entry {
        Entry {
            kind: Kind::ExternalChange,
            message: format!(
                "{reason}; portd stops changing the range (advise only) until `systemctl reload portd`"
            ),
            fields: Fields {
                range_before: written,
                range_after: Some(live),
                reason: Some(reason.to_string()),
                ..Fields::default()
            },
        }
    }

    /// Exhaustion (exhausted.rs): it began, worsened, goes on, or ended.
    pub fn exhaustion(usage: &Usage, event: &exhausted::Event) -> Entry {
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
                Entry {
                    kind: Kind::PortsExhausted,
                    message: format!(
                        "{what}: connect() fails now with EADDRNOTAVAIL towards {}; range {}",
                        targets.join("; "),
                        usage.settings.port_range
                    ),
                    fields: Fields {
                        destination: Some(targets.join("; ")),
                        reminder: !*first && !*worsened,
                        ..Fields::usage(usage)
                    },
                }
            }
            exhausted::Event::Recovered => Entry {
                kind: Kind::ExhaustionEnded,
                message: format!(
                    "ephemeral ports no longer exhausted: {} ({}/{}) at most",
                    usage.headline.usage, usage.headline.used, usage.headline.capacity
                ),
                fields: Fields::usage(usage),
            },
        }
    }

    pub fn policy_reloaded(config: &Path, authority: &Authority, yield_cleared: bool) -> Entry {
        Entry {
            kind: Kind::PolicyReloaded,
            message: format!(
                "policy reloaded from {}: mode {}{}",
                config.display(),
                authority.describe(),
                if yield_cleared {
                    "; the yield to the admin is cleared"
                } else {
                    ""
                }
            ),
            fields: Fields {
                policy: Some(config.display().to_string()),
                ..Fields::default()
            },
        }
    }

    pub fn policy_rejected(config: &Path, error: &PolicyError) -> Entry {
        Entry {
            kind: Kind::PolicyRejected,
            message: format!("policy rejected, the previous one stays in force:\n{error}"),
            fields: Fields {
                policy: Some(config.display().to_string()),
                reason: Some(error.to_string()),
                ..Fields::default()
            },
        }
    }

    /// The first failure towards a destination (or in a pool) the witness
    /// saw, naming the process.
    pub fn allocation_failed(first: &Row) -> Entry {
        let (k, count) = (&first.key, first.total);
        let comm = crate::base::untrusted::escape(&first.process);
        let process = match first.pid {
            Some(pid) => format!("{comm} (pid {pid})"),
            None => format!("{comm} (pid not visible from portd)"),
        };
        let message = format!(
            "port allocation failed: {} got {} {} time(s) for {}{}",
            process,
            k.kind.errno(),
            count,
            k.target(),
            match k.kind {
                FailureKind::TcpConnect => " (connect: no free local port)",
                FailureKind::Bind0 => " (bind to port 0: no free port)",
                FailureKind::UdpAutobind => " (UDP autobind: no free port)",
            }
        );
        Entry {
            kind: Kind::PortAllocationFailed,
            message,
            fields: Fields {
                destination: Some(k.target()),
                local_address: Some(k.local),
                remote_address: k.destination.map(|d| d.ip()),
                remote_port: k.destination.map(|d| d.port()),
                process: Some(process),
                used: Some(count),
                reason: Some(k.kind.errno().to_string()),
                ..Fields::default()
            },
        }
    }

    /// A change of another namespace's confirmed level (or a reminder),
    /// with `advice`: where and how to set its range.
    pub fn namespace_level(
        ns: &Namespace,
        usage: &Usage,
        d: &Decision,
        advice: Option<&str>,
    ) -> Option<Entry> {
        let (kind, what, reminder) = level_event(d)?;
        let advice = advice.map(|a| format!("; {a}")).unwrap_or_default();
        Some(Entry {
            kind,
            message: format!(
                "{what} in {} (net:[{}], enter: {}): {} of ephemeral ports in use ({}/{}), worst: {}{advice}",
                ns.label,
                ns.inode,
                ns.enter,
                usage.headline.usage,
                usage.headline.used,
                usage.headline.capacity,
                usage.headline.cause
            ),
            fields: Fields {
                reminder,
                ..Fields::usage(usage).in_namespace(ns)
            },
        })
    }

    /// The end of the alert of a namespace that is gone, at `level`, with
    /// its last census when it had one.
    pub fn namespace_gone(ns: &Namespace, level: Level, usage: Option<&Usage>) -> Entry {
        let level = level.label().to_ascii_lowercase();
        let last = usage
            .map(|u| {
                format!(
                    "; last census {} ({}/{}), worst: {}",
                    u.headline.usage, u.headline.used, u.headline.capacity, u.headline.cause
                )
            })
            .unwrap_or_default();
        Entry {
            kind: Kind::NetnsGone,
            message: format!(
                "ephemeral port alert ended in {} (net:[{}]): the namespace is gone; it was {level}{last}",
                ns.label, ns.inode
            ),
            fields: Fields {
                reason: Some(format!(
                    "the namespace is gone while {level}: no process or /run/netns name holds it"
                )),
                ..usage
                    .map(Fields::usage)
                    .unwrap_or_default()
                    .in_namespace(ns)
            },
        }
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
    fn every_kind_has_an_entry_of_its_own_in_the_catalog() {
        let catalog = include_str!("../../packaging/portd.catalog");
        let ids: Vec<&str> = catalog
            .lines()
            .filter_map(|l| l.strip_prefix("-- "))
            .collect();
        for kind in Kind::ALL {
            let n = ids.iter().filter(|id| **id == kind.message_id()).count();
            assert_eq!(n, 1, "{kind:?}: {n} catalog entries for its MESSAGE_ID");
        }
        assert_eq!(ids.len(), Kind::ALL.len(), "catalog entries of no kind");
    }

    #[test]
    fn every_kind_is_listed_once() {
        let names: std::collections::BTreeSet<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
    }

    use crate::judge::forecast::tests::census;
    use crate::judge::planner::AlertState;
    use crate::observe::netns::Identity;
    use crate::observe::witness::FailureKey;

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

    fn namespace(identity: Identity) -> Namespace {
        Namespace {
            inode: 4026532999,
            pid: Some(42),
            comm: None,
            processes: 1,
            names: Vec::new(),
            own: false,
            identity,
            label: "pod shop/checkout".into(),
            enter: "nsenter -t 42 -n".into(),
        }
    }

    #[test]
    fn the_usage_fields_carry_the_headline_as_text_and_as_raw_values() {
        let usage = census(&[(1, 300, 20), (2, 10, 5), (3, 0, 2), (4, 0, 1)]);
        let f = Fields::usage(&usage);
        assert_eq!(f.usage.as_deref(), Some("32.0%"), "{f:?}");
        assert_eq!(f.usage_ratio, Some(0.32));
        assert_eq!((f.used, f.capacity), (Some(320), Some(1000)));
        assert_eq!(f.destination.as_deref(), Some("10.0.0.1 -> 10.0.0.1:80"));
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(
            (f.local_address, f.remote_address, f.remote_port),
            (ip("10.0.0.1"), ip("10.0.0.1"), Some(80))
        );
        assert_eq!(f.range_before, Some(usage.settings.port_range));
        assert_eq!(f.reason, Some(usage.headline.cause.to_string()));
        assert!(!f.reminder && f.netns.is_none() && f.range_after.is_none());
    }

    #[test]
    fn an_entry_about_another_namespace_names_it_by_netns_container_and_pod() {
        let pod = namespace(Identity {
            pod_uid: Some("uid-1".into()),
            ..Identity::default()
        });
        let f = Fields::default().in_namespace(&pod);
        assert_eq!(f.netns.as_deref(), Some("net:[4026532999]"));
        assert_eq!(f.netns_inode, Some(4026532999));
        assert_eq!((f.container, f.pod.as_deref()), (None, Some("uid-1")));

        let usage = census(&[(1, 300, 20)]);
        let d = decision(Some((Level::Ok, Level::Warning)), Level::Warning, false);
        let e = Entry::namespace_level(&pod, &usage, &d, Some("set it")).expect("a transition");
        assert_eq!(e.kind, Kind::UsageWarning);
        assert!(e.message.starts_with("ephemeral ports warning in pod shop/checkout (net:[4026532999], enter: nsenter -t 42 -n): 32.0% of ephemeral ports in use (320/1000)"), "{}", e.message);
        assert!(e.message.ends_with("; set it"));
        assert_eq!(e.fields.used, Some(320));
        assert_eq!(e.fields.netns.as_deref(), Some("net:[4026532999]"));

        let gone = Entry::namespace_gone(&pod, Level::Critical, None);
        assert_eq!(gone.kind, Kind::NetnsGone);
        assert_eq!(
            gone.fields.reason.as_deref(),
            Some("the namespace is gone while critical: no process or /run/netns name holds it")
        );
        assert_eq!(
            (gone.fields.usage, gone.fields.pod.as_deref()),
            (None, Some("uid-1"))
        );
    }

    #[test]
    fn a_failed_allocation_names_the_process_the_error_and_the_destination() {
        let row = Row {
            key: FailureKey {
                netns: 1,
                kind: FailureKind::TcpConnect,
                local: "0.0.0.0".parse().expect("addr"),
                destination: Some("10.0.0.9:443".parse().expect("addr")),
                comm: Some("curl".into()),
                protocol: "tcp",
            },
            total: 3,
            last_minute: 3,
            pid: None,
            process: "cu\nrl".into(),
        };
        let e = Entry::allocation_failed(&row);
        assert_eq!(e.kind, Kind::PortAllocationFailed);
        let process = e.fields.process.as_deref().expect("process");
        assert!(
            process.ends_with(" (pid not visible from portd)") && !process.contains('\n'),
            "{process}"
        );
        assert_eq!(e.fields.destination.as_deref(), Some("10.0.0.9:443"));
        assert_eq!(
            (
                e.fields.local_address,
                e.fields.remote_address,
                e.fields.remote_port
            ),
            ("0.0.0.0".parse().ok(), "10.0.0.9".parse().ok(), Some(443))
        );
        assert_eq!(
            (e.fields.used, e.fields.reason.as_deref()),
            (Some(3), Some("EADDRNOTAVAIL"))
        );
        assert!(
            e.message.ends_with(
                "got EADDRNOTAVAIL 3 time(s) for 10.0.0.9:443 (connect: no free local port)"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn exhaustion_repeats_are_reminders_and_its_end_carries_the_usage() {
        let usage = census(&[(1, 300, 20)]);
        let repeat = exhausted::Event::Exhausted {
            targets: vec!["a".into(), "b".into()],
            first: false,
            worsened: false,
        };
        let e = Entry::exhaustion(&usage, &repeat);
        assert_eq!(e.kind, Kind::PortsExhausted);
        assert!(e.fields.reminder);
        assert_eq!(e.fields.destination.as_deref(), Some("a; b"));
        assert!(e.message.starts_with("ephemeral ports still exhausted: "));
        let ended = Entry::exhaustion(&usage, &exhausted::Event::Recovered);
        assert_eq!(
            (ended.kind, ended.fields.reminder),
            (Kind::ExhaustionEnded, false)
        );
        assert_eq!(ended.fields.used, Some(320));
    }

    #[test]
    fn a_reload_names_the_policy_file() {
        let e = Entry::policy_reloaded(Path::new("/etc/portd.toml"), &Authority::Write, true);
        assert_eq!(e.kind, Kind::PolicyReloaded);
        assert_eq!(e.fields.policy.as_deref(), Some("/etc/portd.toml"));
        assert!(
            e.message.ends_with("; the yield to the admin is cleared"),
            "{}",
            e.message
        );
    }
}
