//! Reads small `/proc` files for a process that reads them every poll.
//!
//! [`Fresh`] opens each file anew (commands). [`KeptOpen`] keeps each file
//! open and re-reads it with `pread` at offset 0: the kernel regenerates a
//! `/proc/sys` or seq_file value on a read at offset 0, and the network
//! namespace is fixed when the file is opened (docs/kernel.md §4.1), which for
//! the daemon is its own and never changes. Looking up five `/proc/sys`
//! paths anew each second was most of an idle poll's cost
//! (docs/benchmarks.md, "Daemon").

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::base::fsutil;

/// The longest value portd reads from one `/proc` file: an
/// `ip_local_reserved_ports` that lists every other port prints about
/// 200 KB (docs/kernel.md §2.1).
pub const VALUE_MAX: usize = 256 * 1024;

/// What the first read of a file asks for. `/proc/sys` allocates and zeroes
/// a kernel buffer of the size a read asks for (`proc_sys_call_handler`,
/// fs/proc/proc_sysctl.c): asking for [`VALUE_MAX`] each time zeroed 1.3 MB
/// of pages per poll, the largest part of an idle poll's CPU
/// (docs/benchmarks.md, "Idle poll cost"). One byte under a page: the
/// kernel's buffer is one byte longer than the read.
const FIRST_READ: usize = 4096 - 1;

/// The next size to ask for after a read that filled `size` bytes.
fn larger(size: usize) -> usize {
    ((size + 1) * 4 - 1).min(VALUE_MAX)
}

/// One `read()` at offset 0, retried when interrupted.
fn read_at_start(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read_at(buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads a whole `/proc` value with one `read()` at offset 0 into `buf`: the
/// kernel's `proc_do_large_bitmap()` (`ip_local_reserved_ports`, kernel/sysctl.c)
/// returns end of file for a read at any other offset, so a second read
/// would cut the value. A read that fills what it asked for may have been
/// cut: the value is read again at offset 0 (the kernel regenerates it)
/// asking for about four times as much, up to [`VALUE_MAX`]; a read that
/// fills that is an error. `size` is what to ask for first, and keeps what
/// sufficed.
fn read_value<'b>(file: &File, buf: &'b mut Vec<u8>, size: &mut usize) -> io::Result<&'b str> {
    let n = loop {
        let want = (*size).clamp(1, VALUE_MAX);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = read_at_start(file, &mut buf[..want])?;
        if n < want {
            break n;
        }
        if want == VALUE_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the value is {n} bytes or longer, more than portd reads from a /proc file"
                ),
            ));
        }
        *size = larger(want);
    };
    std::str::from_utf8(&buf[..n])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens a `/proc` file. Real ones are regular files; under a fixture root
/// a FIFO or device must neither block the open nor be read.
fn open(path: &Path) -> io::Result<File> {
    fsutil::open_regular(path)
}

/// Reads one `/proc` value (a `/proc/sys` key, `sockstat`, `snmp`) from a
/// fresh open, by the rule of [`read_value`].
pub fn read_proc_value(path: &Path) -> io::Result<String> {
    let (mut buf, mut size) = (Vec::new(), FIRST_READ);
    read_value(&open(path)?, &mut buf, &mut size).map(str::to_owned)
}

pub trait ProcRead {
    fn read_text(&mut self, path: &Path) -> io::Result<String>;
}

/// Opens every file anew.
pub struct Fresh;

impl ProcRead for Fresh {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        read_proc_value(path)
    }
}

/// Keeps files open between reads, each with the size its last read
/// needed, and one buffer; a file that fails is closed and opened anew on
/// the next read. A handful of files, found by comparing their paths'
/// bytes: cheaper than hashing each path on every read.
#[derive(Default)]
pub struct KeptOpen {
    files: Vec<(PathBuf, File, usize)>,
    buf: Vec<u8>,
}

