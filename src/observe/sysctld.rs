//! What `systemd-sysctl` will apply at boot: the `sysctl.d` files it reads, in
//! its order, and the assignments in them (docs/kernel.md §7.2; sysctl.d(5);
//! systemd 252 `src/sysctl/sysctl.c` and `src/basic/conf-files.c`).
//!
//! Read-only. The actuator uses it to check that no later file overrides
//! portd's drop-in and to merge the admin's `ip_local_reserved_ports` with
//! portd's additions; `portd check` reports which file sets each key at boot.
//!
//! The rules, as systemd 252 implements them:
//! - every `*.conf` (not starting with `.`) of [`SYSCTL_D_DIRS`], plus
//!   [`SPLIT_USR_DIR`] where `/lib` is a real directory;
//! - a file hides every same-named file in a lower directory; a symlink to
//!   `/dev/null` (or any file that reads empty) is how an admin masks one;
//! - the remaining files are parsed in byte order of their *file name*, whatever
//!   their directory, and a later assignment of a key replaces an earlier one;
//! - a glob key (`net.ipv4.*`) applies only to keys that no line names
//!   explicitly (an explicit `-key` without `=` only excludes it from globs).
//!
//! Paths are host paths (`/etc/sysctl.d/…`) resolved under [`Host`], symlinks
//! included, so everything runs against a fixture tree.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::base::host::Host;

#[path = "sysctld_files.rs"]
mod files;
#[path = "sysctld_syntax.rs"]
mod syntax;

use files::{Discovered, discover, load, sysctl_conf};
pub use syntax::normalize_key;
use syntax::{key_matches_glob, parse};

/// The directories systemd-sysctl reads, highest priority first
/// (`CONF_PATHS("sysctl.d")`; `systemd-sysctl --cat-config` of Debian 12's
/// systemd 252 reads exactly these four).
pub const SYSCTL_D_DIRS: [&str; 4] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
];

/// Read after `/usr/lib/sysctl.d` by split-usr builds only. Where `/lib` is a
/// symlink to `usr/lib` (merged /usr, Debian 12) it is not read.
pub const SPLIT_USR_DIR: &str = "/lib/sysctl.d";

/// Where portd's drop-in lives (docs/kernel.md §7.3); policy names only the file.
pub const DROPIN_DIR: &str = "/etc/sysctl.d";

/// procps' configuration file. Debian links it in as
/// `/etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf`.
pub const SYSCTL_CONF: &str = "/etc/sysctl.conf";

/// The longest sysctl.d file portd reads. systemd reads any length, but an
/// admin's file, even one reserving every other port, is far shorter.
pub const FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Linux gives up with ELOOP after this many symlinks (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// systemd's `WHITESPACE`; `str::trim` would also strip Unicode spaces.
const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// One line of a sysctl.d file that names a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// The key normalised as systemd does, in dotted form
    /// (`net/ipv4/ip_local_port_range` reads `net.ipv4.ip_local_port_range`);
    /// for a glob line, the pattern.
    pub key: String,
    /// The whitespace-trimmed value; empty for an exclusion.
    pub value: String,
    /// The file as systemd-sysctl names it, e.g. `/etc/sysctl.d/99-sysctl.conf`
    /// (not the `/etc/sysctl.conf` it links to).
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// The key had a `-` prefix: a failure to write it is not an error.
    pub ignore_failure: bool,
    /// The key contains `*`, `?` or `[`.
    pub glob: bool,
    /// An exclusion line, `-key` without `=`: if it is the key's last explicit
    /// line, sysctl.d does not set the key at boot, and globs skip it.
    pub exclusion: bool,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if self.exclusion {
            write!(f, "-{} (excluded)", self.key)
        } else {
            write!(f, "{} = {}", self.key, self.value)
        }
    }
}

/// A line systemd-sysctl skips with a warning, such as one without `=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// What reading an effective file gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Read and parsed.
    Parsed,
    /// Resolves to `/dev/null` or another character device: it sets nothing and
    /// hides same-named files in lower directories.
    Masked,
    /// A symlink to nothing. systemd-sysctl skips it silently (and
    /// `--cat-config` stops there with an error); it still hides lower files.
    Dangling,
    /// Not a file systemd-sysctl can read: a directory, a symlink loop, a
    /// FIFO or socket. It sets nothing, still hides lower files, and is
    /// listed in [`Scan::skipped`] with the reason.
    Skipped,
}

/// A file systemd-sysctl reads at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfFile {
    /// As systemd-sysctl names it (the `# PATH` headers of `--cat-config`).
    pub path: PathBuf,
    /// The host path it resolves to after symlinks; equal to `path` for a
    /// plain file.
    pub target: PathBuf,
    pub state: FileState,
}

/// An entry that is skipped rather than read (systemd 252: "Failed to read
/// file '…', ignoring" for a directory, "Failed to open file" for a
/// symlink loop; a FIFO would stall it at boot, so portd never opens one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; skipped as systemd-sysctl skips it: it sets nothing and still hides same-named files in lower directories",
            self.path.display(),
            self.reason
        )
    }
}

