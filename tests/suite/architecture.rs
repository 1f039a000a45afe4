//! The house as docs/ARCHITECTURE.md draws it: every file under `src/` is
//! named there; the parts of `src/` are the rows of its import table, and
//! every `crate::` path in a source file names its own part or one the table
//! allows; no two files import each other round a circle; and the size
//! limits hold (700 lines a source file up to its first `#[cfg(test)]`, 500
//! in the daemon loop); and no type name is defined twice. Root-free: it
//! reads files only.
//!
//! The checkers are pure functions of text, so the last tests feed them a
//! forbidden import, a circle and an unnamed file and see each reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_TOP_LEVEL: usize = 12;
const MAX_FILE_LINES: usize = 700;
const MAX_DAEMON_LINES: usize = 500;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `src/`, as a path relative to `src/` with `/`.
fn src_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).expect("under src");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let src = repo().join("src");
    let mut out = Vec::new();
    walk(&src, &src, &mut out);
    out
}

fn architecture_md() -> String {
    let path = repo().join("docs/ARCHITECTURE.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The import table of docs/ARCHITECTURE.md: the rows between the
/// `<!-- import rules -->` and `<!-- end import rules -->` markers, each
/// `| `part` | `other`, `other` |` (or `—` for none).
fn import_table(doc: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let start = doc
        .find("<!-- import rules -->")
        .ok_or("docs/ARCHITECTURE.md: no `<!-- import rules -->` marker")?;
    let end = doc[start..]
        .find("<!-- end import rules -->")
        .ok_or("docs/ARCHITECTURE.md: no `<!-- end import rules -->` marker")?;
    let mut table = BTreeMap::new();
    for line in doc[start..start + end].lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let part = cells[1].trim_matches('`').to_string();
        let allowed = cells[2]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_string())
            .filter(|c| !c.is_empty() && c != "—")
            .collect();
        table.insert(part, allowed);
    }
    if table.is_empty() {
        return Err("docs/ARCHITECTURE.md: the import table has no rows".into());
    }
    Ok(table)
}

/// The code of a source file that is not a test: up to its first
/// `#[cfg(test)]`; nothing for the `*_tests.rs` files.
fn code_part(rel: &str, text: &str) -> String {
    if rel.ends_with("_tests.rs") {
        return String::new();
    }
    text.split("#[cfg(test)]").next().unwrap_or("").to_string()
}

/// The `crate::a::b::…` paths a text names (comments included: a doc link
/// up to a higher part is an upward arrow too), each as its segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segs: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// The part a file under `src/` belongs to: its top-level folder, or its
/// name for a top-level file (`lib.rs` and `main.rs` are the crate root).
fn part_of(rel: &str) -> Option<&str> {
    match rel.split_once('/') {
        Some((part, _)) => Some(part),
        None if rel == "lib.rs" || rel == "main.rs" => None,
        None => Some(rel.trim_end_matches(".rs")),
    }
}

/// Imports that break the table: `file: crate::x… (part p may import …)`.
fn forbidden_imports(
    files: &[(String, String)],
    table: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in files {
        let Some(part) = part_of(rel) else { continue };
        let Some(allowed) = table.get(part) else {
            out.push(format!(
                "src/{rel}: part `{part}` has no row in the import table"
            ));
            continue;
        };
        let mut seen = BTreeSet::new();
        for segs in crate_paths(&code_part(rel, text)) {
            let to = segs[0].as_str();
            if to == part || allowed.contains(to) || !table.contains_key(to) {
                continue;
            }
            if seen.insert(to.to_string()) {
                out.push(format!(
                    "src/{rel}: crate::{} — part `{part}` may import only {:?}",
                    segs.join("::"),
                    allowed
                ));
            }
        }
    }
    out
}

/// The module path of a file: `judge/planner.rs` → `judge::planner`,
/// `observe/census/mod.rs` → `observe::census`.
fn module_of(rel: &str) -> String {
    let trimmed = rel.trim_end_matches(".rs");
    let trimmed = trimmed.strip_suffix("/mod").unwrap_or(trimmed);
    trimmed.replace('/', "::")
}

/// File-to-file import circles through `crate::` paths. A path resolves to
/// the file of its longest module prefix; a file naming its own ancestor
/// module (a submodule using its parent's types) is not an arrow.
fn circles(files: &[(String, String)]) -> Vec<String> {
    let modules: BTreeMap<String, &str> = files
        .iter()
        .filter(|(rel, _)| rel.ends_with(".rs") && part_of(rel).is_some())
        .map(|(rel, _)| (module_of(rel), rel.as_str()))
        .collect();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (rel, text) in files {
        let Some(from) = modules.get(&module_of(rel)).copied() else {
            continue;
        };
        let me = module_of(rel);
        for segs in crate_paths(&code_part(rel, text)) {
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| modules.contains_key(m));
            let Some(target) = target else { continue };
            if target == me || me.starts_with(&format!("{target}::")) {
                continue;
            }
            edges.entry(from).or_default().insert(modules[&target]);
        }
    }
    let mut out = BTreeSet::new();
    for &start in edges.keys() {
        // Depth-first from each file: a path back to it is a circle.
        let mut stack = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for &next in edges.get(at).into_iter().flatten() {
                if next == start {
                    let mut ring = path.clone();
                    let min = ring
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, f)| **f)
                        .map(|(i, _)| i);
                    ring.rotate_left(min.unwrap_or(0));
                    out.insert(ring.join(" → "));
                } else if visited.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    out.into_iter().collect()
}

