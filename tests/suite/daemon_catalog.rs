//! `packaging/portd.catalog`, the journal message catalog: one entry for
//! every MESSAGE_ID of `src/publish/events.rs`, each in journalctl's format, naming
//! only fields its event always sets, and compiled by `journalctl
//! --update-catalog`. The compile runs with `--root` on a temporary tree, so
//! the machine's catalog database is never touched. (The journald tests in
//! daemon_journal.rs check that every id found in the journal has an entry
//! and that `journalctl -x` shows it.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::util::catalog_path;
use portd::publish::events::Kind;

struct Entry {
    id: String,
    headers: Vec<(String, String)>,
    text: String,
}

fn entries() -> Vec<Entry> {
    let text = std::fs::read_to_string(catalog_path()).unwrap();
    let mut entries: Vec<Entry> = Vec::new();
    let mut in_headers = false;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("-- ") {
            entries.push(Entry {
                id: id.to_string(),
                headers: Vec::new(),
                text: String::new(),
            });
            in_headers = true;
            continue;
        }
        let Some(entry) = entries.last_mut() else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "text before the first entry: {line:?}"
            );
            continue;
        };
        if in_headers && line.is_empty() {
            in_headers = false;
        } else if in_headers {
            let (k, v) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("{}: bad header line {line:?}", entry.id));
            entry.headers.push((k.to_string(), v.to_string()));
        } else {
            entry.text.push_str(line);
            entry.text.push('\n');
        }
    }
    entries
}

/// The fields each event always sets (the `Entry` constructors of
/// src/publish/events.rs): the only ones its explanation may substitute, or
/// journalctl -x would show `@NAME@` as is.
fn always_set(kind: Kind) -> Vec<&'static str> {
    const USAGE: &[&str] = &[
        "PORTD_EVENT",
        "PORTD_USAGE",
        "PORTD_USED",
        "PORTD_CAPACITY",
        "PORTD_RANGE_BEFORE",
        "PORTD_REASON",
    ];
    match kind {
        Kind::UsageWarning | Kind::UsageCritical | Kind::UsageRecovered | Kind::ExhaustionEnded => {
            USAGE.to_vec()
        }
        Kind::PortsExhausted => [USAGE, &["PORTD_DESTINATION"]].concat(),
        Kind::RangeWidened | Kind::WideningBlocked => [USAGE, &["PORTD_RANGE_AFTER"]].concat(),
        Kind::ExternalChange | Kind::PersistFailed => {
            vec!["PORTD_EVENT", "PORTD_RANGE_AFTER", "PORTD_REASON"]
        }
        Kind::PolicyReloaded => vec!["PORTD_EVENT", "PORTD_POLICY"],
        Kind::NetnsGone => vec!["PORTD_EVENT", "PORTD_NETNS", "PORTD_REASON"],
        Kind::PolicyRejected => vec!["PORTD_EVENT", "PORTD_POLICY", "PORTD_REASON"],
        Kind::ConfigurationHazard => vec!["PORTD_EVENT", "PORTD_RANGE_BEFORE", "PORTD_REASON"],
        Kind::Started
        | Kind::Stopping
        | Kind::WitnessOff
        | Kind::NamespacesHidden
        | Kind::NamespacesNotWatched
        | Kind::Degraded
        | Kind::DaemonFailed
        | Kind::Restored => vec!["PORTD_EVENT"],
        Kind::PortAllocationFailed => vec![
            "PORTD_EVENT",
            "PORTD_DESTINATION",
            "PORTD_PROCESS",
            "PORTD_USED",
            "PORTD_REASON",
        ],
    }
}

/// Where the catalog points: what the packages install, and its source.
const RUNBOOK: &str = "file:///usr/share/doc/portd/runbook.md";
const SHIPPED: [(&str, &str); 3] = [
    ("man:portd(8)", "packaging/man/portd.8"),
    ("man:portd.toml(5)", "packaging/man/portd.toml.5"),
    (RUNBOOK, "docs/runbook.md"),
];

