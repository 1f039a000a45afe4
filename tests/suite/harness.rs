//! The harness checks itself: tests take their names from their functions,
//! and the sandbox guard refuses the host's namespaces.

use super::util::{assert_private_namespaces, test_name};

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
