//! Golden fixture trees for what portd writes, run without root:
//! `tests/fixtures/writes/NN-name/` holds an input tree (`proc/sys`,
//! `etc/sysctl.d`, `usr/lib/sysctl.d`, `var/lib/portd/state.json`; every
//! directory except `expected/`), an `action` file, `expected/` (the whole
//! tree after the action: every file, so a file that should be gone is
//! simply not there) and `outcome.txt` (what the action said).
//!
//! Actions:
//! - `portd ARGS...`: the binary, with `--root` the copied tree (rollback);
//! - `widen FROM TO [reserve PORTS]`: what the daemon does with a plan:
//!   `actuator::apply_plan`, save, then [`persist_as_the_daemon_does`];
//! - `persist`: that last step alone, from the input state (the daemon
//!   retries it on every poll).
//!
//! No CLI command writes the drop-in without a running daemon, and a daemon
//! on a fixture tree would need a faked census and a signal to stop, timed;
//! so `widen` and `persist` call the library on `Host::new(root)` at the
//! fixed time [`golden_now`].
//!
//! Compared: every file of the tree. `state.json` structurally, with the
//! timestamps the run itself made (`golden_now`, or the real clock) written
//! `"<now>"`; text files line by line, with the drop-in's
//! `# Written TIME by portd VERSION.` line normalised the same way.
//! `PORTD_BLESS=1` rewrites `expected/` and `outcome.txt` from the run:
//! review every change by hand against docs/DESIGN.md before committing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use portd::act::actuator::{self, Persisted};
use portd::act::state::State;
use portd::base::host::Host;
use portd::base::ports::{PortRange, PortSet, Ratio};
use portd::judge::planner::Plan;
use portd::observe::census::KernelSettings;
use portd::policy;

use super::util::{copy_tree, json_differences, portd, tests_dir};

/// The time `widen` and `persist` run at: 2027-01-15T08:00:00Z.
const NOW_SECS: u64 = 1_800_000_000;

fn golden_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn cases() -> Vec<PathBuf> {
    let dir = tests_dir().join("fixtures/writes");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("action").is_file())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no cases under {}", dir.display());
    found
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Made by this run: the fixed `golden_now`, or the real clock (the binary's).
fn is_now(t: SystemTime, started: SystemTime) -> bool {
    t == golden_now()
        || (t + Duration::from_secs(60) >= started
            && t <= SystemTime::now() + Duration::from_secs(60))
}

/// `{"secs_since_epoch": S, "nanos_since_epoch": N}` made by this run
/// becomes `"<now>"`; timestamps from the input stay as they are.
fn normalise_json(v: &mut Value, started: SystemTime) {
    match v {
        Value::Object(map) => {
            if let (Some(s), Some(n), 2) = (
                map.get("secs_since_epoch").and_then(Value::as_u64),
                map.get("nanos_since_epoch").and_then(Value::as_u64),
                map.len(),
            ) {
                let t = SystemTime::UNIX_EPOCH + Duration::new(s, n as u32);
                if is_now(t, started) {
                    *v = Value::String("<now>".into());
                }
                return;
            }
            map.values_mut().for_each(|v| normalise_json(v, started));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| normalise_json(v, started)),
        _ => {}
    }
}

/// The drop-in's `# Written 2027-01-15T08:00:00Z by portd 0.1.0.` line,
/// with the version and (when this run wrote it) the time normalised.
fn normalise_text(text: &str, started: SystemTime) -> String {
    text.lines()
        .map(|line| {
            let Some((time, _version)) = line
                .strip_prefix("# Written ")
                .and_then(|rest| rest.strip_suffix('.'))
                .and_then(|rest| rest.split_once(" by portd "))
            else {
                return format!("{line}\n");
            };
            let time = match humantime::parse_rfc3339(time) {
                Ok(t) if is_now(t, started) => "<now>",
                _ => time,
            };
            format!("# Written {time} by portd <version>.\n")
        })
        .collect()
}

fn normalise(rel: &str, bytes: &[u8], started: SystemTime) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    if rel.ends_with(".json")
        && let Ok(mut v) = serde_json::from_str::<Value>(&text)
    {
        normalise_json(&mut v, started);
        return (serde_json::to_string_pretty(&v).unwrap() + "\n").into_bytes();
    }
    normalise_text(&text, started).into_bytes()
}

/// A line diff of two small texts (longest common subsequence), `-` for
/// expected, `+` for what the run left.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            out += &format!("       {}\n", e[i]);
            (i, j) = (i + 1, j + 1);
        } else if i < e.len() && (j == a.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("     - {}\n", e[i]);
            i += 1;
        } else {
            out += &format!("     + {}\n", a[j]);
            j += 1;
        }
    }
    out
}

