//! The host root: every path portd touches is resolved under one directory, so
//! tests and `--root` run the whole program against a fixture tree.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
    /// Another network namespace's view (src/observe/netns/): `/proc/net/...` is
    /// read from `/proc/<dir>/net/...` (a pid of that namespace, or
    /// `thread-self` on a thread that entered it). `/proc/sys` always
    /// follows the calling thread's namespace.
    net: Option<String>,
}

impl Default for Host {
    fn default() -> Self {
        Host::new("/")
    }
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host {
            root: root.into(),
            net: None,
        }
    }

    /// The same root, with `/proc/net` read from `/proc/<dir>/net`.
    pub fn with_net_dir(&self, dir: impl Into<String>) -> Self {
        Host {
            root: self.root.clone(),
            net: Some(dir.into()),
        }
    }

    pub fn net_dir(&self) -> Option<&str> {
        self.net.as_deref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` is an absolute host path such as `/proc/net/tcp`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn proc(&self, rel: &str) -> PathBuf {
        if let Some(dir) = &self.net
            && (rel == "net" || rel.starts_with("net/"))
        {
            return self.path("proc").join(dir).join(rel);
        }
        self.path("proc").join(rel)
    }

    pub fn proc_sys(&self, key: &str) -> PathBuf {
        self.proc(&crate::base::kernel::sysctl_path(key))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("/var/lib/portd")
    }

    pub fn policy_file(&self) -> PathBuf {
        self.path("/etc/portd.toml")
    }
}
