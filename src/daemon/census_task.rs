//! The census off the event loop: one task on the blocking pool, joined or
//! abandoned by the loop; and the process lookup, done only when a census
//! may start or renew an alert, after the census is judged (the judgement
//! never waits on it), as a task of its own with a CPU budget and a cache
//! of who holds which socket (observe/attribution.rs).

use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::base::host::Host;
use crate::base::ports::Ratio;
use crate::judge::level::Level;
use crate::observe::attribution::{self, HolderCache};
use crate::observe::census::netlink::NetlinkOptions;
use crate::observe::census::{self, KernelSettings};
use crate::observe::usage::{self, Cause, DestKey, Usage, UsageOptions};

/// What one census task hands back to the event loop.
pub(super) struct CensusOutput {
    pub usage: Usage,
    pub took: Duration,
    /// CPU time of the census: what the census budget counts (budget.rs),
    /// with the process lookup that may follow; wall time would count
    /// waiting.
    pub cpu: Duration,
}

pub(super) type CensusResult = Result<CensusOutput, String>;

/// A census running on the blocking pool.
pub(super) struct CensusInFlight {
    pub handle: JoinHandle<CensusResult>,
    pub started: Instant,
    /// `Tcp: ActiveOpens` read before the census began, so that the bound
    /// between censuses also covers the connections opened while it ran.
    pub active_opens: Option<u64>,
}

impl CensusInFlight {
    pub fn spawn(
        host: Host,
        settings: KernelSettings,
        options: UsageOptions,
        active_opens: Option<u64>,
    ) -> Self {
        CensusInFlight {
            handle: tokio::task::spawn_blocking(move || census_task(&host, settings, options)),
            started: Instant::now(),
            active_opens,
        }
    }
}

/// Waits for the census in `slot`; forever when there is none (a `select!` arm).
pub(super) async fn join(slot: &mut Option<CensusInFlight>) -> Result<CensusResult, JoinError> {
    match slot {
        Some(census) => (&mut census.handle).await,
        None => std::future::pending().await,
    }
}

/// Whether a census should also name the processes behind the headline:
/// only when its result may start or renew an alert, never on every poll.
#[derive(Clone, Copy)]
pub(super) struct ProcessLookup {
    pub warning: Ratio,
    pub critical: Ratio,
    pub confirmed: Level,
    pub reminder_due: bool,
}

impl ProcessLookup {
    /// `headline`: the headline usage of the census.
    pub fn wanted(self, headline: Ratio) -> bool {
        let level = Level::of(headline, self.warning, self.critical);
        level >= Level::Warning && (level != self.confirmed || self.reminder_due)
    }
}

/// The census itself, on a blocking thread.
fn census_task(host: &Host, settings: KernelSettings, options: UsageOptions) -> CensusResult {
    let started = Instant::now();
    let cpu_before = attribution::thread_cpu();
    // netlink sock_diag where the kernel has it: on a busy host a procfs
    // read restarts its walk and can take seconds (docs/benchmarks.md).
    // Bound-only sockets only matter to the bind(0) pool, and asking for
    // them costs every census, so only when the policy alerts on that pool.
    let source = census::best_source_with(
        host,
        NetlinkOptions {
            bound_inactive: options.tcp_pool_in_headline,
            ..NetlinkOptions::default()
        },
    );
    let usage =
        usage::take_census(source.as_ref(), settings, options).map_err(|e| e.to_string())?;
    Ok(CensusOutput {
        usage,
        took: started.elapsed(),
        cpu: attribution::thread_cpu().saturating_sub(cpu_before),
    })
}

/// CPU a lookup may spend reading `/proc/<pid>/fd` before it ends with
/// what it found; the next one goes on from there. The cache makes a
/// lookup cheap once warm: only new processes and changed fd tables are
/// read (docs/benchmarks.md, "Attribution").
const LOOKUP_BUDGET: Duration = Duration::from_millis(50);

/// Who holds the headline's sockets: the cache between lookups, the
/// last answer, and a lookup that runs.
#[derive(Default)]
pub(super) struct Holders {
    /// Away while a lookup runs with it.
    cache: Option<HolderCache>,
    /// The last lookup's destination and its "held by" text.
    known: Option<(DestKey, String)>,
}

