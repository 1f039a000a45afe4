//! Atomic file replacement and the one-writer lock.
//!
//! A file is replaced by writing a temp file in the same directory, fsync,
//! rename over the target, fsync the directory; everything is opened
//! relative to the directory and never follows a symlink, so a crash leaves
//! either the complete old or the complete new file (docs/kernel.md §7.3).
//! Files rebuilt every poll (the metrics textfile, the live view) are
//! replaced by the same rename without the fsyncs ([`replace_ephemeral_at`]):
//! a reader never sees half a file, and a crash at worst loses the last
//! version, which the next poll writes again.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

/// Temp files start with '.' and do not end in ".conf", so systemd-sysctl
/// never reads a half-written one.
fn temp_name(name: &str) -> String {
    format!(".{name}.portd-tmp-{}", std::process::id())
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `dir`, which must be a directory itself and not a symbolic link
/// to one (the last component is never followed), creating it with `mode`
/// when it is missing: for a directory portd owns, such as its runtime
/// directory, where a link could send its files elsewhere.
pub fn open_own_dir(dir: &Path, mode: u32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut created = false;
    if let Err(e) = std::fs::symlink_metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => created = true,
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {}
        }
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link or not a directory; portd writes there only into a \
                 directory of its own (remove it: portd creates it, mode 0755)",
                dir.display()
            ),
        ),
        e => e.into(),
    })?;
    if created {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?; // not subject to umask
    }
    Ok(fd)
}

/// Replaces `dir/name` with `contents` atomically, with permissions `mode`.
pub fn atomic_write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    atomic_write_at(&open_dir(dir)?, dir, name, contents, mode)
}

/// Temporary names tried, one after the other, when something that cannot
/// be removed (a directory) sits at the first.
const TEMP_ATTEMPTS: u32 = 5;

/// [`atomic_write`] into a directory already opened ([`open_own_dir`]);
/// `dir` names it in errors.
pub fn atomic_write_at(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> io::Result<()> {
    replace_at(dirfd, dir, name, contents, mode, Durability::Durable)
}

/// Replaces `dir/name` atomically (a reader sees the old or the new file,
/// never part of one) but without fsync: for a file rebuilt every poll,
/// whose loss in a crash the next poll repairs. Never for the state or a
/// drop-in ([`atomic_write`]).
pub fn replace_ephemeral(dir: &Path, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    replace_ephemeral_at(&open_dir(dir)?, dir, name, contents, mode)
}

/// [`replace_ephemeral`] into a directory already opened.
pub fn replace_ephemeral_at(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> io::Result<()> {
    replace_at(dirfd, dir, name, contents, mode, Durability::Ephemeral)
}

#[derive(Clone, Copy, PartialEq)]
enum Durability {
    /// fsync the file before the rename and the directory after it.
    Durable,
    /// The rename alone.
    Ephemeral,
}

fn replace_at(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let (fd, tmp) = create_temp(dirfd, dir, name, mode)?;
    let durable = durability == Durability::Durable;
    let result = (|| -> io::Result<()> {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?; // not subject to umask
        let mut file = File::from(fd);
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        rustix::fs::renameat(dirfd, tmp.as_str(), dirfd, name)?;
        if durable {
            rustix::fs::fsync(dirfd)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dirfd, tmp.as_str(), AtFlags::empty());
    }
    result
}

/// Creates the temporary file beside `name`: a stale one of this pid is
/// removed first; a directory or anything else that stays there is left
/// alone and the next name is tried. The error names the last name tried.
fn create_temp(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    mode: u32,
) -> io::Result<(OwnedFd, String)> {
    let mut attempt = 0;
    loop {
        let tmp = match attempt {
            0 => temp_name(name),
            n => format!("{}.{n}", temp_name(name)),
        };
        // A temp file left by a killed earlier run of this pid is stale.
        let _ = rustix::fs::unlinkat(dirfd, tmp.as_str(), AtFlags::empty());
        match rustix::fs::openat(
            dirfd,
            tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => return Ok((fd, tmp)),
            Err(rustix::io::Errno::EXIST) if attempt + 1 < TEMP_ATTEMPTS => attempt += 1,
            Err(e) => {
                let e = io::Error::from(e);
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create the temporary file {}: {e}{}",
                        dir.join(&tmp).display(),
                        if attempt > 0 {
                            " (the names before it are taken too; remove what is there)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
    }
}

/// Removes `dir/name` (not following symlinks) and makes the removal durable.
/// Returns false when there was nothing to remove.
pub fn remove_in(dir: &Path, name: &str) -> io::Result<bool> {
    let dirfd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::unlinkat(&dirfd, name, AtFlags::empty()) {
        Ok(()) => {
            rustix::fs::fsync(&dirfd)?;
            Ok(true)
        }
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes temp files of earlier, killed runs (any pid) for `name`.
pub fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.portd-tmp-");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads a whole regular file of at most `limit` bytes.
///
/// A FIFO, device or socket at the path would block or never end (a FIFO
/// with no writer, `/dev/zero`): the open never blocks (`O_NONBLOCK`), and
/// anything but a regular file is refused, as systemd-sysctl skips it.
/// Symlinks are followed (admins link sysctl.d entries and policies); the
/// type checked is the target's, on the opened descriptor.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_to_limit(open_regular(path)?, limit)
}

/// Opens a regular file for reading as [`read_regular`] does, for a caller
/// that inspects the open file (`fstat`) or streams it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if kind != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a regular file (a {}); expected a regular file",
                file_type_name(kind)
            ),
        ));
    }
    Ok(File::from(fd))
}

/// Reads `file` to its end, refusing more than `limit` bytes.
pub fn read_to_limit(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut contents = Vec::new();
    // One byte more than allowed tells "too long" from "exactly the limit".
    file.take(limit.saturating_add(1))
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes, the most portd reads from this file"),
        ));
    }
    Ok(contents)
}

