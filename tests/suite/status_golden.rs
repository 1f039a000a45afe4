//! Golden fixture trees: `tests/fixtures/status/NN-name/` holds a fake
//! `proc/` (written by `generate.py` there) and `expected.json`, the
//! reviewed output of `portd --root DIR status --json --top 0`. Nothing is
//! ignored. `PORTD_BLESS=1` rewrites the expected files from portd's output:
//! review every change by hand against docs/DESIGN.md before committing it.

use std::path::Path;

use serde_json::Value;

use super::util::{copy_tree, json_differences, portd, tests_dir};

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = tests_dir().join("fixtures/status");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("proc").is_dir())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no fixtures under {}", dir.display());
    found
}

fn run(fixture: &Path) -> Result<(), String> {
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("root");
    copy_tree(&fixture.join("proc"), &root.join("proc"));
    let out = portd()
        .arg("--root")
        .arg(&root)
        .args(["status", "--json", "--top", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let actual: Value = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "{name}: not JSON ({e}), exit {:?}:\n{stdout}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.stderr.is_empty() {
        return Err(format!(
            "{name}: stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let code = out.status.code().map(i64::from);
    if actual["exit_code"].as_i64() != code {
        return Err(format!(
            "{name}: exit {code:?}, but the report says {}",
            actual["exit_code"]
        ));
    }
    let expected_path = fixture.join("expected.json");
    if std::env::var_os("PORTD_BLESS").is_some() {
        if let Ok(old) = std::fs::read_to_string(&expected_path) {
            let mut diff = Vec::new();
            json_differences(
                "",
                &serde_json::from_str(&old).unwrap_or_default(),
                &actual,
                &mut diff,
            );
            for line in diff {
                eprintln!("{name}: changed {line}");
            }
        }
        // portd's own text: re-serialising the parsed value could change
        // the last digit of a float.
        std::fs::write(&expected_path, out.stdout).unwrap();
        eprintln!("blessed {} (review it by hand)", expected_path.display());
        return Ok(());
    }
    let text = std::fs::read_to_string(&expected_path).map_err(|e| {
        format!("{name}: {e} reading expected.json (PORTD_BLESS=1 writes it; then review it)")
    })?;
    let expected: Value = serde_json::from_str(&text).unwrap();
    if actual["status"] == "unknown" && expected["status"] != "unknown" {
        return Err(format!(
            "{name}: portd reported UNKNOWN: {}",
            actual["error"]
        ));
    }
    let mut diff = Vec::new();
    json_differences("", &expected, &actual, &mut diff);
    if diff.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}:\n  {}", diff.join("\n  ")))
    }
}

#[test]
fn status_json_matches_golden_fixtures() {
    let failures: Vec<String> = fixtures().iter().filter_map(|f| run(f).err()).collect();
    assert!(
        failures.is_empty(),
        "{} golden fixture(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
