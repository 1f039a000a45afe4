//! portd's memory across restarts: `/var/lib/portd/state.json`, written
//! atomically. It records the values found before portd's first change (for
//! rollback), what portd last wrote, a short history, the yield to the admin
//! and the alert state.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::base::fsutil;
use crate::base::host::Host;
use crate::base::ports::{PortRange, PortSet};
use crate::judge::planner::{self, AlertState, History, Plan};

/// Bumped when the meaning of a field changes; a newer file is refused
/// rather than misread. Version 2 added `pending` and `dropin`, version 3
/// `admin`, version 4 `namespaces`.
pub const FORMAT_VERSION: u32 = 4;
/// The previous formats, still read: each is the next one without the
/// fields it lacks (tests/fixtures/state/v1.json, v2.json, v3.json).
const PREVIOUS_FORMAT_VERSIONS: [u32; 3] = [1, 2, 3];
/// Changes kept per other namespace (its cooldown and hourly cap need
/// the last hour's; the journal has them all).
const NAMESPACE_HISTORY_LEN: usize = 10;
const FILE_NAME: &str = "state.json";
const HISTORY_LEN: usize = 50;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Values {
    pub range: PortRange,
    pub reserved: PortSet,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Written {
    #[serde(flatten)]
    pub values: Values,
    pub at: SystemTime,
    /// False while the drop-in could not be written (retried each poll).
    pub persisted: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub at: SystemTime,
    pub from: PortRange,
    pub to: PortRange,
    pub reserved_added: PortSet,
    pub reason: String,
}

/// Values portd is about to write: recorded (and fsynced) before the first
/// kernel write, so that a crash in between leaves the originals on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    #[serde(flatten)]
    pub values: Values,
    /// The reserved ports this write adds (already in `added_reserved`).
    pub newly_reserved: PortSet,
    pub at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Yield {
    pub at: SystemTime,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// The range portd first found (the default floor).
    pub initial_range: Option<PortRange>,
    /// The values before portd's first change; `None` until it changes something.
    pub original: Option<Values>,
    /// What portd last wrote to /proc/sys.
    pub last_written: Option<Written>,
    /// A write recorded but not yet confirmed: set while portd writes, and
    /// left behind only by a crash; `actuator::settle_pending` resolves it.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The file name of the drop-in portd last wrote in /etc/sysctl.d: the
    /// one it may rewrite or remove (version 1 states did not record it).
    #[serde(default)]
    pub dropin: Option<String>,
    /// The values an administrator set after portd's first change, as
    /// portd found them when it yielded to that change: once portd widens
    /// over them (after a reload), rollback restores these, not
    /// `original` (that only with --force). The admin's own change is kept.
    #[serde(default)]
    pub admin: Option<Values>,
    /// Reserved ports portd added (rollback removes only these).
    pub added_reserved: PortSet,
    pub changes: Vec<Change>,
    pub yielded: Option<Yield>,
    pub alert: AlertState,
    /// Other network namespaces portd widened (`[namespaces]`), keyed by
    /// inode and identity; rollback restores those that still exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceRecord>,
}

/// Which namespace portd widened: its inode and what named it then. An
/// inode is reused once a namespace is gone, so the names must agree too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceKey {
    pub inode: u64,
    /// Its names under `/run/netns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// What a person called it (escaped): for messages, not compared.
    pub label: String,
}

impl NamespaceKey {
    /// `now` (as discovery finds it) is the namespace this key recorded:
    /// the same inode, container and pod, and one of the recorded netns
    /// names if it had any.
    pub fn same(&self, now: &NamespaceKey) -> bool {
        self.inode == now.inode
            && self.container_id == now.container_id
            && self.pod_uid == now.pod_uid
            && (self.names.is_empty() || self.names.iter().any(|n| now.names.contains(n)))
    }
}

/// What portd did in another namespace: the values it found before its
/// first change there, what it last wrote, and a write not yet confirmed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub key: NamespaceKey,
    pub original: Values,
    pub last_written: Option<Values>,
    /// Recorded before the write into the namespace, cleared after it.
    #[serde(default)]
    pub pending: Option<Values>,
    /// Reserved ports portd added there (rollback removes only these).
    pub added_reserved: PortSet,
    pub changes: Vec<Change>,
    pub yielded: Option<Yield>,
}