/// What a lookup hands back.
pub(super) struct Lookup {
    cache: HolderCache,
    destination: DestKey,
    holders: Option<String>,
    pub cpu: Duration,
}

impl Holders {
    /// The holders of the headline's destination as the last lookup found
    /// them (at most a lookup old), for the judgement's advice.
    pub fn known(&self, usage: &Usage) -> Option<&str> {
        let Cause::Destination { destination } = &usage.headline.cause else {
            return None;
        };
        match &self.known {
            Some((d, text)) if d == destination => Some(text),
            _ => None,
        }
    }

    /// A lookup of the holders of `usage`'s headline destination, on the
    /// blocking pool; `None` when the headline is no destination.
    pub fn start(&mut self, host: &Host, usage: &Usage) -> Option<JoinHandle<Lookup>> {
        let Cause::Destination { destination } = usage.headline.cause else {
            return None;
        };
        let mut cache = self.cache.take().unwrap_or_default();
        let (host, usage) = (host.clone(), usage.clone());
        Some(tokio::task::spawn_blocking(move || {
            let before = attribution::thread_cpu();
            let source = census::best_source(&host);
            let holders = attribution::attribute_cached(
                &host,
                source.as_ref(),
                &usage,
                &[destination],
                &mut cache,
                Some(LOOKUP_BUDGET),
            )
            .ok()
            .and_then(|found| describe_holders(&found.first()?.processes));
            Lookup {
                cache,
                destination,
                holders,
                cpu: attribution::thread_cpu().saturating_sub(before),
            }
        }))
    }

    /// The lookup ended: its cache is kept; the text it found, if any.
    pub fn ended(&mut self, lookup: Option<Lookup>) -> Option<&str> {
        let lookup = lookup?;
        self.cache = Some(lookup.cache);
        self.known = lookup.holders.map(|h| (lookup.destination, h));
        self.known.as_ref().map(|(_, h)| h.as_str())
    }
}

/// Waits for the task in `slot` (a lookup, a reload); forever when there
/// is none (a `select!` arm).
pub(super) async fn join_task<T>(slot: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match slot {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// The journal's "held by" text: process names are escaped display text.
fn describe_holders(processes: &[attribution::ProcessShare]) -> Option<String> {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = processes
        .iter()
        .take(SHOWN)
        .map(|p| {
            let command = crate::base::untrusted::escape(&p.command);
            format!("{command}[{}] {} sockets", p.pid, p.sockets)
        })
        .collect();
    if processes.len() > SHOWN {
        parts.push(format!("{} more processes", processes.len() - SHOWN));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processes_named_in_an_alert_cannot_break_its_line() {
        let share = |pid, command: &str| attribution::ProcessShare {
            pid,
            command: command.into(),
            uid: 1000,
            sockets: 3,
        };
        assert_eq!(
            describe_holders(&[share(8, "x|y=1\nOK - \u{1b}[2J"), share(9, "curl")]).as_deref(),
            Some("x\\x7cy=1\\x0aOK - \\x1b[2J[8] 3 sockets, curl[9] 3 sockets")
        );
        assert_eq!(describe_holders(&[]), None);
    }

    fn percent(p: f64) -> Ratio {
        Ratio::from_percent(p).unwrap()
    }

    fn lookup(confirmed: Level, reminder_due: bool) -> ProcessLookup {
        ProcessLookup {
            warning: percent(40.0),
            critical: percent(50.0),
            confirmed,
            reminder_due,
        }
    }

    #[test]
    fn processes_are_looked_up_only_when_an_alert_may_start_or_be_renewed() {
        // Below the warning level: never, even with a reminder due.
        assert!(!lookup(Level::Ok, true).wanted(percent(39.0)));
        // A level other than the confirmed one: it may start an alert.
        assert!(lookup(Level::Ok, false).wanted(percent(45.0)));
        assert!(lookup(Level::Warning, false).wanted(percent(55.0)));
        assert!(lookup(Level::Critical, false).wanted(percent(45.0)));
        // The confirmed level again: only when a reminder is due.
        assert!(!lookup(Level::Warning, false).wanted(percent(45.0)));
        assert!(lookup(Level::Warning, true).wanted(percent(45.0)));
    }
}
