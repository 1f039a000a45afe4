//! Command line: `portd run | status | check | rollback`.
//!
//! Exit status (all commands): 0 ok, 1 warning, 2 critical or error,
//! 3 unknown (could not read, or a usage error) — the monitoring-plugin
//! convention, so `portd status` works as a Nagios/Icinga/Sensu check.
//! Output that cannot be written (`> /dev/full`, or stdout closed with
//! `>&-`) is an error: 2, or 3 for `status`, with the reason on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::act::actuator;
use crate::act::state::State;
use crate::base::fsutil::WriterLock;
use crate::base::host::Host;
use crate::base::ports::Ratio;
use crate::commands::check;
use crate::commands::status::{self, StatusOptions};
use crate::commands::status_watch;
use crate::daemon;
use crate::judge::level::Exit;
use crate::observe::census::{self, KernelSettings, SourceChoice};
use crate::policy::file::PolicyError;
use crate::policy::{self, Policy};
use crate::publish::logging;
use crate::publish::logging::LogTarget;

/// `portd -V`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTD_BUILD_COMMIT_SHORT"),
    ")"
);

/// `portd --version`: what the build knew about itself (build.rs), nothing
/// guessed. The witness's BPF object is always embedded; whether it can be
/// attached is decided at run time (portd(8), FAILURE WITNESS).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:  ",
    env!("PORTD_BUILD_COMMIT"),
    "\ntarget:  ",
    env!("PORTD_BUILD_TARGET"),
    "\nprofile: ",
    env!("PORTD_BUILD_PROFILE"),
    "\nrustc:   ",
    env!("PORTD_BUILD_RUSTC"),
    "\nwitness: BPF syscall tracepoints, object embedded",
);

#[derive(Parser, Debug)]
#[command(
    name = "portd",
    version = VERSION,
    long_version = LONG_VERSION,
    about = "Keeps a host out of ephemeral-port exhaustion"
)]
pub struct Cli {
    /// Resolve every path (/proc, /etc, /var/lib/portd) under this directory
    /// instead of / (fixture trees; hidden: not for operators).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "PORTD_ROOT",
        default_value = "/",
        hide = true
    )]
    pub root: PathBuf,
    /// Policy file (default: /etc/portd.toml; built-in defaults if absent).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Socket source of `status` and `check` (benchmarks and source-comparison tests).
    #[arg(long, global = true, value_enum, default_value_t = SourceChoice::Auto, hide = true)]
    pub source: SourceChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service: watch, alert, and (mode = "auto") widen the range.
    Run {
        /// Decide and log as usual, but write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where log lines and events go.
        #[arg(long, value_enum, default_value_t = LogTarget::Auto)]
        log_target: LogTarget,
    },
    /// Validate the policy and inspect the host; exit 0 fine, 1 warnings, 2 errors.
    Check {
        /// Policy file to check, as with --config (default: /etc/portd.toml).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Machine-readable output (with "schema_version").
        #[arg(long)]
        json: bool,
        /// Also show what the daemon would do now.
        #[arg(long)]
        plan: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, ...) to stdout.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Restore the values portd found before its first change and remove its drop-in.
    Rollback {
        /// Roll back even if someone else changed the values since portd wrote them.
        #[arg(long)]
        force: bool,
    },
    /// Report ephemeral-port usage; exit 0 ok, 1 warning, 2 critical, 3 unknown.
    Status {
        /// Machine-readable output (schema: docs/status-json.md).
        #[arg(long)]
        json: bool,
        /// Destinations to list, worst first (0: all).
        #[arg(long, default_value_t = 10, value_name = "N")]
        top: usize,
        /// Name the processes that hold the sockets of the listed destinations
        /// (reads /proc/<pid>/fd; other users' processes need root).
        #[arg(long)]
        processes: bool,
        /// Warning threshold in percent (overrides the policy).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        warning: Option<Ratio>,
        /// Critical threshold in percent (overrides the policy).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        critical: Option<Ratio>,
        /// Report only this network namespace: its inode, /run/netns name,
        /// container (docker:ID), pod (NAMESPACE/NAME or UID) or label.
        /// Without it, root reports every namespace.
        #[arg(long, value_name = "WHICH")]
        netns: Option<String>,
        /// Refresh, as top does: the daemon's worst destinations and namespaces
        /// with the last 10 minutes of their usage; q or Ctrl-C leaves. Plain
        /// lines when stdout is not a terminal.
        #[arg(long, conflicts_with_all = ["json", "netns", "processes"])]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, value_name = "S", default_value = "2", requires = "watch", value_parser = parse_seconds)]
        interval: std::time::Duration,
    },
}

/// `--interval`: seconds, fractions allowed, from 0.1 to a day.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=86400.0).contains(&v) => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0.1 to 86400"
        )),
    }
}