fn read_src() -> Vec<(String, String)> {
    src_files()
        .into_iter()
        .filter(|rel| rel.ends_with(".rs"))
        .map(|rel| {
            let text = fs::read_to_string(repo().join("src").join(&rel))
                .unwrap_or_else(|e| panic!("src/{rel}: {e}"));
            (rel, text)
        })
        .collect()
}

#[test]
fn every_file_of_src_is_named_in_the_architecture() {
    let doc = architecture_md();
    let unnamed: Vec<String> = src_files()
        .into_iter()
        .filter(|rel| !doc.contains(rel.as_str()))
        .collect();
    assert!(
        unnamed.is_empty(),
        "docs/ARCHITECTURE.md does not name these files of src/ (write each as its path under src/, \
         e.g. `judge/planner.rs`): {unnamed:?}"
    );
}

#[test]
fn src_has_at_most_twelve_parts_and_each_is_a_row_of_the_import_table() {
    let table = import_table(&architecture_md()).unwrap_or_else(|e| panic!("{e}"));
    let parts: BTreeSet<String> = src_files()
        .iter()
        .filter_map(|rel| part_of(rel).map(String::from))
        .collect();
    assert!(
        parts.len() <= MAX_TOP_LEVEL,
        "src/ has {} top-level entries besides lib.rs and main.rs (at most {MAX_TOP_LEVEL}): {parts:?}",
        parts.len()
    );
    let rows: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        parts, rows,
        "the parts of src/ and the rows of the import table differ"
    );
}

#[test]
fn every_import_follows_the_table_of_the_architecture() {
    let table = import_table(&architecture_md()).unwrap_or_else(|e| panic!("{e}"));
    let bad = forbidden_imports(&read_src(), &table);
    assert!(
        bad.is_empty(),
        "imports against docs/ARCHITECTURE.md's table:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_two_source_files_import_each_other_round_a_circle() {
    let found = circles(&read_src());
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn source_files_keep_their_size_limits() {
    let mut over = Vec::new();
    for (rel, text) in read_src() {
        if rel.ends_with("_tests.rs") {
            continue;
        }
        let lines = code_part(&rel, &text).lines().count();
        let limit = if rel.starts_with("daemon/") {
            MAX_DAEMON_LINES
        } else {
            MAX_FILE_LINES
        };
        if lines > limit {
            over.push(format!(
                "src/{rel}: {lines} lines before its tests (at most {limit})"
            ));
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
}

/// The type names a source file defines: `struct`, `enum` and `trait` items
/// at any depth, and `type` aliases at the top level (an indented `type X =`
/// is a trait's associated type).
fn type_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let item = trimmed
            .strip_prefix("pub(crate) ")
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .or_else(|| trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        let top = line.len() == trimmed.len();
        for keyword in ["struct ", "enum ", "trait ", "type "] {
            if keyword == "type " && !top {
                continue;
            }
            if let Some(rest) = item.strip_prefix(keyword) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn no_type_name_is_defined_in_two_modules() {
    let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (rel, text) in read_src() {
        for name in type_names(&text) {
            defined.entry(name).or_default().push(format!("src/{rel}"));
        }
    }
    let twice: Vec<String> = defined
        .into_iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(name, files)| format!("{name}: {}", files.join(", ")))
        .collect();
    assert!(
        twice.is_empty(),
        "type names defined more than once:\n{}",
        twice.join("\n")
    );
    assert_eq!(
        type_names(
            "pub struct A;\nenum B {}\nimpl X for Y {\n    type Error = E;\n}\ntype C = u8;\n"
        ),
        ["A", "B", "C"]
    );
}

#[test]
fn the_checkers_report_a_forbidden_import_a_circle_and_a_missing_row() {
    let doc = "<!-- import rules -->\n| part | may import |\n|---|---|\n\
               | `base` | — |\n| `judge` | `base` |\n| `daemon` | `base`, `judge` |\n\
               <!-- end import rules -->";
    let table = import_table(doc).expect("table");
    assert_eq!(
        table["daemon"],
        BTreeSet::from(["base".to_string(), "judge".to_string()])
    );
    assert!(table["base"].is_empty());
    let file = |rel: &str, text: &str| (rel.to_string(), text.to_string());
    let files = vec![
        file("base/a.rs", "use crate::judge::x::Y;\n"),
        file(
            "judge/x.rs",
            "use crate::base::a;\n#[cfg(test)]\nuse crate::daemon::z;\n",
        ),
        file("daemon/z.rs", "use crate::judge::x;\n"),
        file("extra/q.rs", ""),
    ];
    let bad = forbidden_imports(&files, &table);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].starts_with("src/base/a.rs: crate::judge::x::Y — part `base`"),
        "{bad:?}"
    );
    assert!(bad[1].contains("part `extra` has no row"), "{bad:?}");
    let ring = circles(&files);
    assert_eq!(ring, vec!["base/a.rs → judge/x.rs".to_string()]);
    assert!(crate_paths("$crate::x; my_crate::y; crate::ok::Z").len() == 1);
    assert_eq!(module_of("observe/census/mod.rs"), "observe::census");
}
