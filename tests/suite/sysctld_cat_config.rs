//! portd's sysctl.d scanner against the real `systemd-sysctl --cat-config`.
//!
//! Each scenario lays out real files under `/etc/sysctl.d`, `/run/sysctl.d`,
//! `/usr/local/lib/sysctl.d` and `/usr/lib/sysctl.d` inside a private mount
//! namespace (tmpfs over each directory, a temp file bound over
//! `/etc/sysctl.conf`), runs `systemd-sysctl --cat-config` there (it only
//! prints), and copies the directories into a fixture tree with `cp -a`. Outside,
//! the scanner reads the fixture tree; the file order and the winning assignment
//! of each key must match what `--cat-config` printed, parsed here in a few
//! lines independent of the scanner. Needs root; nothing outside the namespace
//! is touched.

use std::fs;
use std::path::Path;
use std::process::Command;

use portd::base::host::Host;
use portd::observe::sysctld::{self, SysctlConf};

use super::util::root_test;

const SYSTEMD_SYSCTL: &str = "/usr/lib/systemd/systemd-sysctl";
const RANGE: &str = "net.ipv4.ip_local_port_range";
const RESERVED: &str = "net.ipv4.ip_local_reserved_ports";
const DROPIN: &str = "60-portd.conf";

enum Entry {
    File(&'static str, &'static str),
    Link(&'static str, &'static str),
}
use Entry::{File, Link};

struct Scenario {
    name: &'static str,
    /// The content bound over `/etc/sysctl.conf`.
    sysctl_conf: &'static str,
    entries: Vec<Entry>,
    /// Whether `/etc/sysctl.conf` should end up read through a sysctl.d link.
    conf_linked: bool,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "a later name overrides, whatever its directory",
            sysctl_conf: "# not linked\nnet.ipv4.ip_local_port_range = 1025 1026\n",
            entries: vec![
                File(
                    "/usr/lib/sysctl.d/50-vendor.conf",
                    "net.ipv4.ip_local_port_range = 32768 60999\n\
                     net.ipv4.ip_local_reserved_ports =\n",
                ),
                File(
                    "/etc/sysctl.d/60-portd.conf",
                    "net.ipv4.ip_local_reserved_ports = 8080\n\
                     net.ipv4.ip_local_port_range = 20000 60999\n",
                ),
                File(
                    "/usr/local/lib/sysctl.d/65-local.conf",
                    "; slash spelling and ignore-failure prefix\n\
                     -net/ipv4/ip_local_reserved_ports = 9000,9001\n",
                ),
                File(
                    "/run/sysctl.d/70-pin.conf",
                    "net.ipv4.ip_local_port_range=40000 50001\n\
                     net.ipv4.ip_local_port_range = 40000 50999\n",
                ),
                File(
                    "/etc/sysctl.d/README",
                    "net.ipv4.ip_local_port_range = 3 4\n",
                ),
                File(
                    "/etc/sysctl.d/.hidden.conf",
                    "net.ipv4.ip_local_port_range = 5 6\n",
                ),
            ],
            conf_linked: false,
        },
        Scenario {
            name: "same-name shadowing",
            sysctl_conf: "# nothing\n",
            entries: vec![
                File(
                    "/usr/lib/sysctl.d/80-tune.conf",
                    "net.ipv4.ip_local_port_range = 1 2\n",
                ),
                File(
                    "/usr/local/lib/sysctl.d/80-tune.conf",
                    "net.ipv4.ip_local_port_range = 3 4\n",
                ),
                File(
                    "/run/sysctl.d/80-tune.conf",
                    "net.ipv4.ip_local_port_range = 30000 50001\n",
                ),
                File(
                    "/usr/lib/sysctl.d/60-portd.conf",
                    "net.ipv4.ip_local_reserved_ports = 1\n",
                ),
                File(
                    "/etc/sysctl.d/60-portd.conf",
                    "net.ipv4.ip_local_reserved_ports = 5000\n",
                ),
                File(
                    "/run/sysctl.d/90-other.conf",
                    "net.ipv4.ip_local_reserved_ports = 6000\n",
                ),
                File(
                    "/etc/sysctl.d/90-other.conf",
                    "net.ipv4.ip_local_reserved_ports = 6000,6001\n",
                ),
            ],
            conf_linked: false,
        },
        Scenario {
            name: "a /dev/null mask",
            sysctl_conf: "\n",
            entries: vec![
                File(
                    "/usr/lib/sysctl.d/50-base.conf",
                    "net.ipv4.ip_local_port_range = 32768 60999\n",
                ),
                File(
                    "/usr/lib/sysctl.d/95-vendor-pin.conf",
                    "net.ipv4.ip_local_port_range = 10000 10001\n\
                     net.ipv4.ip_local_reserved_ports = 10000\n",
                ),
                Link("/etc/sysctl.d/95-vendor-pin.conf", "/dev/null"),
            ],
            conf_linked: false,
        },
        Scenario {
            name: "sysctl.conf through 99-sysctl.conf",
            sysctl_conf: "; the admin's file\n\
                          net.ipv4.ip_local_port_range = 45000 65000\n\
                          net.ipv4.conf.*.rp_filter = 2\n",
            entries: vec![
                Link("/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf"),
                File(
                    "/etc/sysctl.d/60-portd.conf",
                    "net.ipv4.ip_local_reserved_ports = 8080\n\
                     net.ipv4.ip_local_port_range = 20000 60999\n",
                ),
                // "99-p" sorts before "99-s".
                File(
                    "/usr/lib/sysctl.d/99-protect.conf",
                    "net.ipv4.ip_local_reserved_ports = 8080,8081\n",
                ),
                File(
                    "/usr/lib/sysctl.d/99-zz-late.conf",
                    "net.ipv4.ip_local_* = 1\n",
                ),
            ],
            conf_linked: true,
        },
    ]
}