impl Default for State {
    fn default() -> Self {
        State {
            format_version: FORMAT_VERSION,
            initial_range: None,
            original: None,
            last_written: None,
            pending: None,
            dropin: None,
            admin: None,
            added_reserved: PortSet::new(),
            changes: Vec::new(),
            yielded: None,
            alert: AlertState::default(),
            namespaces: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The longest state file portd reads: a real one (50 changes of history)
/// is a few KiB; `/dev/zero` linked there must not be read until memory runs out.
const STATE_MAX_BYTES: u64 = 1024 * 1024;

impl State {
    pub fn path(host: &Host) -> PathBuf {
        host.state_dir().join(FILE_NAME)
    }

    /// Loads the state; a missing file is a fresh state. A FIFO, device or
    /// oversized file there is refused, never read (fsutil::read_regular).
    pub fn load(host: &Host) -> Result<State, StateError> {
        let path = State::path(host);
        let text = match fsutil::read_regular_text(&path, STATE_MAX_BYTES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StateError::Invalid {
                    path,
                    message: format!(
                        "{e} (1 MiB); an older portd may have saved it so: move it aside \
                         to start afresh (rollback then no longer knows the original values)"
                    ),
                });
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let mut state = parse(&path, &text)?;
        state.trim_history();
        Ok(state)
    }

    /// The text [`State::save`] writes: compact JSON, the oldest changes
    /// dropped until it fits the size [`State::load`] reads back, or an
    /// error when even the state without history would not.
    fn trimmed_text(&mut self, path: &Path) -> Result<String, StateError> {
        self.trim_history();
        loop {
            let mut text = serde_json::to_string(self).map_err(|e| StateError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            text.push('\n');
            if text.len() as u64 <= STATE_MAX_BYTES {
                return Ok(text);
            }
            if self.changes.is_empty() {
                return Err(StateError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "not saved: it would be {} bytes, more than the {STATE_MAX_BYTES} \
                         (1 MiB) portd reads back",
                        text.len()
                    ),
                });
            }
            let half = self.changes.len().div_ceil(2);
            self.changes.drain(..half);
        }
    }

    /// Keeps the newest [`HISTORY_LEN`] changes.
    fn trim_history(&mut self) {
        if self.changes.len() > HISTORY_LEN {
            let excess = self.changes.len() - HISTORY_LEN;
            self.changes.drain(..excess);
        }
    }

    /// Saves the state compactly; a history too long to be read back is
    /// trimmed in the copy saved (the oldest changes first).
    pub fn save(&self, host: &Host) -> Result<(), StateError> {
        let dir = host.state_dir();
        let io = |source| StateError::Io {
            path: dir.join(FILE_NAME),
            source,
        };
        let text = self.clone().trimmed_text(&dir.join(FILE_NAME))?;
        std::fs::create_dir_all(&dir).map_err(io)?;
        fsutil::remove_stale_temps(&dir, FILE_NAME);
        fsutil::atomic_write(&dir, FILE_NAME, text.as_bytes(), 0o644).map_err(io)
    }

    pub fn record_change(&mut self, change: Change) {
        self.changes.push(change);
        self.trim_history();
    }

    /// Treats every stored time later than `now` as `now` (planner::not_after),
    /// so a state written by a clock that was ahead holds alerts and changes
    /// for no longer than the policy's own hold, cooldown and hourly cap.
    /// Returns how far ahead the latest of them was, if any was.
    pub fn clamp_future(&mut self, now: SystemTime) -> Option<Duration> {
        let mut ahead = Duration::ZERO;
        let mut clamp = |t: &mut SystemTime| {
            if let Ok(d) = t.duration_since(now) {
                ahead = ahead.max(d);
            }
            *t = planner::not_after(*t, now);
        };
        self.changes.iter_mut().for_each(|c| clamp(&mut c.at));
        if let Some(w) = &mut self.last_written {
            clamp(&mut w.at);
        }
        if let Some(p) = &mut self.pending {
            clamp(&mut p.at);
        }
        if let Some(y) = &mut self.yielded {
            clamp(&mut y.at);
        }
        for r in &mut self.namespaces {
            r.changes.iter_mut().for_each(|c| clamp(&mut c.at));
            if let Some(y) = &mut r.yielded {
                clamp(&mut y.at);
            }
        }
        if let Some((_, since)) = &mut self.alert.pending {
            clamp(since);
        }
        if let Some(t) = &mut self.alert.announced {
            clamp(t);
        }
        (ahead > Duration::ZERO).then_some(ahead)
    }

    /// A widening portd is about to write: the values before portd's first
    /// change (kept for rollback), the ports it reserves, the write as
    /// pending, and the change in the history. The actuator saves this
    /// before the kernel write, then confirms it ([`State::confirm_written`]).
    pub fn record_widening(&mut self, current: Values, plan: &Plan, now: SystemTime, reason: &str) {
        if self.original.is_none() {
            self.original = Some(current);
        }
        self.added_reserved = self.added_reserved.union(&plan.newly_reserved);
        self.pending = Some(Pending {
            values: Values {
                range: plan.to,
                reserved: plan.reserved.clone(),
            },
            newly_reserved: plan.newly_reserved.clone(),
            at: now,
        });
        self.record_change(Change {
            at: now,
            from: plan.from,
            to: plan.to,
            reserved_added: plan.newly_reserved.clone(),
            reason: reason.to_string(),
        });
    }

    /// The pending write is in place: it is what portd last wrote, not yet
    /// in a drop-in.
    pub fn confirm_written(&mut self) {
        if let Some(p) = self.pending.take() {
            self.last_written = Some(Written {
                values: p.values,
                at: p.at,
                persisted: false,
            });
        }
    }

    /// Rollback restored the original range: recorded at once, so that if a
    /// later step fails the state says the live range is portd's, and
    /// neither the daemon nor a second rollback takes it for someone else's.
    pub fn range_restored(&mut self, range: PortRange) {
        if let Some(w) = &mut self.last_written {
            w.values.range = range;
        }
    }

    /// Rollback removed portd's reserved ports; `reserved` is what is left.
    pub fn reserved_restored(&mut self, reserved: PortSet) {
        if let Some(w) = &mut self.last_written {
            w.values.reserved = reserved;
        }
        self.added_reserved = PortSet::new();
    }

    /// Rollback is complete: nothing of portd's is left to undo. The alert
    /// state, the history and the first range found stay.
    pub fn rolled_back(&mut self) {
        self.original = None;
        self.admin = None;
        self.last_written = None;
        self.dropin = None;
        self.added_reserved = PortSet::new();
        self.yielded = None;
    }

    /// Someone else changed the values portd wrote: portd yields (advises
    /// only) until a policy reload clears it, and the admin's values
    /// (`live`) become the baseline it compares against.
    pub fn yield_to(&mut self, live: Values, reason: String, at: SystemTime) {
        self.yielded = Some(Yield { at, reason });
        if self.original.is_some() {
            self.admin = Some(live.clone());
        }
        if let Some(w) = &mut self.last_written {
            w.values = live;
        }
    }

    /// What rollback restores: the values an administrator set after
    /// portd's first change when portd has widened over them since (with
    /// `force`, a yield still in force, or no such change: the values
    /// portd first found). None when portd changed nothing.
    pub fn rollback_target(&self, force: bool) -> Option<Values> {
        let original = self.original.clone()?;
        match &self.admin {
            Some(admin) if !force && self.yielded.is_none() => Some(admin.clone()),
            _ => Some(original),
        }
    }

    /// The drop-in `dropin` holds what portd last wrote (`rewritten`: it
    /// was written just now). True when the state changed and must be saved.
    pub fn mark_persisted(&mut self, dropin: &str, rewritten: bool) -> bool {
        let recorded = self.dropin.as_deref() == Some(dropin);
        let persisted = self.last_written.as_ref().is_some_and(|w| w.persisted);
        if recorded && persisted && !rewritten {
            return false;
        }
        if let Some(w) = &mut self.last_written {
            w.persisted = true;
        }
        self.dropin = Some(dropin.to_string());
        true
    }

    /// A policy reload clears every yield, the host's and the other
    /// namespaces'; true when there was one.
    pub fn clear_yields(&mut self) -> bool {
        let mut cleared = self.yielded.take().is_some();
        for r in &mut self.namespaces {
            cleared |= r.yielded.take().is_some();
        }
        cleared
    }

    /// The record of the namespace `inode`.
    pub fn namespace(&self, inode: u64) -> Option<&NamespaceRecord> {
        self.namespaces.iter().find(|r| r.key.inode == inode)
    }

    /// A widening portd is about to write into another namespace: its
    /// first values (kept for rollback), the ports it reserves, the write as
    /// pending and the change. Saved before the write, then confirmed
    /// ([`State::confirm_namespace`]). A record of an earlier namespace with
    /// the same inode (it is gone) gives way.
    pub fn record_namespace_widening(
        &mut self,
        key: NamespaceKey,
        current: Values,
        plan: &Plan,
        now: SystemTime,
        reason: &str,
    ) {
        self.namespaces
            .retain(|r| r.key.inode != key.inode || r.key.same(&key));
        let index = match self
            .namespaces
            .iter()
            .position(|r| r.key.inode == key.inode)
        {
            Some(i) => i,
            None => {
                self.namespaces.push(NamespaceRecord {
                    key,
                    original: current,
                    last_written: None,
                    pending: None,
                    added_reserved: PortSet::new(),
                    changes: Vec::new(),
                    yielded: None,
                });
                self.namespaces.len() - 1
            }
        };
        let r = &mut self.namespaces[index];
        r.added_reserved = r.added_reserved.union(&plan.newly_reserved);
        r.pending = Some(Values {
            range: plan.to,
            reserved: plan.reserved.clone(),
        });
        r.changes.push(Change {
            at: now,
            from: plan.from,
            to: plan.to,
            reserved_added: plan.newly_reserved.clone(),
            reason: reason.to_string(),
        });
        if r.changes.len() > NAMESPACE_HISTORY_LEN {
            r.changes.remove(0);
        }
    }

    /// The pending write into namespace `inode` is in place.
    pub fn confirm_namespace(&mut self, inode: u64) {
        if let Some(r) = self.namespaces.iter_mut().find(|r| r.key.inode == inode)
            && let Some(p) = r.pending.take()
        {
            r.last_written = Some(p);
        }
    }

    /// The planner's view.
    pub fn history(&self) -> History {
        History {
            initial_range: self.initial_range,
            changes: self.changes.iter().map(|c| c.at).collect(),
            alert: self.alert.clone(),
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<State, StateError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let invalid = |message: String| StateError::Invalid {
        path: path.to_owned(),
        message,
    };
    let v: Version = serde_json::from_str(text).map_err(|e| {
        invalid(format!(
            "not a portd state file ({e}); move it aside to start afresh"
        ))
    })?;
    if v.format_version != FORMAT_VERSION && !PREVIOUS_FORMAT_VERSIONS.contains(&v.format_version) {
        return Err(invalid(format!(
            "format_version {} is not one of {PREVIOUS_FORMAT_VERSIONS:?} or {FORMAT_VERSION}, the ones this portd understands; use the portd that wrote it",
            v.format_version
        )));
    }
    let mut state: State = serde_json::from_str(text)
        .map_err(|e| invalid(format!("{e}; move it aside to start afresh")))?;
    // Saved in the current format from now on.
    state.format_version = FORMAT_VERSION;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let s = State {
            initial_range: Some(PortRange::new(40000, 40099).unwrap()),
            added_reserved: PortSet::parse("40150,40200-40201").unwrap(),
            ..State::default()
        };
        s.save(&host).unwrap();
        assert_eq!(State::load(&host).unwrap(), s);
        let text = std::fs::read_to_string(State::path(&host))
            .unwrap()
            .replace("\"format_version\":4", "\"format_version\":9")
            .replace("\"format_version\": 4", "\"format_version\": 9");
        std::fs::write(State::path(&host), text).unwrap();
        let err = State::load(&host).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("format_version 9"),
            "{err}"
        );
    }

    #[test]
    fn times_from_the_future_are_clamped_to_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let past = now - Duration::from_secs(60);
        let change = |at| Change {
            at,
            from: PortRange::new(40000, 40099).unwrap(),
            to: PortRange::new(40000, 40199).unwrap(),
            reserved_added: PortSet::new(),
            reason: "test".into(),
        };
        let mut s = State {
            changes: vec![change(past), change(now + day)],
            yielded: Some(Yield {
                at: now + Duration::from_secs(5),
                reason: "admin".into(),
            }),
            pending: Some(Pending {
                values: Values {
                    range: PortRange::new(40000, 40199).unwrap(),
                    reserved: PortSet::new(),
                },
                newly_reserved: PortSet::new(),
                at: now + day,
            }),
            alert: AlertState {
                level: crate::judge::level::Level::Ok,
                pending: Some((crate::judge::level::Level::Warning, now + day)),
                announced: Some(now + day / 2),
            },
            ..State::default()
        };
        assert_eq!(s.clamp_future(now), Some(day));
        assert_eq!(s.changes[0].at, past, "a past time is kept");
        assert_eq!(s.changes[1].at, now);
        assert_eq!(s.yielded.as_ref().unwrap().at, now);
        assert_eq!(s.pending.as_ref().unwrap().at, now);
        assert_eq!(
            s.alert.pending,
            Some((crate::judge::level::Level::Warning, now))
        );
        assert_eq!(s.alert.announced, Some(now));
        assert_eq!(s.clamp_future(now), None, "nothing is ahead any more");
    }

    /// The state portd loads from a file holding `text`, in a fixture root
    /// kept as long as the directory.
    fn loaded(text: &str) -> (tempfile::TempDir, Host, State) {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        std::fs::create_dir_all(host.state_dir()).unwrap();
        std::fs::write(State::path(&host), text).unwrap();
        let s = State::load(&host).unwrap();
        (dir, host, s)
    }

    #[test]
    fn version_1_state_loads_and_is_saved_as_the_current_version() {
        let (_dir, host, s) = loaded(include_str!("../../tests/fixtures/state/v1.json"));
        assert_eq!(s.format_version, FORMAT_VERSION);
        let original = s.original.as_ref().unwrap();
        assert_eq!(original.range, PortRange::new(40000, 40099).unwrap());
        assert_eq!(original.reserved, PortSet::parse("40500").unwrap());
        let written = s.last_written.as_ref().unwrap();
        assert_eq!(written.values.range, PortRange::new(40000, 40181).unwrap());
        assert!(written.persisted);
        assert_eq!(s.added_reserved, PortSet::parse("40120").unwrap());
        assert_eq!((s.pending.as_ref(), s.dropin.as_ref()), (None, None));
        assert_eq!(s.changes.len(), 1);
        s.save(&host).unwrap();
        let text = std::fs::read_to_string(State::path(&host)).unwrap();
        assert!(text.contains("\"format_version\":4"), "{text}");
        assert_eq!(State::load(&host).unwrap(), s);
    }

    /// Every other port of 1024-65535: the longest text a port set has.
    fn sparse_ports() -> PortSet {
        let mut set = PortSet::new();
        for p in (1024..=65535u16).step_by(2) {
            set.insert(p);
        }
        set
    }

    fn change_reserving(reserved_added: PortSet, secs: u64) -> Change {
        Change {
            at: at(secs),
            from: range(40000, 40099),
            to: range(40000, 40181),
            reserved_added,
            reason: format!("change at {secs}"),
        }
    }

    #[test]
    fn a_state_is_saved_compactly_within_what_load_reads_back_keeping_the_newest_changes() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let s = State {
            changes: (0..HISTORY_LEN as u64)
                .map(|i| change_reserving(sparse_ports(), i))
                .collect(),
            ..State::default()
        };
        assert!(
            serde_json::to_string_pretty(&s).unwrap().len() as u64 > STATE_MAX_BYTES,
            "the case must be over the limit as it was saved before"
        );
        s.save(&host).unwrap();
        let size = std::fs::metadata(State::path(&host)).unwrap().len();
        assert!(size <= STATE_MAX_BYTES, "{size} bytes saved");
        let loaded = State::load(&host).unwrap();
        assert!(!loaded.changes.is_empty() && loaded.changes.len() < HISTORY_LEN);
        assert_eq!(
            loaded.changes.last().unwrap().reason,
            format!("change at {}", HISTORY_LEN - 1),
            "the newest change is kept"
        );
        let text = std::fs::read_to_string(State::path(&host)).unwrap();
        assert_eq!(text.lines().count(), 1, "compact, one line");
    }

