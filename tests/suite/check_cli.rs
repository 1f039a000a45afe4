//! `portd check`: policy errors a person can act on, the boot-time sysctl.d
//! report, and the exit-status contract (0 fine, 1 warnings, 2 errors).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::util::{portd, stdout_json, tests_dir, write_tree};

/// A host tree with the kernel files `check` reads and no sockets.
fn host(root: &Path, range: &str) {
    write_tree(
        root,
        &[
            ("proc/sys/net/ipv4/ip_local_port_range", range),
            ("proc/sys/net/ipv4/ip_local_reserved_ports", "\n"),
            ("proc/sys/net/ipv4/ip_unprivileged_port_start", "1024\n"),
            (
                "proc/net/tcp",
                "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
            ),
            (
                "proc/net/tcp6",
                "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
            ),
            (
                "proc/net/udp",
                "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
            ),
            (
                "proc/net/udp6",
                "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
            ),
        ],
    );
}

fn run(root: &Path, args: &[&str]) -> std::process::Output {
    portd().arg("--root").arg(root).args(args).output().unwrap()
}

#[test]
fn check_prints_one_path_line_col_line_per_policy_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    let policy = dir.path().join("etc/portd.toml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::copy(
        tests_dir().join("fixtures/policy/three-errors.toml"),
        &policy,
    )
    .unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = run(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let prefix = format!("{}:", policy.display());
    let located: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(located.len(), 3, "{text}");
    for (line, what) in located.iter().zip([
        "unknown key `tcp_pol`",
        "widen.mode",
        "floor 61000 is above",
    ]) {
        let rest = &line[prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(),
            "not PATH:LINE:COL: {line}"
        );
        assert!(line.contains(what), "{line} should mention {what}");
    }
}

#[test]
fn check_refuses_a_world_writable_policy_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    let policy = dir.path().join("etc/portd.toml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, "[widen]\nmode = \"advise\"\n").unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();

    let out = run(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("chmod go-w {}", policy.display())),
        "{text}"
    );
}

