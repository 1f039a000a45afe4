//! The map stays inside the repository: every link and every `docs/...` or
//! `benches/...` path in README.md and docs/*.md names a file that exists;
//! every source comment that cites the design or the kernel facts names
//! docs/DESIGN.md (and a section it has) or docs/kernel.md (and a § heading
//! it has); and no source file (src/, tests/, benches/, examples/, and the
//! packaging, unit and policy files shipped beside them) cites an issue
//! number, which means nothing outside the tracker. Root-free: it reads
//! files only.
//!
//! The checkers are pure functions of text, so the last tests feed them a
//! broken link, a missing section and an issue number and see each reported.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively), sorted, skipping `target/` and anything
/// that is not UTF-8 text (the committed BPF object).
fn text_files(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    entries.sort();
    for path in entries {
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            text_files(&path, out);
        } else if let Ok(text) = fs::read_to_string(&path) {
            out.push((path, text));
        }
    }
}

/// This file: its own examples of broken citations and issue numbers are
/// the checkers' test data, so the scans of the sources leave it out.
const THIS_FILE: &str = "tests/suite/docs_links.rs";

/// The source files the citation and issue-number rules apply to: the code,
/// its tests and benchmarks, and what is shipped beside it.
fn sources() -> Vec<(String, String)> {
    let root = repo();
    let mut files = Vec::new();
    for dir in [
        "src",
        "tests",
        "benches",
        "examples",
        "packaging",
        "systemd",
        "config",
        ".ci",
    ] {
        text_files(&root.join(dir), &mut files);
    }
    files
        .into_iter()
        .map(|(path, text)| {
            let rel = path.strip_prefix(&root).unwrap_or(&path);
            (rel.display().to_string(), text)
        })
        .collect()
}

/// README.md and every docs/*.md, relative path and text.
fn markdown_pages() -> Vec<(String, String)> {
    let root = repo();
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = fs::read_dir(root.join("docs"))
        .expect("list docs/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text =
                fs::read_to_string(root.join(&n)).unwrap_or_else(|e| panic!("read {n}: {e}"));
            (n, text)
        })
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Targets of `[text](target)` links outside fenced code blocks, with their
/// line, web and in-page links left out and `#fragment`s cut off.
pub fn markdown_links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            rest = &after[end..];
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let target = target.split('#').next().unwrap_or(target);
            links.push((i + 1, target.to_string()));
        }
    }
    links
}

/// Paths starting `docs/` or `benches/` mentioned anywhere in `text` (code
/// blocks included), with their line. Globs are left out.
pub fn repo_paths(text: &str) -> Vec<(usize, String)> {
    let mut paths = Vec::new();
    for prefix in ["docs/", "benches/"] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].chars().next_back().is_some_and(is_path_char) {
                continue;
            }
            let token: String = text[at..]
                .chars()
                .take_while(|&c| is_path_char(c))
                .collect();
            let token = token.trim_end_matches(['.', ',', ':', '-']);
            if text[at + token.len()..].starts_with(['*', '{']) {
                continue;
            }
            paths.push((line_of(text, at), token.to_string()));
        }
    }
    paths.sort();
    paths
}

/// Problems with the links and paths of one page: `page` is its path
/// relative to the repository, `exists` answers for a repository-relative
/// path.
pub fn page_problems(page: &str, text: &str, exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    let dir = Path::new(page).parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (line, target) in markdown_links(text) {
        let resolved = normalize(&dir.join(&target));
        if !exists(&resolved) {
            problems.push(format!(
                "{page}:{line}: link ({target}) resolves to {resolved}, which does not exist: \
                 link a file of the repository, relative to {page}"
            ));
        }
    }
    for (line, path) in repo_paths(text) {
        if !exists(&path) {
            problems.push(format!(
                "{page}:{line}: {path} does not exist: name a path relative to the repository's top"
            ));
        }
    }
    problems
}

/// `a/b/../c` → `a/c`, `./a` → `a`, without touching the file system.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                if parts.pop().is_none() {
                    parts.push("..".into());
                }
            }
            std::path::Component::CurDir => {}
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    parts.join("/")
}

