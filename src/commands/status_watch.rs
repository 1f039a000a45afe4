//! `portd status --watch`: a view that refreshes, as `top` does, of the
//! daemon's live view (live.rs): the header (daemon, mode, range, level),
//! then the worst destinations and namespaces with their usage, rate, time
//! to exhaustion and a sparkline of the last 10 minutes from the history
//! the daemon keeps (daemon/history.rs).
//!
//! On a terminal it draws on the alternate screen in raw mode (so `q` is
//! read without Enter) through crossterm, and restores the terminal when
//! it leaves: `q`, Ctrl-C, SIGTERM, SIGINT, SIGHUP, an error or a panic.
//! Into a pipe or a file it prints plain lines, one block per refresh and
//! a blank line between, no escape sequence, until the reader goes away
//! or a signal stops it.

use std::io::{self, IsTerminal as _, Write};
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};

use crate::base::host::Host;
use crate::base::untrusted::escape;
use crate::judge::level::Exit;
use crate::observe::census::KernelSettings;
use crate::publish::live::{self, DaemonView, HistorySeries, Live};

/// The bars of a sparkline, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The top of a sparkline's scale is the series' own highest point, but
/// never below this ratio: a few ports in use stay low bars, not full ones.
const SCALE_FLOOR: f64 = 0.1;

/// The longest a name is shown (the rest is cut, ending in `…`).
const NAME_WIDTH: usize = 44;

/// Runs the watch until `q`, Ctrl-C or a signal; 0, or 2 with the reason
/// on stderr when the terminal or the output failed.
pub fn run(host: &Host, interval: Duration, top: usize) -> Exit {
    if let Err(e) = crate::base::shutdown::watch() {
        eprintln!("portd: cannot watch for signals: {e}");
        return Exit::Critical;
    }
    let result = if io::stdout().is_terminal() {
        on_terminal(host, interval, top)
    } else {
        into_pipe(host, interval, top)
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => {
            eprintln!("portd: status --watch: {e}");
            Exit::Critical
        }
    }
}

/// Plain lines, one block per refresh: the screen's lines without its
/// blank ones, so that a blank line ends a block.
fn into_pipe(host: &Host, interval: Duration, top: usize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    loop {
        let lines = screen(host, SystemTime::now(), interval, top);
        for line in lines.iter().filter(|l| !l.is_empty()) {
            writeln!(out, "{line}")?;
        }
        writeln!(out)?;
        out.flush()?;
        let deadline = Instant::now() + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if stop_requested() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// The alternate screen, redrawn every `interval` or on a resize.
fn on_terminal(host: &Host, interval: Duration, top: usize) -> io::Result<()> {
    let _restore = Restore::enter()?;
    let mut out = io::stdout();
    loop {
        // A terminal that gives no size (0 × 0: a new pseudo-terminal) is
        // drawn as the usual 80 × 24.
        let (width, height) = match terminal::size() {
            Ok((w, h)) if w > 0 && h > 0 => (w, h),
            _ => (80, 24),
        };
        queue!(out, terminal::Clear(terminal::ClearType::All))?;
        let lines = screen(host, SystemTime::now(), interval, top);
        for (row, line) in lines.iter().take(usize::from(height)).enumerate() {
            let row = u16::try_from(row).unwrap_or(u16::MAX);
            let shown: String = line.chars().take(usize::from(width)).collect();
            queue!(out, cursor::MoveTo(0, row), style::Print(shown))?;
        }
        out.flush()?;
        if !wait_for_keys(interval)? {
            return Ok(());
        }
    }
}

/// Reads keys until `interval` has passed (true: redraw) or the operator
/// or a signal asks to leave (false).
fn wait_for_keys(interval: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + interval;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stop_requested() {
            return Ok(false);
        }
        if !event::poll(left.min(Duration::from_millis(100)))? {
            continue;
        }
        match event::read()? {
            Event::Key(key) if leaves(key) => return Ok(false),
            Event::Resize(..) => return Ok(true),
            _ => {}
        }
    }
    Ok(true)
}

/// `q`, `Q`, Esc or Ctrl-C (raw mode delivers it as a key, not SIGINT).
fn leaves(key: KeyEvent) -> bool {
    match key.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

/// SIGTERM, SIGINT (shutdown.rs) or SIGHUP (the terminal went away).
fn stop_requested() -> bool {
    crate::base::shutdown::requested() || hangup()
}

fn hangup() -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static HUP: AtomicBool = AtomicBool::new(false);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: the action only stores to an atomic (async-signal-safe).
        let _ = unsafe {
            let sighup = tokio::signal::unix::SignalKind::hangup().as_raw_value();
            signal_hook_registry::register(sighup, || HUP.store(true, Ordering::SeqCst))
        };
    });
    HUP.load(Ordering::SeqCst)
}