/// A file that a same-named file in a higher-priority directory hides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shadowed {
    pub path: PathBuf,
    pub by: PathBuf,
}

/// Whether systemd-sysctl reads `/etc/sysctl.conf`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SysctlConf {
    Absent,
    /// An effective sysctl.d entry resolves to it (Debian: `99-sysctl.conf`).
    Linked {
        via: PathBuf,
    },
    /// It exists but no sysctl.d entry points at it: boot ignores it, while
    /// procps `sysctl --system` reads it after all sysctl.d files (sysctl(8)),
    /// so a manual `sysctl --system` can end with these values instead.
    Unlinked {
        assignments: Vec<Assignment>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SysctldError {
    #[error("cannot list {}: {source}", dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}{}: {source}", file.display(), via(target))]
    ReadFile {
        file: PathBuf,
        /// Where `file` points, when it is a symlink.
        target: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop { path: PathBuf },
    /// A file that portd's drop-in hides, read to know what boot would set
    /// without the drop-in.
    #[error("cannot read {}, which boot reads in place of portd's drop-in were it removed: {reason}", file.display())]
    Understudy { file: PathBuf, reason: String },
}

fn via(target: &Option<PathBuf>) -> String {
    target
        .as_ref()
        .map(|t| format!(" (-> {})", t.display()))
        .unwrap_or_default()
}

/// Everything systemd-sysctl would read at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// The effective files in application order.
    pub files: Vec<ConfFile>,
    pub shadowed: Vec<Shadowed>,
    /// Every assignment of every key, in application order (file, then line).
    pub assignments: Vec<Assignment>,
    /// Lines systemd-sysctl skips with a warning.
    pub warnings: Vec<Warning>,
    /// Entries that are not read: directories, symlink loops, FIFOs.
    pub skipped: Vec<Skipped>,
    pub sysctl_conf: SysctlConf,
    /// `/etc/sysctl.d` as systemd-sysctl names its files (resolved).
    #[serde(skip)]
    dropin_dir: PathBuf,
    /// For each `/etc/sysctl.d` file that hides a same-named file, that
    /// file: what boot would read in its place were it removed, so that
    /// [`Scan::boot_value_excluding`] needs no second scan.
    #[serde(skip)]
    understudies: Vec<Understudy>,
}

/// The file that would take the place of an `/etc/sysctl.d` file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Understudy {
    /// The file name they share.
    name: OsString,
    path: PathBuf,
    /// Its assignments, or why it cannot be read. Boot never reads it while
    /// the `/etc` file exists, so an error is raised only when it is asked.
    read: Result<Vec<Assignment>, String>,
}

/// Reads the sysctl.d configuration of `host` as systemd-sysctl would at boot.
/// The only function here that reads the directories: a daemon poll takes
/// one [`Scan`] and asks it every question (overrides of portd's drop-in,
/// the boot value without it, which file sets a key).
pub fn scan(host: &Host) -> Result<Scan, SysctldError> {
    scan_inner(host)
}

impl Scan {
    /// The effective files in application order.
    pub fn boot_files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Every assignment that names `key` (in any spelling) or a glob matching
    /// it, in application order. The boot value is not simply the last one:
    /// explicit assignments beat globs wherever they are; see [`Scan::winning`].
    pub fn assignments_for(&self, key: &str) -> Vec<&Assignment> {
        let key = normalize_key(key);
        self.assignments
            .iter()
            .filter(|a| a.key == key || (a.glob && key_matches_glob(&a.key, &key)))
            .collect()
    }

    /// The assignment that decides `key` at boot, or `None` when sysctl.d
    /// does not set it. The last explicit assignment wins, unless it is an
    /// exclusion (then the key is not set at all); without an explicit one,
    /// the matching glob applied last wins.
    ///
    /// systemd keeps a key's place in its application order when a later line
    /// repeats the same value; the assignment returned is then the last of
    /// those lines, with `ignore_failure` set if any of them had it.
    pub fn winning(&self, key: &str) -> Option<Assignment> {
        winning_among(self.assignments.iter(), key)
    }