/// Where the normalised trees differ, one entry per file.
fn tree_differences(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, e) in expected {
        match actual.get(rel) {
            None => out.push(format!("{rel}: expected, but the run left no such file")),
            Some(a) if a == e => {}
            Some(a) if rel.ends_with(".json") => {
                let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or_default();
                let mut diff = Vec::new();
                json_differences("", &parse(e), &parse(a), &mut diff);
                if diff.is_empty() {
                    diff.push("differs as text".into());
                }
                out.push(format!("{rel}:\n     {}", diff.join("\n     ")));
            }
            Some(a) => out.push(format!(
                "{rel}:\n{}",
                line_diff(&String::from_utf8_lossy(e), &String::from_utf8_lossy(a))
            )),
        }
    }
    for (rel, a) in actual {
        if !expected.contains_key(rel) {
            let text = String::from_utf8_lossy(a);
            let shown = if text.is_empty() {
                "       (empty)\n".to_string()
            } else {
                line_diff("", &text)
            };
            out.push(format!(
                "{rel}: not expected, but the run left it:\n{shown}"
            ));
        }
    }
    out
}

/// What the daemon does after each poll's writes (`Daemon::retry_persist`):
/// persist, and once the drop-in says what portd last wrote, record that
/// it did and under which name. Mirrored here by hand until `State` owns
/// that transition; then this calls it.
fn persist_as_the_daemon_does(host: &Host, dropin_name: &str, state: &mut State) -> String {
    let scan = match portd::observe::sysctld::scan(host) {
        Ok(scan) => scan,
        Err(e) => return format!("persist refused: {e}\n"),
    };
    match actuator::persist(host, &scan, dropin_name, state, golden_now()) {
        Ok(outcome) => {
            if state.mark_persisted(dropin_name, outcome != Persisted::Unchanged) {
                state.save(host).unwrap();
            }
            format!("persist: {outcome:?}\n")
        }
        Err(e) => format!("persist refused: {e}\n"),
    }
}

/// `widen FROM TO [reserve PORTS]`, as the daemon applies a plan.
fn widen(host: &Host, dropin_name: &str, words: &[&str]) -> String {
    let range = |s: &str| {
        let (low, high) = s.split_once('-').unwrap();
        PortRange::new(low.parse().unwrap(), high.parse().unwrap()).unwrap()
    };
    let (from, to) = (range(words[0]), range(words[1]));
    let newly_reserved = match words.get(2..) {
        Some(["reserve", ports]) => PortSet::parse(ports).unwrap(),
        Some([]) => PortSet::new(),
        other => panic!("widen FROM TO [reserve PORTS], not {other:?}"),
    };
    let current = KernelSettings::read(host).unwrap();
    assert_eq!(current.port_range, from, "the live range is not FROM");
    let plan = Plan {
        from,
        to,
        reserved: current.reserved_ports.union(&newly_reserved),
        newly_reserved,
        expected_usage: Ratio::of(45, u64::from(to.len())),
        reaches_target: true,
    };
    let mut state = State::load(host).unwrap();
    let reason = "destination 127.0.0.1 -> 127.0.0.1:8080 at 45.5% (45/99)";
    if let Err(e) = actuator::apply_plan(host, &mut state, &current, &plan, golden_now(), reason) {
        return format!("apply_plan failed: {e}\n");
    }
    state.save(host).unwrap();
    format!("apply_plan: {plan}\n") + &persist_as_the_daemon_does(host, dropin_name, &mut state)
}

/// Runs the case's action on `root`; returns what it said, with `root`
/// written `ROOT`.
fn act(action: &str, root: &Path) -> String {
    let host = Host::new(root);
    let (policy, _) = policy::file::load_or_default(&host.policy_file()).unwrap();
    let words: Vec<&str> = action.split_whitespace().collect();
    let said = match words.as_slice() {
        ["portd", args @ ..] => {
            let out = portd().arg("--root").arg(root).args(args).output().unwrap();
            let indent = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(|l| format!("  {l}\n"))
                    .collect::<String>()
            };
            let code = out
                .status
                .code()
                .map_or_else(|| out.status.to_string(), |c| c.to_string());
            format!(
                "exit {code}\nstdout:\n{}stderr:\n{}",
                indent(&out.stdout),
                indent(&out.stderr)
            )
        }
        ["widen", rest @ ..] => widen(&host, &policy.dropin_name, rest),
        ["persist"] => {
            let mut state = State::load(&host).unwrap();
            persist_as_the_daemon_does(&host, &policy.dropin_name, &mut state)
        }
        _ => panic!("unknown action {action:?}"),
    };
    said.replace(&root.display().to_string(), "ROOT")
}

