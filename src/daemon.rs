//! `portd run`: the tokio service. One current-thread event loop feeds the
//! watchdog, handles signals, and polls; the census runs off that thread so
//! a slow one can be abandoned and SIGTERM is never kept waiting.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::actuator;
use crate::census::procfs::ProcfsSource;
use crate::census::{KernelSettings, sockstat};
use crate::events::{self, Fields, Kind};
use crate::fsutil::WriterLock;
use crate::host::Host;
use crate::level::Level;
use crate::metrics;
use crate::notify;
use crate::planner::{self, Action, Blocked, Decision, Inputs, Observation};
use crate::policy::{self, Mode, Policy};
use crate::state::{State, Yield};
use crate::usage::{self, Usage, UsageOptions};

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

type CensusResult = Result<(Usage, Duration), String>;

/// What the last full census saw, for the O(1) bounds between censuses.
struct LastCensus {
    usage: Usage,
    at: Instant,
    active_opens: Option<u64>,
}

struct Daemon {
    host: Host,
    config: PathBuf,
    policy: Policy,
    dry_run: bool,
    state: State,
    /// True when the state file could not be read: portd then never writes.
    state_unreadable: Option<String>,
    last: Option<LastCensus>,
    ready: bool,
    /// Last reported blocked reason / persist error, to report each once.
    last_blocked: Option<String>,
    last_persist_error: Option<String>,
    last_census_error: Option<String>,
}

