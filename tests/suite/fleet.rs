//! The fleet view's shared pieces: the alert rules of `packaging/prometheus/`,
//! the Grafana dashboard `packaging/grafana/portd.json`, the PromQL
//! expressions both use and the metric names in them, and `promtool`.
//!
//! Everything is found by walking the files, so a rule or panel added later
//! is covered by fleet_rules.rs, fleet_dashboard.rs and fleet_metric_names.rs
//! without touching them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::util::all_output;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool`, or `None` after saying SKIP when it is not installed; when
/// `CI` is set its absence fails the test instead (.ci/run installs it).
pub fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs promtool (Debian package prometheus), and CI is set: refusing to skip it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIP (needs promtool, Debian package prometheus): {test}"
        );
    }
    found
}

/// Runs promtool; (success, stdout + stderr).
pub fn run_promtool(promtool: &Path, args: &[&std::ffi::OsStr], dir: &Path) -> (bool, String) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    (out.status.success(), all_output(&out))
}

/// The files of `dir` whose names end in `suffix`, sorted.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect();
    files.sort();
    files
}

/// The rule files portd ships: every `*.yml` of `packaging/prometheus/`.
pub fn rule_files() -> Vec<PathBuf> {
    let files = files_ending(&repo().join("packaging/prometheus"), ".yml");
    assert!(!files.is_empty(), "no rule file in packaging/prometheus");
    files
}

/// The unit tests of the rules: every `*.test.yml` of `tests/prometheus/`.
pub fn rule_test_files() -> Vec<PathBuf> {
    files_ending(&repo().join("tests/prometheus"), ".test.yml")
}

/// One rule of a rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `alert` or `record`.
    pub kind: String,
    pub name: String,
    pub expr: String,
    /// "file:line" of the rule.
    pub at: String,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A YAML scalar on one line, unquoted.
fn scalar(text: &str) -> String {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    if let Some(inner) = t.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    t.to_string()
}

/// The rules of a Prometheus rule file, read line by line (no YAML crate in
/// the tree): `- alert:`/`- record:` items and their `expr:`, on one line or
/// as a block scalar (`|`, `|-`, `>`, `>-`). `promtool check rules` (in
/// fleet_rules.rs) proves the file is what Prometheus reads; this test
/// proves the reader found as many rules as promtool did.
pub fn rules(path: &Path) -> Vec<Rule> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        for kind in ["alert", "record"] {
            if let Some(name) = t.strip_prefix(&format!("- {kind}:")) {
                rules.push(Rule {
                    kind: kind.to_string(),
                    name: scalar(name),
                    expr: String::new(),
                    at: format!("{}:{}", path.display(), i + 1),
                });
            }
        }
        if let Some(value) = t.strip_prefix("expr:") {
            let rule = rules
                .last_mut()
                .unwrap_or_else(|| panic!("{}:{}: expr outside a rule", path.display(), i + 1));
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let own = indent(line);
                let mut body = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > own)
                {
                    i += 1;
                    body.push(lines[i].trim());
                }
                let joiner = if value.starts_with('|') { "\n" } else { " " };
                rule.expr = body.join(joiner).trim().to_string();
            } else {
                rule.expr = scalar(value);
            }
        }
        i += 1;
    }
    for r in &rules {
        assert!(!r.expr.is_empty(), "{}: rule {} has no expr", r.at, r.name);
    }
    rules
}

/// Every rule of every shipped rule file.
pub fn all_rules() -> Vec<Rule> {
    rule_files().iter().flat_map(|f| rules(f)).collect()
}

pub fn dashboard_path() -> PathBuf {
    repo().join("packaging/grafana/portd.json")
}

pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested (collapsed) panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels is an array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression of the dashboard, with where it is: panel
/// targets, annotation queries, and the metric of each `label_values()`
/// variable query (as a bare selector).
pub fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    format!(
                        "panel {} {:?} target {}",
                        p["id"],
                        p["title"].as_str().unwrap_or(""),
                        t["refId"].as_str().unwrap_or("")
                    ),
                    expr.to_string(),
                ));
            }
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push((
                format!("annotation {:?}", a["name"].as_str().unwrap_or("")),
                expr.to_string(),
            ));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        let query = query.unwrap_or_else(|| panic!("variable {} has no query", v["name"]));
        let expr = if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            // label_values(SELECTOR, LABEL)
            let (selector, _label) = args
                .rsplit_once(',')
                .unwrap_or_else(|| panic!("variable {}: {query}", v["name"]));
            selector.trim().to_string()
        } else if let Some(expr) = query
            .strip_prefix("query_result(")
            .and_then(|q| q.strip_suffix(')'))
        {
            expr.to_string()
        } else {
            panic!("variable {}: unexpected query {query:?}", v["name"])
        };
        out.push((format!("variable {}", v["name"]), expr));
    }
    out
}

