//! Where log lines and events go: native journald entries when stderr is
//! connected to the journal (`JOURNAL_STREAM` names stderr's device and
//! inode, as under systemd) or when asked for; readable lines on stderr
//! otherwise, so an interactive run never logs silently to the journal.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::os::fd::AsFd;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// The journal when stderr is connected to it, stderr otherwise.
    Auto,
    Journal,
    Stderr,
}

/// True when `JOURNAL_STREAM` ("DEV:INODE") matches stderr, i.e. systemd
/// connected our stderr to journald (systemd.exec(5), `$JOURNAL_STREAM`).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
    #[error("cannot reach journald at /run/systemd/journal/socket: {0}")]
    NoJournal(#[source] std::io::Error),
}

/// Installs the global subscriber. Returns which target is in use.
pub fn init(target: LogTarget) -> Result<&'static str, LogError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let want_journal = match target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("portd".to_string());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .try_init()?;
                if target == LogTarget::Journal && !stderr_is_journal() {
                    // Asked for explicitly from a terminal or a pipe: say
                    // where the lines go rather than print nothing at all.
                    eprintln!("portd: logging to the journal (journalctl -t portd)");
                }
                return Ok("journal");
            }
            Err(e) if target == LogTarget::Journal => return Err(LogError::NoJournal(e)),
            Err(_) => {} // fall back to stderr
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(StderrLines {
            // journald stamps lines itself; a terminal reader wants the time.
            timestamps: std::io::stderr().is_terminal(),
        })
        .try_init()?;
    Ok("stderr")
}

/// One readable line per event: `portd: WARNING: message (key=value, ...)`,
/// leaving out the journal-only fields.
struct StderrLines {
    timestamps: bool,
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field, &format!("{value:?}"));
    }
}

impl Collect {
    fn add(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            // The raw values restate the message for the journal's filters.
            "message_id"
            | "portd_event"
            | "portd_reminder"
            | "portd_usage_ratio"
            | "portd_local_address"
            | "portd_remote_address"
            | "portd_remote_port"
            | "portd_netns_inode" => {}
            name => {
                if !value.is_empty() {
                    let name = name.strip_prefix("portd_").unwrap_or(name);
                    self.fields.push((name.to_string(), value.to_string()));
                }
            }
        }
    }

    /// `message (key=value, ...)`, leaving out the values the message
    /// already says, so a line reads once.
    fn line(&self) -> String {
        let extra: Vec<String> = self
            .fields
            .iter()
            .filter(|(_, v)| !self.message.contains(v.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if extra.is_empty() {
            self.message.clone()
        } else {
            format!("{} ({})", self.message, extra.join(", "))
        }
    }
}

impl<S: Subscriber> Layer<S> for StderrLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut c = Collect::default();
        event.record(&mut c);
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "NOTICE",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        let mut line = String::new();
        if self.timestamps {
            let _ = write!(
                line,
                "{} ",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
        }
        let _ = write!(line, "portd: {level}: {}", c.line());
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::Collect;

    #[test]
    fn stderr_line_leaves_out_what_the_message_already_says() {
        let c = Collect {
            message: "widened ip_local_port_range 40000-40099 -> 40000-40179".to_string(),
            fields: vec![
                ("range_before".into(), "40000-40099".into()),
                ("range_after".into(), "40000-40179".into()),
                ("process".into(), "nginx[7] 40 sockets".into()),
            ],
        };
        assert_eq!(
            c.line(),
            "widened ip_local_port_range 40000-40099 -> 40000-40179 (process=nginx[7] 40 sockets)"
        );
    }
}
