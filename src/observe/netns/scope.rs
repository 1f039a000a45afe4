//! Whether portd watches other network namespaces from where it runs: only
//! from the host's namespace (pid 1's), on the real root. What discovery
//! can see, described; the daemon's watch and `status` act on it.

use crate::base::host::Host;

use super::discovery;

/// Whether portd watches other namespaces from where it runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Scope {
    /// In the host's namespace (pid 1's), on the real root.
    Others,
    /// A fixture root, or portd runs inside a container or a test's
    /// namespace: its own only, silently.
    OwnOnly,
    /// The host's namespace cannot be told: its own only, and why.
    Hidden(String),
}

pub fn scope(host: &Host) -> Scope {
    if host.root() != std::path::Path::new("/") {
        return Scope::OwnOnly;
    }
    let pid1 = match std::fs::read_link(host.proc("1/ns/net")) {
        Ok(link) => link.to_str().and_then(discovery::parse_link),
        Err(e) => {
            return Scope::Hidden(format!(
                "other network namespaces are not watched: /proc/1/ns/net: {e} (reading other processes' namespaces needs CAP_SYS_PTRACE outside a private user namespace: /usr/share/doc/portd/examples/containers.conf grants what watching them needs)"
            ));
        }
    };
    if pid1.is_some() && pid1 == discovery::own_inode(host) {
        Scope::Others
    } else {
        Scope::OwnOnly
    }
}