/// `portd completions SHELL`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> Exit {
    use clap::CommandFactory;
    // Into memory first: clap_complete panics when its writer fails.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut offered(&Cli::command()), "portd", &mut script);
    output(&script, Exit::Ok, Exit::Critical)
}

/// `cmd` as the completion scripts offer it: without the hidden options and
/// subcommands, which clap_complete would list (with their doc comments as
/// value help). Built before clap propagates the global options, which it
/// then does for the copy.
fn offered(cmd: &clap::Command) -> clap::Command {
    let mut copy = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(offered),
        );
    if let Some(about) = cmd.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        copy = copy.version(version.to_string());
    }
    if let Some(version) = cmd.get_long_version() {
        copy = copy.long_version(version.to_string());
    }
    copy.subcommand_required(cmd.is_subcommand_required_set())
        .arg_required_else_help(cmd.is_arg_required_else_help_set())
}

/// A threshold in percent, under the policy file's rule for percentages.
fn parse_percent(s: &str) -> Result<Ratio, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a percentage above 0 and at most 100"))?;
    policy::thresholds::percent(v).map_err(|e| e.to_string())
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let exit = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Ok
                }
                _ => Exit::Unknown,
            };
            // --help and --version print to stdout; errors go to stderr.
            if let Err(io) = e.print()
                && exit == Exit::Ok
            {
                return written(Err(io), exit, Exit::Critical).into();
            }
            return exit.into();
        }
    };
    if let Some(exit) = missing_root(&cli) {
        return exit.into();
    }
    run(cli)
}

fn run(cli: Cli) -> ExitCode {
    let host = Host::new(&cli.root);
    // `check FILE` is `check --config FILE`.
    let given = match &cli.command {
        Command::Check {
            file: Some(file), ..
        } => Some(file.clone()),
        _ => cli.config.clone(),
    };
    // Only the default path may be absent.
    let required = given.is_some();
    let config = given.unwrap_or_else(|| host.policy_file());
    match cli.command {
        Command::Run {
            dry_run,
            log_target,
        } => {
            if let Err(e) = logging::init(log_target) {
                eprintln!("portd: {e}");
                return Exit::Critical.into();
            }
            daemon::run(
                host,
                config,
                daemon::RunOptions {
                    dry_run,
                    config_required: required,
                },
            )
            .into()
        }
        Command::Rollback { force } => rollback(&host, &config, required, force).into(),
        Command::Check { json, plan, .. } => {
            check(&host, &config, required, cli.source, json, plan).into()
        }
        Command::Completions { shell } => completions(shell).into(),
        Command::Status {
            json,
            top,
            processes,
            warning,
            critical,
            netns,
            watch,
            interval,
        } => {
            if watch {
                return status_watch::run(&host, interval, top).into();
            }
            let policy = match load_policy(&config, required) {
                Ok(p) => p,
                Err(e) => return print(status::unknown(&e.to_string(), json)).into(),
            };
            let thresholds = match policy.thresholds.with_levels(warning, critical) {
                Ok(t) => t,
                Err(e) => return print(status::unknown(&e.to_string(), json)).into(),
            };
            let opts = StatusOptions {
                json,
                top,
                processes,
                thresholds,
                tcp_pool_in_headline: policy.tcp_pool_alerts,
            };
            if let Some(outcome) =
                crate::commands::status_netns::command(&host, netns.as_deref(), &opts)
            {
                return print(outcome).into();
            }
            let source = match census::open_source(&host, cli.source) {
                Ok(source) => source,
                Err(e) => return print(status::unknown(&e.to_string(), json)).into(),
            };
            let outcome = status::run(&host, source.as_ref(), &opts);
            print(crate::commands::status_netns::with_daemon_view(
                &host, outcome, json,
            ))
            .into()
        }
    }
}

/// `portd check`: 0 fine, 1 warnings, 2 errors; 3 when the policy given
/// with `--config` does not exist (nothing was checked).
fn check(
    host: &Host,
    config: &std::path::Path,
    required: bool,
    source: SourceChoice,
    json: bool,
    plan: bool,
) -> Exit {
    let policy = policy::file::load_configured(config, required);
    if let Err(e) = &policy
        && required
        && !config.exists()
    {
        // A usage error, as a wrong option.
        eprintln!("portd check: {e}");
        return Exit::Unknown;
    }
    let source = match census::open_source(host, source) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("portd check: {e}");
            return Exit::Critical;
        }
    };
    let report = check::run(
        host,
        config,
        policy,
        source.as_ref(),
        &check::CheckOptions { plan },
    );
    let text = if json {
        serde_json::to_string_pretty(&report)
            .map_or_else(|e| format!("{{\"error\": \"{e}\"}}"), |s| s + "\n")
    } else {
        check::render_human(&report)
    };
    output(text.as_bytes(), report.exit(), Exit::Critical)
}