/// Grafana's variables as Prometheus would see them after Grafana's
/// substitution: intervals become durations, dashboard variables a value.
/// Panics on a `$` left over (a variable this list does not know).
pub fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("${__rate_interval}", "1m"),
        ("$__interval_ms", "30000"),
        ("$__interval", "30s"),
        ("${__interval}", "30s"),
        ("$__range_s", "3600"),
        ("$__range_ms", "3600000"),
        ("$__range", "1h"),
        ("${__range}", "1h"),
        ("${instance}", "web1:9100"),
        ("$instance", "web1:9100"),
        ("${job}", "node"),
        ("$job", "node"),
        ("${cluster}", ".*"),
        ("$cluster", ".*"),
    ] {
        out = out.replace(var, value);
    }
    assert!(
        !out.contains('$'),
        "{expr:?}: a variable is left after substitution ({out:?}); \
         ${{datasource}} belongs in the target's datasource, not its expr"
    );
    out
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a parenthesised list of label names, not
/// expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, aggregations, keywords, label names (inside `{}` or a label
/// list), strings, durations or numbers.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' && quote != '`' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            if matches!(chars[*i], '"' | '\'' | '`') {
                skip_string(i);
            } else {
                *i += 1;
            }
        }
        *i += 1;
    };
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            skip_string(&mut i);
        } else if c == '{' {
            skip_to(&mut i, '}');
        } else if c == '[' {
            skip_to(&mut i, ']');
        } else if c == '#' {
            skip_to(&mut i, '\n');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if call {
                    i = next;
                    skip_to(&mut i, ')');
                }
            } else if call
                || AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
            {
                // A function, an aggregation (`sum by (x) (...)`) or a keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Names used by the rules and the dashboard, each with where.
pub fn used_metric_names(rules: &[Rule], dashboard: &Value) -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rules {
        for name in metric_names(&r.expr) {
            used.entry(name)
                .or_default()
                .push(format!("rule {} ({})", r.name, r.at));
        }
    }
    for (at, expr) in dashboard_exprs(dashboard) {
        for name in metric_names(&substitute(&expr)) {
            used.entry(name)
                .or_default()
                .push(format!("dashboard {at}"));
        }
    }
    used
}

/// Names that are not portd's: Prometheus' own series and node_exporter's
/// textfile collector's.
pub const NOT_PORTD: &[&str] = &[
    "ALERTS",
    "ALERTS_FOR_STATE",
    "up",
    "scrape_duration_seconds",
];
pub const NOT_PORTD_PREFIXES: &[&str] = &["node_textfile_"];

/// Metrics a dashboard panel may use before the change adding them lands:
/// (name, who adds it). The check reports each one used, and fails once
/// portd declares it (then it belongs to the checked names). Empty while
/// portd declares every metric the rules and the dashboard use.
pub const PENDING: &[(&str, &str)] = &[];

/// The families a metrics file declares with `# TYPE`.
pub fn declared(textfile: &str) -> BTreeSet<String> {
    textfile
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The outcome of the metric-name check.
#[derive(Debug, Default)]
pub struct NameCheck {
    /// Names used and neither declared, allowed nor pending, with where.
    pub undeclared: Vec<String>,
    /// Pending names in use (reported, not yet checked).
    pub pending_used: Vec<String>,
    /// Pending names portd declares now: the list is out of date.
    pub pending_declared: Vec<String>,
}

impl NameCheck {
    pub fn passed(&self) -> bool {
        self.undeclared.is_empty() && self.pending_declared.is_empty()
    }
}

pub fn check_names(used: &BTreeMap<String, Vec<String>>, declared: &BTreeSet<String>) -> NameCheck {
    check_names_with(used, declared, PENDING)
}

/// [`check_names`] with a given pending list.
pub fn check_names_with(
    used: &BTreeMap<String, Vec<String>>,
    declared: &BTreeSet<String>,
    pending: &[(&str, &str)],
) -> NameCheck {
    let mut check = NameCheck::default();
    for (name, pending_for) in pending {
        if declared.contains(*name) {
            check.pending_declared.push(format!(
                "{name} is declared by portd now ({pending_for} landed): remove it from PENDING in tests/suite/fleet.rs"
            ));
        }
    }
    for (name, wheres) in used {
        let allowed = NOT_PORTD.contains(&name.as_str())
            || NOT_PORTD_PREFIXES.iter().any(|p| name.starts_with(p));
        if declared.contains(name) || allowed {
            continue;
        }
        match pending.iter().find(|(n, _)| n == name) {
            Some((_, who)) => check
                .pending_used
                .push(format!("{name} ({who}), used by {}", wheres.join("; "))),
            None => check.undeclared.push(format!(
                "{name} is not declared by `portd run`'s metrics file, used by {}",
                wheres.join("; ")
            )),
        }
    }
    check
}