/// As [`read_regular`], as UTF-8 text.
pub fn read_regular_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn file_type_name(kind: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// An exclusive `flock` held for the life of the value: `portd run` and
/// `portd rollback` take it so that there is one writer.
pub struct WriterLock {
    _fd: OwnedFd,
}

/// Why the writer lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Creating the state directory, opening or locking the lock file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another portd (run or rollback) holds {}; only one may change the port range at a time",
        path.display()
    )]
    Held { path: PathBuf },
}

impl WriterLock {
    pub fn acquire(dir: &Path) -> Result<WriterLock, LockError> {
        let failed = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(failed("create", dir))?;
        let path = dir.join("lock");
        let fd = rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| failed("open", &path)(e.into()))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(WriterLock { _fd: fd }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held { path }),
            Err(e) => Err(failed("lock", &path)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_at_portds_own_directory_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let own = dir.path().join("run/portd");
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &own).unwrap();
        let e = open_own_dir(&own, 0o755).unwrap_err().to_string();
        assert!(
            e.contains(&own.display().to_string()) && e.contains("symbolic link"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_own_directory_is_created_0755_and_written_into() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("run/portd");
        let fd = open_own_dir(&own, 0o755).unwrap();
        let meta = std::fs::symlink_metadata(&own).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        atomic_write_at(&fd, &own, "live.json", b"{}", 0o644).unwrap();
        assert_eq!(std::fs::read(own.join("live.json")).unwrap(), b"{}");
    }

    #[test]
    fn a_directory_at_the_temporary_name_is_stepped_around_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join(temp_name("state.json"));
        std::fs::create_dir(&blocker).unwrap();
        atomic_write(dir.path(), "state.json", b"{}\n", 0o644).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            b"{}\n"
        );
        assert!(blocker.is_dir(), "the directory is not portd's to remove");
    }

    #[test]
    fn when_every_temporary_name_is_taken_the_error_names_the_temporary_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = PathBuf::new();
        for n in 0..TEMP_ATTEMPTS {
            let name = match n {
                0 => temp_name("state.json"),
                n => format!("{}.{n}", temp_name("state.json")),
            };
            last = dir.path().join(name);
            std::fs::create_dir(&last).unwrap();
        }
        let e = atomic_write(dir.path(), "state.json", b"{}\n", 0o644)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("temporary file {}", last.display())),
            "{e}"
        );
        assert!(!dir.path().join("state.json").exists());
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        atomic_write(dir.path(), "a.conf", b"one\n", 0o644).unwrap();
        atomic_write(dir.path(), "a.conf", b"two\n", 0o644).unwrap();
        let p = dir.path().join("a.conf");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("a.conf")).unwrap();
        atomic_write(dir.path(), "a.conf", b"new\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(
            !std::fs::symlink_metadata(dir.path().join("a.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn read_regular_refuses_fifos_devices_and_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // No writer: a blocking open would hang here.
        let err = read_regular(&fifo, 1024).unwrap_err().to_string();
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        let err = read_regular(Path::new("/dev/zero"), 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("character device"), "{err}");
        let err = read_regular(dir.path(), 1024).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
    }

    #[test]
    fn read_regular_reads_up_to_the_limit_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"12345");
        let err = read_regular(&p, 4).unwrap_err().to_string();
        assert!(err.contains("longer than 4 bytes"), "{err}");
        assert!(
            read_regular(&dir.path().join("missing"), 4)
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = WriterLock::acquire(dir.path()).unwrap();
        let second = WriterLock::acquire(dir.path());
        let Err(e) = second else {
            panic!("a second writer got the lock");
        };
        assert!(matches!(&e, LockError::Held { path } if path == &dir.path().join("lock")));
        assert!(e.to_string().contains("another portd"), "{e}");
    }

    #[test]
    fn a_lock_that_cannot_be_opened_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        // The lock file's name taken by a dangling symlink: O_NOFOLLOW refuses it.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("lock")).unwrap();
        let Err(e) = WriterLock::acquire(dir.path()) else {
            panic!("locked through a symlink");
        };
        assert!(
            matches!(&e, LockError::Io { action: "open", path, .. } if path == &dir.path().join("lock")),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("cannot open "), "{e}");
    }
}