fn rollback(host: &Host, config: &std::path::Path, required: bool, force: bool) -> Exit {
    let policy = match load_policy(config, required) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Critical;
        }
    };
    let (lines, errors) = match rollback_all(host, &policy, force) {
        Ok(done) => done,
        Err(e) => (Vec::new(), vec![e]),
    };
    let text: String = lines
        .iter()
        .map(|l| format!("portd rollback: {l}\n"))
        .collect();
    let exit = output(text.as_bytes(), Exit::Ok, Exit::Critical);
    for e in &errors {
        eprintln!("portd rollback: {e}");
    }
    if errors.is_empty() {
        exit
    } else {
        Exit::Critical
    }
}

/// The host's rollback, then the other namespaces' (act/netns.rs): what
/// was done, and what was refused or failed.
fn rollback_all(
    host: &Host,
    policy: &Policy,
    force: bool,
) -> Result<(Vec<String>, Vec<String>), String> {
    // Nothing to undo: say so without creating the state directory or
    // its lock, and without reading /proc (a package removal of a portd
    // that never ran must leave nothing behind).
    let first = State::load(host).map_err(|e| e.to_string())?;
    if first.original.is_none() && first.namespaces.is_empty() {
        return Ok((vec![actuator::NOTHING_TO_ROLL_BACK.into()], Vec::new()));
    }
    let _lock = WriterLock::acquire(&host.state_dir()).map_err(|e| e.to_string())?;
    // Read again under the lock: another writer may have changed it.
    let mut state = State::load(host).map_err(|e| e.to_string())?;
    let (mut lines, mut errors) = (Vec::new(), Vec::new());
    if state.original.is_some() || state.namespaces.is_empty() {
        let live = KernelSettings::read(host).map_err(|e| e.to_string())?;
        match actuator::rollback(host, &policy.dropin_name, &mut state, &live, force) {
            Ok(done) => lines.extend(done),
            Err(e) => errors.push(e),
        }
    }
    let (done, failed) = crate::act::netns::rollback(host, &mut state, force);
    lines.extend(done);
    errors.extend(failed);
    // Saved even when a step failed: it records the steps that were done.
    state.save(host).map_err(|e| e.to_string())?;
    Ok((lines, errors))
}

fn load_policy(path: &std::path::Path, required: bool) -> Result<Policy, PolicyError> {
    policy::file::load_configured(path, required).map(|(p, _found)| p)
}

/// Set before `main` when the process started with stdout closed (the
/// Rust runtime then puts /dev/null there, where every write succeeds).
static STDOUT_WAS_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records whether stdout (fd 1) is closed; called by the binary before
/// the Rust runtime starts (src/main.rs).
pub fn note_closed_stdout() {
    use std::os::fd::AsFd as _;
    let closed = rustix::io::fcntl_getfd(std::io::stdout().as_fd())
        .is_err_and(|e| e == rustix::io::Errno::BADF);
    STDOUT_WAS_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
}

/// `--root` (or `PORTD_ROOT`) that is not a directory is a usage error, said
/// before anything is read under it: a missing fixture tree must not look
/// like a host with nothing to roll back. `status` and `check` answer with
/// the plugin's UNKNOWN (3), `run` and `rollback` with 2.
fn missing_root(cli: &Cli) -> Option<Exit> {
    let why = match std::fs::metadata(&cli.root) {
        Ok(m) if m.is_dir() => return None,
        Ok(_) => "not a directory".to_string(),
        Err(e) => e.to_string(),
    };
    let error = format!(
        "--root {}: {why}; give the directory under which /proc, /etc and /var/lib are \
         found (/ for this host)",
        cli.root.display()
    );
    Some(match &cli.command {
        Command::Status { json, .. } => print(status::unknown(&error, *json)),
        Command::Check { .. } => {
            eprintln!("portd check: {error}");
            Exit::Unknown
        }
        Command::Run { .. } | Command::Rollback { .. } => {
            eprintln!("portd: {error}");
            Exit::Critical
        }
        Command::Completions { .. } => return None,
    })
}

fn print(outcome: status::Outcome) -> Exit {
    // Output lost: the check's result is unknown to whoever runs it.
    output(outcome.text.as_bytes(), outcome.level.exit(), Exit::Unknown)
}

/// Writes a command's output to stdout and flushes it: exit status `code`
/// when that worked, `failed` when it did not (see [`written`]).
fn output(text: &[u8], code: Exit, failed: Exit) -> Exit {
    if STDOUT_WAS_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return written(Err(std::io::Error::other("stdout is closed")), code, failed);
    }
    let mut out = std::io::stdout().lock();
    written(out.write_all(text).and_then(|()| out.flush()), code, failed)
}

/// The exit status after writing the output: `code`, or `failed` with the
/// reason on stderr (`> /dev/full`: the output is lost). A reader that
/// closed the pipe (`portd status | head -1`) chose to stop: not an error.
fn written(result: std::io::Result<()>, code: Exit, failed: Exit) -> Exit {
    match result {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("portd: cannot write output: {e}");
            failed
        }
    }
}
