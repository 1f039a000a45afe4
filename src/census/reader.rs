//! Reads small `/proc` files for a process that reads them every poll.
//!
//! [`Fresh`] opens each file anew (commands). [`KeptOpen`] keeps each file
//! open and re-reads it with `pread` at offset 0: the kernel regenerates a
//! `/proc/sys` or seq_file value on a read at offset 0, and the network
//! namespace is fixed when the file is opened (kernel.md §4.1), which for
//! the daemon is its own and never changes. Looking up five `/proc/sys`
//! paths anew each second was most of an idle poll's cost
//! (docs/benchmarks.md, "Daemon").

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub trait ProcRead {
    fn read_text(&mut self, path: &Path) -> io::Result<String>;
}

/// Opens every file anew.
pub struct Fresh;

impl ProcRead for Fresh {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Keeps files open between reads; a file that fails is closed and opened
/// anew on the next read.
#[derive(Default)]
pub struct KeptOpen {
    files: HashMap<PathBuf, File>,
    buf: Vec<u8>,
}

impl ProcRead for KeptOpen {
    fn read_text(&mut self, path: &Path) -> io::Result<String> {
        let file = match self.files.get(path) {
            Some(f) => f,
            None => {
                let f = File::open(path)?;
                self.files.entry(path.to_owned()).or_insert(f)
            }
        };
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let result = loop {
            match file.read_at(&mut chunk, self.buf.len() as u64) {
                Ok(0) => break Ok(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            self.files.remove(path);
            return Err(e);
        }
        String::from_utf8(self.buf.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
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
