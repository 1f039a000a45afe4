//! Which `sysctl.d` files systemd-sysctl reads and how: the directories,
//! the hiding of same-named files, symlinks chased inside the host root,
//! devices and oversized files skipped, and `/etc/sysctl.conf`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use super::{
    ConfFile, DROPIN_DIR, FILE_MAX_BYTES, FileState, MAX_SYMLINKS, SPLIT_USR_DIR, SYSCTL_CONF,
    SYSCTL_D_DIRS, Shadowed, Skipped, SysctlConf, SysctldError, Warning, parse,
};
use crate::base::host::Host;

/// What [`discover`] finds.
pub(super) struct Discovered {
    /// The effective files in application order.
    pub(super) effective: Vec<PathBuf>,
    pub(super) shadowed: Vec<Shadowed>,
    /// `/etc/sysctl.d`, resolved.
    pub(super) dropin_dir: PathBuf,
    /// For an `/etc/sysctl.d` file that hides others: its name and the
    /// file that would take its place.
    pub(super) understudies: Vec<(OsString, PathBuf)>,
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
pub(super) fn discover(host: &Host) -> Result<Discovered, SysctldError> {
    let mut by_name: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    let mut dropin_dir = PathBuf::from(DROPIN_DIR);
    let mut in_dropin_dir = Vec::new();
    for dir in sysctl_d_dirs(host) {
        // systemd names files under the directory's resolved path.
        let resolved = chase(host, Path::new(dir))?;
        if dir == DROPIN_DIR {
            dropin_dir.clone_from(&resolved);
        }
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
            if dir == DROPIN_DIR {
                in_dropin_dir.push(name.clone());
            }
            let path = resolved.join(&name);
            by_name.entry(name).or_default().push(path);
        }
    }
    let mut effective = Vec::with_capacity(by_name.len());
    let mut shadowed = Vec::new();
    let mut understudies = Vec::new();
    for (name, mut paths) in by_name {
        if paths.len() > 1 && in_dropin_dir.contains(&name) {
            understudies.push((name, paths[1].clone()));
        }
        let winner = paths.remove(0);
        shadowed.extend(paths.into_iter().map(|path| Shadowed {
            path,
            by: winner.clone(),
        }));
        effective.push(winner);
    }
    Ok(Discovered {
        effective,
        shadowed,
        dropin_dir,
        understudies,
    })
}

/// `*.conf`, skipping hidden files as systemd's `FOREACH_DIRENT` does (its
/// other skipped names, backups like `*.dpkg-old`, cannot end in `.conf`).
fn is_conf_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    !name.starts_with(b".") && name.ends_with(b".conf")
}

/// Resolves an effective file and reads it unless it is masked, dangling or
/// skipped (then recorded in `skipped`).
pub(super) fn load(
    host: &Host,
    path: &Path,
    skipped: &mut Vec<Skipped>,
) -> Result<(ConfFile, Option<Vec<u8>>), SysctldError> {
    let target = match chase(host, path) {
        Ok(target) => target,
        Err(SysctldError::SymlinkLoop { .. }) => {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                reason: "too many levels of symbolic links".into(),
            });
            let file = ConfFile {
                path: path.to_path_buf(),
                target: path.to_path_buf(),
                state: FileState::Skipped,
            };
            return Ok((file, None));
        }
        Err(e) => return Err(e),
    };
    let file = |state| ConfFile {
        path: path.to_path_buf(),
        target: target.clone(),
        state,
    };
    // A fixture tree has no /dev/null of its own: the link text decides.
    if target == Path::new("/dev/null") {
        return Ok((file(FileState::Masked), None));
    }
    match read_target(host, path, &target)? {
        // sysctl.c's parse_file() ignores ENOENT.
        TargetRead::Missing => Ok((file(FileState::Dangling), None)),
        TargetRead::Device => Ok((file(FileState::Masked), None)),
        TargetRead::Skip(reason) => {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                reason,
            });
            Ok((file(FileState::Skipped), None))
        }
        TargetRead::Text(text) => Ok((file(FileState::Parsed), Some(text))),
    }
}

/// What a resolved sysctl.d entry is on disk.
enum TargetRead {
    Text(Vec<u8>),
    Missing,
    /// A character device: `/dev/null` masks, and none is read.
    Device,
    /// Neither a regular file nor a character device; why it is skipped.
    Skip(String),
}

/// Reads the regular file at `target` (the resolved `path`), never opening
/// anything else: a FIFO would block the open, a directory fails the read.
fn read_target(host: &Host, path: &Path, target: &Path) -> Result<TargetRead, SysctldError> {
    let real = on_disk(host, target);
    let error = |source| SysctldError::ReadFile {
        file: path.to_path_buf(),
        target: (target != path).then(|| target.to_path_buf()),
        source,
    };
    let kind = match fs::metadata(&real) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TargetRead::Missing),
        Err(e) => return Err(error(e)),
        Ok(meta) => meta.file_type(),
    };
    if kind.is_char_device() {
        return Ok(TargetRead::Device);
    }
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "of an unknown type"
        };
        return Ok(TargetRead::Skip(format!("{what}, not a regular file")));
    }
    crate::base::fsutil::read_regular(&real, FILE_MAX_BYTES)
        .map(TargetRead::Text)
        .map_err(error)
}

pub(super) fn sysctl_conf(
    host: &Host,
    files: &[ConfFile],
    warnings: &mut Vec<Warning>,
    skipped: &mut Vec<Skipped>,
) -> Result<SysctlConf, SysctldError> {
    let path = Path::new(SYSCTL_CONF);
    let target = match chase(host, path) {
        Ok(target) => target,
        Err(SysctldError::SymlinkLoop { .. }) => {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                reason: "too many levels of symbolic links".into(),
            });
            return Ok(SysctlConf::Absent);
        }
        Err(e) => return Err(e),
    };
    if let Some(link) = files.iter().find(|f| f.target == target) {
        return Ok(SysctlConf::Linked {
            via: link.path.clone(),
        });
    }
    let text = match read_target(host, path, &target)? {
        TargetRead::Text(text) => text,
        TargetRead::Missing => return Ok(SysctlConf::Absent),
        // procps reads `/dev/null` as an empty file.
        TargetRead::Device => Vec::new(),
        TargetRead::Skip(reason) => {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                reason,
            });
            return Ok(SysctlConf::Absent);
        }
    };
    let mut assignments = Vec::new();
    parse(path, &text, &mut assignments, warnings);
    Ok(SysctlConf::Unlinked { assignments })
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
