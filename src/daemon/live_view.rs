//! The daemon's live view (live.rs), built from what the reporter knows
//! at the end of a poll and written with the metrics.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::LastCensus;
use super::netns::Published;
use crate::act::state::Change;
use crate::base::host::Host;
use crate::judge::assess::Assessment;
use crate::judge::authority::Authority;
use crate::publish::live::{self, Live};

/// The metrics file and the live view are rewritten when what they say
/// changes, and otherwise once every `REFRESH`: an idle poll writes
/// nothing. What advances by itself with time is not a change: the time of
/// the poll (`portd_poll_timestamp_seconds`, `written_at`), the count of
/// polls that skipped the census, and the live view's history of usage (a
/// point every 10 s, history.rs; the points taken since the last write go
/// out with the next). Not on change alone: by the time of the poll a
/// scraper or `status` tells a daemon that runs from one that hangs.
/// Every 30 s: the poll time a scraper reads lags by at most that, a tenth
/// of the staleness alert's 300 s; `status` judges the view fresh for two
/// periods (publish/live.rs), 60 s, which matters only for a daemon run
/// without systemd's watchdog: with it (`WatchdogSec=30s`) a hung daemon is
/// killed and `status` finds its pid gone. Each refresh replaces both files
/// (about 400 µs of CPU on the test machine; docs/benchmarks.md, "Idle poll
/// cost"). The writes are report.rs's.
pub(super) const REFRESH: Duration = Duration::from_secs(30);

/// Since start, for the metrics file.
#[derive(Default)]
pub(super) struct PollCounters {
    pub censuses: u64,
    pub skipped: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub changes: u64,
}

/// What the metrics file and the live view need besides the report's own
/// counters.
pub(super) struct Poll<'a> {
    pub host: &'a Host,
    pub metrics_file: Option<&'a Path>,
    pub interval: Duration,
    pub last: Option<&'a LastCensus>,
    pub last_change: Option<&'a Change>,
    pub authority: &'a Authority,
    /// The failure witness (witness/runtime.rs), for the metrics and the
    /// live view.
    pub witness: &'a crate::daemon::witness::Running,
    /// The other network namespaces (netns.rs).
    pub netns: &'a Published,
    /// `ActiveOpens` as this poll read it.
    pub connect_attempts: Option<u64>,
    /// Writes the live view (and, through `metrics_file`, the metrics):
    /// only the writer-lock holder does.
    pub publishes: bool,
    /// The policy file and the digest of what was read of it.
    pub config: &'a Path,
    pub policy_digest: Option<&'a str>,
}

/// This process's id, start time and namespaces, which do not change while
/// it runs (the threads that enter other namespaces are not its main
/// thread, which `/proc/self` names): read once, not on every poll.
fn myself() -> (u32, Option<u64>, live::Namespaces) {
    static MYSELF: OnceLock<(u32, Option<u64>, live::Namespaces)> = OnceLock::new();
    *MYSELF.get_or_init(|| {
        let pid = std::process::id();
        (
            pid,
            live::process(pid).map(|p| p.start_time),
            live::Namespaces::of_this_process(),
        )
    })
}

/// The live view at the end of a poll.
pub(super) fn snapshot(counters: &PollCounters, poll: &Poll<'_>, now: SystemTime) -> Live {
    let a = poll.authority;
    let myself = myself();
    Live {
        format_version: live::FORMAT_VERSION,
        written_at: live::unix_seconds(now),
        pid: myself.0,
        start_time: myself.1,
        namespaces_of_daemon: Some(myself.2),
        interval_seconds: poll.interval.as_secs_f64(),
        refresh_seconds: REFRESH.as_secs_f64(),
        policy: Some(live::PolicyView {
            path: poll.config.display().to_string(),
            digest: poll.policy_digest.map(str::to_owned),
        }),
        authority: live::AuthorityView {
            mode: a.mode_label().into(),
            advise_reason: a.reason_label().into(),
            // A widening held for a reason the admin must see to (a pin, a
            // foreign drop-in, ...) is part of the mode `status` shows.
            describe: match poll.last.and_then(|l| l.blocked) {
                Some(held) if held != "advise" => {
                    format!("{} (widening held: {held})", a.describe())
                }
                _ => a.describe().into(),
            },
        },
        headline: poll.last.map(|l| {
            let h = &l.usage.headline;
            live::HeadlineView {
                usage: h.usage.fraction(),
                used: h.used,
                capacity: h.capacity,
                cause: h.cause.to_string(),
                level: Some(l.assessment.level()),
            }
        }),
        census: live::Census {
            last_at: poll.last.map(|l| live::unix_seconds(l.at)),
            last_took_seconds: poll.last.map(|l| l.took.as_secs_f64()),
            total: counters.censuses,
            skipped_total: counters.skipped,
            failed_total: counters.failed,
            abandoned_total: counters.abandoned,
        },
        last_change: poll.last_change.map(|c| live::ChangeView {
            at: live::unix_seconds(c.at),
            from: Some(c.from),
            to: Some(c.to),
            reason: c.reason.clone(),
        }),
        witness: Some(poll.witness.live(std::time::Instant::now())),
        namespaces: poll.netns.namespaces.clone(),
        namespaces_note: poll.netns.note.clone(),
        forecast: poll
            .last
            .map(|l| outlook(&l.assessment, poll.connect_attempts)),
        // Added by report.rs from the daemon's history (history.rs).
        history: None,
    }
}

/// The forecast of the last census's assessment, for `status`.
pub(super) fn outlook(a: &Assessment, connect_attempts: Option<u64>) -> live::Outlook {
    live::Outlook {
        time_to_exhaustion_seconds: a.time_to_exhaustion,
        connect_attempts_total: connect_attempts,
        targets: a
            .forecast
            .iter()
            .map(|f| live::TargetView {
                target: f.target.to_string(),
                used: f.used,
                capacity: f.capacity,
                growth_per_second: f.growth_per_second,
                connection_rate: f.connection_rate,
                steady_state: f.steady_state,
                time_to_exhaustion_seconds: f.time_to_exhaustion,
            })
            .collect(),
        remedies: a
            .remedies
            .iter()
            .map(|r| live::RemedyView {
                id: r.id.to_string(),
                effect: r.effect,
                closes_gap: r.closes_gap,
                advice: r.advice.clone(),
            })
            .collect(),
    }
}