#[test]
fn check_reports_the_boot_winner_and_warns_when_a_later_file_pins_the_range() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    write_tree(
        dir.path(),
        &[
            (
                "usr/lib/sysctl.d/50-vendor.conf",
                "net.ipv4.ip_local_port_range = 20000 40000\n",
            ),
            (
                "etc/sysctl.d/99-local.conf",
                "# admin\nnet/ipv4/ip_local_port_range = 32768 60999\n",
            ),
        ],
    );
    let out = run(dir.path(), &["check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = stdout_json(&out);
    let range = v["boot"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == "net.ipv4.ip_local_port_range")
        .unwrap();
    assert_eq!(
        range["winner"],
        "/etc/sysctl.d/99-local.conf:2: 32768 60999"
    );
    assert_eq!(range["assignments"].as_array().unwrap().len(), 2);
    assert_eq!(range["overrides_dropin"].as_array().unwrap().len(), 1);
    let warned = v["findings"].as_array().unwrap().iter().any(|f| {
        f["severity"] == "warning" && f["message"].as_str().unwrap().contains("99-local.conf")
    });
    assert!(warned, "{v:#}");
}

#[test]
fn check_is_clean_on_a_plain_host_and_warns_on_same_parity() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    assert_eq!(run(dir.path(), &["check"]).status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t61000\n");
    let out = run(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("same parity"));
}

/// A host whose range is 40000-40099 with `reserved` as ip_local_reserved_ports.
fn host_reserving(root: &Path, reserved: &str) {
    host(root, "40000\t40099\n");
    write_tree(
        root,
        &[("proc/sys/net/ipv4/ip_local_reserved_ports", reserved)],
    );
}

fn write_policy(root: &Path, text: &str) {
    let policy = root.join("etc/portd.toml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, text).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn check_refuses_a_protected_list_that_would_reserve_every_usable_port() {
    for protected in ["40000-65535", "1-65535"] {
        let dir = tempfile::tempdir().unwrap();
        host(dir.path(), "40000\t40099\n");
        write_policy(
            dir.path(),
            &format!("[widen]\nprotected = [\"{protected}\"]\n"),
        );
        let out = run(dir.path(), &["check", "--plan"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{protected}:\n{text}");
        let error = text
            .lines()
            .find(|l| l.starts_with("ERROR: widen.protected"))
            .unwrap_or_else(|| panic!("{protected}: no widen.protected error:\n{text}"));
        assert!(
            error.contains(protected)
                && error.contains("0 usable ephemeral ports")
                && error.contains("100 now"),
            "{error}"
        );
        assert!(text.contains("check: errors"), "{text}");
    }
    // A protected list that leaves the span usable stays fine.
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "40000\t40099\n");
    write_policy(dir.path(), "[widen]\nprotected = [\"50000-50100\", 8080]\n");
    let out = run(dir.path(), &["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_reports_zero_capacity_as_an_error_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    host_reserving(dir.path(), "40000-40099\n");
    let out = run(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(
            "ERROR: no usable ephemeral ports: every port of the range 40000-40099 is reserved"
        ),
        "{text}"
    );
    let out = run(dir.path(), &["check", "--json"]);
    let v = stdout_json(&out);
    let found = v["findings"].as_array().unwrap().iter().any(|f| {
        f["severity"] == "error"
            && f["message"]
                .as_str()
                .unwrap()
                .starts_with("no usable ephemeral ports")
    });
    assert!(found, "{v:#}");
}

#[test]
fn status_is_critical_with_zero_capacity_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    host_reserving(dir.path(), "40000-40099\n");
    let out = run(dir.path(), &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(
            "PORTD CRITICAL - no usable ephemeral ports: every port of the range 40000-40099 is reserved |"
        ),
        "{first}"
    );
    assert!(!text.contains("no ephemeral ports in use"), "{text}");
    let out = run(dir.path(), &["status", "--json"]);
    let v = stdout_json(&out);
    assert_eq!(v["status"], "critical", "{v:#}");
    assert_eq!(v["headline"]["cause"]["kind"], "no_usable_ports", "{v:#}");
}

#[test]
fn check_of_a_policy_with_tens_of_thousands_of_errors_lists_twenty_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    // 20 000 unknown keys and 50 000 bad protected entries: 70 000 errors,
    // well under the 1 MiB a policy file may have.
    let mut text: String = (0..20_000).map(|i| format!("key_{i} = 1\n")).collect();
    text.push_str("[widen]\nprotected = [");
    text.push_str(&vec!["\"x\""; 50_000].join(","));
    text.push_str("]\n");
    assert!(text.len() < 1 << 20);
    write_policy(dir.path(), &text);
    let policy = dir.path().join("etc/portd.toml");

    let out = run(dir.path(), &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        &stdout[..stdout.len().min(3000)]
    );
    let prefix = format!("{}:", policy.display());
    let located: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(located.len(), 20, "{stdout}");
    assert!(located[0].starts_with(&format!("{prefix}1:1: unknown key `key_0`")));
    assert!(
        stdout.contains(&format!(
            "\nand 69980 more problems in {} (fix the ones above and check again)\n",
            policy.display()
        )),
        "{stdout}"
    );
    // The JSON report carries the same capped list.
    let v = stdout_json(&run(dir.path(), &["check", "--json"]));
    assert_eq!(v["policy_errors"].as_array().unwrap().len(), 21, "{v:#}");
}

#[test]
fn check_warns_when_the_span_portd_may_open_is_all_reserved() {
    let dir = tempfile::tempdir().unwrap();
    host_reserving(dir.path(), "40100-65535\n");
    let out = run(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("WARNING: widening cannot add a usable port"),
        "{text}"
    );
}

/// A policy outside the host tree's default path, as an operator keeps a
/// draft beside the live one.
fn draft_policy(dir: &Path, text: &str) -> std::path::PathBuf {
    let draft = dir.join("draft.toml");
    std::fs::write(&draft, text).unwrap();
    std::fs::set_permissions(&draft, std::fs::Permissions::from_mode(0o644)).unwrap();
    draft
}

#[test]
fn check_file_checks_that_file_as_check_config_file_does() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "40000\t40099\n");
    for (text, exit) in [
        ("[widen]\nmode = \"advise\"\n", 0),
        ("[widen]\nmode = \"sometimes\"\n", 2),
    ] {
        let draft = draft_policy(dir.path(), text);
        let draft = draft.to_str().unwrap();
        for json in [false, true] {
            let mut positional = vec!["check", draft];
            let mut option = vec!["check", "--config", draft];
            if json {
                positional.push("--json");
                option.push("--json");
            }
            let by_file = run(dir.path(), &positional);
            let by_option = run(dir.path(), &option);
            let shown = String::from_utf8_lossy(&by_file.stdout);
            assert_eq!(by_file.status.code(), Some(exit), "{positional:?}: {shown}");
            assert_eq!(by_file.status.code(), by_option.status.code());
            assert_eq!(by_file.stdout, by_option.stdout, "{positional:?}");
            assert!(shown.contains(draft), "{shown}");
        }
    }
}

#[test]
fn check_of_the_shipped_policy_file_given_as_an_argument_is_not_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    // The repository's copy may be owned by whoever cloned it: checked from
    // a copy owned by the test's user, 0644, as the packages install it.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portd.toml"))
            .unwrap();
    let draft = draft_policy(dir.path(), &shipped);
    let out = run(dir.path(), &["check", draft.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_file_that_does_not_exist_or_with_config_too_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    let missing = dir.path().join("typo.toml");
    let missing = missing.to_str().unwrap();
    let out = run(dir.path(), &["check", missing]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(missing));
    let draft = draft_policy(dir.path(), "");
    let draft = draft.to_str().unwrap();
    let out = run(dir.path(), &["check", draft, "--config", draft]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_json_opens_with_its_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    host(dir.path(), "32768\t60999\n");
    for args in [&["check", "--json"][..], &["check", "--json", "--plan"]] {
        let out = run(dir.path(), args);
        let v = stdout_json(&out);
        assert_eq!(v["schema_version"], 1, "{v:#}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("{\n  \"schema_version\": 1,\n"),
            "the schema version comes first"
        );
    }
    // Also when the policy is refused: the schema says how to read the errors.
    write_policy(dir.path(), "[widen]\nmode = 3\n");
    let out = run(dir.path(), &["check", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout_json(&out)["schema_version"], 1);
}