#[test]
fn the_catalog_points_only_at_pages_the_packages_ship() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (link, source) in SHIPPED {
        assert!(root.join(source).is_file(), "{link}: no {source}");
    }
    // The list of files every package must hold.
    let packaged = std::fs::read_to_string(root.join("packaging/check-packages.sh")).unwrap();
    let installed = RUNBOOK.trim_start_matches("file://");
    assert!(
        packaged.contains(&format!("\n{installed} ")),
        "the packages do not install docs/runbook.md as {installed}"
    );
    let text = std::fs::read_to_string(catalog_path()).unwrap();
    assert!(!text.contains("example.invalid"), "a placeholder link");
}

/// `@NAME@` substitutions in `text`.
fn substitutions(text: &str) -> Vec<&str> {
    text.split('@').skip(1).step_by(2).collect()
}

#[test]
fn every_event_kind_has_exactly_one_catalog_entry_and_there_are_no_others() {
    let entries = entries();
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an id appears twice: {ids:?}");
    let kinds: BTreeSet<&str> = Kind::ALL.iter().map(|k| k.message_id()).collect();
    for kind in Kind::ALL {
        assert!(
            unique.contains(kind.message_id()),
            "{kind:?} ({}) has no entry in packaging/portd.catalog",
            kind.message_id()
        );
    }
    let stale: Vec<_> = unique.difference(&kinds).collect();
    assert!(
        stale.is_empty(),
        "entries for no event of src/publish/events.rs: {stale:?}"
    );
}

#[test]
fn catalog_entries_name_portd_its_man_page_and_only_fields_their_event_sets() {
    let kinds: BTreeMap<&str, Kind> = Kind::ALL.iter().map(|k| (k.message_id(), *k)).collect();
    for entry in entries() {
        let kind = kinds[entry.id.as_str()];
        let header = |name: &str| -> Vec<&str> {
            entry
                .headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let subject = header("Subject");
        assert_eq!(subject.len(), 1, "{kind:?}: one Subject");
        assert_eq!(header("Defined-By"), ["portd"], "{kind:?}");
        assert_eq!(header("Support"), [RUNBOOK], "{kind:?}: Support");
        assert!(
            header("Documentation").contains(&"man:portd(8)"),
            "{kind:?}"
        );
        for link in header("Documentation") {
            assert!(
                SHIPPED.iter().any(|(l, _)| *l == link),
                "{kind:?}: {link} is none of the pages the packages ship"
            );
        }
        assert!(
            entry.text.trim().len() > 200,
            "{kind:?}: say what happened and what to do"
        );
        for field in substitutions(subject[0])
            .into_iter()
            .chain(substitutions(&entry.text))
        {
            assert!(
                always_set(kind).contains(&field),
                "{kind:?} substitutes @{field}@, which its event does not always set"
            );
        }
    }
}

#[test]
fn the_catalog_compiles_and_lists_every_entry() {
    if Command::new("journalctl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "journalctl is missing and CI is set: refusing to skip"
        );
        eprintln!("SKIP (needs journalctl): the_catalog_compiles_and_lists_every_entry");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("usr/lib/systemd/catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(catalog_path(), dir.join("portd.catalog")).unwrap();
    let journalctl = |args: &[&str]| {
        let out = Command::new("journalctl")
            .arg(format!("--root={}", root.path().display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "journalctl {args:?}: {out:?}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    journalctl(&["--update-catalog"]);
    assert!(
        root.path()
            .join("var/lib/systemd/catalog/database")
            .is_file(),
        "--update-catalog wrote no database under --root"
    );
    let listed = journalctl(&["--list-catalog"]);
    for kind in Kind::ALL {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{} portd: ", kind.message_id()))),
            "{kind:?} missing from --list-catalog:\n{listed}"
        );
    }
    let dumped = journalctl(&["--dump-catalog", Kind::PolicyRejected.message_id()]);
    assert!(dumped.contains("Defined-By: portd"), "{dumped}");
    assert!(dumped.contains("@PORTD_REASON@"), "{dumped}");
}
