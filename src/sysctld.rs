//! What `systemd-sysctl` will apply at boot: the `sysctl.d` files it reads, in
//! its order, and the assignments in them (kernel.md §7.2; sysctl.d(5);
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

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::host::Host;

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

/// Where portd's drop-in lives (kernel.md §7.3); policy names only the file.
pub const DROPIN_DIR: &str = "/etc/sysctl.d";

/// procps' configuration file. Debian links it in as
/// `/etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf`.
pub const SYSCTL_CONF: &str = "/etc/sysctl.conf";

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
    pub sysctl_conf: SysctlConf,
}

/// Reads the sysctl.d configuration of `host` as systemd-sysctl would at boot.
pub fn scan(host: &Host) -> Result<Scan, SysctldError> {
    scan_inner(host, None)
}

/// As [`scan`], as if portd's drop-in `/etc/sysctl.d/<dropin_name>` did not
/// exist: a same-named file in a lower directory then takes its place.
pub fn scan_without_dropin(host: &Host, dropin_name: &str) -> Result<Scan, SysctldError> {
    scan_inner(host, Some(dropin_name))
}

/// The effective sysctl.d files in application order, as the `# PATH` headers
/// of `systemd-sysctl --cat-config` list them (masked ones included).
pub fn boot_files(host: &Host) -> Result<Vec<PathBuf>, SysctldError> {
    Ok(discover(host, None)?.0)
}

/// Every assignment that names `key` or a glob matching it, in application
/// order; see [`Scan::assignments_for`].
pub fn assignments_for(host: &Host, key: &str) -> Result<Vec<Assignment>, SysctldError> {
    Ok(scan(host)?
        .assignments_for(key)
        .into_iter()
        .cloned()
        .collect())
}

/// The assignment that decides `key` at boot; see [`Scan::winning`].
pub fn winning(host: &Host, key: &str) -> Result<Option<Assignment>, SysctldError> {
    Ok(scan(host)?.winning(key))
}

/// Assignments that would override portd's drop-in; see
/// [`Scan::later_overrides`].
pub fn later_overrides(
    host: &Host,
    dropin_name: &str,
    key: &str,
) -> Result<Vec<Assignment>, SysctldError> {
    Ok(scan(host)?
        .later_overrides(dropin_name, key)
        .into_iter()
        .cloned()
        .collect())
}