/// The terminal as the watch found it, put back on drop, and by the panic
/// hook before a panic's message is printed.
struct Restore;

impl Restore {
    fn enter() -> io::Result<Restore> {
        terminal::enable_raw_mode()?;
        let restore = Restore;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            leave_terminal();
            previous(info);
        }));
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(restore)
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        leave_terminal();
    }
}

fn leave_terminal() {
    let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

/// The lines of one refresh: what `status` would say of the daemon, then
/// its worst destinations and namespaces.
fn screen(host: &Host, now: SystemTime, interval: Duration, top: usize) -> Vec<String> {
    let daemon = live::read(host, now);
    let range = match KernelSettings::read(host) {
        Ok(s) => format!("range {} ({} ports)", s.port_range, s.port_range.len()),
        Err(e) => format!("range unknown ({e})"),
    };
    let mut lines = vec![
        format!(
            "portd status --watch, every {}; q or Ctrl-C leaves",
            humantime::format_duration(interval)
        ),
        daemon.line(),
    ];
    match &daemon {
        DaemonView::Running { live, .. } => {
            lines.push(header(live, &range));
            lines.push(String::new());
            lines.extend(rows(live, top));
        }
        _ => lines.push(format!(
            "{range}; no rates and no history without the daemon"
        )),
    }
    // One screen line a line: the daemon's line may hold several.
    lines
        .iter()
        .flat_map(|l| l.split('\n'))
        .map(str::to_owned)
        .collect()
}

fn header(live: &Live, range: &str) -> String {
    let level = live
        .headline
        .as_ref()
        .and_then(|h| h.level)
        .map_or("no census yet", |l| l.label());
    format!(
        "mode {}, {range}, level {level}",
        escape(&live.authority.describe)
    )
}

/// The destinations, then the namespaces, worst first.
fn rows(live: &Live, top: usize) -> Vec<String> {
    let history = live.history.clone().unwrap_or_default();
    let top = if top == 0 { usize::MAX } else { top };
    let mut lines = vec![format!(
        "{:<NAME_WIDTH$} {:>6} {:>11} {:>8} {:>9}  last 10 min",
        "DESTINATION", "USAGE", "USED/CAP", "RATE/s", "RUNS OUT"
    )];
    let mut targets: Vec<_> = live.forecast.iter().flat_map(|o| &o.targets).collect();
    targets.sort_by(|a, b| ratio(b.used, b.capacity).total_cmp(&ratio(a.used, a.capacity)));
    for t in targets.into_iter().take(top) {
        lines.push(format!(
            "{:<NAME_WIDTH$} {:>5.1}% {:>11} {:>8.1} {:>9}  {}",
            name(&t.target),
            100.0 * ratio(t.used, t.capacity),
            format!("{}/{}", t.used, t.capacity),
            t.connection_rate.max(t.growth_per_second),
            t.time_to_exhaustion_seconds.map_or("-".into(), span),
            series(&history.destinations, &t.target, history.step_seconds)
        ));
    }
    let namespaces: Vec<_> = live
        .namespaces
        .iter()
        .filter_map(|n| Some((n, n.headline.as_ref()?)))
        .take(top)
        .collect();
    if !namespaces.is_empty() {
        lines.push(String::new());
        lines.push(format!(
            "{:<NAME_WIDTH$} {:>6} {:>11} {:>8} {:>9}  last 10 min",
            "NAMESPACE", "USAGE", "USED/CAP", "LEVEL", "RUNS OUT"
        ));
    }
    for (n, h) in namespaces {
        lines.push(format!(
            "{:<NAME_WIDTH$} {:>5.1}% {:>11} {:>8} {:>9}  {}",
            name(&n.label),
            100.0 * h.usage,
            format!("{}/{}", h.used, h.capacity),
            n.level.map_or("-", |l| l.label()),
            n.time_to_exhaustion_seconds.map_or("-".into(), span),
            series(&history.namespaces, &n.label, history.step_seconds)
        ));
    }
    lines
}

fn ratio(used: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        used as f64 / capacity as f64
    }
}

