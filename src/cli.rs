//! Command line: `portd run | status | check | rollback`.
//!
//! Exit status (all commands): 0 ok, 1 warning, 2 critical or error,
//! 3 unknown (could not read, or a usage error) — the monitoring-plugin
//! convention, so `portd status` works as a Nagios/Icinga/Sensu check.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::census::procfs::ProcfsSource;
use crate::host::Host;
use crate::level::Level;
use crate::policy::{self, Policy};
use crate::status::{self, StatusOptions};
use crate::usage::Ratio;

#[derive(Parser, Debug)]
#[command(name = "portd", version, about = "Keeps a host out of ephemeral-port exhaustion")]
pub struct Cli {
    /// Resolve every path (/proc, /etc, /var/lib/portd) under this directory
    /// instead of / (for tests and fixture trees).
    #[arg(long, global = true, value_name = "DIR", env = "PORTD_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// Policy file (default: /etc/portd.toml under --root; built-in defaults if absent).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        warning: Option<f64>,
        /// Critical threshold in percent (overrides the policy).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        critical: Option<f64>,
    },
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a percentage from 0 to 100"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0..100"))
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => Level::Unknown.exit_code(),
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(run(cli))
}

fn run(cli: Cli) -> u8 {
    let host = Host::new(&cli.root);
    let config = cli.config.clone().unwrap_or_else(|| host.policy_file());
    match cli.command {
        Command::Status {
            json,
            top,
            processes,
            warning,
            critical,
        } => {
            let policy = match load_policy(&config) {
                Ok(p) => p,
                Err(e) => return print(status::unknown(&e, json)),
            };
            let opts = StatusOptions {
                json,
                top,
                processes,
                warning: warning.map_or(policy.warning, |w| Ratio(w / 100.0)),
                critical: critical.map_or(policy.critical, |c| Ratio(c / 100.0)),
                tcp_pool_in_headline: policy.tcp_pool_alerts,
            };
            if opts.warning > opts.critical {
                return print(status::unknown(
                    &format!(
                        "warning threshold {} is above critical threshold {}",
                        opts.warning, opts.critical
                    ),
                    json,
                ));
            }
            let source = ProcfsSource::new(&host);
            print(status::run(&host, &source, &opts))
        }
    }
}

fn load_policy(path: &std::path::Path) -> Result<Policy, String> {
    let _ = path; // TEMP until policy::file lands
    Ok(Policy::default())
}

fn print(outcome: status::Outcome) -> u8 {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`portd status | head -1`) is not an error worth a panic.
    let _ = out.write_all(outcome.text.as_bytes());
    let _ = out.flush();
    outcome.level.exit_code()
}