/// The text of a source file with each line's indentation and comment
/// marker (`//!`, `///`, `//`, `#`, `*`) removed and the lines joined by
/// spaces, so a citation wrapped over two comment lines reads as one; with
/// the offset where each line starts, to name the line of a problem.
fn flatten(text: &str) -> (String, Vec<usize>) {
    let mut flat = String::with_capacity(text.len());
    let mut starts = Vec::new();
    for line in text.lines() {
        starts.push(flat.len());
        let mut body = line.trim_start();
        for marker in ["//!", "///", "//", "#", "*"] {
            if let Some(rest) = body.strip_prefix(marker) {
                body = rest.trim_start();
                break;
            }
        }
        flat.push_str(body);
        flat.push(' ');
    }
    (flat, starts)
}

fn flat_line(starts: &[usize], offset: usize) -> usize {
    starts.partition_point(|&s| s <= offset)
}

/// The section numbers of the headings of a page like docs/kernel.md:
/// `## 1. Title` gives `1`, `### 1.5 Title` gives `1.5`.
pub fn section_numbers(kernel_md: &str) -> BTreeSet<String> {
    kernel_md
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches('#').split_whitespace().next())
        .map(|n| n.trim_end_matches('.').to_string())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .collect()
}

/// Whether `section` (a quoted name) is a heading or a bold term of
/// docs/DESIGN.md, compared with runs of white space as one space.
pub fn design_has(design_md: &str, section: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let wanted = squash(section);
    design_md.lines().any(|l| {
        let l = squash(l);
        (l.starts_with('#') && l.trim_start_matches('#').trim() == wanted)
            || l.contains(&format!("**{wanted}**"))
    })
}

