//! `portd run`: the tokio service. One current-thread event loop feeds the
//! watchdog, handles signals, and polls; the census runs off that thread so
//! a slow one can be abandoned and SIGTERM is never kept waiting.
//!
//! A poll reads as observe (the kernel settings and O(1) counters, then a
//! census unless the fast path proves it unneeded) → assess (judge/assess.rs,
//! pure, with the poll's [`Authority`]) → act (the actuator) → record (the
//! state) → publish (report.rs: STATUS, journal, metrics, live view), each
//! channel rendering the same assessment.

mod act;
mod census_task;
mod decide;
mod history;
mod journal;
mod live_view;
mod netns;
mod netns_act;
mod poll_timer;
mod reload;
mod report;
mod tick;
mod witness;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::{JoinError, JoinHandle};

use self::census_task::{CensusInFlight, CensusResult, Holders, Lookup, join, join_task};
use self::live_view::Poll;
use self::poll_timer::PollTimer;
use self::reload::LoadedPolicy;
use self::report::Report;
use self::tick::Clock;
use crate::act::state::State;
use crate::base::fsutil::WriterLock;
use crate::base::host::Host;
use crate::base::shutdown;
use crate::daemon::witness::Running as Witness;
use crate::judge::assess::{self, Assessment};
use crate::judge::authority::Authority;
use crate::judge::level::Exit;
use crate::observe::census::KernelSettings;
use crate::observe::census::reader::{Fresh, KeptOpen, ProcRead};
use crate::observe::usage::Usage;
use crate::policy::{self, Policy};
use crate::publish::events::{Kind, note};
use crate::publish::notify;

pub struct RunOptions {
    /// Decide as usual, log what would be done, write nothing.
    pub dry_run: bool,
    /// The policy file was given with `--config`: it must exist, at start
    /// and at every reload (only the default path may be absent).
    pub config_required: bool,
}

/// Runs until SIGTERM/SIGINT. Returns the exit status.
pub fn run(host: Host, config: PathBuf, opts: RunOptions) -> Exit {
    // Before the file is read: an edit in between shows as a policy that
    // differs from the one on disk (`status`), never the other way round.
    let digest = crate::publish::live::policy_digest(&config);
    let policy = match policy::file::load_configured(&config, opts.config_required) {
        Ok((p, _)) => p,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Critical;
        }
    };
    let lock = if opts.dry_run {
        None
    } else {
        match WriterLock::acquire(&host.state_dir()) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("portd: {e}");
                return Exit::Critical;
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking threads outlive the pauses between looks (netns.rs): a
        // thread created anew is a pid handed out, which makes the look
        // that spares an idle host (`UNCHANGED_FOR`, 60 s) look again.
        .thread_keep_alive(Duration::from_secs(300))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portd: cannot start the event loop: {e}");
            return Exit::Critical;
        }
    };
    let mut daemon = Daemon::new(host, config, policy, opts.dry_run);
    daemon.config_required = opts.config_required;
    daemon.policy_digest = digest;
    // Only the writer-lock holder publishes: a dry run beside it (another
    // network namespace sharing /run/portd, say) must not replace its live
    // view or its metrics file.
    daemon.publishes = lock.is_some();
    let code = runtime.block_on(daemon.serve());
    // A census still running in a blocking thread must not delay the exit.
    runtime.shutdown_background();
    drop(lock);
    code
}

/// The poll interval while a forecast reaches critical soon (at most the
/// policy's interval).
const HURRIED: Duration = Duration::from_secs(1);

/// Used where a timer must exist but never fire.
const FAR: Duration = Duration::from_secs(3600);

/// What the last full census saw, for the O(1) bounds between censuses and
/// for the STATUS line and metrics of the polls that skip the census.
struct LastCensus {
    usage: Usage,
    started: Instant,
    active_opens: Option<u64>,
    at: SystemTime,
    took: Duration,
    /// CPU time of that census (budget.rs).
    cpu: Duration,
    /// Why the range was not widened although usage called for it.
    blocked: Option<&'static str>,
    /// The judgement of this census as it stands at the last poll, which
    /// every channel renders: between censuses its forecast is revised
    /// each poll from the counters (judge/assess.rs, `revise`).
    assessment: Assessment,
    /// The judgement as the census made it: what each revision starts from.
    judged: Assessment,
}

/// The tasks the event loop waits on besides signals and timers.
#[derive(Default)]
struct Tasks {
    census: Option<CensusInFlight>,
    /// A census abandoned after the limit keeps its thread until it ends;
    /// no new one starts meanwhile, so stuck reads cannot pile up.
    abandoned: Option<CensusInFlight>,
    /// The policy is read and checked off the loop (a hostile file can
    /// take long): signals and the watchdog are served meanwhile.
    reloading: Option<JoinHandle<LoadedPolicy>>,
    /// A SIGHUP during a reload reads the file again after it.
    reload_again: bool,
    /// The poll of the other network namespaces (netns.rs).
    netns: Option<netns::InFlight>,
    /// Who holds the last census's headline sockets (census_task.rs): no
    /// poll starts until it ends, so the entries it holds back are that
    /// census's.
    lookup: Option<JoinHandle<Lookup>>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        let (Ok(term), Ok(int), Ok(hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return Err("portd: cannot install signal handlers".into());
        };
        shutdown::watch().map_err(|e| format!("portd: cannot install signal handlers: {e}"))?;
        Ok(Signals { term, int, hup })
    }
}

