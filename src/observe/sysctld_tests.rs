use super::*;
use std::fs;
use std::os::unix::fs::symlink;

const RANGE: &str = "net.ipv4.ip_local_port_range";
const RESERVED: &str = "net.ipv4.ip_local_reserved_ports";

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn host(&self) -> Host {
        Host::new(self.dir.path())
    }

    fn real(&self, host_path: &str) -> PathBuf {
        self.dir.path().join(host_path.trim_start_matches('/'))
    }

    fn file(&self, host_path: &str, text: &str) -> &Self {
        let real = self.real(host_path);
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(real, text).unwrap();
        self
    }

    fn link(&self, host_path: &str, target: &str) -> &Self {
        let real = self.real(host_path);
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        symlink(target, real).unwrap();
        self
    }

    fn scan(&self) -> Scan {
        scan(&self.host()).unwrap()
    }
}

fn paths(files: &[&Path]) -> Vec<String> {
    files.iter().map(|p| p.display().to_string()).collect()
}

fn value(a: Option<Assignment>) -> Option<String> {
    a.map(|a| a.value)
}

fn at(a: &Assignment) -> String {
    format!("{}:{}", a.file.display(), a.line)
}

#[test]
fn files_are_applied_in_name_order_whatever_their_directory() {
    let tree = Tree::new();
    tree.file("/usr/lib/sysctl.d/50-vendor.conf", "")
        .file("/etc/sysctl.d/10-admin.conf", "")
        .file("/run/sysctl.d/70-runtime.conf", "")
        .file("/usr/local/lib/sysctl.d/60-local.conf", "")
        .file("/etc/sysctl.d/README", "")
        .file("/etc/sysctl.d/.hidden.conf", "")
        .file("/etc/sysctl.d/60-local.conf.dpkg-old", "");
    let scan = tree.scan();
    assert_eq!(
        paths(&scan.boot_files()),
        [
            "/etc/sysctl.d/10-admin.conf",
            "/usr/lib/sysctl.d/50-vendor.conf",
            "/usr/local/lib/sysctl.d/60-local.conf",
            "/run/sysctl.d/70-runtime.conf",
        ]
    );
    assert_eq!(
        scan.files
            .iter()
            .map(|f| f.path.as_path())
            .collect::<Vec<_>>(),
        scan.boot_files()
    );
}

#[test]
fn names_sort_bytewise() {
    let tree = Tree::new();
    tree.file("/etc/sysctl.d/99-sysctl.conf", "")
        .file("/etc/sysctl.d/99-portd.conf", "")
        .file("/etc/sysctl.d/99-Z.conf", "")
        .file("/etc/sysctl.d/100-late.conf", "");
    assert_eq!(
        paths(&tree.scan().boot_files()),
        [
            "/etc/sysctl.d/100-late.conf",
            "/etc/sysctl.d/99-Z.conf",
            "/etc/sysctl.d/99-portd.conf",
            "/etc/sysctl.d/99-sysctl.conf",
        ]
    );
}

#[test]
fn the_last_assignment_in_the_last_file_wins() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/50-vendor.conf",
        "net.ipv4.ip_local_port_range = 32768 60999\n",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_port_range = 20000 60999\n",
    )
    .file(
        "/run/sysctl.d/70-pin.conf",
        "net.ipv4.ip_local_port_range = 40000 50001\n\
         net.ipv4.ip_local_port_range = 40000 50999\n",
    );
    let scan = tree.scan();
    let all = scan.assignments_for(RANGE);
    assert_eq!(
        all.iter().map(|a| at(a)).collect::<Vec<_>>(),
        [
            "/usr/lib/sysctl.d/50-vendor.conf:1",
            "/etc/sysctl.d/60-portd.conf:1",
            "/run/sysctl.d/70-pin.conf:1",
            "/run/sysctl.d/70-pin.conf:2",
        ]
    );
    let win = scan.winning(RANGE).unwrap();
    assert_eq!(at(&win), "/run/sysctl.d/70-pin.conf:2");
    assert_eq!(win.value, "40000 50999");
}