/// Problems with the citations of one source file: every `DESIGN.md` and
/// `kernel.md` is `docs/…`; the § numbers after `docs/kernel.md` are
/// headings there, and no § stands alone; a quoted section after
/// `docs/DESIGN.md` is one of its headings or bold terms; every `*.md`
/// named exists.
pub fn citation_problems(
    file: &str,
    text: &str,
    kernel_md: &str,
    design_md: &str,
    exists: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let sections = section_numbers(kernel_md);
    let (flat, starts) = flatten(text);
    let mut problems = Vec::new();
    let mut cited_sections = BTreeSet::new();
    for name in ["DESIGN.md", "kernel.md"] {
        for (at, _) in flat.match_indices(name) {
            let line = flat_line(&starts, at);
            if !flat[..at].ends_with("docs/") {
                problems.push(format!(
                    "{file}:{line}: cites {name} outside the repository: write docs/{name}"
                ));
                continue;
            }
            let after = &flat[at + name.len()..];
            if name == "kernel.md" {
                for (offset, number) in kernel_sections(after) {
                    cited_sections.insert(at + name.len() + offset);
                    if !sections.contains(&number) {
                        problems.push(format!(
                            "{file}:{line}: cites docs/kernel.md §{number}, which has no such \
                             heading: one of §{}",
                            sections.iter().cloned().collect::<Vec<_>>().join(", §")
                        ));
                    }
                }
            } else if let Some(section) = quoted_section(after)
                && !design_has(design_md, section)
            {
                problems.push(format!(
                    "{file}:{line}: cites docs/DESIGN.md \"{section}\", which is neither a \
                     heading nor a bold term there"
                ));
            }
        }
    }
    for (at, _) in flat.match_indices('§') {
        if !cited_sections.contains(&at) {
            problems.push(format!(
                "{file}:{}: a § without its file: write docs/kernel.md §N",
                flat_line(&starts, at)
            ));
        }
    }
    for (at, _) in flat.match_indices(".md") {
        let end = at + 3;
        if flat[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            continue;
        }
        let start = flat[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !is_path_char(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let path = &flat[start..end];
        // A bare DESIGN.md or kernel.md is reported above already.
        let bare = path == "DESIGN.md" || path == "kernel.md";
        if !path.is_empty() && path != ".md" && !bare && !exists(path) {
            problems.push(format!(
                "{file}:{}: names {path}, which is not a file of the repository: \
                 cite a path from the repository's top (docs/...)",
                flat_line(&starts, at)
            ));
        }
    }
    problems
}

/// The § numbers that follow a `docs/kernel.md` citation, with the offset of
/// each `§` in `after`: `§1.2, §2.1`, `§4.2-4.3` (both ends), `§5`.
fn kernel_sections(after: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut i = 0;
    let bytes = after.as_bytes();
    loop {
        while i < after.len() && matches!(bytes[i], b' ' | b',' | b':' | b'(') {
            i += 1;
        }
        if !after[i..].starts_with('§') {
            break;
        }
        let at = i;
        i += '§'.len_utf8();
        let mut numbers = Vec::new();
        loop {
            let number: String = after[i..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            i += number.len();
            let number = number.trim_end_matches('.').to_string();
            if number.is_empty() {
                break;
            }
            numbers.push(number);
            if after[i..].starts_with('-') {
                i += 1;
            } else {
                break;
            }
        }
        if numbers.is_empty() {
            found.push((at, String::new()));
        }
        found.extend(numbers.into_iter().map(|n| (at, n)));
    }
    found
}

/// `, "Section"` or ` "Section"` right after a DESIGN.md citation.
fn quoted_section(after: &str) -> Option<&str> {
    let rest = after.trim_start_matches([',', ' ']);
    let rest = rest.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// Where `text` cites an issue number: "issue 13", "Issue #4", "issues 13-15".
pub fn issue_citations(text: &str) -> Vec<usize> {
    let lower = text.to_ascii_lowercase();
    let mut lines = Vec::new();
    for (at, _) in lower.match_indices("issue") {
        let rest = lower[at + "issue".len()..].trim_start_matches('s');
        let rest = rest.trim_start_matches([' ', '\t']).trim_start_matches('#');
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            lines.push(line_of(text, at));
        }
    }
    lines
}

/// A file of the repository. The packages install docs/ files under
/// /usr/share/doc/portd/ (the runbook that the alert rules link to, also
/// as a `file://` URL): such a path names the docs/ file of that name.
fn exists_in_repo(path: &str) -> bool {
    if let Some(name) = path
        .trim_start_matches('/')
        .strip_prefix("usr/share/doc/portd/")
    {
        return repo().join("docs").join(name).is_file();
    }
    !path.starts_with("..") && repo().join(path).exists()
}

fn read(path: &str) -> String {
    fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn every_link_and_docs_or_benches_path_in_the_readme_and_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (page, text) in markdown_pages() {
        checked += markdown_links(&text).len() + repo_paths(&text).len();
        problems.extend(page_problems(&page, &text, &exists_in_repo));
    }
    assert!(
        checked > 20,
        "only {checked} links and paths found: is the scan broken?"
    );
    assert_none_broken(&problems);
}

/// Fails naming every problem found.
fn assert_none_broken(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} broken:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_readme_and_the_architecture_link_the_design() {
    for page in ["README.md", "docs/ARCHITECTURE.md"] {
        let text = read(page);
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        assert!(
            markdown_links(&text)
                .iter()
                .any(|(_, t)| normalize(&dir.join(t)) == "docs/DESIGN.md"),
            "{page} does not link docs/DESIGN.md"
        );
    }
}

#[test]
fn every_design_and_kernel_citation_in_the_sources_resolves() {
    let (kernel_md, design_md) = (read("docs/kernel.md"), read("docs/DESIGN.md"));
    let mut problems = Vec::new();
    let mut citations = 0;
    for (file, text) in sources() {
        if file.starts_with("tests/fixtures/") || file == THIS_FILE {
            continue;
        }
        citations +=
            text.matches("docs/kernel.md").count() + text.matches("docs/DESIGN.md").count();
        problems.extend(citation_problems(
            &file,
            &text,
            &kernel_md,
            &design_md,
            &exists_in_repo,
        ));
    }
    assert!(
        citations > 20,
        "only {citations} citations found: is the scan broken?"
    );
    assert_none_broken(&problems);
}

#[test]
fn no_source_file_cites_an_issue_number() {
    let cited: Vec<String> = sources()
        .into_iter()
        .filter(|(file, _)| file != THIS_FILE)
        .flat_map(|(file, text)| {
            issue_citations(&text)
                .into_iter()
                .map(move |line| format!("{file}:{line}"))
        })
        .collect();
    assert!(
        cited.is_empty(),
        "issue numbers mean nothing outside the tracker; describe the behaviour instead:\n{}",
        cited.join("\n")
    );
}

#[test]
fn a_broken_link_or_path_is_reported_with_its_page_and_line() {
    let exists = |p: &str| {
        [
            "docs/DESIGN.md",
            "docs/data/ramps-1.json",
            "benches/ramp.py",
        ]
        .contains(&p)
    };
    let page = "docs/ramps.md";
    let good = "See [the design](DESIGN.md#acting-in-time) and [a run](data/ramps-1.json),\n\
                made by `benches/ramp.py --json docs/data/ramps-1.json`. [web](https://x.invalid/a)\n";
    assert_eq!(page_problems(page, good, &exists), Vec::<String>::new());

    let moved = "Raw results: [a run](ramps-1.json).\n";
    let problems = page_problems(page, moved, &exists);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("docs/ramps.md:1: link (ramps-1.json) resolves to docs/ramps-1.json")
    );

    let stale = "```sh\nbenches/ramp.py --json docs/ramps-1.json\n```\n";
    let problems = page_problems(page, stale, &exists);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("docs/ramps.md:2: docs/ramps-1.json does not exist"));
    // The README sits at the top: its links are relative to it.
    assert_eq!(
        page_problems("README.md", "[d](docs/DESIGN.md)", &exists),
        Vec::<String>::new()
    );
    assert_eq!(
        page_problems("README.md", "[d](DESIGN.md)", &exists).len(),
        1
    );
}

#[test]
fn a_citation_outside_the_repository_or_of_a_missing_section_is_reported() {
    let kernel_md = "# Kernel\n## 1. Range\n### 1.2 Writes\n### 1.5 Parity\n## 4. procfs\n### 4.2 tcp\n### 4.3 udp\n";
    let design_md = "# Design\n## The usage model\n- **Several namespaces**: one PID namespace\n";
    let exists = |p: &str| ["docs/kernel.md", "docs/DESIGN.md"].contains(&p);
    let check = |text: &str| citation_problems("src/x.rs", text, kernel_md, design_md, &exists);

    let good = "//! Rules (docs/kernel.md §1.2, §1.5; docs/DESIGN.md, \"The usage model\").\n\
                /// Format: docs/kernel.md §4.2-4.3, docs/kernel.md §1 (docs/DESIGN.md,\n\
                /// \"Several namespaces\").\n# (docs/DESIGN.md \"The usage model\")\n";
    assert_eq!(check(good), Vec::<String>::new());

    let outside = check("// (kernel.md §1.5) and DESIGN.md and ../shared/STYLE.md\n");
    assert_eq!(outside.len(), 4, "{outside:?}");
    assert!(
        outside[0].starts_with("src/x.rs:1: cites DESIGN.md outside the repository"),
        "{outside:?}"
    );
    assert!(
        outside[1].starts_with("src/x.rs:1: cites kernel.md outside"),
        "{outside:?}"
    );
    assert!(
        outside[2].starts_with("src/x.rs:1: a § without its file"),
        "{outside:?}"
    );
    assert!(
        outside[3].contains("names ../shared/STYLE.md"),
        "{outside:?}"
    );

    let missing = check("fn f() {}\n// docs/kernel.md §1.6, §4.2-4.4\n");
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(
        missing[0].starts_with("src/x.rs:2: cites docs/kernel.md §1.6, which has no such heading")
    );
    assert!(missing[1].contains("§4.4"));

    let section = check("// docs/DESIGN.md, \"The usage\n// modl\"\n");
    assert_eq!(section.len(), 1, "{section:?}");
    assert!(section[0].contains("\"The usage modl\", which is neither a heading"));
}

#[test]
fn an_issue_number_is_found_in_any_spelling() {
    let text = "ok: the issue's bar\n// (issue 13)\n/// Issue #4, item 2\n# issues 13-15 landed\n";
    assert_eq!(issue_citations(text), vec![2, 3, 4]);
    assert_eq!(
        issue_citations("no issue here; issued 3 times"),
        Vec::<usize>::new()
    );
}