/// The assignment that would decide `key` at boot if portd's drop-in
/// `/etc/sysctl.d/<dropin_name>` did not exist: the admin's and the vendors'
/// value, which portd's reserved ports must be merged with.
pub fn boot_value_excluding(
    host: &Host,
    key: &str,
    dropin_name: &str,
) -> Result<Option<Assignment>, SysctldError> {
    Ok(scan_without_dropin(host, dropin_name)?.winning(key))
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
        let key = normalize_key(key);
        let table = self.boot_table();
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

    /// systemd-sysctl's ordered map of keys: a line with a new value for a key
    /// moves the key to the end; one that repeats the value leaves it in place.
    fn boot_table(&self) -> Vec<Slot<'_>> {
        let mut slots: HashMap<&str, Slot<'_>> = HashMap::new();
        for (seq, a) in self.assignments.iter().enumerate() {
            let key = a.key.as_str();
            match slots.get_mut(key) {
                Some(slot)
                    if slot.latest.value == a.value && slot.latest.exclusion == a.exclusion =>
                {
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
}

struct Slot<'a> {
    seq: usize,
    latest: &'a Assignment,
    ignore_failure: bool,
}

fn scan_inner(host: &Host, without: Option<&str>) -> Result<Scan, SysctldError> {
    let (paths, shadowed) = discover(host, without)?;
    let mut files = Vec::with_capacity(paths.len());
    let mut assignments = Vec::new();
    let mut warnings = Vec::new();
    for path in paths {
        let (file, text) = load(host, &path)?;
        if let Some(text) = text {
            parse(&file.path, &text, &mut assignments, &mut warnings);
        }
        files.push(file);
    }
    let sysctl_conf = sysctl_conf(host, &files, &mut warnings)?;
    Ok(Scan {
        files,
        shadowed,
        assignments,
        warnings,
        sysctl_conf,
    })
}

fn sysctl_d_dirs(host: &Host) -> Vec<&'static str> {
    let mut dirs = SYSCTL_D_DIRS.to_vec();
    let lib = fs::symlink_metadata(host.path("/lib"));
    if lib.is_ok_and(|m| m.is_dir()) {
        dirs.push(SPLIT_USR_DIR);
    }
    dirs
}

/// The effective files in application order, and the hidden ones.
/// `conf_files_list_strv()`: the first directory to hold a name wins; the
/// winners are sorted by name with `strcmp()`, i.e. bytewise.
fn discover(
    host: &Host,
    without: Option<&str>,
) -> Result<(Vec<PathBuf>, Vec<Shadowed>), SysctldError> {
    let mut by_name: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    for dir in sysctl_d_dirs(host) {
        // systemd names files under the directory's resolved path.
        let resolved = chase(host, Path::new(dir))?;
        let entries = match fs::read_dir(on_disk(host, &resolved)) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(source) => {
                return Err(SysctldError::ListDir {
                    dir: resolved,
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| SysctldError::ListDir {
                dir: resolved.clone(),
                source,
            })?;
            let name = entry.file_name();
            if !is_conf_name(&name) {
                continue;
            }
            if dir == DROPIN_DIR && without.is_some_and(|w| name.as_bytes() == w.as_bytes()) {
                continue;
            }
            let path = resolved.join(&name);
            by_name.entry(name).or_default().push(path);
        }
    }
    let mut effective = Vec::with_capacity(by_name.len());
    let mut shadowed = Vec::new();
    for (_, mut paths) in by_name {
        let winner = paths.remove(0);
        shadowed.extend(paths.into_iter().map(|path| Shadowed {
            path,
            by: winner.clone(),
        }));
        effective.push(winner);
    }
    Ok((effective, shadowed))
}

/// `*.conf`, skipping hidden files as systemd's `FOREACH_DIRENT` does (its
/// other skipped names, backups like `*.dpkg-old`, cannot end in `.conf`).
fn is_conf_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    !name.starts_with(b".") && name.ends_with(b".conf")
}

/// Resolves an effective file and reads it unless it is masked or dangling.
fn load(host: &Host, path: &Path) -> Result<(ConfFile, Option<Vec<u8>>), SysctldError> {
    let target = chase(host, path)?;
    let file = |state| ConfFile {
        path: path.to_path_buf(),
        target: target.clone(),
        state,
    };
    // A fixture tree has no /dev/null of its own: the link text decides.
    if target == Path::new("/dev/null") {
        return Ok((file(FileState::Masked), None));
    }
    let real = on_disk(host, &target);
    match fs::metadata(&real) {
        // sysctl.c's parse_file() ignores ENOENT.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((file(FileState::Dangling), None));
        }
        Ok(meta) if meta.file_type().is_char_device() => {
            return Ok((file(FileState::Masked), None));
        }
        _ => {}
    }
    match fs::read(&real) {
        Ok(text) => Ok((file(FileState::Parsed), Some(text))),
        Err(source) => Err(SysctldError::ReadFile {
            file: path.to_path_buf(),
            target: (target != path).then(|| target.clone()),
            source,
        }),
    }
}

fn sysctl_conf(
    host: &Host,
    files: &[ConfFile],
    warnings: &mut Vec<Warning>,
) -> Result<SysctlConf, SysctldError> {
    let path = Path::new(SYSCTL_CONF);
    let target = chase(host, path)?;
    if let Some(link) = files.iter().find(|f| f.target == target) {
        return Ok(SysctlConf::Linked {
            via: link.path.clone(),
        });
    }
    let text = match fs::read(on_disk(host, &target)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SysctlConf::Absent),
        Err(source) => {
            return Err(SysctldError::ReadFile {
                file: path.to_path_buf(),
                target: (target != path).then_some(target),
                source,
            });
        }
    };
    let mut assignments = Vec::new();
    parse(path, &text, &mut assignments, warnings);
    Ok(SysctlConf::Unlinked { assignments })
}

