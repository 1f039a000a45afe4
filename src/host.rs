//! The host root: every path portd touches is resolved under one directory, so
//! tests and `--root` run the whole program against a fixture tree.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::new("/")
    }
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` is an absolute host path such as `/proc/net/tcp`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn proc(&self, rel: &str) -> PathBuf {
        self.path("proc").join(rel)
    }

    pub fn proc_sys(&self, key: &str) -> PathBuf {
        self.proc(&crate::kernel::sysctl_path(key))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("/var/lib/portd")
    }

    pub fn policy_file(&self) -> PathBuf {
        self.path("/etc/portd.toml")
    }
}