/// Runs one case and compares; `Err` holds a readable report of every
/// difference. With `PORTD_BLESS`, writes the expected files instead.
fn run(case: &Path) -> Result<(), String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for entry in std::fs::read_dir(case).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name() != Some("expected".as_ref()) {
            copy_tree(&path, &root.join(path.file_name().unwrap()));
        }
    }
    let action = std::fs::read_to_string(case.join("action")).unwrap();
    let action = action
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("{name}: empty action file"));
    let started = SystemTime::now();
    let outcome = act(action, &root);
    let actual: BTreeMap<String, Vec<u8>> = files(&root)
        .into_iter()
        .map(|(rel, bytes)| {
            let bytes = normalise(&rel, &bytes, started);
            (rel, bytes)
        })
        .collect();
    let expected_dir = case.join("expected");
    if std::env::var_os("PORTD_BLESS").is_some() {
        for line in tree_differences(&files(&expected_dir), &actual) {
            eprintln!("{name}: changed {line}");
        }
        let _ = std::fs::remove_dir_all(&expected_dir);
        for (rel, bytes) in &actual {
            let path = expected_dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        std::fs::write(case.join("outcome.txt"), &outcome).unwrap();
        eprintln!("blessed {} (review it by hand)", expected_dir.display());
        return Ok(());
    }
    let mut diff = tree_differences(&files(&expected_dir), &actual);
    let expected_outcome = std::fs::read_to_string(case.join("outcome.txt")).unwrap_or_default();
    if expected_outcome != outcome {
        diff.push(format!(
            "outcome.txt (what `{action}` said):\n{}",
            line_diff(&expected_outcome, &outcome)
        ));
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(format!("{name} ({action}):\n  {}", diff.join("\n  ")))
    }
}

#[test]
fn what_portd_writes_matches_golden_fixtures() {
    let failures: Vec<String> = cases().iter().filter_map(|c| run(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} golden fixture(s) differ (PORTD_BLESS=1 rewrites them; then review by hand):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The comparison can fail: in a copy of each case, a changed, an extra
/// and a missing expected file are each reported, by name.
#[test]
fn a_changed_expected_tree_is_reported_as_a_difference() {
    if std::env::var_os("PORTD_BLESS").is_some() {
        return;
    }
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = files(&case.join("expected"));
        let copy = |edit: &dyn Fn(&Path)| {
            let temp = tempfile::tempdir().unwrap();
            let dir = temp.path().join(&name);
            copy_tree(&case, &dir);
            edit(&dir.join("expected"));
            (temp, run(&dir))
        };
        for rel in expected.keys() {
            let (_t, result) = copy(&|dir: &Path| {
                let path = dir.join(rel);
                let mut text = std::fs::read_to_string(&path).unwrap();
                if rel.ends_with(".json") {
                    // A run that saves the state writes the current format;
                    // one that leaves it alone keeps the fixture's.
                    for version in ["4", "3", "2"] {
                        text = text.replacen(
                            &format!("\"format_version\": {version}"),
                            "\"format_version\": 7",
                            1,
                        );
                    }
                } else {
                    text.push_str("net.ipv4.ip_local_port_range = 1024 65535\n");
                }
                std::fs::write(&path, text).unwrap();
            });
            let err = result.expect_err(&format!("{name}: a changed {rel} was not reported"));
            assert!(err.contains(&format!("{rel}:")), "{name}: {err}");
        }
        let rel = expected.keys().next().expect("an empty expected tree");
        let (_t, result) = copy(&|dir: &Path| std::fs::remove_file(dir.join(rel)).unwrap());
        let err = result.expect_err(&format!(
            "{name}: a missing expected {rel} was not reported"
        ));
        assert!(
            err.contains(&format!("{rel}: not expected")),
            "{name}: {err}"
        );
        let extra = "etc/sysctl.d/99-extra.conf";
        let (_t, result) = copy(&|dir: &Path| {
            std::fs::create_dir_all(dir.join("etc/sysctl.d")).unwrap();
            std::fs::write(dir.join(extra), "kernel.x = 1\n").unwrap();
        });
        let err = result.expect_err(&format!(
            "{name}: an extra expected {extra} was not reported"
        ));
        assert!(
            err.contains(&format!("{extra}: expected, but")),
            "{name}: {err}"
        );
    }
}