#[test]
fn a_file_hides_same_named_files_in_lower_directories() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/80-tune.conf",
        "net.ipv4.ip_local_port_range = 1 2\n",
    )
    .file(
        "/usr/local/lib/sysctl.d/80-tune.conf",
        "net.ipv4.ip_local_port_range = 3 4\n",
    )
    .file(
        "/run/sysctl.d/80-tune.conf",
        "net.ipv4.ip_local_port_range = 5 6\n",
    )
    .file(
        "/run/sysctl.d/90-x.conf",
        "net.ipv4.ip_local_reserved_ports = 1\n",
    )
    .file(
        "/etc/sysctl.d/90-x.conf",
        "net.ipv4.ip_local_reserved_ports = 2\n",
    );
    let scan = tree.scan();
    assert_eq!(
        paths(&scan.boot_files()),
        ["/run/sysctl.d/80-tune.conf", "/etc/sysctl.d/90-x.conf"]
    );
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("5 6"));
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("2"));
    let hidden: Vec<(String, String)> = scan
        .shadowed
        .iter()
        .map(|s| (s.path.display().to_string(), s.by.display().to_string()))
        .collect();
    assert_eq!(
        hidden,
        [
            (
                "/usr/local/lib/sysctl.d/80-tune.conf".to_string(),
                "/run/sysctl.d/80-tune.conf".to_string()
            ),
            (
                "/usr/lib/sysctl.d/80-tune.conf".to_string(),
                "/run/sysctl.d/80-tune.conf".to_string()
            ),
            (
                "/run/sysctl.d/90-x.conf".to_string(),
                "/etc/sysctl.d/90-x.conf".to_string()
            ),
        ]
    );
}

#[test]
fn a_symlink_to_dev_null_masks_a_vendor_file() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/50-base.conf",
        "net.ipv4.ip_local_port_range = 32768 60999\n",
    )
    .file(
        "/usr/lib/sysctl.d/95-pin.conf",
        "net.ipv4.ip_local_port_range = 10000 10001\n",
    )
    .link("/etc/sysctl.d/95-pin.conf", "/dev/null");
    let scan = tree.scan();
    assert_eq!(
        paths(&scan.boot_files()),
        [
            "/usr/lib/sysctl.d/50-base.conf",
            "/etc/sysctl.d/95-pin.conf"
        ]
    );
    assert_eq!(scan.files[1].state, FileState::Masked);
    assert_eq!(scan.files[1].target, Path::new("/dev/null"));
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("32768 60999"));
}

#[test]
fn a_dangling_symlink_sets_nothing_but_still_hides() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/95-pin.conf",
        "net.ipv4.ip_local_port_range = 10000 10001\n",
    )
    .link("/etc/sysctl.d/95-pin.conf", "/nonexistent.conf");
    let scan = tree.scan();
    assert_eq!(scan.files.len(), 1);
    assert_eq!(scan.files[0].state, FileState::Dangling);
    assert_eq!(scan.winning(RANGE), None);
}

#[test]
fn debian_sysctl_conf_acts_as_99_sysctl_conf() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.conf",
        "net.ipv4.ip_local_port_range = 45000 65000\n",
    )
    .link("/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf")
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_port_range = 20000 60999\n",
    );
    let scan = tree.scan();
    let win = scan.winning(RANGE).unwrap();
    assert_eq!(at(&win), "/etc/sysctl.d/99-sysctl.conf:1");
    assert_eq!(scan.files[1].target, Path::new("/etc/sysctl.conf"));
    assert_eq!(
        scan.sysctl_conf,
        SysctlConf::Linked {
            via: PathBuf::from("/etc/sysctl.d/99-sysctl.conf")
        }
    );
}

#[test]
fn absolute_symlinks_resolve_inside_the_host_root() {
    let tree = Tree::new();
    tree.file(
        "/srv/conf/admin.conf",
        "net.ipv4.ip_local_port_range = 30000 40001\n",
    )
    .link("/etc/sysctl.d/70-admin.conf", "/srv/conf/admin.conf")
    .file(
        "/srv/other/50-x.conf",
        "net.ipv4.ip_local_reserved_ports = 8080\n",
    )
    .link("/run/sysctl.d", "/srv/other");
    let scan = tree.scan();
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("30000 40001"));
    // systemd names files under the resolved directory.
    assert_eq!(
        paths(&scan.boot_files()),
        ["/srv/other/50-x.conf", "/etc/sysctl.d/70-admin.conf"]
    );
    assert_eq!(scan.files[1].target, Path::new("/srv/conf/admin.conf"));
}