    #[test]
    fn a_long_history_is_trimmed_on_load_and_save() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        std::fs::create_dir_all(host.state_dir()).unwrap();
        let s = State {
            changes: (0..500)
                .map(|i| change_reserving(PortSet::new(), i))
                .collect(),
            ..State::default()
        };
        std::fs::write(State::path(&host), serde_json::to_string(&s).unwrap()).unwrap();
        let loaded = State::load(&host).unwrap();
        assert_eq!(loaded.changes.len(), HISTORY_LEN);
        assert_eq!(loaded.changes[0].reason, "change at 450");
        s.save(&host).unwrap();
        assert_eq!(State::load(&host).unwrap().changes.len(), HISTORY_LEN);
    }

    #[test]
    fn a_state_that_cannot_be_read_back_is_not_saved_and_the_old_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        State::default().save(&host).unwrap();
        let before = std::fs::read(State::path(&host)).unwrap();
        let values = Values {
            range: range(1024, 65535),
            reserved: sparse_ports(),
        };
        // Sets a few times the longest a port set can print: beyond 1 MiB
        // even without a history.
        let mut s = State {
            original: Some(values.clone()),
            admin: Some(values.clone()),
            added_reserved: sparse_ports(),
            ..State::default()
        };
        s.last_written = Some(Written {
            values: values.clone(),
            at: at(1),
            persisted: true,
        });
        s.pending = Some(Pending {
            values,
            newly_reserved: sparse_ports(),
            at: at(1),
        });
        let e = s.save(&host).unwrap_err().to_string();
        assert!(
            e.contains("state.json") && e.contains("not saved") && e.contains("1 MiB"),
            "{e}"
        );
        assert_eq!(std::fs::read(State::path(&host)).unwrap(), before);
    }

    #[test]
    fn a_directory_at_the_temporary_name_does_not_stop_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        std::fs::create_dir_all(host.state_dir()).unwrap();
        let temp = host
            .state_dir()
            .join(format!(".{FILE_NAME}.portd-tmp-{}", std::process::id()));
        std::fs::create_dir(&temp).unwrap();
        let s = State {
            initial_range: Some(range(40000, 40099)),
            ..State::default()
        };
        s.save(&host).unwrap();
        assert_eq!(State::load(&host).unwrap(), s);
        assert!(temp.is_dir());
    }

    #[test]
    fn an_oversized_state_names_the_limit_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        std::fs::create_dir_all(host.state_dir()).unwrap();
        std::fs::write(State::path(&host), " ".repeat(2 << 20)).unwrap();
        let e = State::load(&host).unwrap_err().to_string();
        assert!(e.contains("1 MiB") && e.contains("move it aside"), "{e}");
    }

    #[test]
    fn version_2_state_loads_without_an_admins_range() {
        let (_dir, _host, s) = loaded(include_str!("../../tests/fixtures/state/v2.json"));
        assert_eq!(s.format_version, FORMAT_VERSION);
        assert_eq!(s.dropin.as_deref(), Some("60-portd.conf"));
        assert_eq!(s.admin, None);
        assert_eq!(
            s.rollback_target(false).map(|v| v.range),
            Some(PortRange::new(40000, 40099).unwrap())
        );
    }

    fn range(low: u16, high: u16) -> PortRange {
        PortRange::new(low, high).unwrap()
    }

    fn ports(text: &str) -> PortSet {
        PortSet::parse(text).unwrap()
    }

    fn found() -> Values {
        Values {
            range: range(40000, 40099),
            reserved: ports("40500"),
        }
    }

    /// 40000-40099 -> 40000-40181, reserving 40120 (a listener) first.
    fn widening() -> Plan {
        Plan {
            from: range(40000, 40099),
            to: range(40000, 40181),
            reserved: ports("40120,40500"),
            newly_reserved: ports("40120"),
            expected_usage: crate::base::ports::Ratio::from_percent(20.0).unwrap(),
            reaches_target: true,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_recorded_widening_keeps_the_originals_and_is_pending_until_confirmed() {
        let mut s = State::default();
        s.record_widening(found(), &widening(), at(100), "busy");
        assert_eq!(s.original, Some(found()));
        assert_eq!(s.added_reserved, ports("40120"));
        let pending = s.pending.as_ref().unwrap();
        assert_eq!(pending.values.range, range(40000, 40181));
        assert_eq!(pending.values.reserved, ports("40120,40500"));
        assert_eq!(
            (pending.newly_reserved.clone(), pending.at),
            (ports("40120"), at(100))
        );
        assert_eq!(s.last_written, None, "nothing is written yet");
        assert_eq!(s.changes.len(), 1);
        assert_eq!(s.changes[0].reason, "busy");

        s.confirm_written();
        assert_eq!(s.pending, None);
        let written = s.last_written.as_ref().unwrap();
        assert_eq!(written.values.range, range(40000, 40181));
        assert_eq!((written.at, written.persisted), (at(100), false));
    }

    #[test]
    fn a_second_widening_keeps_the_first_originals() {
        let mut s = State::default();
        s.record_widening(found(), &widening(), at(100), "busy");
        s.confirm_written();
        let later = Values {
            range: range(40000, 40181),
            reserved: ports("40120,40500"),
        };
        let plan = Plan {
            from: range(40000, 40181),
            to: range(40000, 40301),
            reserved: ports("40120,40250,40500"),
            newly_reserved: ports("40250"),
            ..widening()
        };
        s.record_widening(later, &plan, at(200), "busier");
        assert_eq!(s.original, Some(found()));
        assert_eq!(s.added_reserved, ports("40120,40250"));
        assert_eq!(s.changes.len(), 2);
    }

    #[test]
    fn confirming_without_a_pending_write_changes_nothing() {
        let mut s = State::default();
        s.confirm_written();
        assert_eq!(s, State::default());
    }

    #[test]
    fn a_yield_takes_the_admins_values_as_the_baseline() {
        let mut s = State::default();
        s.record_widening(found(), &widening(), at(100), "busy");
        s.confirm_written();
        let admins = Values {
            range: range(30000, 60999),
            reserved: ports("40500"),
        };
        s.yield_to(
            admins.clone(),
            "the admin wrote 30000 60999".into(),
            at(300),
        );
        let y = s.yielded.as_ref().unwrap();
        assert_eq!(
            (y.at, y.reason.as_str()),
            (at(300), "the admin wrote 30000 60999")
        );
        assert_eq!(s.last_written.as_ref().unwrap().values, admins);
        assert_eq!(
            s.original,
            Some(found()),
            "rollback still knows the originals"
        );
    }

    #[test]
    fn rollback_keeps_the_range_an_admin_set_after_portds_first_change_unless_forced() {
        let mut s = State::default();
        assert_eq!(s.rollback_target(false), None, "nothing to roll back");
        s.record_widening(found(), &widening(), at(100), "busy");
        s.confirm_written();
        assert_eq!(s.rollback_target(false), Some(found()));
        let admins = Values {
            range: range(40000, 40499),
            reserved: ports("40120,40500"),
        };
        s.yield_to(
            admins.clone(),
            "the admin wrote 40000 40499".into(),
            at(300),
        );
        assert_eq!(
            s.rollback_target(false),
            Some(found()),
            "while yielded rollback refuses without --force, and --force restores the first"
        );
        // A reload clears the yield; portd widens over the admin's range.
        s.yielded = None;
        let plan = Plan {
            from: range(40000, 40499),
            to: range(40000, 40999),
            reserved: ports("40120,40500"),
            newly_reserved: PortSet::new(),
            ..widening()
        };
        s.record_widening(admins.clone(), &plan, at(400), "busier");
        s.confirm_written();
        assert_eq!(s.original, Some(found()), "the first originals are kept");
        assert_eq!(s.rollback_target(false), Some(admins));
        assert_eq!(s.rollback_target(true), Some(found()));
        s.rolled_back();
        assert_eq!(s.admin, None);
    }

    #[test]
    fn marking_persisted_records_the_dropin_name() {
        let mut s = State::default();
        s.record_widening(found(), &widening(), at(100), "busy");
        s.confirm_written();
        assert!(s.mark_persisted("60-portd.conf", true), "first record");
        assert!(s.last_written.as_ref().unwrap().persisted);
        assert_eq!(s.dropin.as_deref(), Some("60-portd.conf"));
        assert!(
            !s.mark_persisted("60-portd.conf", false),
            "an unchanged drop-in already recorded needs no save"
        );
        assert!(s.mark_persisted("60-portd.conf", true), "rewritten");
        assert!(s.mark_persisted("61-portd.conf", false), "another name");
    }

    #[test]
    fn rollback_steps_record_what_is_undone_and_then_forget_portds_values() {
        let mut s = State::default();
        s.record_widening(found(), &widening(), at(100), "busy");
        s.confirm_written();
        s.mark_persisted("60-portd.conf", true);
        s.range_restored(range(40000, 40099));
        assert_eq!(
            s.last_written.as_ref().unwrap().values.range,
            range(40000, 40099)
        );
        assert_eq!(
            s.added_reserved,
            ports("40120"),
            "the reserved ports are not undone yet"
        );
        s.reserved_restored(ports("40500"));
        assert_eq!(
            s.last_written.as_ref().unwrap().values.reserved,
            ports("40500")
        );
        assert!(s.added_reserved.is_empty());
        s.rolled_back();
        assert_eq!(
            (
                s.original.as_ref(),
                s.last_written.as_ref(),
                s.dropin.as_ref(),
                s.yielded.as_ref()
            ),
            (None, None, None, None)
        );
        assert_eq!(s.changes.len(), 1, "the history stays");
    }

    fn key(inode: u64, names: &[&str]) -> NamespaceKey {
        NamespaceKey {
            inode,
            names: names.iter().map(ToString::to_string).collect(),
            container_id: None,
            pod_uid: None,
            label: names.first().unwrap_or(&"pid 8 (sleep)").to_string(),
        }
    }

    #[test]
    fn version_3_state_loads_with_no_namespaces_and_is_saved_as_version_4() {
        let (_dir, host, s) = loaded(include_str!("../../tests/fixtures/state/v3.json"));
        assert_eq!(s.format_version, FORMAT_VERSION);
        assert_eq!(s.admin.as_ref().map(|a| a.range), Some(range(40000, 40499)));
        assert!(s.namespaces.is_empty());
        assert_eq!(
            s.rollback_target(false).map(|v| v.range),
            Some(range(40000, 40499))
        );
        s.save(&host).unwrap();
        let text = std::fs::read_to_string(State::path(&host)).unwrap();
        assert!(text.contains("\"format_version\":4"), "{text}");
        assert_eq!(State::load(&host).unwrap(), s);
    }

    #[test]
    fn a_namespace_widening_keeps_its_first_values_by_inode_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let mut s = State::default();
        s.record_namespace_widening(
            key(4026532242, &["blue"]),
            found(),
            &widening(),
            at(100),
            "busy",
        );
        let r = s.namespace(4026532242).unwrap();
        assert_eq!(
            (r.original.clone(), r.last_written.clone()),
            (found(), None)
        );
        assert_eq!(
            r.pending.as_ref().map(|p| p.range),
            Some(range(40000, 40181))
        );
        assert_eq!(r.added_reserved, ports("40120"));
        s.confirm_namespace(4026532242);
        let later = Values {
            range: range(40000, 40181),
            reserved: ports("40120,40500"),
        };
        let plan = Plan {
            from: range(40000, 40181),
            to: range(40000, 40301),
            ..widening()
        };
        s.record_namespace_widening(key(4026532242, &["blue"]), later, &plan, at(200), "busier");
        s.confirm_namespace(4026532242);
        let r = s.namespace(4026532242).unwrap();
        assert_eq!(r.original, found(), "the first values are kept");
        assert_eq!(
            r.last_written.as_ref().map(|w| w.range),
            Some(range(40000, 40301))
        );
        assert_eq!(r.changes.len(), 2);
        assert_eq!(s.original, None, "the host's own values are not touched");
        s.save(&host).unwrap();
        assert_eq!(State::load(&host).unwrap(), s);
    }

    #[test]
    fn a_reused_inode_of_another_namespace_replaces_the_gone_ones_record() {
        let mut s = State::default();
        s.record_namespace_widening(key(7, &["blue"]), found(), &widening(), at(100), "busy");
        assert!(key(7, &["blue"]).same(&key(7, &["blue", "green"])));
        assert!(!key(7, &["blue"]).same(&key(7, &["red"])));
        assert!(!key(7, &["blue"]).same(&key(8, &["blue"])));
        s.record_namespace_widening(key(7, &["red"]), found(), &widening(), at(200), "busy");
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(s.namespaces[0].key.names, ["red"]);
    }
}