struct Daemon {
    clock: Clock,
    host: Host,
    config: PathBuf,
    /// See [`RunOptions::config_required`].
    config_required: bool,
    policy: Policy,
    /// `publish::live::policy_digest` of the policy file as last loaded.
    policy_digest: Option<String>,
    dry_run: bool,
    /// Writes the live view and the metrics file: the writer-lock holder.
    publishes: bool,
    state: State,
    /// Set when the state file could not be read: portd then never writes.
    state_unreadable: Option<String>,
    last: Option<LastCensus>,
    /// What the judgement remembers between looks (judge/assess.rs): the
    /// rates, the exhaustion reported, a witnessed failure not yet decided
    /// on, whether polls hurry.
    judgement: assess::Memory,
    /// `Tcp: ActiveOpens` as last read (a metrics counter).
    active_opens: Option<u64>,
    /// The last reading of `ActiveOpens`, for the polls that keep it
    /// (tick.rs, [`tick::OpensRead`]).
    opens_read: Option<tick::OpensRead>,
    report: Report,
    /// The poll's sysctl.d scan, read at most once a poll (on its first
    /// question) and asked every question of it.
    sysctld: act::PollScan,
    /// The settings as last read, and when all were (tick.rs).
    settings: Option<(KernelSettings, Instant)>,
    /// Reads the /proc files of every poll: kept open on the live host
    /// (census/reader.rs); opened anew under a fixture root, whose files a
    /// test may replace.
    proc: Box<dyn ProcRead>,
    /// The failure witness (witness/runtime.rs).
    witness: Witness,
    /// The other network namespaces (netns.rs).
    netns: netns::Watch,
    /// Who holds the headline's sockets (census_task.rs).
    holders: Holders,
    /// The last census asked who holds its headline's sockets.
    lookup_due: bool,
    /// Events of the loop besides the poll timer, and revisions of the
    /// forecast that changed it: what a quiet poll compares
    /// (report.rs, `Unchanged`).
    events: u64,
    revisions: u64,
}

impl Daemon {
    fn new(host: Host, config: PathBuf, policy: Policy, dry_run: bool) -> Self {
        let live_host = host.root() == std::path::Path::new("/");
        let proc: Box<dyn ProcRead> = if live_host {
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
            journal::state_ahead(&State::path(&host), ahead);
        }
        Daemon {
            clock,
            host,
            config,
            config_required: false,
            policy,
            policy_digest: None,
            dry_run,
            publishes: false,
            state,
            state_unreadable,
            last: None,
            judgement: assess::Memory::default(),
            active_opens: None,
            opens_read: None,
            report: Report::default(),
            sysctld: act::PollScan::default(),
            settings: None,
            proc,
            witness: Witness::start((!live_host).then_some("the host root is a fixture tree")),
            netns: netns::Watch::default(),
            holders: Holders::default(),
            lookup_due: false,
            events: 0,
            revisions: 0,
        }
    }

