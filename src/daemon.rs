//! `portd run`: the tokio service. One current-thread event loop feeds the
//! watchdog, handles signals, and polls; the census runs off that thread so
//! a slow one can be abandoned and SIGTERM is never kept waiting.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::{JoinError, JoinHandle};

use crate::actuator;
use crate::attribution;
use crate::census::netlink::NetlinkOptions;
use crate::census::reader::{Fresh, KeptOpen, ProcRead};
use crate::census::{self, KernelSettings, SocketSource, sockstat};
use crate::events::{self, Fields, Kind};
use crate::fsutil::WriterLock;
use crate::host::Host;
use crate::kernel::PortRange;
use crate::level::Level;
use crate::metrics;
use crate::notify;
use crate::planner::{self, Action, Blocked, Decision, Inputs, Observation};
use crate::policy::{self, Mode, Policy};
use crate::shutdown;
use crate::state::{State, Yield};
use crate::sysctld;
use crate::usage::{self, Cause, Ratio, Usage, UsageOptions};

pub struct RunOptions {
    /// Decide as usual, log what would be done, write nothing.
    pub dry_run: bool,
}

/// Runs until SIGTERM/SIGINT. Returns the exit status.
pub fn run(host: Host, config: PathBuf, opts: RunOptions) -> u8 {
    let policy = match policy::file::load_or_default(&config) {
        Ok((p, _)) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let lock = if opts.dry_run {
        None
    } else {
        match WriterLock::acquire(&host.state_dir()) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("portd: {e}");
                return 2;
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portd: cannot start the event loop: {e}");
            return 2;
        }
    };
    let mut daemon = Daemon::new(host, config, policy, opts.dry_run);
    let code = runtime.block_on(daemon.serve());
    // A census still running in a blocking thread must not delay the exit.
    runtime.shutdown_background();
    drop(lock);
    code
}

/// The daemon's time: the wall clock read once at start, advanced by the
/// monotonic clock. A step of the wall clock during a run (NTP, an admin,
/// a VM resumed from a snapshot) then neither stretches nor cuts a hold, a
/// cooldown or the hourly cap; times stored by an earlier run that lie
/// ahead of it are clamped when the state is loaded (State::clamp_future).
struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}

/// Used where a timer must exist but never fire.
const FAR: Duration = Duration::from_secs(3600);

/// What one census task hands back to the event loop.
struct CensusOutput {
    usage: Usage,
    took: Duration,
    /// Who holds the sockets of the headline destination; looked up only
    /// when this census may start or renew an alert.
    processes: Option<String>,
}

type CensusResult = Result<CensusOutput, String>;

/// A census running on the blocking pool.
struct InFlight {
    handle: JoinHandle<CensusResult>,
    started: Instant,
    /// `Tcp: ActiveOpens` read before the census began, so that the bound
    /// between censuses also covers the connections opened while it ran.
    active_opens: Option<u64>,
}

/// Waits for the census in `slot`; forever when there is none (a `select!` arm).
async fn join(slot: &mut Option<InFlight>) -> Result<CensusResult, JoinError> {
    match slot {
        Some(census) => (&mut census.handle).await,
        None => std::future::pending().await,
    }
}

/// A policy file read and checked on the blocking pool (a reload).
type LoadedPolicy = Result<(Policy, bool), policy::file::PolicyError>;

