//! The observers: what the kernel and the files on the host say, read and
//! never changed. The census of sockets (netlink, or `/proc/net` as the
//! fallback) and its usage per destination, the failure witness's BPF maps,
//! the other network namespaces and their names, the `sysctl.d` files
//! systemd-sysctl will apply, and which processes hold the sockets.
//!
//! May import `base` and `policy`.

pub(crate) mod attribution;
pub mod census;
pub mod netns;
pub mod sysctld;
pub mod usage;
pub mod witness;