impl Daemon {
    fn new(host: Host, config: PathBuf, policy: Policy, dry_run: bool) -> Self {
        let (state, state_unreadable) = match State::load(&host) {
            Ok(s) => (s, None),
            Err(e) => (State::default(), Some(e.to_string())),
        };
        Daemon {
            host,
            config,
            policy,
            dry_run,
            state,
            state_unreadable,
            last: None,
            ready: false,
            last_blocked: None,
            last_persist_error: None,
            last_census_error: None,
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
        // Fed from this loop at half the interval, whatever the poll interval.
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| {
                (w / 2).max(Duration::from_millis(10))
            }));
        let census_limit =
            watchdog.unwrap_or((self.policy.interval * 3).max(Duration::from_secs(30)));
        let mut poll_tick = tokio::time::interval(self.policy.interval);
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut census: Option<(JoinHandle<CensusResult>, Instant)> = None;
        // A census abandoned after the limit keeps its thread until it ends;
        // no new one starts meanwhile.
        let mut abandoned: Option<JoinHandle<CensusResult>> = None;

        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    self.reload();
                    poll_tick.reset_immediately();
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    notify::watchdog();
                    if let Some((_, started)) = &census
                        && started.elapsed() >= census_limit
                    {
                        tracing::error!(
                            "census abandoned after {:.1}s (limit {:.1}s); it will be retried",
                            started.elapsed().as_secs_f64(),
                            census_limit.as_secs_f64()
                        );
                        abandoned = census.take().map(|(h, _)| h);
                    }
                }
                result = async { census.as_mut().map(|(h, _)| h) .expect("guarded by if").await }, if census.is_some() => {
                    census = None;
                    match result {
                        Ok(r) => self.after_census(r),
                        Err(e) => self.census_failed(format!("census task failed: {e}")),
                    }
                }
                _ = poll_tick.tick(), if census.is_none() && abandoned.as_ref().is_none_or(|h| h.is_finished()) => {
                    abandoned = None;
                    if let Some(handle) = self.tick() {
                        census = Some((handle, Instant::now()));
                    }
                }
            }
            // A policy reload may change the interval.
            if poll_tick.period() != self.policy.interval {
                poll_tick = tokio::time::interval(self.policy.interval);
                poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
        notify::stopping();
        tracing::info!("portd stopping");
        0
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
    fn tick(&mut self) -> Option<JoinHandle<CensusResult>> {
        let settings = match KernelSettings::read(&self.host) {
            Ok(s) => s,
            Err(e) => {
                self.census_failed(e.to_string());
                return None;
            }
        };
        self.check_external_change(&settings);
        if let Some(reason) = self.census_not_needed(&settings) {
            if let Some(last) = &self.last {
                notify::status(&format!("{} ({reason})", self.status_line(&last.usage)));
            }
            return None;
        }
        let host = self.host.clone();
        let options = UsageOptions {
            tcp_pool_in_headline: self.policy.tcp_pool_alerts,
        };
        Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let source = ProcfsSource::new(&host);
            usage::take_census(&source, settings, options)
                .map(|u| (u, started.elapsed()))
                .map_err(|e| e.to_string())
        }))
    }

    /// DESIGN.md: no destination can hold more than `TCP inuse + TCP6 inuse +
    /// tw` ports, nor more than its count at the last census plus the
    /// `connect()`s since (`ActiveOpens`); the UDP pool no more than the UDP
    /// sockets. While those stay below the warning level, skip the census.
    fn census_not_needed(&self, settings: &KernelSettings) -> Option<String> {
        let last = self.last.as_ref()?;
        if &last.usage.settings != settings
            || self.state.alert.level != Level::Ok
            || self.state.alert.pending.is_some()
            || last.at.elapsed() >= self.policy.max_staleness
        {
            return None;
        }
        let totals = sockstat::read_totals(&self.host).ok()?;
        let worst_then = last.usage.destinations.first().map_or(0, |d| d.used);
        let opens_bound = match (
            last.active_opens,
            sockstat::read_active_opens(&self.host).ok(),
        ) {
            (Some(then), Some(now)) => worst_then + now.saturating_sub(then),
            _ => u64::MAX,
        };
        let tcp_bound = totals.tcp_bound().min(opens_bound);
        let bound = tcp_bound.max(totals.udp_inuse);
        let warning_at = (self.policy.warning.0 * last.usage.capacity as f64).ceil() as u64;
        (bound < warning_at)
            .then(|| format!("census skipped: at most {bound} of {warning_at} ports"))
    }

    fn census_failed(&mut self, error: String) {
        if self.last_census_error.as_ref() != Some(&error) {
            tracing::error!("census failed, will retry: {error}");
            self.last_census_error = Some(error.clone());
        }
        notify::status(&format!("census failed: {error}"));
    }

    fn after_census(&mut self, result: CensusResult) {
        let (usage, took) = match result {
            Ok(r) => r,
            Err(e) => return self.census_failed(e),
        };
        self.last_census_error = None;
        let now = SystemTime::now();
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
        let mut history = self.state.history();
        if let Some(reason) = &self.state_unreadable {
            history.yielded = Some(reason.clone());
        }
        let decision = planner::plan(&Inputs {
            observation: &Observation::from_usage(&usage),
            policy: &self.policy,
            history: &history,
            pin: pin.as_ref(),
            now,
            dry_run: self.dry_run,
        });
        self.report_level(&usage, &decision);
        let alert_changed = self.state.alert != decision.alert;
        self.state.alert = decision.alert.clone();
        let mut usage = usage;
        match &decision.action {
            Action::Nothing => self.last_blocked = None,
            Action::Apply { plan } => {
                if let Some(after) = self.apply(&usage, plan, now) {
                    usage = after;
                }
            }
            Action::Hold { plan, reason } => self.report_blocked(&usage, plan.as_ref(), reason),
        }
        self.retry_persist(now);
        if alert_changed && !self.dry_run {
            self.save_state();
        }
        if let Some(path) = &self.policy.metrics_file {
            let snapshot = metrics::Snapshot {
                usage: &usage,
                level: decision.alert.level,
                changes_total: self.state.changes.len() as u64,
                census_duration: took,
                census_at: now,
            };
            if let Err(e) = metrics::write(path, &snapshot) {
                tracing::warn!("cannot write metrics to {}: {e}", path.display());
            }
        }
        let line = self.status_line(&usage);
        if self.ready {
            notify::status(&line);
        } else {
            notify::ready(&line);
            self.ready = true;
            tracing::info!("ready: {line}");
        }
        self.last = Some(LastCensus {
            usage,
            at: Instant::now(),
            active_opens: sockstat::read_active_opens(&self.host).ok(),
        });
    }

    fn status_line(&self, usage: &Usage) -> String {
        format!(
            "usage {} ({}/{}) {}; range {}; mode {}",
            usage.headline.usage,
            usage.headline.used,
            usage.headline.capacity,
            usage.headline.cause,
            usage.settings.port_range,
            self.mode_name()
        )
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
    /// the policy's interval while it stays raised.
    fn report_level(&self, usage: &Usage, d: &Decision) {
        let level = d.alert.level;
        let what = |prefix: &str| {
            format!(
                "{prefix}: {} of ephemeral ports in use ({}/{}), worst: {}",
                usage.headline.usage,
                usage.headline.used,
                usage.headline.capacity,
                usage.headline.cause
            )
        };
        let fields = Self::usage_fields(usage);
        match (d.transition, level) {
            (Some(_), Level::Critical) => events::emit(
                Kind::UsageCritical,
                &what("ephemeral ports critical"),
                &fields,
            ),
            (Some(_), Level::Warning) => events::emit(
                Kind::UsageWarning,
                &what("ephemeral ports warning"),
                &fields,
            ),
            (Some((from, _)), Level::Ok) if from > Level::Ok => events::emit(
                Kind::UsageRecovered,
                &what("ephemeral ports recovered"),
                &fields,
            ),
            (None, Level::Critical) if d.remind => {
                events::emit(Kind::UsageCritical, &what("still critical"), &fields)
            }
            (None, Level::Warning) if d.remind => {
                events::emit(Kind::UsageWarning, &what("still warning"), &fields)
            }
            _ => {}
        }
    }

    fn apply(&mut self, usage: &Usage, plan: &planner::Plan, now: SystemTime) -> Option<Usage> {
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
                // Re-read so metrics and STATUS show the new range.
                KernelSettings::read(&self.host).ok().map(|settings| {
                    let mut u = usage.clone();
                    u.settings = settings;
                    u
                })
            }
            Err(e) => {
                events::emit(
                    Kind::WideningBlocked,
                    &format!("could not widen {} -> {}: {e}", plan.from, plan.to),
                    &Fields {
                        range_before: Some(plan.from),
                        range_after: Some(plan.to),
                        reason: Some(e.to_string()),
                        ..Fields::default()
                    },
                );
                None
            }
        }
    }

    fn report_blocked(&mut self, usage: &Usage, plan: Option<&planner::Plan>, reason: &Blocked) {
        let key = std::mem::discriminant(reason);
        let text = format!("{key:?}");
        if self.last_blocked.as_ref() == Some(&text) {
            return;
        }
        self.last_blocked = Some(text);
        let message = match plan {
            Some(p) => format!(
                "would widen ip_local_port_range {} -> {}{}, but {reason}",
                p.from,
                p.to,
                if p.newly_reserved.is_empty() {
                    String::new()
                } else {
                    format!(" (reserving {})", p.newly_reserved)
                }
            ),
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
        if self.dry_run || !self.policy.persist {
            return;
        }
        let Some(written) = &self.state.last_written else {
            return;
        };
        if written.persisted {
            return;
        }
        match actuator::persist(&self.host, &self.policy.dropin_name, &self.state, now) {
            Ok(()) => {
                if let Some(w) = &mut self.state.last_written {
                    w.persisted = true;
                }
                self.last_persist_error = None;
                self.save_state();
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_persist_error.as_ref() != Some(&text) {
                    events::emit(
                        Kind::PersistFailed,
                        &format!(
                            "the runtime change is in place but will not survive a reboot: {text}"
                        ),
                        &Fields {
                            reason: Some(text.clone()),
                            range_after: Some(written.values.range),
                            ..Fields::default()
                        },
                    );
                    self.last_persist_error = Some(text);
                }
            }
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
            at: SystemTime::now(),
            reason,
        });
        // The admin's values are the new baseline portd compares against.
        if let Some(w) = &mut self.state.last_written {
            w.values.range = live.port_range;
            w.values.reserved = live.reserved_ports.clone();
        }
        self.save_state();
    }

    fn reload(&mut self) {
        notify::reloading();
        match policy::file::load_or_default(&self.config) {
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
                    &Fields::default(),
                );
            }
            Err(e) => {
                events::emit(
                    Kind::PolicyRejected,
                    &format!("policy rejected, the previous one stays in force: {e}"),
                    &Fields {
                        reason: Some(e.to_string()),
                        ..Fields::default()
                    },
                );
            }
        }
        let line = self
            .last
            .as_ref()
            .map_or_else(|| "reloaded".to_string(), |l| self.status_line(&l.usage));
        if self.ready {
            notify::ready(&line);
        }
    }

    fn save_state(&mut self) {
        if self.dry_run || self.state_unreadable.is_some() {
            return;
        }
        if let Err(e) = self.state.save(&self.host) {
            tracing::error!("cannot save state: {e}");
        }
    }
}
