//! The harness checks itself: tests take their names from their functions,
//! the sandbox guard refuses the host's namespaces, and the sandbox writes
//! nowhere but its own tmpfs mounts and network namespace.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use super::sandbox::Sandbox;
use super::util::{assert_private_namespaces, root_test, test_name};

#[test]
fn a_test_is_named_after_its_own_function() {
    assert_eq!(test_name!(), "a_test_is_named_after_its_own_function");
}

#[test]
#[should_panic(expected = "shares the net namespace of /proc/self")]
fn the_sandbox_guard_refuses_the_hosts_network_namespace() {
    assert_private_namespaces(std::process::id(), &["net"]);
}

#[test]
#[should_panic(expected = "shares the mnt namespace of /proc/self")]
fn the_sandbox_guard_refuses_the_hosts_mount_namespace() {
    assert_private_namespaces(std::process::id(), &["mnt"]);
}

#[test]
fn the_sandbox_writes_only_under_its_own_tmpfs_and_only_net_sysctls() {
    root_test!();
    let sandbox = Sandbox::builder().start();
    // Its /run is a tmpfs of its own: a file there is not the host's.
    sandbox.write_file("/run/portd/harness-probe", "x\n");
    assert_eq!(
        sandbox.read_file("/run/portd/harness-probe").as_deref(),
        Some("x\n")
    );
    assert!(!Path::new("/run/portd/harness-probe").exists());
    // Outside its tmpfs mounts, and for a global sysctl, it refuses.
    let refused = |f: &dyn Fn()| std::panic::catch_unwind(AssertUnwindSafe(f)).is_err();
    assert!(refused(
        &|| sandbox.write_file("/etc/portd-harness-probe", "x")
    ));
    assert!(refused(
        &|| sandbox.write_file("/run/../etc/portd-harness-probe", "x")
    ));
    assert!(!Path::new("/etc/portd-harness-probe").exists());
    assert!(refused(&|| sandbox.set_sysctl("kernel.hostname", "x")));
}