/// Waits for the reload in `slot`; forever when there is none (a `select!` arm).
async fn join_reload(
    slot: &mut Option<JoinHandle<LoadedPolicy>>,
) -> Result<LoadedPolicy, JoinError> {
    match slot {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// What the last full census saw, for the O(1) bounds between censuses and
/// for the STATUS line and metrics of the polls that skip the census.
struct LastCensus {
    usage: Usage,
    started: Instant,
    active_opens: Option<u64>,
    at: SystemTime,
    took: Duration,
    level: Level,
    /// Why the range was not widened although usage called for it.
    blocked: Option<&'static str>,
}

/// Since start, for the metrics file.
#[derive(Default)]
struct Counters {
    censuses: u64,
    skipped: u64,
    failed: u64,
    abandoned: u64,
    changes: u64,
}

/// Whether a census should also name the processes behind the headline:
/// only when its result may start or renew an alert, never on every poll.
#[derive(Clone, Copy)]
struct ProcessLookup {
    warning: Ratio,
    critical: Ratio,
    confirmed: Level,
    reminder_due: bool,
}

impl ProcessLookup {
    fn wanted(self, usage: &Usage) -> bool {
        let level = Level::of(usage.headline.usage, self.warning, self.critical);
        level >= Level::Warning && (level != self.confirmed || self.reminder_due)
    }
}

struct Daemon {
    clock: Clock,
    host: Host,
    config: PathBuf,
    policy: Policy,
    dry_run: bool,
    state: State,
    /// True when the state file could not be read: portd then never writes.
    state_unreadable: Option<String>,
    last: Option<LastCensus>,
    ready: bool,
    /// Set after a change of the range: census again at once, so STATUS and
    /// the metrics show the usage of the new range.
    recensus: bool,
    counters: Counters,
    /// Last reported blocked reason / persist error, to report each once.
    last_blocked: Option<String>,
    last_persist_error: Option<String>,
    last_census_error: Option<String>,
    last_metrics_error: Option<String>,
    /// The configuration hazards (same parity, listeners inside the range)
    /// of the last census, each reported once when it appears.
    hazards: Vec<String>,
    /// Reads the /proc files of every poll: kept open on the live host
    /// (census/reader.rs); opened anew under a fixture root, whose files a
    /// test may replace.
    proc: Box<dyn ProcRead>,
}

impl Daemon {
    fn new(host: Host, config: PathBuf, policy: Policy, dry_run: bool) -> Self {
        let proc: Box<dyn ProcRead> = if host.root() == std::path::Path::new("/") {
            Box::new(KeptOpen::default())
        } else {
            Box::new(Fresh)
        };
        let clock = Clock::start();
        let (mut state, state_unreadable) = match State::load(&host) {
            Ok(s) => (s, None),
            Err(e) => (State::default(), Some(e.to_string())),
        };
        if let Some(ahead) = state.clamp_future(clock.now()) {
            tracing::warn!(
                "{}: times up to {} ahead of the clock (it was ahead when they were written, or was set back since); they count as now",
                State::path(&host).display(),
                humantime::format_duration(Duration::from_secs(ahead.as_secs()))
            );
        }
        Daemon {
            clock,
            host,
            config,
            policy,
            dry_run,
            state,
            state_unreadable,
            last: None,
            ready: false,
            recensus: false,
            counters: Counters::default(),
            last_blocked: None,
            last_persist_error: None,
            last_census_error: None,
            last_metrics_error: None,
            hazards: Vec::new(),
            proc,
        }
    }

    async fn serve(&mut self) -> u8 {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("portd: cannot install signal handlers");
            return 2;
        };
        if let Err(e) = shutdown::watch() {
            eprintln!("portd: cannot install signal handlers: {e}");
            return 2;
        }
        if let Some(reason) = &self.state_unreadable {
            tracing::error!(
                "{reason}; portd will only advise (write nothing) until the state file is fixed or moved aside"
            );
        }
        tracing::info!(
            "portd {} starting: mode {}, interval {}, policy {}{}",
            env!("CARGO_PKG_VERSION"),
            self.mode_name(),
            humantime::format_duration(self.policy.interval),
            self.config.display(),
            if self.config.exists() {
                ""
            } else {
                " (absent: built-in defaults)"
            }
        );
        let watchdog = notify::watchdog_interval();
        // Fed from this loop at half the interval, whatever the poll interval:
        // a stuck loop stops feeding it.
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(FAR, |w| (w / 2).max(Duration::from_millis(10))));
        let mut poll_tick = self.poll_timer();
        let mut census: Option<InFlight> = None;
        // A census abandoned after the limit keeps its thread until it ends;
        // no new one starts meanwhile, so stuck reads cannot pile up.
        let mut abandoned: Option<InFlight> = None;
        // The policy is read and checked off this loop (a hostile file can
        // take long): signals and the watchdog are served meanwhile. A
        // SIGHUP during a reload reads the file again after it.
        let mut reloading: Option<JoinHandle<LoadedPolicy>> = None;
        let mut reload_again = false;

        loop {
            let limit = self.census_limit(watchdog);
            let deadline = census
                .as_ref()
                .map_or_else(|| Instant::now() + FAR, |c| c.started + limit);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if reloading.is_some() {
                        reload_again = true;
                    } else {
                        reloading = Some(self.start_reload());
                    }
                }
                loaded = join_reload(&mut reloading) => {
                    reloading = None;
                    self.reload(loaded);
                    poll_tick.reset_immediately();
                    if std::mem::take(&mut reload_again) {
                        reloading = Some(self.start_reload());
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify::watchdog(),
                _ = tokio::time::sleep_until(deadline.into()), if census.is_some() => {
                    if let Some(c) = census.take() {
                        self.census_abandoned(c.started.elapsed(), limit);
                        abandoned = Some(c);
                    }
                }
                result = join(&mut census) => {
                    if let Some(c) = census.take() {
                        match result {
                            Ok(r) => self.after_census(r, c.started, c.active_opens),
                            Err(e) => self.census_failed(format!("census task failed: {e}")),
                        }
                    }
                }
                _ = join(&mut abandoned) => {
                    if let Some(c) = abandoned.take() {
                        tracing::info!(
                            "the abandoned census ended after {:.1}s; its result is discarded",
                            c.started.elapsed().as_secs_f64()
                        );
                    }
                }
                _ = poll_tick.tick(), if census.is_none() => match &abandoned {
                    Some(stuck) => notify::status(&format!(
                        "census stuck: the census abandoned after {:.1}s is still running ({:.0}s); no new census until it ends",
                        limit.as_secs_f64(),
                        stuck.started.elapsed().as_secs_f64()
                    )),
                    None => census = self.tick(),
                },
            }
            if std::mem::take(&mut self.recensus) {
                poll_tick.reset_immediately();
            }
            // A policy reload may change the interval.
            if poll_tick.period() != self.policy.interval {
                poll_tick = self.poll_timer();
            }
        }
        notify::stopping();
        tracing::info!("portd stopping");
        0
    }

    fn poll_timer(&self) -> tokio::time::Interval {
        let mut t = tokio::time::interval(self.policy.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    /// A census running longer than this is abandoned: the watchdog
    /// interval (DESIGN.md), or without a watchdog three polls and at least
    /// 30 s.
    fn census_limit(&self, watchdog: Option<Duration>) -> Duration {
        watchdog.unwrap_or_else(|| (self.policy.interval * 3).max(Duration::from_secs(30)))
    }

    fn mode_name(&self) -> &'static str {
        if self.dry_run {
            "dry-run"
        } else if self.state_unreadable.is_some() {
            "advise (state unreadable)"
        } else if self.state.yielded.is_some() {
            "advise (yielded to the admin)"
        } else {
            match self.policy.mode {
                Mode::Auto => "auto",
                Mode::Advise => "advise",
            }
        }
    }

    /// One poll: cheap checks, then a census unless the bounds prove no
    /// destination can have reached the warning level.
    fn tick(&mut self) -> Option<InFlight> {
        let settings = match KernelSettings::read_with(&self.host, self.proc.as_mut()) {
            Ok(s) => s,
            Err(e) => {
                self.census_failed(e.to_string());
                return None;
            }
        };
        self.settle_pending(&settings);
        self.check_external_change(&settings);
        // The drop-in is brought up to date every poll, not only after a
        // full census (which the fast path may skip for long): a failed
        // write is retried, and the reserved ports follow the other files.
        self.retry_persist(self.clock.now());
        if let Some(reason) = self.census_not_needed(&settings) {
            self.counters.skipped += 1;
            if let Some(last) = &self.last {
                notify::status(&format!(
                    "{} ({reason})",
                    self.status_line(&last.usage, None)
                ));
            }
            self.write_metrics();
            return None;
        }
        let active_opens = sockstat::read_active_opens(&self.host, self.proc.as_mut()).ok();
        let host = self.host.clone();
        let options = UsageOptions {
            tcp_pool_in_headline: self.policy.tcp_pool_alerts,
        };
        let alert = &self.state.alert;
        let lookup = ProcessLookup {
            warning: self.policy.warning,
            critical: self.policy.critical,
            confirmed: alert.level,
            reminder_due: alert.announced.is_some_and(|t| {
                self.clock
                    .now()
                    .duration_since(t)
                    .is_ok_and(|d| d >= self.policy.reminder)
            }),
        };
        Some(InFlight {
            handle: tokio::task::spawn_blocking(move || {
                census_task(&host, settings, options, lookup)
            }),
            started: Instant::now(),
            active_opens,
        })
    }

    /// DESIGN.md: no destination can hold more than `TCP inuse + TCP6 inuse +
    /// tw` ports, nor more than its count at the last census plus the
    /// `connect()`s since (`ActiveOpens`); the UDP pool no more than the UDP
    /// sockets, the TCP pool no more than the TCP sockets. While those stay
    /// below the warning level, the census is skipped, up to the policy's
    /// maximum staleness. Raised or pending alerts always take a census.
    fn census_not_needed(&mut self, settings: &KernelSettings) -> Option<String> {
        let last = self.last.as_ref()?;
        if &last.usage.settings != settings
            || self.state.alert.level != Level::Ok
            || self.state.alert.pending.is_some()
            || last.started.elapsed() >= self.policy.max_staleness
        {
            return None;
        }
        let totals = sockstat::read_totals(&self.host, self.proc.as_mut()).ok()?;
        let worst_then = last.usage.destinations.first().map_or(0, |d| d.used);
        let opened_since = match (
            last.active_opens,
            sockstat::read_active_opens(&self.host, self.proc.as_mut()).ok(),
        ) {
            (Some(then), Some(now)) => now.checked_sub(then),
            _ => None,
        };
        let destination = opened_since.map_or(totals.tcp_bound(), |n| {
            totals.tcp_bound().min(worst_then.saturating_add(n))
        });
        let usage = &last.usage;
        let mut bounds = vec![
            (destination, usage.capacity),
            (totals.udp_inuse, usage.pools.udp.capacity),
        ];
        if self.policy.tcp_pool_alerts {
            // bind(0) takes ports without connect(): only sockstat bounds it.
            bounds.push((totals.tcp_bound(), usage.pools.tcp.capacity));
        }
        let below = |&(used, capacity): &(u64, u64)| {
            Level::of(
                Ratio::of(used, capacity),
                self.policy.warning,
                self.policy.critical,
            ) == Level::Ok
        };
        if !bounds.iter().all(below) {
            return None;
        }
        let (bound, capacity) = bounds[0];
        Some(format!(
            "census skipped: at most {bound} of {capacity} ports towards any destination"
        ))
    }

    /// Reports each configuration hazard once, when a census first finds
    /// it: ends of the same parity, or services listening inside the range
    /// on unreserved ports (usage past the 50 % mark is the usage alerts').
    fn report_hazards(&mut self, usage: &Usage) {
        let now: Vec<String> = usage
            .hazards
            .iter()
            .filter(|h| !matches!(h, usage::Hazard::SlowdownMark { .. }))
            .map(ToString::to_string)
            .collect();
        for hazard in now.iter().filter(|h| !self.hazards.contains(h)) {
            events::emit(
                Kind::ConfigurationHazard,
                &format!("configuration hazard: {hazard}"),
                &Fields {
                    range_before: Some(usage.settings.port_range),
                    reason: Some(hazard.clone()),
                    ..Fields::default()
                },
            );
        }
        self.hazards = now;
    }

    fn census_failed(&mut self, error: String) {
        self.counters.failed += 1;
        if self.last_census_error.as_ref() != Some(&error) {
            tracing::error!("census failed, will retry: {error}");
            self.last_census_error = Some(error.clone());
        }
        notify::status(&format!("census failed, will retry: {error}"));
        self.write_metrics();
    }

    fn census_abandoned(&mut self, took: Duration, limit: Duration) {
        self.counters.abandoned += 1;
        let text = format!(
            "census abandoned after {:.1}s (limit {:.1}s, the watchdog interval if set); \
             the next one starts when it ends",
            took.as_secs_f64(),
            limit.as_secs_f64()
        );
        tracing::error!("{text}");
        notify::status(&text);
        self.write_metrics();
    }

    fn after_census(&mut self, result: CensusResult, started: Instant, active_opens: Option<u64>) {
        let CensusOutput {
            usage,
            took,
            processes,
        } = match result {
            Ok(r) => r,
            Err(e) => return self.census_failed(e),
        };
        self.counters.censuses += 1;
        if self.last_census_error.take().is_some() {
            tracing::info!("census works again");
        }
        let now = self.clock.now();
        if self.state.initial_range.is_none() {
            self.state.initial_range = Some(usage.settings.port_range);
            self.save_state();
        }
        let pin = match actuator::pin(&self.host, &self.policy.dropin_name) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot read sysctl.d files: {e}");
                None
            }
        };
        let history = self.state.history();
        let mut decision = planner::plan(&Inputs {
            observation: &Observation::from_usage(&usage),
            policy: &self.policy,
            history: &history,
            pin: pin.as_ref(),
            now,
            dry_run: self.dry_run,
        });
        // Without a readable state the originals could not be recorded:
        // portd only advises, and says why.
        if let (Some(reason), Action::Apply { plan }) = (&self.state_unreadable, &decision.action) {
            decision.action = Action::Hold {
                plan: Some(plan.clone()),
                reason: Blocked::StateUnreadable {
                    reason: reason.clone(),
                },
            };
        }
        self.report_level(&usage, &decision, processes.as_deref());
        self.report_hazards(&usage);
        let alert_changed = self.state.alert != decision.alert;
        self.state.alert = decision.alert.clone();
        let mut widened = None;
        let blocked = match &decision.action {
            Action::Nothing => {
                // While an alert is raised, usage dipping below the warning
                // level and back must not repeat the same "blocked" entry.
                if decision.alert.level == Level::Ok {
                    self.last_blocked = None;
                }
                None
            }
            Action::Apply { plan } => {
                if self.apply(&usage, plan, now) {
                    widened = Some(plan.to);
                    None
                } else {
                    Some("write-failed")
                }
            }
            Action::Hold { plan, reason } => {
                self.report_blocked(&usage, plan.as_ref(), reason);
                Some(blocked_kind(reason))
            }
        };
        self.retry_persist(now);
        if alert_changed && !self.dry_run {
            self.save_state();
        }
        let line = self.status_line(&usage, widened);
        self.last = Some(LastCensus {
            usage,
            started,
            active_opens,
            // Wall clock, like `polled_at`: a scraper compares it with its own.
            at: SystemTime::now(),
            took,
            level: decision.alert.level,
            blocked,
        });
        // Metrics first: whoever reacts to READY or STATUS finds them.
        self.write_metrics();
        if self.ready {
            notify::status(&line);
        } else {
            notify::ready(&line);
            self.ready = true;
            tracing::info!("ready: {line}");
        }
    }

    /// One line: headline usage, range, mode (sd_notify STATUS).
    fn status_line(&self, usage: &Usage, widened: Option<PortRange>) -> String {
        format!(
            "usage {} ({}/{}) {}; range {}{}; mode {}",
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity,
            usage.headline.cause,
            usage.settings.port_range,
            widened.map_or_else(String::new, |to| format!(" widened to {to}")),
            self.mode_name()
        )
    }

    fn write_metrics(&mut self) {
        let (Some(path), Some(last)) = (&self.policy.metrics_file, &self.last) else {
            return;
        };
        let snapshot = metrics::Snapshot {
            usage: &last.usage,
            level: last.level,
            changes_total: self.counters.changes,
            census_duration: last.took,
            census_at: last.at,
            polled_at: SystemTime::now(),
            censuses_total: self.counters.censuses,
            census_skipped_total: self.counters.skipped,
            census_failed_total: self.counters.failed,
            census_abandoned_total: self.counters.abandoned,
            last_change_at: self.state.changes.last().map(|c| c.at),
            widening_blocked: last.blocked,
            yielded: self.state.yielded.is_some(),
            mode: if self.dry_run {
                "dry-run"
            } else {
                match self.policy.mode {
                    Mode::Auto => "auto",
                    Mode::Advise => "advise",
                }
            },
        };
        match metrics::write(path, &snapshot) {
            Ok(()) => {
                if self.last_metrics_error.take().is_some() {
                    tracing::info!("metrics are written to {} again", path.display());
                }
            }
            Err(e) => {
                // Once per distinct error, not once per poll.
                let text = format!("cannot write metrics to {}: {e}", path.display());
                if self.last_metrics_error.as_ref() != Some(&text) {
                    tracing::warn!("{text}");
                    self.last_metrics_error = Some(text);
                }
            }
        }
    }

    fn usage_fields(usage: &Usage) -> Fields {
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

    /// One entry per transition of the confirmed level, and a reminder at
    /// the policy's interval while it stays raised; never one per poll.
    fn report_level(&self, usage: &Usage, d: &Decision, processes: Option<&str>) {
        let (kind, what, reminder) = match (d.transition, d.alert.level) {
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
            _ => return,
        };
        let held_by = processes
            .filter(|_| kind != Kind::UsageRecovered)
            .map(|p| format!("; held by {p}"))
            .unwrap_or_default();
        let message = format!(
            "{what}: {} of ephemeral ports in use ({}/{}), worst: {}{held_by}",
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity,
            usage.headline.cause
        );
        events::emit(
            kind,
            &message,
            &Fields {
                process: processes
                    .filter(|_| kind != Kind::UsageRecovered)
                    .map(str::to_string),
                reminder,
                ..Self::usage_fields(usage)
            },
        );
    }

    /// Applies a plan; true when the range was changed.
    fn apply(&mut self, usage: &Usage, plan: &planner::Plan, now: SystemTime) -> bool {
        if shutdown::requested() {
            return false;
        }
        let reason = format!(
            "{} at {} ({}/{})",
            usage.headline.cause,
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity
        );
        match actuator::apply_plan(
            &self.host,
            &mut self.state,
            &usage.settings,
            plan,
            now,
            &reason,
        ) {
            Ok(()) => {
                self.last_blocked = None;
                self.counters.changes += 1;
                self.recensus = true;
                let reserved = if plan.newly_reserved.is_empty() {
                    String::new()
                } else {
                    format!("; reserved {} first", plan.newly_reserved)
                };
                events::emit(
                    Kind::RangeWidened,
                    &format!(
                        "widened ip_local_port_range {} -> {} ({}; expected usage {}){reserved}",
                        plan.from, plan.to, reason, plan.expected_usage
                    ),
                    &Fields {
                        range_before: Some(plan.from),
                        range_after: Some(plan.to),
                        reason: Some(reason.clone()),
                        ..Self::usage_fields(usage)
                    },
                );
                self.save_state();
                true
            }
            Err(actuator::ActuateError::Stopped) => {
                tracing::info!(
                    "stopping: the widening {plan} was interrupted between two writes; the next start settles it"
                );
                false
            }
            Err(e) => {
                // Reported once per distinct error, not on every poll.
                let text = format!("write failed: {e}");
                if self.last_blocked.as_ref() != Some(&text) {
                    self.last_blocked = Some(text);
                    events::emit(
                        Kind::WideningBlocked,
                        &format!("could not widen {} -> {}: {e}", plan.from, plan.to),
                        &Fields {
                            range_before: Some(plan.from),
                            range_after: Some(plan.to),
                            reason: Some(e.to_string()),
                            ..Self::usage_fields(usage)
                        },
                    );
                }
                false
            }
        }
    }

    fn report_blocked(&mut self, usage: &Usage, plan: Option<&planner::Plan>, reason: &Blocked) {
        let text = blocked_kind(reason).to_string();
        if self.last_blocked.as_ref() == Some(&text) {
            return;
        }
        self.last_blocked = Some(text);
        let message = match plan {
            Some(p) => format!("would widen ip_local_port_range {p}, but {reason}"),
            None => format!(
                "cannot widen ip_local_port_range {}: {reason}",
                usage.settings.port_range
            ),
        };
        events::emit(
            Kind::WideningBlocked,
            &message,
            &Fields {
                range_before: Some(usage.settings.port_range),
                range_after: plan.map(|p| p.to),
                reason: Some(reason.to_string()),
                ..Self::usage_fields(usage)
            },
        );
    }

    fn retry_persist(&mut self, now: SystemTime) {
        // After a yield the admin's values are the baseline: the drop-in is
        // left as it is, not rewritten with them.
        if self.dry_run
            || !self.policy.persist
            || self.state.yielded.is_some()
            || shutdown::requested()
        {
            return;
        }
        let Some(written) = &self.state.last_written else {
            return;
        };
        let range = written.values.range;
        match actuator::persist(&self.host, &self.policy.dropin_name, &self.state, now) {
            Ok(outcome) => {
                let dropin = self
                    .host
                    .path(sysctld::DROPIN_DIR)
                    .join(&self.policy.dropin_name);
                if self.last_persist_error.take().is_some() {
                    tracing::info!(
                        "the drop-in {} is written again: the range {range} survives a reboot",
                        dropin.display()
                    );
                }
                if let actuator::Persisted::Written { removed: Some(old) } = &outcome {
                    tracing::info!(
                        "removed portd's previous drop-in {} now that persist.file names {}",
                        old.display(),
                        dropin.display()
                    );
                }
                let recorded = self.state.dropin.as_deref() == Some(&self.policy.dropin_name);
                let persisted = self
                    .state
                    .last_written
                    .as_ref()
                    .is_some_and(|w| w.persisted);
                if outcome != actuator::Persisted::Unchanged || !recorded || !persisted {
                    if let Some(w) = &mut self.state.last_written {
                        w.persisted = true;
                    }
                    self.state.dropin = Some(self.policy.dropin_name.clone());
                    self.save_state();
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_persist_error.as_ref() != Some(&text) {
                    let what = if written.persisted {
                        "the drop-in cannot be brought up to date"
                    } else {
                        "the runtime change is in place but will not survive a reboot"
                    };
                    events::emit(
                        Kind::PersistFailed,
                        &format!("{what}: {text}"),
                        &Fields {
                            reason: Some(text.clone()),
                            range_after: Some(range),
                            ..Fields::default()
                        },
                    );
                    self.last_persist_error = Some(text);
                }
            }
        }
    }

    /// A write recorded before portd was killed: settled against the live
    /// values before anything compares them with what portd wrote.
    fn settle_pending(&mut self, live: &KernelSettings) {
        if self.state_unreadable.is_some() || self.state.pending.is_none() {
            return;
        }
        if let Some(what) = actuator::settle_pending(&mut self.state, live) {
            tracing::warn!("{what}");
            self.save_state();
        }
    }

    fn check_external_change(&mut self, live: &KernelSettings) {
        if self.state.yielded.is_some() {
            return;
        }
        let Some(reason) = actuator::external_change(&self.host, &self.state, live) else {
            return;
        };
        events::emit(
            Kind::ExternalChange,
            &format!(
                "{reason}; portd stops changing the range (advise only) until `systemctl reload portd`"
            ),
            &Fields {
                range_before: self.state.last_written.as_ref().map(|w| w.values.range),
                range_after: Some(live.port_range),
                reason: Some(reason.clone()),
                ..Fields::default()
            },
        );
        self.state.yielded = Some(Yield {
            at: self.clock.now(),
            reason,
        });
        // The admin's values are the new baseline portd compares against.
        if let Some(w) = &mut self.state.last_written {
            w.values.range = live.port_range;
            w.values.reserved = live.reserved_ports.clone();
        }
        self.save_state();
    }

    /// SIGHUP: `RELOADING=1`, then the policy file is read and checked on
    /// the blocking pool; [`Daemon::reload`] takes the result.
    fn start_reload(&self) -> JoinHandle<LoadedPolicy> {
        notify::reloading();
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || policy::file::load_or_default(&config))
    }

    /// The new policy or (if invalid) the old one with the file's
    /// `PATH:LINE:COL` errors in the journal, then `READY=1`.
    fn reload(&mut self, loaded: Result<LoadedPolicy, JoinError>) {
        let policy_path = Some(self.config.display().to_string());
        let loaded = loaded.unwrap_or_else(|e| {
            Err(policy::file::PolicyError::whole_file(
                &self.config,
                format!("checking the policy failed: {e}"),
            ))
        });
        match loaded {
            Ok((policy, _)) => {
                self.policy = policy;
                let cleared = self.state.yielded.take();
                if cleared.is_some() {
                    self.save_state();
                }
                self.last_blocked = None;
                events::emit(
                    Kind::PolicyReloaded,
                    &format!(
                        "policy reloaded from {}: mode {}{}",
                        self.config.display(),
                        self.mode_name(),
                        if cleared.is_some() {
                            "; the yield to the admin is cleared"
                        } else {
                            ""
                        }
                    ),
                    &Fields {
                        policy: policy_path,
                        ..Fields::default()
                    },
                );
            }
            Err(e) => {
                events::emit(
                    Kind::PolicyRejected,
                    &format!("policy rejected, the previous one stays in force:\n{e}"),
                    &Fields {
                        policy: policy_path,
                        reason: Some(e.to_string()),
                        ..Fields::default()
                    },
                );
            }
        }
        let line = self.last.as_ref().map_or_else(
            || "reloaded".to_string(),
            |l| self.status_line(&l.usage, None),
        );
        if self.ready {
            notify::ready(&line);
        }
    }

    /// After SIGTERM no save starts: what it would record is either in the
    /// saved record of the write (settled at the next start) or found again.
    fn save_state(&mut self) {
        if self.dry_run || self.state_unreadable.is_some() || shutdown::requested() {
            return;
        }
        if let Err(e) = self.state.save(&self.host) {
            tracing::error!("cannot save state: {e}");
        }
    }
}