/// `parse_file()` of systemd's sysctl.c: one assignment a line, `#`/`;`
/// comments, a `-` prefix to ignore failure (or, without `=`, to exclude the
/// key from globs). A comment after a value is part of the value.
fn parse(file: &Path, text: &[u8], out: &mut Vec<Assignment>, warnings: &mut Vec<Warning>) {
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let decoded = String::from_utf8_lossy(raw);
        let content = decoded.trim_matches(WHITESPACE);
        if content.is_empty() || content.starts_with(['#', ';']) {
            continue;
        }
        let (raw_key, value, ignore_failure, exclusion) = match content.split_once('=') {
            Some((key, value)) => {
                let value = value.trim_matches(WHITESPACE).to_string();
                match key.strip_prefix('-') {
                    Some(key) => (key, value, true, false),
                    None => (key, value, false, false),
                }
            }
            None => match content.strip_prefix('-') {
                Some(key) => (key, String::new(), false, true),
                None => {
                    warnings.push(Warning {
                        file: file.to_path_buf(),
                        line,
                        message: format!("line is not an assignment, ignored: {content}"),
                    });
                    continue;
                }
            },
        };
        let key = normalize_key(raw_key);
        if key.is_empty() {
            warnings.push(Warning {
                file: file.to_path_buf(),
                line,
                message: format!("no key before '=', ignored: {content}"),
            });
            continue;
        }
        out.push(Assignment {
            glob: key.contains(['*', '?', '[']),
            key,
            value,
            file: file.to_path_buf(),
            line,
            ignore_failure,
            exclusion,
        });
    }
}

/// The dotted form of a sysctl key, normalised as `sysctl_normalize()` does:
/// if the first separator is `.`, dots and slashes swap roles, so
/// `net.ipv4.conf.eth0/100.rp_filter` and `net/ipv4/conf/eth0.100/rp_filter`
/// are one key; empty and `.` path components are dropped.
pub fn normalize_key(raw: &str) -> String {
    let raw = raw.trim_matches(WHITESPACE);
    let first_separator = raw.bytes().find(|&b| b == b'.' || b == b'/');
    let path = if first_separator == Some(b'.') {
        swap_separators(raw)
    } else {
        raw.to_string()
    };
    let path = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/");
    swap_separators(&path)
}

fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

/// Whether the glob `pattern` matches `key` (both dotted, normalised). systemd
/// globs the `/proc/sys` path, so wildcards stop at a separator:
/// `net.ipv4.*` matches `net.ipv4.ip_local_port_range`, `net.*` does not.
fn key_matches_glob(pattern: &str, key: &str) -> bool {
    glob_match(
        swap_separators(pattern).as_bytes(),
        swap_separators(key).as_bytes(),
    )
}

/// `fnmatch(FNM_PATHNAME)` for `*`, `?` and `[...]` (with `!`/`^` and ranges);
/// no backslash escapes, which sysctl names never need.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob_match(rest, &name[i..]) {
                    return true;
                }
                if i == name.len() || name[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => match name.split_first() {
            Some((&c, tail)) => c != b'/' && glob_match(rest, tail),
            None => false,
        },
        Some((b'[', rest)) => match (bracket(rest), name.split_first()) {
            (Some((matches, after)), Some((&c, tail))) => {
                c != b'/' && matches(c) && glob_match(after, tail)
            }
            (Some(_), None) => false,
            // No closing `]`: the `[` is literal.
            (None, _) => name.first() == Some(&b'[') && glob_match(rest, &name[1..]),
        },
        Some((&c, rest)) => name.first() == Some(&c) && glob_match(rest, &name[1..]),
    }
}

/// Parses a bracket expression after its `[`: a matcher and the rest of the
/// pattern, or `None` if there is no closing `]`.
fn bracket(pattern: &[u8]) -> Option<(impl Fn(u8) -> bool + '_, &[u8])> {
    let (negated, body) = match pattern.first() {
        Some(b'!' | b'^') => (true, &pattern[1..]),
        _ => (false, pattern),
    };
    // A `]` right after the opening bracket is a member, not the end.
    let close = 1 + body.get(1..)?.iter().position(|&b| b == b']')?;
    let set = &body[..close];
    let matches = move |c: u8| {
        let mut i = 0;
        let mut found = false;
        while i < set.len() {
            if i + 2 < set.len() && set[i + 1] == b'-' {
                found |= set[i] <= c && c <= set[i + 2];
                i += 3;
            } else {
                found |= set[i] == c;
                i += 1;
            }
        }
        found != negated
    };
    Some((matches, &body[close + 1..]))
}