/// systemd 252 on a symlink loop: "Failed to open file '…', ignoring: Too
/// many levels of symbolic links"; the lower same-named file stays hidden.
#[test]
fn a_symlink_loop_is_skipped_and_still_hides_lower_files() {
    let tree = Tree::new();
    tree.link("/etc/sysctl.d/10-a.conf", "10-b.conf")
        .link("/etc/sysctl.d/10-b.conf", "10-a.conf")
        .file(
            "/usr/lib/sysctl.d/10-a.conf",
            "net.ipv4.ip_local_port_range = 10000 10001\n",
        )
        .file(
            "/etc/sysctl.d/40-ok.conf",
            "net.ipv4.ip_local_reserved_ports = 4000\n",
        );
    let scan = tree.scan();
    assert_eq!(
        paths(&scan.boot_files()),
        [
            "/etc/sysctl.d/10-a.conf",
            "/etc/sysctl.d/10-b.conf",
            "/etc/sysctl.d/40-ok.conf"
        ]
    );
    assert_eq!(scan.files[0].state, FileState::Skipped);
    assert_eq!(scan.winning(RANGE), None);
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("4000"));
    let skipped: Vec<String> = scan.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0]
            .starts_with("/etc/sysctl.d/10-a.conf: too many levels of symbolic links; skipped"),
        "{skipped:?}"
    );
}

#[test]
fn sysctl_conf_without_the_link_is_reported_as_unlinked() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.conf",
        "# admin\nnet.ipv4.ip_local_port_range = 45000 65000\n",
    )
    .file(
        "/usr/lib/sysctl.d/50-base.conf",
        "net.ipv4.ip_local_port_range = 32768 60999\n",
    );
    let scan = tree.scan();
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("32768 60999"));
    match &scan.sysctl_conf {
        SysctlConf::Unlinked { assignments } => {
            assert_eq!(assignments.len(), 1);
            assert_eq!(at(&assignments[0]), "/etc/sysctl.conf:2");
        }
        other => panic!("expected Unlinked, got {other:?}"),
    }
    let empty = Tree::new();
    assert_eq!(empty.scan().sysctl_conf, SysctlConf::Absent);
}

#[test]
fn later_files_that_set_the_key_override_portds_dropin() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/50-vendor.conf",
        "net.ipv4.ip_local_port_range = 32768 60999\n",
    )
    .file(
        "/usr/lib/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_port_range = 1 2\n",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_port_range = 20000 60999\n",
    )
    .file(
        "/run/sysctl.d/70-pin.conf",
        "net.ipv4.ip_local_port_range = 20000 60999\nnet.ipv4.* = 1\n",
    )
    .file(
        "/etc/sysctl.d/99-exclude.conf",
        "-net.ipv4.ip_local_port_range\n",
    )
    .file(
        "/etc/sysctl.d/99-other.conf",
        "net.ipv4.ip_local_reserved_ports = 5\n",
    );
    let scan = tree.scan();
    let overrides = scan.later_overrides("60-portd.conf", RANGE);
    assert_eq!(
        overrides.iter().map(|a| at(a)).collect::<Vec<_>>(),
        [
            "/run/sysctl.d/70-pin.conf:1",
            "/etc/sysctl.d/99-exclude.conf:1"
        ]
    );
    assert!(overrides[1].exclusion);
    // The exclusion wins: sysctl.d leaves the range alone at boot.
    assert_eq!(scan.winning(RANGE), None);
    assert!(scan.later_overrides("99-zz-portd.conf", RANGE).is_empty());
}

#[test]
fn boot_value_excluding_the_dropin_is_what_others_set() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/40-admin.conf",
        "net.ipv4.ip_local_reserved_ports = 8080,9000-9010\n",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 8080,9000-9010,41000\n",
    );
    let scan = tree.scan();
    assert_eq!(
        value(scan.winning(RESERVED)).as_deref(),
        Some("8080,9000-9010,41000")
    );
    let without = scan
        .boot_value_excluding("60-portd.conf", RESERVED)
        .unwrap()
        .unwrap();
    assert_eq!(at(&without), "/etc/sysctl.d/40-admin.conf:1");
    assert_eq!(without.value, "8080,9000-9010");
    assert_eq!(
        scan.boot_value_excluding("60-portd.conf", RANGE).unwrap(),
        None
    );
}