    /// The assignment that would decide `key` at boot if portd's drop-in
    /// `/etc/sysctl.d/<dropin_name>` did not exist (a same-named file in a
    /// lower directory then takes its place): the admin's and the vendors'
    /// value, which portd's reserved ports must be merged with.
    pub fn boot_value_excluding(
        &self,
        dropin_name: &str,
        key: &str,
    ) -> Result<Option<Assignment>, SysctldError> {
        let stand_in: &[Assignment] = match self
            .understudies
            .iter()
            .find(|u| u.name.as_bytes() == dropin_name.as_bytes())
        {
            None => &[],
            Some(Understudy { read: Ok(a), .. }) => a,
            Some(Understudy {
                path,
                read: Err(reason),
                ..
            }) => {
                return Err(SysctldError::Understudy {
                    file: path.clone(),
                    reason: reason.clone(),
                });
            }
        };
        let dropin = self.dropin_dir.join(dropin_name);
        fn name<'a>(a: &&'a Assignment) -> Option<&'a [u8]> {
            a.file.file_name().map(OsStr::as_bytes)
        }
        let dropin_name = Some(dropin_name.as_bytes());
        // Files apply in name order and the stand-in has the drop-in's name.
        let before = self
            .assignments
            .iter()
            .filter(|a| a.file != dropin && name(a) <= dropin_name);
        let after = self
            .assignments
            .iter()
            .filter(|a| a.file != dropin && name(a) > dropin_name);
        Ok(winning_among(before.chain(stand_in).chain(after), key))
    }

    /// Assignments of `key` that would override portd's drop-in
    /// `/etc/sysctl.d/<dropin_name>` at boot: explicit ones (exclusions
    /// included) in files whose name sorts after `dropin_name`. Globs never
    /// override it, because the drop-in names the key explicitly. Same-named
    /// files are left out: the drop-in, in the highest directory, hides them.
    /// Every such line counts, even one that repeats portd's value, since it
    /// pins the key against portd's next change.
    pub fn later_overrides(&self, dropin_name: &str, key: &str) -> Vec<&Assignment> {
        let key = normalize_key(key);
        self.assignments
            .iter()
            .filter(|a| {
                !a.glob
                    && a.key == key
                    && a.file.file_name().map(OsStr::as_bytes) > Some(dropin_name.as_bytes())
            })
            .collect()
    }
}

/// [`Scan::winning`] over `assignments` in application order.
fn winning_among<'a>(
    assignments: impl Iterator<Item = &'a Assignment>,
    key: &str,
) -> Option<Assignment> {
    let key = normalize_key(key);
    let table = boot_table(assignments);
    let slot = match table.iter().find(|s| s.latest.key == key) {
        Some(explicit) if explicit.latest.exclusion => return None,
        Some(explicit) => explicit,
        None => table.iter().rev().find(|s| {
            s.latest.glob && !s.latest.exclusion && key_matches_glob(&s.latest.key, &key)
        })?,
    };
    Some(Assignment {
        ignore_failure: slot.ignore_failure,
        ..slot.latest.clone()
    })
}

/// systemd-sysctl's ordered map of keys: a line with a new value for a key
/// moves the key to the end; one that repeats the value leaves it in place.
fn boot_table<'a>(assignments: impl Iterator<Item = &'a Assignment>) -> Vec<Slot<'a>> {
    let mut slots: HashMap<&str, Slot<'_>> = HashMap::new();
    for (seq, a) in assignments.enumerate() {
        let key = a.key.as_str();
        match slots.get_mut(key) {
            Some(slot) if slot.latest.value == a.value && slot.latest.exclusion == a.exclusion => {
                slot.latest = a;
                slot.ignore_failure |= a.ignore_failure;
            }
            _ => {
                slots.insert(
                    key,
                    Slot {
                        seq,
                        latest: a,
                        ignore_failure: a.ignore_failure,
                    },
                );
            }
        }
    }
    let mut table: Vec<Slot<'_>> = slots.into_values().collect();
    table.sort_by_key(|s| s.seq);
    table
}

struct Slot<'a> {
    seq: usize,
    latest: &'a Assignment,
    ignore_failure: bool,
}

fn scan_inner(host: &Host) -> Result<Scan, SysctldError> {
    let Discovered {
        effective: paths,
        shadowed,
        dropin_dir,
        understudies,
    } = discover(host)?;
    let mut files = Vec::with_capacity(paths.len());
    let mut assignments = Vec::new();
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let (file, text) = load(host, &path, &mut skipped)?;
        if let Some(text) = text {
            parse(&file.path, &text, &mut assignments, &mut warnings);
        }
        files.push(file);
    }
    let sysctl_conf = sysctl_conf(host, &files, &mut warnings, &mut skipped)?;
    let understudies = understudies
        .into_iter()
        .map(|(name, path)| Understudy {
            read: read_understudy(host, &path),
            name,
            path,
        })
        .collect();
    Ok(Scan {
        files,
        shadowed,
        assignments,
        warnings,
        skipped,
        sysctl_conf,
        dropin_dir,
        understudies,
    })
}

/// The assignments of a hidden file, read as if it were effective; its
/// warnings and skips are not boot's and are dropped.
fn read_understudy(host: &Host, path: &Path) -> Result<Vec<Assignment>, String> {
    let mut assignments = Vec::new();
    let (file, text) = load(host, path, &mut Vec::new()).map_err(|e| e.to_string())?;
    if let Some(text) = text {
        parse(&file.path, &text, &mut assignments, &mut Vec::new());
    }
    Ok(assignments)
}

#[cfg(test)]
#[path = "sysctld_tests.rs"]
mod tests;