/// Resolves every symlink in the host path `path` inside the host root, as
/// `chase_symlinks(CHASE_PREFIX_ROOT)` does: an absolute link target starts
/// again at the root. Missing components are kept as they are, so that
/// opening the result reports them.
fn chase(host: &Host, path: &Path) -> Result<PathBuf, SysctldError> {
    let mut done = PathBuf::from("/");
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&part);
        let real = on_disk(host, &candidate);
        let is_link = fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            done = candidate;
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(SysctldError::SymlinkLoop {
                path: path.to_path_buf(),
            });
        }
        let target = fs::read_link(&real).map_err(|source| SysctldError::ReadFile {
            file: candidate.clone(),
            target: None,
            source,
        })?;
        if target.is_absolute() {
            done = PathBuf::from("/");
        }
        push_components(&mut todo, &target);
    }
    Ok(done)
}

/// Pushes the components of `path` on the stack `todo`, first one on top.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Where the host path `path` (absolute, resolved) is on disk.
fn on_disk(host: &Host, path: &Path) -> PathBuf {
    host.root().join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const RANGE: &str = "net.ipv4.ip_local_port_range";
    const RESERVED: &str = "net.ipv4.ip_local_reserved_ports";

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn host(&self) -> Host {
            Host::new(self.dir.path())
        }

        fn real(&self, host_path: &str) -> PathBuf {
            self.dir.path().join(host_path.trim_start_matches('/'))
        }

        fn file(&self, host_path: &str, text: &str) -> &Self {
            let real = self.real(host_path);
            fs::create_dir_all(real.parent().unwrap()).unwrap();
            fs::write(real, text).unwrap();
            self
        }

        fn link(&self, host_path: &str, target: &str) -> &Self {
            let real = self.real(host_path);
            fs::create_dir_all(real.parent().unwrap()).unwrap();
            symlink(target, real).unwrap();
            self
        }

        fn scan(&self) -> Scan {
            scan(&self.host()).unwrap()
        }
    }

    fn paths(files: &[&Path]) -> Vec<String> {
        files.iter().map(|p| p.display().to_string()).collect()
    }

    fn value(a: Option<Assignment>) -> Option<String> {
        a.map(|a| a.value)
    }

    fn at(a: &Assignment) -> String {
        format!("{}:{}", a.file.display(), a.line)
    }

    #[test]
    fn files_are_applied_in_name_order_whatever_their_directory() {
        let tree = Tree::new();
        tree.file("/usr/lib/sysctl.d/50-vendor.conf", "")
            .file("/etc/sysctl.d/10-admin.conf", "")
            .file("/run/sysctl.d/70-runtime.conf", "")
            .file("/usr/local/lib/sysctl.d/60-local.conf", "")
            .file("/etc/sysctl.d/README", "")
            .file("/etc/sysctl.d/.hidden.conf", "")
            .file("/etc/sysctl.d/60-local.conf.dpkg-old", "");
        let scan = tree.scan();
        assert_eq!(
            paths(&scan.boot_files()),
            [
                "/etc/sysctl.d/10-admin.conf",
                "/usr/lib/sysctl.d/50-vendor.conf",
                "/usr/local/lib/sysctl.d/60-local.conf",
                "/run/sysctl.d/70-runtime.conf",
            ]
        );
        assert_eq!(
            boot_files(&tree.host()).unwrap(),
            scan.boot_files()
                .into_iter()
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn names_sort_bytewise() {
        let tree = Tree::new();
        tree.file("/etc/sysctl.d/99-sysctl.conf", "")
            .file("/etc/sysctl.d/99-portd.conf", "")
            .file("/etc/sysctl.d/99-Z.conf", "")
            .file("/etc/sysctl.d/100-late.conf", "");
        assert_eq!(
            paths(&tree.scan().boot_files()),
            [
                "/etc/sysctl.d/100-late.conf",
                "/etc/sysctl.d/99-Z.conf",
                "/etc/sysctl.d/99-portd.conf",
                "/etc/sysctl.d/99-sysctl.conf",
            ]
        );
    }

    #[test]
    fn the_last_assignment_in_the_last_file_wins() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/50-vendor.conf",
            "net.ipv4.ip_local_port_range = 32768 60999\n",
        )
        .file(
            "/etc/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_port_range = 20000 60999\n",
        )
        .file(
            "/run/sysctl.d/70-pin.conf",
            "net.ipv4.ip_local_port_range = 40000 50001\n\
             net.ipv4.ip_local_port_range = 40000 50999\n",
        );
        let host = tree.host();
        let all = assignments_for(&host, RANGE).unwrap();
        assert_eq!(
            all.iter().map(at).collect::<Vec<_>>(),
            [
                "/usr/lib/sysctl.d/50-vendor.conf:1",
                "/etc/sysctl.d/60-portd.conf:1",
                "/run/sysctl.d/70-pin.conf:1",
                "/run/sysctl.d/70-pin.conf:2",
            ]
        );
        let win = winning(&host, RANGE).unwrap().unwrap();
        assert_eq!(at(&win), "/run/sysctl.d/70-pin.conf:2");
        assert_eq!(win.value, "40000 50999");
    }

    #[test]
    fn a_file_hides_same_named_files_in_lower_directories() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/80-tune.conf",
            "net.ipv4.ip_local_port_range = 1 2\n",
        )
        .file(
            "/usr/local/lib/sysctl.d/80-tune.conf",
            "net.ipv4.ip_local_port_range = 3 4\n",
        )
        .file(
            "/run/sysctl.d/80-tune.conf",
            "net.ipv4.ip_local_port_range = 5 6\n",
        )
        .file(
            "/run/sysctl.d/90-x.conf",
            "net.ipv4.ip_local_reserved_ports = 1\n",
        )
        .file(
            "/etc/sysctl.d/90-x.conf",
            "net.ipv4.ip_local_reserved_ports = 2\n",
        );
        let scan = tree.scan();
        assert_eq!(
            paths(&scan.boot_files()),
            ["/run/sysctl.d/80-tune.conf", "/etc/sysctl.d/90-x.conf"]
        );
        assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("5 6"));
        assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("2"));
        let hidden: Vec<(String, String)> = scan
            .shadowed
            .iter()
            .map(|s| (s.path.display().to_string(), s.by.display().to_string()))
            .collect();
        assert_eq!(
            hidden,
            [
                (
                    "/usr/local/lib/sysctl.d/80-tune.conf".to_string(),
                    "/run/sysctl.d/80-tune.conf".to_string()
                ),
                (
                    "/usr/lib/sysctl.d/80-tune.conf".to_string(),
                    "/run/sysctl.d/80-tune.conf".to_string()
                ),
                (
                    "/run/sysctl.d/90-x.conf".to_string(),
                    "/etc/sysctl.d/90-x.conf".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_symlink_to_dev_null_masks_a_vendor_file() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/50-base.conf",
            "net.ipv4.ip_local_port_range = 32768 60999\n",
        )
        .file(
            "/usr/lib/sysctl.d/95-pin.conf",
            "net.ipv4.ip_local_port_range = 10000 10001\n",
        )
        .link("/etc/sysctl.d/95-pin.conf", "/dev/null");
        let scan = tree.scan();
        assert_eq!(
            paths(&scan.boot_files()),
            [
                "/usr/lib/sysctl.d/50-base.conf",
                "/etc/sysctl.d/95-pin.conf"
            ]
        );
        assert_eq!(scan.files[1].state, FileState::Masked);
        assert_eq!(scan.files[1].target, Path::new("/dev/null"));
        assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("32768 60999"));
    }

    #[test]
    fn a_dangling_symlink_sets_nothing_but_still_hides() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/95-pin.conf",
            "net.ipv4.ip_local_port_range = 10000 10001\n",
        )
        .link("/etc/sysctl.d/95-pin.conf", "/nonexistent.conf");
        let scan = tree.scan();
        assert_eq!(scan.files.len(), 1);
        assert_eq!(scan.files[0].state, FileState::Dangling);
        assert_eq!(scan.winning(RANGE), None);
    }

    #[test]
    fn debian_sysctl_conf_acts_as_99_sysctl_conf() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.conf",
            "net.ipv4.ip_local_port_range = 45000 65000\n",
        )
        .link("/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf")
        .file(
            "/etc/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_port_range = 20000 60999\n",
        );
        let scan = tree.scan();
        let win = scan.winning(RANGE).unwrap();
        assert_eq!(at(&win), "/etc/sysctl.d/99-sysctl.conf:1");
        assert_eq!(scan.files[1].target, Path::new("/etc/sysctl.conf"));
        assert_eq!(
            scan.sysctl_conf,
            SysctlConf::Linked {
                via: PathBuf::from("/etc/sysctl.d/99-sysctl.conf")
            }
        );
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_host_root() {
        let tree = Tree::new();
        tree.file(
            "/srv/conf/admin.conf",
            "net.ipv4.ip_local_port_range = 30000 40001\n",
        )
        .link("/etc/sysctl.d/70-admin.conf", "/srv/conf/admin.conf")
        .file(
            "/srv/other/50-x.conf",
            "net.ipv4.ip_local_reserved_ports = 8080\n",
        )
        .link("/run/sysctl.d", "/srv/other");
        let scan = tree.scan();
        assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("30000 40001"));
        // systemd names files under the resolved directory.
        assert_eq!(
            paths(&scan.boot_files()),
            ["/srv/other/50-x.conf", "/etc/sysctl.d/70-admin.conf"]
        );
        assert_eq!(scan.files[1].target, Path::new("/srv/conf/admin.conf"));
    }

    #[test]
    fn a_symlink_loop_is_an_error_naming_the_file() {
        let tree = Tree::new();
        tree.link("/etc/sysctl.d/10-a.conf", "10-b.conf")
            .link("/etc/sysctl.d/10-b.conf", "10-a.conf");
        let err = scan(&tree.host()).unwrap_err();
        assert!(err.to_string().contains("/etc/sysctl.d/10-a.conf"), "{err}");
    }

    #[test]
    fn sysctl_conf_without_the_link_is_reported_as_unlinked() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.conf",
            "# admin\nnet.ipv4.ip_local_port_range = 45000 65000\n",
        )
        .file(
            "/usr/lib/sysctl.d/50-base.conf",
            "net.ipv4.ip_local_port_range = 32768 60999\n",
        );
        let scan = tree.scan();
        assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("32768 60999"));
        match &scan.sysctl_conf {
            SysctlConf::Unlinked { assignments } => {
                assert_eq!(assignments.len(), 1);
                assert_eq!(at(&assignments[0]), "/etc/sysctl.conf:2");
            }
            other => panic!("expected Unlinked, got {other:?}"),
        }
        let empty = Tree::new();
        assert_eq!(empty.scan().sysctl_conf, SysctlConf::Absent);
    }

    #[test]
    fn later_files_that_set_the_key_override_portds_dropin() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/50-vendor.conf",
            "net.ipv4.ip_local_port_range = 32768 60999\n",
        )
        .file(
            "/usr/lib/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_port_range = 1 2\n",
        )
        .file(
            "/etc/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_port_range = 20000 60999\n",
        )
        .file(
            "/run/sysctl.d/70-pin.conf",
            "net.ipv4.ip_local_port_range = 20000 60999\nnet.ipv4.* = 1\n",
        )
        .file(
            "/etc/sysctl.d/99-exclude.conf",
            "-net.ipv4.ip_local_port_range\n",
        )
        .file(
            "/etc/sysctl.d/99-other.conf",
            "net.ipv4.ip_local_reserved_ports = 5\n",
        );
        let host = tree.host();
        let overrides = later_overrides(&host, "60-portd.conf", RANGE).unwrap();
        assert_eq!(
            overrides.iter().map(at).collect::<Vec<_>>(),
            [
                "/run/sysctl.d/70-pin.conf:1",
                "/etc/sysctl.d/99-exclude.conf:1"
            ]
        );
        assert!(overrides[1].exclusion);
        // The exclusion wins: sysctl.d leaves the range alone at boot.
        assert_eq!(winning(&host, RANGE).unwrap(), None);
        assert!(
            later_overrides(&host, "99-zz-portd.conf", RANGE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn boot_value_excluding_the_dropin_is_what_others_set() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/40-admin.conf",
            "net.ipv4.ip_local_reserved_ports = 8080,9000-9010\n",
        )
        .file(
            "/etc/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_reserved_ports = 8080,9000-9010,41000\n",
        );
        let host = tree.host();
        assert_eq!(
            value(winning(&host, RESERVED).unwrap()).as_deref(),
            Some("8080,9000-9010,41000")
        );
        let without = boot_value_excluding(&host, RESERVED, "60-portd.conf")
            .unwrap()
            .unwrap();
        assert_eq!(at(&without), "/etc/sysctl.d/40-admin.conf:1");
        assert_eq!(without.value, "8080,9000-9010");
        assert_eq!(
            boot_value_excluding(&host, RANGE, "60-portd.conf").unwrap(),
            None
        );
    }

    #[test]
    fn without_the_dropin_a_same_named_vendor_file_shows_through() {
        let tree = Tree::new();
        tree.file(
            "/usr/lib/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_reserved_ports = 7\n",
        )
        .file(
            "/etc/sysctl.d/60-portd.conf",
            "net.ipv4.ip_local_reserved_ports = 7,41000\n",
        );
        let without = boot_value_excluding(&tree.host(), RESERVED, "60-portd.conf").unwrap();
        assert_eq!(at(&without.unwrap()), "/usr/lib/sysctl.d/60-portd.conf:1");
    }

    #[test]
    fn slashes_and_dots_are_interchangeable_in_keys() {
        assert_eq!(normalize_key("net/ipv4/ip_local_port_range"), RANGE);
        assert_eq!(normalize_key(" net.ipv4.ip_local_port_range "), RANGE);
        assert_eq!(normalize_key("/net//ipv4/./ip_local_port_range/"), RANGE);
        // The first separator decides: a dot inside a slash path is literal.
        assert_eq!(
            normalize_key("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(
            normalize_key("net.ipv4.conf.eth0/100.rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/10-a.conf",
            "net/ipv4/ip_local_port_range = 30000 40001\n",
        );
        let win = winning(&tree.host(), "net/ipv4/ip_local_port_range")
            .unwrap()
            .unwrap();
        assert_eq!(win.key, RANGE);
        assert_eq!(
            value(winning(&tree.host(), RANGE).unwrap()).as_deref(),
            Some("30000 40001")
        );
    }

    #[test]
    fn syntax_comments_whitespace_and_the_dash_prefix() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/10-a.conf",
            "# comment = 1\n\
             ; net.ipv4.ip_local_port_range = 1 2\n\
             \n\
             \t -net.ipv4.ip_local_reserved_ports\t=  8080,8081 \r\n\
             not an assignment\n\
             = 5\n\
             net.ipv4.ip_local_port_range=30000 40001 # kept\n",
        );
        let scan = tree.scan();
        let reserved = scan.winning(RESERVED).unwrap();
        assert_eq!(reserved.value, "8080,8081");
        assert!(reserved.ignore_failure);
        assert_eq!(reserved.line, 4);
        let range = scan.winning(RANGE).unwrap();
        assert_eq!(range.value, "30000 40001 # kept");
        assert!(!range.ignore_failure);
        assert_eq!(
            scan.warnings
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>(),
            [
                "/etc/sysctl.d/10-a.conf:5: line is not an assignment, ignored: not an assignment",
                "/etc/sysctl.d/10-a.conf:6: no key before '=', ignored: = 5",
            ]
        );
    }

    #[test]
    fn a_repeated_value_keeps_ignore_failure_from_any_line() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/10-a.conf",
            "-net.ipv4.ip_local_port_range = 30000 40001\n",
        )
        .file(
            "/etc/sysctl.d/20-b.conf",
            "net.ipv4.ip_local_port_range = 30000 40001\n",
        );
        let win = tree.scan().winning(RANGE).unwrap();
        assert_eq!(at(&win), "/etc/sysctl.d/20-b.conf:1");
        assert!(win.ignore_failure);
    }

    #[test]
    fn globs_apply_only_to_keys_nobody_names() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/10-a.conf",
            "net.ipv4.ip_local_port_range = 30000 40001\n",
        )
        .file("/etc/sysctl.d/20-glob.conf", "net.ipv4.ip_local_* = 1 2\n");
        let scan = tree.scan();
        assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("30000 40001"));
        // Not named anywhere: the glob sets it.
        let glob = scan.winning(RESERVED).unwrap();
        assert!(glob.glob);
        assert_eq!(glob.key, "net.ipv4.ip_local_*");
        assert_eq!(
            scan.assignments_for(RANGE)
                .iter()
                .map(|a| at(a))
                .collect::<Vec<_>>(),
            ["/etc/sysctl.d/10-a.conf:1", "/etc/sysctl.d/20-glob.conf:1"]
        );
        // Globs do not override portd's explicit assignment.
        assert_eq!(scan.later_overrides("05-portd.conf", RANGE).len(), 1);
    }

    #[test]
    fn an_exclusion_keeps_a_glob_off_a_key() {
        let tree = Tree::new();
        tree.file(
            "/etc/sysctl.d/10-a.conf",
            "net.ipv4.ip_local_* = 1 2\n-net.ipv4.ip_local_port_range\n",
        );
        let scan = tree.scan();
        assert_eq!(scan.winning(RANGE), None);
        assert!(scan.assignments_for(RANGE)[1].exclusion);
        assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("1 2"));
    }

    #[test]
    fn of_two_globs_the_one_applied_last_wins() {
        let tree = Tree::new();
        tree.file("/etc/sysctl.d/10-a.conf", "net.ipv4.* = a\n")
            .file("/etc/sysctl.d/20-b.conf", "net.ipv4.ip_local_* = b\n")
            // Same value: systemd keeps 10-a's place, so 20-b still applies after it.
            .file("/etc/sysctl.d/30-c.conf", "net.ipv4.* = a\n");
        assert_eq!(value(tree.scan().winning(RANGE)).as_deref(), Some("b"));
        tree.file("/etc/sysctl.d/40-d.conf", "net.ipv4.* = d\n");
        assert_eq!(value(tree.scan().winning(RANGE)).as_deref(), Some("d"));
    }

    #[test]
    fn glob_wildcards_stop_at_separators() {
        assert!(key_matches_glob("net.ipv4.*", RANGE));
        assert!(key_matches_glob("net.*.ip_local_port_range", RANGE));
        assert!(key_matches_glob("net.ipv?.ip_local_*_range", RANGE));
        assert!(key_matches_glob("net.ipv[46].ip_local_port_range", RANGE));
        assert!(key_matches_glob("net.ipv[0-9].ip_local_port_range", RANGE));
        assert!(!key_matches_glob("net.ipv[!4].ip_local_port_range", RANGE));
        assert!(!key_matches_glob("net.*", RANGE));
        assert!(!key_matches_glob("net.ipv6.*", RANGE));
        assert!(!key_matches_glob("net.ipv4.ip_local_port_range?", RANGE));
        assert!(key_matches_glob("a.[b", "a.[b"));
        assert!(key_matches_glob("a.[]x]", "a.]"));
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let tree = Tree::new();
        // A directory named like a file: reading it fails for root too.
        fs::create_dir_all(tree.real("/etc/sysctl.d/50-dir.conf")).unwrap();
        let err = scan(&tree.host()).unwrap_err();
        assert!(matches!(err, SysctldError::ReadFile { .. }));
        assert_eq!(
            err.to_string().split(':').next(),
            Some("cannot read /etc/sysctl.d/50-dir.conf")
        );

        let linked = Tree::new();
        fs::create_dir_all(linked.real("/srv/dir.conf")).unwrap();
        linked.link("/etc/sysctl.d/60-link.conf", "/srv/dir.conf");
        let err = scan(&linked.host()).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next(),
            Some("cannot read /etc/sysctl.d/60-link.conf (-> /srv/dir.conf)")
        );
    }

    #[test]
    fn lib_sysctl_d_is_read_only_where_lib_is_a_real_directory() {
        let merged = Tree::new();
        merged
            .file("/usr/lib/sysctl.d/50-a.conf", "")
            .link("/lib", "usr/lib");
        assert_eq!(
            paths(&merged.scan().boot_files()),
            ["/usr/lib/sysctl.d/50-a.conf"]
        );
        let split = Tree::new();
        split
            .file("/usr/lib/sysctl.d/50-a.conf", "")
            .file("/lib/sysctl.d/50-a.conf", "")
            .file("/lib/sysctl.d/40-b.conf", "");
        assert_eq!(
            paths(&split.scan().boot_files()),
            ["/lib/sysctl.d/40-b.conf", "/usr/lib/sysctl.d/50-a.conf"]
        );
    }
}
