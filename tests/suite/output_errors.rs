//! Output that cannot be written (`portd check > /dev/full`) is an error: a
//! message on stderr and a non-zero exit, never a panic or a silent 0. A
//! reader that closes the pipe early (`portd status | head -1`) is not.

use std::path::Path;
use std::process::{Output, Stdio};

use super::util::{fixture_host, portd};

/// `portd --root ROOT ARGS` with stdout on `/dev/full` (every write: ENOSPC).
fn to_dev_full(root: &Path, args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    portd()
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(full)
        .output()
        .unwrap()
}

fn assert_reported(args: &[&str], out: &Output, code: i32) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "portd {args:?}: {stderr}");
    assert!(
        stderr.contains("portd: cannot write output: No space left on device"),
        "portd {args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "portd {args:?}: {stderr}");
}

#[test]
fn check_to_a_full_device_exits_2_and_says_why() {
    let root = fixture_host();
    for args in [&["check"][..], &["check", "--json"]] {
        assert_reported(args, &to_dev_full(root.path(), args), 2);
    }
}

#[test]
fn status_to_a_full_device_is_unknown_and_says_why() {
    let root = fixture_host();
    for args in [&["status"][..], &["status", "--json"]] {
        assert_reported(args, &to_dev_full(root.path(), args), 3);
    }
}

#[test]
fn completions_help_and_version_to_a_full_device_exit_2_and_say_why() {
    let root = fixture_host();
    for args in [&["completions", "bash"][..], &["--help"], &["--version"]] {
        assert_reported(args, &to_dev_full(root.path(), args), 2);
    }
}

#[test]
fn rollback_to_a_full_device_exits_2_and_says_why() {
    // No state: "nothing to roll back", which must still reach its reader.
    let root = fixture_host();
    let args = &["rollback"][..];
    assert_reported(args, &to_dev_full(root.path(), args), 2);
}

#[test]
fn a_reader_that_closed_the_pipe_is_not_an_error() {
    let root = fixture_host();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = portd()
        .arg("--root")
        .arg(root.path())
        .args(["status", "--json"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The fixture's usage is ok: the exit status is status's own, not an error.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "a closed pipe is not reported");
}