#[test]
fn without_the_dropin_a_same_named_vendor_file_shows_through() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 7\n",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 7,41000\n",
    );
    let scan = tree.scan();
    // Boot reads only portd's; the vendor file is hidden, not applied.
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("7,41000"));
    let without = scan
        .boot_value_excluding("60-portd.conf", RESERVED)
        .unwrap();
    assert_eq!(at(&without.unwrap()), "/usr/lib/sysctl.d/60-portd.conf:1");
}

#[test]
fn without_the_dropin_the_stand_in_applies_in_its_place_in_name_order() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 7
",
    )
    .file(
        "/run/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 8
",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 8,41000
",
    )
    .file(
        "/etc/sysctl.d/50-before.conf",
        "net.ipv4.ip_local_reserved_ports = 5
",
    )
    .file(
        "/usr/lib/sysctl.d/70-after.conf",
        "net.ipv4.ip_local_port_range = 30000 40001
",
    );
    let scan = tree.scan();
    // The next directory's file, not the lowest, stands in; it comes after
    // 50-before.conf as the drop-in did.
    let without = scan
        .boot_value_excluding("60-portd.conf", RESERVED)
        .unwrap()
        .unwrap();
    assert_eq!(at(&without), "/run/sysctl.d/60-portd.conf:1");
    assert_eq!(
        value(scan.boot_value_excluding("60-portd.conf", RANGE).unwrap()).as_deref(),
        Some("30000 40001")
    );
    // Another name has no stand-in: its own lines are simply left out.
    assert_eq!(
        value(
            scan.boot_value_excluding("50-before.conf", RESERVED)
                .unwrap()
        )
        .as_deref(),
        Some("8,41000")
    );
}

#[test]
fn an_unreadable_stand_in_fails_only_the_question_that_needs_it() {
    let tree = Tree::new();
    tree.file(
        "/usr/lib/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 7
",
    )
    .file(
        "/etc/sysctl.d/60-portd.conf",
        "net.ipv4.ip_local_reserved_ports = 7,41000
",
    );
    // Longer than the cap: an error that does not depend on permissions
    // (tests run as root).
    let big = "#".repeat(usize::try_from(FILE_MAX_BYTES).unwrap() + 1);
    tree.file("/usr/lib/sysctl.d/60-portd.conf", &big);
    let scan = tree.scan();
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("7,41000"));
    let err = scan
        .boot_value_excluding("60-portd.conf", RESERVED)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/usr/lib/sysctl.d/60-portd.conf"), "{err}");
    assert!(err.contains("in place of portd's drop-in"), "{err}");
}

#[test]
fn slashes_and_dots_are_interchangeable_in_keys() {
    assert_eq!(normalize_key("net/ipv4/ip_local_port_range"), RANGE);
    assert_eq!(normalize_key(" net.ipv4.ip_local_port_range "), RANGE);
    assert_eq!(normalize_key("/net//ipv4/./ip_local_port_range/"), RANGE);
    // The first separator decides: a dot inside a slash path is literal.
    assert_eq!(
        normalize_key("net/ipv4/conf/eth0.100/rp_filter"),
        "net.ipv4.conf.eth0/100.rp_filter"
    );
    assert_eq!(
        normalize_key("net.ipv4.conf.eth0/100.rp_filter"),
        "net.ipv4.conf.eth0/100.rp_filter"
    );
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/10-a.conf",
        "net/ipv4/ip_local_port_range = 30000 40001\n",
    );
    let scan = tree.scan();
    let win = scan.winning("net/ipv4/ip_local_port_range").unwrap();
    assert_eq!(win.key, RANGE);
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("30000 40001"));
}

#[test]
fn syntax_comments_whitespace_and_the_dash_prefix() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/10-a.conf",
        "# comment = 1\n\
         ; net.ipv4.ip_local_port_range = 1 2\n\
         \n\
         \t -net.ipv4.ip_local_reserved_ports\t=  8080,8081 \r\n\
         not an assignment\n\
         = 5\n\
         net.ipv4.ip_local_port_range=30000 40001 # kept\n",
    );
    let scan = tree.scan();
    let reserved = scan.winning(RESERVED).unwrap();
    assert_eq!(reserved.value, "8080,8081");
    assert!(reserved.ignore_failure);
    assert_eq!(reserved.line, 4);
    let range = scan.winning(RANGE).unwrap();
    assert_eq!(range.value, "30000 40001 # kept");
    assert!(!range.ignore_failure);
    assert_eq!(
        scan.warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>(),
        [
            "/etc/sysctl.d/10-a.conf:5: line is not an assignment, ignored: not an assignment",
            "/etc/sysctl.d/10-a.conf:6: no key before '=', ignored: = 5",
        ]
    );
}