/// The census itself, on a blocking thread.
fn census_task(
    host: &Host,
    settings: KernelSettings,
    options: UsageOptions,
    lookup: ProcessLookup,
) -> CensusResult {
    let started = Instant::now();
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
    let took = started.elapsed();
    let processes = if lookup.wanted(&usage) {
        holders(host, source.as_ref(), &usage)
    } else {
        None
    };
    Ok(CensusOutput {
        usage,
        took,
        processes,
    })
}

/// "nginx[812] 40 sockets, curl[77] 5 sockets": the processes holding the
/// sockets of the headline destination, largest first.
fn holders(host: &Host, source: &dyn SocketSource, usage: &Usage) -> Option<String> {
    let Cause::Destination { destination } = &usage.headline.cause else {
        return None;
    };
    let found = attribution::attribute(host, source, usage, &[*destination]).ok()?;
    let processes = &found.first()?.processes;
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = processes
        .iter()
        .take(SHOWN)
        .map(|p| format!("{}[{}] {} sockets", p.command, p.pid, p.sockets))
        .collect();
    if processes.len() > SHOWN {
        parts.push(format!("{} more processes", processes.len() - SHOWN));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A stable short name for why widening is held (metrics label, dedup key).
fn blocked_kind(reason: &Blocked) -> &'static str {
    match reason {
        Blocked::Advise => "advise",
        Blocked::AtBound => "at-bound",
        Blocked::OutsideBounds => "outside-bounds",
        Blocked::Cooldown { .. } => "cooldown",
        Blocked::ChangeCap { .. } => "change-cap",
        Blocked::Yielded { .. } => "yielded",
        Blocked::PinnedBy { .. } => "pinned",
        Blocked::StateUnreadable { .. } => "state-unreadable",
        Blocked::FewerUsablePorts { .. } => "fewer-usable-ports",
    }
}
