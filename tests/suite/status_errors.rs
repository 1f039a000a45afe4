//! `portd status` when the census cannot be read: UNKNOWN, one line, exit 3.

use super::util::{all_output, portd, write_tree};

const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const TCP_ROW: &str = "   0: 0100007F:9C41 0100007F:1389 01 00000000:00000000 00:00000000 00000000     0        0 157471 2 0000000062278960 20 0 0 10 -1\n";
/// The state column is cut off: the row cannot be a socket.
const TCP_BAD_ROW: &str = "   1: 0100007F:9C42 0100007F:1389\n";
const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const UDP_HEADER: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n";

/// `portd status ARGS` on a fixture root whose `/proc/net/tcp` is `tcp`,
/// with empty tables besides and the range 40000-40099.
fn status_of_a_root(tcp: &str, args: &[&str]) -> (tempfile::TempDir, std::process::Output) {
    let root = tempfile::tempdir().unwrap();
    write_tree(
        root.path(),
        &[
            ("proc/net/tcp", tcp),
            ("proc/net/tcp6", TCP6_HEADER),
            ("proc/net/udp", UDP_HEADER),
            ("proc/net/udp6", UDP_HEADER),
            ("proc/sys/net/ipv4/ip_local_port_range", "40000\t40099\n"),
            ("proc/sys/net/ipv4/ip_local_reserved_ports", "\n"),
        ],
    );
    let out = portd()
        .arg("--root")
        .arg(root.path())
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    (root, out)
}

#[test]
fn corrupted_proc_net_tcp_gives_one_line_error_exit_3() {
    let (root, out) =
        status_of_a_root(&format!("{TCP_HEADER}{TCP_ROW}{TCP_BAD_ROW}{TCP_ROW}"), &[]);

    let text = all_output(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line, found:\n{text}");
    let path = root.path().join("proc/net/tcp");
    let place = format!("{}:3:", path.display());
    assert!(
        lines[0].contains(&place),
        "{:?} should name {place:?}",
        lines[0]
    );
    assert!(lines[0].starts_with("PORTD UNKNOWN - "), "{:?}", lines[0]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn corrupted_proc_net_tcp_is_unknown_in_json_too() {
    let (root, out) = status_of_a_root(&format!("{TCP_HEADER}{TCP_BAD_ROW}"), &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "unknown");
    assert_eq!(report["exit_code"], 3);
    let place = format!("{}:2:", root.path().join("proc/net/tcp").display());
    let error = report["error"].as_str().unwrap();
    assert!(error.contains(&place) && !error.contains('\n'), "{error:?}");
    assert_eq!(out.status.code(), Some(3));
}