#[test]
fn a_repeated_value_keeps_ignore_failure_from_any_line() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/10-a.conf",
        "-net.ipv4.ip_local_port_range = 30000 40001\n",
    )
    .file(
        "/etc/sysctl.d/20-b.conf",
        "net.ipv4.ip_local_port_range = 30000 40001\n",
    );
    let win = tree.scan().winning(RANGE).unwrap();
    assert_eq!(at(&win), "/etc/sysctl.d/20-b.conf:1");
    assert!(win.ignore_failure);
}

#[test]
fn globs_apply_only_to_keys_nobody_names() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/10-a.conf",
        "net.ipv4.ip_local_port_range = 30000 40001\n",
    )
    .file("/etc/sysctl.d/20-glob.conf", "net.ipv4.ip_local_* = 1 2\n");
    let scan = tree.scan();
    assert_eq!(value(scan.winning(RANGE)).as_deref(), Some("30000 40001"));
    // Not named anywhere: the glob sets it.
    let glob = scan.winning(RESERVED).unwrap();
    assert!(glob.glob);
    assert_eq!(glob.key, "net.ipv4.ip_local_*");
    assert_eq!(
        scan.assignments_for(RANGE)
            .iter()
            .map(|a| at(a))
            .collect::<Vec<_>>(),
        ["/etc/sysctl.d/10-a.conf:1", "/etc/sysctl.d/20-glob.conf:1"]
    );
    // Globs do not override portd's explicit assignment.
    assert_eq!(scan.later_overrides("05-portd.conf", RANGE).len(), 1);
}

#[test]
fn an_exclusion_keeps_a_glob_off_a_key() {
    let tree = Tree::new();
    tree.file(
        "/etc/sysctl.d/10-a.conf",
        "net.ipv4.ip_local_* = 1 2\n-net.ipv4.ip_local_port_range\n",
    );
    let scan = tree.scan();
    assert_eq!(scan.winning(RANGE), None);
    assert!(scan.assignments_for(RANGE)[1].exclusion);
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("1 2"));
}

#[test]
fn of_two_globs_the_one_applied_last_wins() {
    let tree = Tree::new();
    tree.file("/etc/sysctl.d/10-a.conf", "net.ipv4.* = a\n")
        .file("/etc/sysctl.d/20-b.conf", "net.ipv4.ip_local_* = b\n")
        // Same value: systemd keeps 10-a's place, so 20-b still applies after it.
        .file("/etc/sysctl.d/30-c.conf", "net.ipv4.* = a\n");
    assert_eq!(value(tree.scan().winning(RANGE)).as_deref(), Some("b"));
    tree.file("/etc/sysctl.d/40-d.conf", "net.ipv4.* = d\n");
    assert_eq!(value(tree.scan().winning(RANGE)).as_deref(), Some("d"));
}

#[test]
fn glob_wildcards_stop_at_separators() {
    assert!(key_matches_glob("net.ipv4.*", RANGE));
    assert!(key_matches_glob("net.*.ip_local_port_range", RANGE));
    assert!(key_matches_glob("net.ipv?.ip_local_*_range", RANGE));
    assert!(key_matches_glob("net.ipv[46].ip_local_port_range", RANGE));
    assert!(key_matches_glob("net.ipv[0-9].ip_local_port_range", RANGE));
    assert!(!key_matches_glob("net.ipv[!4].ip_local_port_range", RANGE));
    assert!(!key_matches_glob("net.*", RANGE));
    assert!(!key_matches_glob("net.ipv6.*", RANGE));
    assert!(!key_matches_glob("net.ipv4.ip_local_port_range?", RANGE));
    assert!(key_matches_glob("a.[b", "a.[b"));
    assert!(key_matches_glob("a.[]x]", "a.]"));
}