    async fn serve(&mut self) -> Exit {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return Exit::Critical;
            }
        };
        self.announce_start();
        let watchdog = notify::watchdog_interval();
        // Fed from this loop at half the interval, whatever the poll interval:
        // a stuck loop stops feeding it.
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(FAR, |w| (w / 2).max(Duration::from_millis(10))));
        let mut poll_tick = match PollTimer::new(self.poll_period()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("portd: poll timer: {e}");
                return Exit::Critical;
            }
        };
        let mut tasks = Tasks::default();
        loop {
            // A SIGTERM that arrived while the loop was busy (a stalled
            // write) is seen by tokio only once the loop waits again; a
            // ready poll timer would win that race and start another poll.
            if shutdown::requested() {
                break;
            }
            let limit = self.census_limit(watchdog);
            let deadline = tasks
                .census
                .as_ref()
                .map_or_else(|| Instant::now() + FAR, |c| c.started + limit);
            self.events += 1; // every turn but a poll's (tick.rs, `poll`)
            tokio::select! {
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
                _ = signals.hup.recv() => {
                    if tasks.reloading.is_some() {
                        tasks.reload_again = true;
                    } else {
                        tasks.reloading = Some(self.start_reload());
                    }
                }
                loaded = join_task(&mut tasks.reloading) => {
                    tasks.reloading = None;
                    self.reload(loaded);
                    poll_tick.reset_immediately();
                    if std::mem::take(&mut tasks.reload_again) {
                        tasks.reloading = Some(self.start_reload());
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify::watchdog(),
                _ = tokio::time::sleep_until(deadline.into()), if tasks.census.is_some() => {
                    self.abandon(&mut tasks, limit);
                }
                result = join(&mut tasks.census) => {
                    // After a widening: census again at once, so STATUS
                    // and the metrics show the usage of the new range.
                    if self.census_ended(&mut tasks, result) {
                        poll_tick.reset_immediately();
                    }
                }
                _ = join(&mut tasks.abandoned) => abandoned_ended(&mut tasks),
                lookup = join_task(&mut tasks.lookup) => {
                    tasks.lookup = None;
                    self.lookup_ended(lookup.ok());
                }
                out = netns::join(&mut tasks.netns) => {
                    tasks.netns = None;
                    self.netns.finished();
                    self.netns_ended(out);
                }
                _ = poll_tick.tick(), if tasks.census.is_none() && tasks.lookup.is_none() => {
                    self.poll(&mut tasks, limit);
                }
            }
            // A policy reload may change the interval; a forecast hurries it.
            if poll_tick.period() != self.poll_period() {
                poll_tick.restart(self.poll_period());
            }
        }
        // Entries a lookup still held back are written without holders.
        self.lookup_ended(None);
        notify::stopping();
        note(Kind::Stopping, "portd stopping");
        Exit::Ok
    }

    fn announce_start(&self) {
        if let Some(reason) = &self.state_unreadable {
            journal::state_unreadable(reason);
        }
        let started = format!(
            "portd {} starting: mode {}, interval {}, policy {}{}",
            env!("CARGO_PKG_VERSION"),
            self.authority().describe(),
            humantime::format_duration(self.policy.interval),
            self.config.display(),
            if self.config.exists() {
                ""
            } else {
                " (absent: built-in defaults)"
            }
        );
        note(Kind::Started, &started);
        self.witness.announce();
    }

    fn poll_period(&self) -> Duration {
        if self.judgement.hurry() {
            HURRIED.min(self.policy.interval)
        } else {
            self.policy.interval
        }
    }

    /// A census running longer than this is abandoned: the watchdog
    /// interval (docs/DESIGN.md), or without a watchdog three polls and at least
    /// 30 s.
    fn census_limit(&self, watchdog: Option<Duration>) -> Duration {
        watchdog.unwrap_or_else(|| (self.policy.interval * 3).max(Duration::from_secs(30)))
    }

    /// Whether portd may write now, and if not, why: one answer for the
    /// planner, the STATUS line and the metrics of a poll.
    fn authority(&self) -> Authority {
        Authority::of(
            self.policy.mode,
            self.dry_run,
            self.state_unreadable.as_deref(),
            self.state.yielded.as_ref().map(|y| y.reason.as_str()),
        )
    }

    /// Hands the reporter what a poll's metrics need besides its counters.
    fn report_with(&mut self, authority: &Authority, f: impl FnOnce(&mut Report, &Poll<'_>)) {
        let poll = Poll {
            host: &self.host,
            witness: &self.witness,
            metrics_file: self
                .policy
                .metrics_file
                .as_deref()
                .filter(|_| self.publishes),
            publishes: self.publishes,
            config: &self.config,
            policy_digest: self.policy_digest.as_deref(),
            interval: self.policy.interval,
            last: self.last.as_ref(),
            last_change: self.state.changes.last(),
            authority,
            netns: &self.netns.published,
            connect_attempts: self.active_opens,
        };
        f(&mut self.report, &poll);
    }

    fn census_failed(&mut self, error: &str) {
        let authority = self.authority();
        self.report_with(&authority, |r, p| r.census_failed(error, p));
    }

    fn abandon(&mut self, tasks: &mut Tasks, limit: Duration) {
        if let Some(c) = tasks.census.take() {
            let authority = self.authority();
            let took = c.started.elapsed();
            self.report_with(&authority, |r, p| r.census_abandoned(took, limit, p));
            tasks.abandoned = Some(c);
        }
    }

    /// True when the census's poll widened the range.
    fn census_ended(&mut self, tasks: &mut Tasks, result: Result<CensusResult, JoinError>) -> bool {
        let Some(c) = tasks.census.take() else {
            return false;
        };
        // The census may have written: the next poll reads every setting.
        self.settings = None;
        let widened = match result {
            Ok(r) => self.after_census(r, c.started, c.active_opens),
            Err(e) => {
                self.census_failed(&format!("census task failed: {e}"));
                false
            }
        };
        if std::mem::take(&mut self.lookup_due) {
            tasks.lookup = self
                .last
                .as_ref()
                .and_then(|l| self.holders.start(&self.host, &l.usage));
            if tasks.lookup.is_none() {
                self.lookup_ended(None);
            }
        }
        widened
    }
}

fn abandoned_ended(tasks: &mut Tasks) {
    if let Some(c) = tasks.abandoned.take() {
        note(
            Kind::Restored,
            &format!(
                "the abandoned census ended after {:.1}s; its result is discarded",
                c.started.elapsed().as_secs_f64()
            ),
        );
    }
}