/// Lays out a scenario in a private mount namespace, runs `--cat-config` and
/// copies the tree to `$OUT/root`. Directories that do not exist on this
/// machine (`/run/sysctl.d`, `/usr/local/lib/sysctl.d`) are never created on
/// disk: a tmpfs goes over their nearest existing parent instead.
const NAMESPACE_SCRIPT: &str = r#"
set -eu
mount --make-rprivate /
for d in /etc/sysctl.d /usr/lib/sysctl.d; do
    [ -d "$d" ] || { echo "$d is missing" >&2; exit 90; }
    mount -t tmpfs tmpfs "$d"
done
for d in /run/sysctl.d /usr/local/lib/sysctl.d; do
    if [ -d "$d" ]; then
        mount -t tmpfs tmpfs "$d"
    else
        p=$(dirname "$d")
        while [ ! -d "$p" ]; do p=$(dirname "$p"); done
        case "$p" in /|/usr|/etc) echo "refusing to cover $p" >&2; exit 91 ;; esac
        case "$OUT" in "$p"/*) echo "$OUT is under $p" >&2; exit 92 ;; esac
        mount -t tmpfs tmpfs "$p"
        mkdir -p "$d"
    fi
done
if [ ! -L /lib ] && [ -d /lib/sysctl.d ]; then mount -t tmpfs tmpfs /lib/sysctl.d; fi
[ -f /etc/sysctl.conf ] || { echo "/etc/sysctl.conf is missing" >&2; exit 93; }
mount --bind "$OUT/sysctl.conf" /etc/sysctl.conf
sh "$OUT/layout.sh"
"$SYSTEMD_SYSCTL" --cat-config > "$OUT/cat-config.txt"
R="$OUT/root"
mkdir -p "$R/etc" "$R/run" "$R/usr/local/lib" "$R/usr/lib"
cp -a /etc/sysctl.d "$R/etc/"
cp /etc/sysctl.conf "$R/etc/sysctl.conf"
cp -a /run/sysctl.d "$R/run/"
cp -a /usr/local/lib/sysctl.d "$R/usr/local/lib/"
cp -a /usr/lib/sysctl.d "$R/usr/lib/"
if [ -L /lib ]; then
    ln -s "$(readlink /lib)" "$R/lib"
elif [ -d /lib/sysctl.d ]; then
    mkdir -p "$R/lib" && cp -a /lib/sysctl.d "$R/lib/"
fi
"#;

/// Writes the layout script and runs the scenario in its namespace.
fn run_in_namespace(scenario: &Scenario, out: &Path) {
    let mut layout = String::from("set -eu\n");
    for (i, entry) in scenario.entries.iter().enumerate() {
        match entry {
            File(path, text) => {
                let src = out.join(format!("src-{i}"));
                fs::write(&src, text).unwrap();
                layout += &format!("cp '{}' '{path}'\n", src.display());
            }
            Link(path, target) => layout += &format!("ln -s '{target}' '{path}'\n"),
        }
    }
    fs::write(out.join("layout.sh"), layout).unwrap();
    fs::write(out.join("sysctl.conf"), scenario.sysctl_conf).unwrap();
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", NAMESPACE_SCRIPT])
        .env("OUT", out)
        .env("SYSTEMD_SYSCTL", SYSTEMD_SYSCTL)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{}: namespace script failed: {status}",
        scenario.name
    );
}

/// `--cat-config` output: each file's `# PATH` header, then its lines; files
/// are separated by an empty line.
fn parse_cat_config(text: &str) -> Vec<(String, Vec<String>)> {
    let mut files: Vec<(String, Vec<String>)> = Vec::new();
    let mut previous_empty = true;
    for line in text.lines() {
        match line.strip_prefix("# /") {
            Some(path) if previous_empty && path.ends_with(".conf") => {
                files.push((format!("/{path}"), Vec::new()));
            }
            _ => {
                if let Some((_, lines)) = files.last_mut() {
                    lines.push(line.to_string());
                }
            }
        }
        previous_empty = line.is_empty();
    }
    files
}

/// Every (file, line, value) that assigns `key` literally, in order. The
/// scenarios spell keys plainly (dots or slashes, an optional `-`).
fn cat_config_assignments(
    files: &[(String, Vec<String>)],
    key: &str,
) -> Vec<(String, usize, String)> {
    let mut found = Vec::new();
    for (path, lines) in files {
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=')
                && k.trim().trim_start_matches('-').replace('/', ".") == key
            {
                found.push((path.clone(), i + 1, v.trim().to_string()));
            }
        }
    }
    found
}

#[test]
fn scanner_agrees_with_systemd_sysctl_cat_config() {
    root_test!();
    assert!(
        Path::new(SYSTEMD_SYSCTL).exists(),
        "{SYSTEMD_SYSCTL} is missing: install systemd"
    );
    for scenario in scenarios() {
        let out = tempfile::tempdir().unwrap();
        run_in_namespace(&scenario, out.path());
        let cat = fs::read_to_string(out.path().join("cat-config.txt")).unwrap();
        let cat_files = parse_cat_config(&cat);
        let host = Host::new(out.path().join("root"));
        let scan = sysctld::scan(&host).unwrap();
        let name = scenario.name;

        let expected_order: Vec<&str> = cat_files.iter().map(|(p, _)| p.as_str()).collect();
        let order: Vec<String> = scan
            .boot_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(order, expected_order, "{name}: file order\n{cat}");
        assert!(scan.warnings.is_empty(), "{name}: {:?}", scan.warnings);

        for key in [RANGE, RESERVED] {
            let all = cat_config_assignments(&cat_files, key);
            let expected = all.last().map(|(f, l, v)| (f.clone(), *l, v.clone()));
            let got = scan
                .winning(key)
                .map(|a| (a.file.display().to_string(), a.line, a.value));
            assert_eq!(got, expected, "{name}: winner of {key}\n{cat}");

            // What would override a drop-in named DROPIN: the lines in files
            // whose name sorts after it.
            let expected_later: Vec<(String, usize)> = all
                .iter()
                .filter(|(f, _, _)| f.rsplit('/').next().is_some_and(|n| n > DROPIN))
                .map(|(f, l, _)| (f.clone(), *l))
                .collect();
            let later: Vec<(String, usize)> = scan
                .later_overrides(DROPIN, key)
                .iter()
                .map(|a| (a.file.display().to_string(), a.line))
                .collect();
            assert_eq!(
                later, expected_later,
                "{name}: later overrides of {key}\n{cat}"
            );
        }

        match (&scan.sysctl_conf, scenario.conf_linked) {
            (SysctlConf::Linked { via }, true) => {
                assert_eq!(via, Path::new("/etc/sysctl.d/99-sysctl.conf"), "{name}")
            }
            (SysctlConf::Unlinked { .. }, false) => {}
            (other, linked) => panic!("{name}: sysctl.conf {other:?}, expected linked={linked}"),
        }
    }
}