/// systemd 252 on a directory named `*.conf`: "Failed to read file '…',
/// ignoring: Is a directory"; it still hides the same-named lower file. A
/// FIFO would stall systemd-sysctl 252 at boot; portd never opens one.
#[test]
fn directories_fifos_and_sockets_named_conf_are_skipped_and_still_hide() {
    let tree = Tree::new();
    fs::create_dir_all(tree.real("/etc/sysctl.d/10-dir.conf")).unwrap();
    tree.file(
        "/usr/lib/sysctl.d/10-dir.conf",
        "net.ipv4.ip_local_port_range = 10000 10001\n",
    )
    .file(
        "/usr/lib/sysctl.d/30-fifo.conf",
        "net.ipv4.ip_local_port_range = 30000 30001\n",
    )
    .file("/srv/target", "")
    .file(
        "/etc/sysctl.d/50-ok.conf",
        "net.ipv4.ip_local_reserved_ports = 4000\n",
    );
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tree.real("/etc/sysctl.d/30-fifo.conf"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::create_dir_all(tree.real("/run/sysctl.d")).unwrap();
    let _socket =
        std::os::unix::net::UnixListener::bind(tree.real("/run/sysctl.d/40-sock.conf")).unwrap();
    fs::create_dir_all(tree.real("/srv/dir.conf")).unwrap();
    tree.link("/etc/sysctl.d/45-link.conf", "/srv/dir.conf");

    let scan = tree.scan();
    assert_eq!(value(scan.winning(RANGE)), None);
    assert_eq!(value(scan.winning(RESERVED)).as_deref(), Some("4000"));
    let skipped: Vec<String> = scan.skipped.iter().map(|s| s.to_string()).collect();
    let expected = [
        "/etc/sysctl.d/10-dir.conf: a directory, not a regular file",
        "/etc/sysctl.d/30-fifo.conf: a FIFO, not a regular file",
        "/run/sysctl.d/40-sock.conf: a socket, not a regular file",
        "/etc/sysctl.d/45-link.conf: a directory, not a regular file",
    ];
    assert_eq!(skipped.len(), expected.len(), "{skipped:?}");
    for (got, want) in skipped.iter().zip(expected) {
        assert!(got.starts_with(want), "{got} should start with {want}");
    }
    let states: Vec<FileState> = scan.files.iter().map(|f| f.state).collect();
    assert_eq!(
        states,
        [
            FileState::Skipped,
            FileState::Skipped,
            FileState::Skipped,
            FileState::Skipped,
            FileState::Parsed
        ]
    );
}

#[test]
fn a_file_longer_than_the_cap_is_an_error_naming_it() {
    let tree = Tree::new();
    let long = "# padding\n".repeat(FILE_MAX_BYTES as usize / 10 + 1);
    tree.file("/srv/big.conf", &long)
        .link("/etc/sysctl.d/60-link.conf", "/srv/big.conf");
    let err = scan(&tree.host()).unwrap_err();
    assert!(matches!(err, SysctldError::ReadFile { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "cannot read /etc/sysctl.d/60-link.conf (-> /srv/big.conf): longer than {FILE_MAX_BYTES} bytes, the most portd reads from this file"
        )
    );
}

/// `/etc/sysctl.conf` read by procps `sysctl --system` is skipped the same way.
#[test]
fn a_sysctl_conf_that_is_not_a_regular_file_is_skipped() {
    let tree = Tree::new();
    fs::create_dir_all(tree.real("/etc/sysctl.conf")).unwrap();
    let scan = tree.scan();
    assert_eq!(scan.sysctl_conf, SysctlConf::Absent);
    assert_eq!(scan.skipped.len(), 1);
    assert_eq!(scan.skipped[0].path, Path::new("/etc/sysctl.conf"));
}

#[test]
fn lib_sysctl_d_is_read_only_where_lib_is_a_real_directory() {
    let merged = Tree::new();
    merged
        .file("/usr/lib/sysctl.d/50-a.conf", "")
        .link("/lib", "usr/lib");
    assert_eq!(
        paths(&merged.scan().boot_files()),
        ["/usr/lib/sysctl.d/50-a.conf"]
    );
    let split = Tree::new();
    split
        .file("/usr/lib/sysctl.d/50-a.conf", "")
        .file("/lib/sysctl.d/50-a.conf", "")
        .file("/lib/sysctl.d/40-b.conf", "");
    assert_eq!(
        paths(&split.scan().boot_files()),
        ["/lib/sysctl.d/40-b.conf", "/usr/lib/sysctl.d/50-a.conf"]
    );
}