impl ProcRead for KeptOpen {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        let bytes = path.as_os_str().as_encoded_bytes();
        let i = match (self.files.iter())
            .position(|(p, _, _)| p.as_os_str().as_encoded_bytes() == bytes)
        {
            Some(i) => i,
            None => {
                self.files.push((path.to_owned(), open(path)?, FIRST_READ));
                self.files.len() - 1
            }
        };
        let (_, file, size) = &mut self.files[i];
        match read_value(file, &mut self.buf, size) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => {
                self.files.swap_remove(i);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_open_rereads_the_current_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        std::fs::write(&p, "40000\t40099\n").unwrap();
        let mut r = KeptOpen::default();
        assert_eq!(r.read_text(&p).unwrap(), "40000\t40099\n");
        // Rewritten in place (as the kernel regenerates a value).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .write_all_at(b"40000\t40199\n", 0)
            .unwrap();
        assert_eq!(r.read_text(&p).unwrap(), "40000\t40199\n");
        assert!(
            r.read_text(&dir.path().join("missing"))
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_value_that_fills_the_buffer_is_an_error_not_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let longest = "1,".repeat((VALUE_MAX - 1) / 2);
        std::fs::write(&p, &longest).unwrap();
        assert_eq!(Fresh.read_text(&p).unwrap(), longest);
        assert_eq!(KeptOpen::default().read_text(&p).unwrap(), longest);
        std::fs::write(&p, "1".repeat(VALUE_MAX)).unwrap();
        for err in [
            Fresh.read_text(&p).unwrap_err(),
            KeptOpen::default().read_text(&p).unwrap_err(),
        ] {
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("262144 bytes or longer"), "{err}");
        }
    }

    /// A value as long as the first read or longer is read again at
    /// offset 0, whole, and the next read asks for enough at once.
    #[test]
    fn a_value_longer_than_the_first_read_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let mut r = KeptOpen::default();
        for len in [
            FIRST_READ - 1,
            FIRST_READ,
            FIRST_READ + 1,
            larger(FIRST_READ) + 7,
        ] {
            let value = "7".repeat(len);
            std::fs::write(&p, &value).unwrap();
            assert_eq!(Fresh.read_text(&p).unwrap(), value, "{len}");
            assert_eq!(r.read_text(&p).unwrap(), value, "{len}");
            assert_eq!(r.read_text(&p).unwrap(), value, "{len}");
            let size = r.files.iter().find(|f| f.0 == p).map(|f| f.2);
            assert!(size > Some(len), "{len}: asks for enough at once");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ip_local_port_range");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for err in [
            Fresh.read_text(&fifo).unwrap_err(),
            KeptOpen::default().read_text(&fifo).unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("not a regular file (a FIFO)"),
                "{err}"
            );
        }
    }

    /// `sockstat` and `snmp` are single-record seq_files: one read at
    /// offset 0 returns all of them, as a read to the end does.
    #[test]
    fn one_read_returns_whole_proc_net_files() {
        for name in ["sockstat", "snmp"] {
            let path = Path::new("/proc/net").join(name);
            let once = read_proc_value(&path).unwrap();
            let whole = std::fs::read_to_string(&path).unwrap();
            let shape = |t: &str| -> Vec<String> {
                t.lines()
                    .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                    .collect()
            };
            assert_eq!(shape(&once), shape(&whole), "{name}");
            assert!(once.ends_with('\n'), "{name}: {once:?}");
        }
    }

    #[test]
    fn kept_open_reads_live_proc_files_again_and_again() {
        let mut r = KeptOpen::default();
        let path = Path::new("/proc/sys/net/ipv4/ip_local_port_range");
        let first = r.read_text(path).unwrap();
        assert_eq!(r.read_text(path).unwrap(), first);
        let stat = Path::new("/proc/net/sockstat");
        assert!(r.read_text(stat).unwrap().starts_with("sockets:"));
        assert!(r.read_text(stat).unwrap().starts_with("sockets:"));
    }
}
