//! A `portd run` child of a test, its stderr kept in a file, and the fake
//! `NOTIFY_SOCKET` it talks to, as systemd would give it.

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A unix datagram socket standing in for systemd's notify socket.
pub struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far, with when it arrived.
    pub seen: Vec<(Instant, String)>,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, or `None` after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        // A signal meant for another test's child can interrupt the wait
        // (EINTR): that is no answer, so wait again.
        let received = loop {
            match self.socket.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match received {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text.clone()));
                Some(text)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Receives until a datagram satisfies `pred`; panics after `timeout`
    /// with everything received so far.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within {timeout:?}; received: {:#?}",
                    self.seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
                );
            }
            if let Some(m) = self.recv(left)
                && pred(&m)
            {
                return m;
            }
        }
    }

    /// Everything that arrives within `period`.
    pub fn collect(&mut self, period: Duration) -> Vec<String> {
        let deadline = Instant::now() + period;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            if let Some(m) = self.recv(left) {
                got.push(m);
            }
        }
    }
}

/// The `STATUS=` text of a notify datagram.
pub fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// A running `portd run`, its stderr kept in a file. Killed (by its pid) if
/// the test ends without stopping it.
pub struct Portd {
    child: Child,
    stderr: PathBuf,
}

impl Portd {
    /// Spawns `cmd` (a `portd … run` command) with stderr to `stderr`.
    pub fn spawn(mut cmd: Command, stderr: &Path) -> Portd {
        let file = std::fs::File::create(stderr).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Portd {
            child,
            stderr: stderr.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The status line of each poll within `period`, from the debug log
    /// (`PORTD_LOG=debug`): STATUS= itself is sent only when it changes.
    pub fn polls(&self, period: std::time::Duration) -> Vec<String> {
        let from = self.stderr().len();
        std::thread::sleep(period);
        self.stderr()[from..]
            .lines()
            .filter_map(|l| l.split_once("poll: ").map(|(_, s)| s.to_string()))
            .collect()
    }

    /// Fails the test, showing the whole stderr, unless it contains `text`.
    pub fn assert_stderr_has(&self, text: &str) {
        let stderr = self.stderr();
        assert!(stderr.contains(text), "no {text:?} in stderr:\n{stderr}");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; `None` if it takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status; panics unless it exits within 2 s.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        self.stop_within(Duration::from_secs(2))
    }

    /// SIGTERM, then the exit status and how long it took; panics unless it
    /// exits within `timeout`.
    pub fn stop_within(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(rustix::process::Signal::TERM);
        let status = self.wait(timeout).unwrap_or_else(|| {
            panic!(
                "portd did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            )
        });
        (status, sent.elapsed())
    }

    /// SIGTERM; it must exit 0 within 5 s. The whole stderr.
    pub fn stop_ok(mut self) -> String {
        let (status, _) = self.stop_within(Duration::from_secs(5));
        let stderr = self.stderr();
        assert_eq!(status.code(), Some(0), "{stderr}");
        stderr
    }

    /// Waits until stderr has a line containing every one of `parts`;
    /// returns that line. Panics with the whole stderr after `timeout`.
    pub fn wait_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            if Instant::now() >= deadline || !self.is_running() {
                panic!(
                    "no line with {parts:?} within {timeout:?} (daemon running: {}); stderr:\n{text}",
                    self.is_running()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Portd::wait_line`] for each of `lines` in turn, each within
    /// `timeout`.
    pub fn wait_lines(&mut self, lines: &[&str], timeout: Duration) {
        for line in lines {
            self.wait_line(&[line], timeout);
        }
    }

    /// Waits up to 10 s for the line saying portd widened the range `from`
    /// ("40000-40099"); returns it.
    pub fn wait_widened(&mut self, from: &str) -> String {
        self.wait_line(
            &[&format!("widened ip_local_port_range {from} ->")],
            Duration::from_secs(10),
        )
    }

    /// `strace` (built by the caller: `sandbox.command("strace").args(…)`)
    /// attached to this portd with `-p`; returns once strace says it
    /// traces it.
    pub fn attach_strace(&self, strace: &mut Command) -> Strace {
        let mut child = strace
            .arg("-p")
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // strace says "Process N attached" once it traces portd.
        let mut attached = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        attached.read_line(&mut line).unwrap();
        assert!(line.contains("attached"), "strace: {line}");
        Strace {
            child,
            _stderr: attached,
        }
    }
}

impl Drop for Portd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An strace attached to a portd; its stderr stays open (and unread) until
/// it is dropped.
pub struct Strace {
    child: Child,
    _stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Strace {
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

/// Starts `cmd` (a `portd … run`) with a notify socket in `dir` and its
/// stderr in `dir/stderr`; returns once portd says `READY=1`. With
/// `journal_stream`, `JOURNAL_STREAM` names that file as systemd names the
/// journal's stream, so portd takes its stderr for the journal.
pub fn start_ready(mut cmd: Command, dir: &Path, journal_stream: bool) -> (Portd, Notify) {
    let mut notify = Notify::bind(dir);
    let stderr = dir.join("stderr");
    cmd.env("NOTIFY_SOCKET", notify.path());
    if journal_stream {
        std::fs::write(&stderr, "").unwrap();
        let meta = std::fs::metadata(&stderr).unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let portd = Portd::spawn(cmd, &stderr);
    notify.wait_for("READY", Duration::from_secs(5), |m| m.contains("READY=1"));
    (portd, notify)
}

/// Polls `probe` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