/// `name` escaped and cut to [`NAME_WIDTH`].
fn name(raw: &str) -> String {
    let text = escape(raw);
    if text.chars().count() <= NAME_WIDTH {
        return text;
    }
    let mut cut: String = text.chars().take(NAME_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// The sparkline of the series named `name`, right-aligned to now over
/// the last 10 minutes' worth of points; blank without one.
fn series(list: &[HistorySeries], name: &str, step_seconds: f64) -> String {
    let Some(s) = list.iter().find(|s| s.name == name) else {
        return String::new();
    };
    let width = if step_seconds > 0.0 {
        ((600.0 / step_seconds).round() as usize).clamp(1, live::HISTORY_POINTS)
    } else {
        live::HISTORY_POINTS
    };
    sparkline(&s.usage, width)
}

/// The last `width` points as bars scaled from 0 to the highest of them
/// (at least [`SCALE_FLOOR`]), padded with spaces on the left when there
/// are fewer, so that the newest is always in the last column.
fn sparkline(points: &[f64], width: usize) -> String {
    let shown = &points[points.len().saturating_sub(width)..];
    let top = shown.iter().copied().fold(SCALE_FLOOR, f64::max);
    let mut line = " ".repeat(width - shown.len());
    for p in shown {
        let level = (p.clamp(0.0, top) / top * 7.0).round() as usize;
        line.push(BARS[level.min(BARS.len() - 1)]);
    }
    line
}

/// `42s`, `3m20s`, `2h05m`.
fn span(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_climbs_with_the_usage_and_ends_now() {
        assert_eq!(sparkline(&[0.0, 0.25, 0.5, 0.75, 1.0], 5), "▁▃▅▆█");
        assert_eq!(
            sparkline(&[0.2, 0.4], 4),
            "  ▅█",
            "fewer points: padded left"
        );
        assert_eq!(sparkline(&[0.1, 0.2, 0.3, 0.4], 2), "▆█", "the newest kept");
        assert_eq!(sparkline(&[], 3), "   ");
    }

    #[test]
    fn a_few_ports_in_use_stay_low_bars() {
        assert_eq!(sparkline(&[0.01, 0.02, 0.03], 3), "▂▂▃");
        assert_eq!(sparkline(&[0.0; 4], 4), "▁▁▁▁");
        assert_eq!(sparkline(&[1.5, -1.0], 2), "█▁", "out of range is clamped");
    }

    #[test]
    fn ten_minutes_of_points_whatever_the_step() {
        let s = HistorySeries {
            name: "d".into(),
            usage: vec![0.5; 80],
            used: vec![50; 80],
        };
        let list = std::slice::from_ref(&s);
        assert_eq!(series(list, "d", 10.0).chars().count(), 60);
        assert_eq!(series(list, "d", 30.0).chars().count(), 20);
        assert_eq!(
            series(list, "d", 0.5).chars().count(),
            60,
            "at most the bound"
        );
        assert_eq!(series(list, "other", 10.0), "");
    }

    #[test]
    fn spans_read_as_durations() {
        assert_eq!(span(42.4), "42s");
        assert_eq!(span(200.0), "3m20s");
        assert_eq!(span(7500.0), "2h05m");
    }

    #[test]
    fn long_names_are_cut_and_escaped() {
        assert_eq!(name(&"x".repeat(60)).chars().count(), NAME_WIDTH);
        assert!(!name("a\u{1b}[2Jb").contains('\u{1b}'));
    }
}
