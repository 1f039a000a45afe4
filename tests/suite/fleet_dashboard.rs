//! The Grafana dashboard `packaging/grafana/portd.json`, checked without a
//! Grafana: its structure (schema version, variables, ids, layout, panels
//! the issue asks for), and every PromQL expression, with Grafana's
//! variables substituted, wrapped as a recording rule for
//! `promtool check rules`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

use serde_json::Value;

use super::fleet::{dashboard, dashboard_exprs, panels, promtool, run_promtool, substitute};

/// Grafana 10.4 and 11 write schemaVersion 39.
const MIN_SCHEMA_VERSION: u64 = 39;

/// The structural problems of a dashboard, one line each.
fn problems(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    if schema < MIN_SCHEMA_VERSION {
        out.push(format!("schemaVersion {schema} < {MIN_SCHEMA_VERSION}"));
    }
    if d["uid"].as_str().is_none_or(str::is_empty) || d["title"].as_str().is_none_or(str::is_empty)
    {
        out.push("no uid or title".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => out.push(format!(
            "no variable `datasource` of type datasource for prometheus: {other:?}"
        )),
    }
    let host_query = "label_values(portd_poll_timestamp_seconds, instance)";
    match var("host") {
        Some(v)
            if v["type"] == "query"
                && (v["query"]["query"] == host_query || v["query"] == host_query)
                && v["datasource"]["uid"] == "${datasource}" => {}
        other => out.push(format!(
            "no variable `host` from {host_query} on ${{datasource}}: {other:?}"
        )),
    }
    // Every query goes to the chosen Prometheus.
    let uses_variable = |ds: &Value| ds["uid"] == "${datasource}" || ds == "${datasource}";
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for p in panels(d) {
        let id = p["id"].as_u64();
        let title = p["title"].as_str().unwrap_or("").to_string();
        match id {
            Some(id) if ids.insert(id) => {}
            _ => out.push(format!(
                "panel {title:?}: id {} missing or not unique",
                p["id"]
            )),
        }
        let g = &p["gridPos"];
        let dims: Vec<Option<i64>> = ["x", "y", "w", "h"]
            .iter()
            .map(|k| g[*k].as_i64())
            .collect();
        match dims[..] {
            [Some(x), Some(y), Some(w), Some(h)] if x >= 0 && w > 0 && h > 0 && x + w <= 24 => {
                boxes.push((x, y, w, h, title.clone()));
            }
            _ => out.push(format!("panel {title:?}: bad gridPos {g}")),
        }
        titles.push(title.clone());
        if p["type"] == "row" {
            continue;
        }
        if !uses_variable(&p["datasource"]) {
            out.push(format!(
                "panel {title:?}: datasource {} is not ${{datasource}}",
                p["datasource"]
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            out.push(format!("panel {title:?}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if !uses_variable(&t["datasource"]) {
                out.push(format!(
                    "panel {title:?} target {}: datasource {} is not ${{datasource}}",
                    t["refId"], t["datasource"]
                ));
            }
            if t["expr"].as_str().is_none_or(str::is_empty) || !refs.insert(t["refId"].to_string())
            {
                out.push(format!(
                    "panel {title:?} target {}: no expr or refId twice",
                    t["refId"]
                ));
            }
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if a.get("expr").is_some() && !uses_variable(&a["datasource"]) {
            out.push(format!(
                "annotation {}: datasource is not ${{datasource}}",
                a["name"]
            ));
        }
    }
    // Panels do not overlap.
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            if !apart {
                out.push(format!("panels {:?} and {:?} overlap", a.4, b.4));
            }
        }
    }
    out
}

/// The views the issue asks for, by what their expressions read.
fn missing_views(d: &Value) -> Vec<&'static str> {
    let exprs: Vec<(String, String)> = dashboard_exprs(d);
    let has = |pred: &dyn Fn(&str, &str) -> bool| exprs.iter().any(|(at, e)| pred(at, e));
    let mut missing = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        (
            "fleet: hosts by worst usage",
            has(&|at, e| {
                at.starts_with("panel")
                    && e.contains("max by (instance) (portd_headline_usage_ratio)")
            }),
        ),
        (
            "fleet: time to exhaustion",
            has(&|at, e| {
                at.starts_with("panel")
                    && e.contains("by (instance) (portd_time_to_exhaustion_seconds")
            }),
        ),
        (
            "fleet: alerts firing",
            has(&|_, e| e.contains("ALERTS{alertstate=\"firing\"")),
        ),
        (
            "host: usage per top destination",
            has(&|_, e| e.starts_with("portd_destination_usage_ratio{instance=~\"$host\"}")),
        ),
        (
            "host: range changes as annotations",
            has(&|at, e| at.starts_with("annotation") && e.contains("portd_range_")),
        ),
        (
            "host: capacity changes as annotations",
            has(&|at, e| at.starts_with("annotation") && e.contains("portd_capacity_ports")),
        ),
        (
            "host: TIME_WAIT",
            has(&|_, e| e.contains("portd_time_wait_in_range_sockets{instance=~\"$host\"}")),
        ),
        (
            "host: witnessed failures",
            has(&|_, e| e.contains("portd_connect_failures_total{instance=~\"$host\"}")),
        ),
        (
            "host: census cost",
            has(&|_, e| e.contains("portd_census_duration_seconds{instance=~\"$host\"}")),
        ),
        (
            "per namespace",
            has(&|_, e| e.contains("portd_netns_usage_ratio{instance=~\"$host\"}")),
        ),
        (
            "host variable",
            has(&|at, e| at == "variable \"host\"" && e == "portd_poll_timestamp_seconds"),
        ),
    ];
    for (view, present) in checks {
        if !present {
            missing.push(view);
        }
    }
    missing
}

#[test]
fn the_dashboard_has_its_variables_unique_ids_a_layout_and_every_view() {
    let d = dashboard();
    let problems = problems(&d);
    assert!(
        problems.is_empty(),
        "packaging/grafana/portd.json:\n  {}",
        problems.join("\n  ")
    );
    let missing = missing_views(&d);
    assert!(
        missing.is_empty(),
        "packaging/grafana/portd.json lacks: {missing:?}"
    );
    assert!(
        dashboard_exprs(&d).len() >= 30,
        "{:#?}",
        dashboard_exprs(&d)
    );
}

/// A way to break a dashboard, and what it is called.
type Breakage = (&'static str, fn(&mut Value));

#[test]
fn the_structural_check_finds_what_grafana_would_get_wrong() {
    let good = dashboard();
    assert!(problems(&good).is_empty());
    let cases: [Breakage; 6] = [
        ("old schema", |d| d["schemaVersion"] = 27.into()),
        ("no datasource variable", |d| {
            d["templating"]["list"][0]["type"] = "custom".into();
        }),
        ("fixed datasource", |d| {
            d["panels"][1]["targets"][0]["datasource"] =
                serde_json::json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"});
        }),
        ("duplicate id", |d| {
            let id = d["panels"][1]["id"].clone();
            d["panels"][2]["id"] = id;
        }),
        ("overlap", |d| {
            let pos = d["panels"][1]["gridPos"].clone();
            d["panels"][2]["gridPos"] = pos;
        }),
        ("host from another metric", |d| {
            d["templating"]["list"][1]["query"]["query"] = "label_values(up, instance)".into();
        }),
    ];
    for (what, break_it) in cases {
        let mut d = good.clone();
        break_it(&mut d);
        assert!(!problems(&d).is_empty(), "{what} was not found");
    }
}

/// Writes the expressions as recording rules and runs `promtool check
/// rules` on them: (passed, promtool's output).
fn check_as_rules(promtool: &Path, exprs: &[(String, String)], dir: &Path) -> (bool, String) {
    let mut text = String::from("groups:\n  - name: portd-dashboard\n    rules:\n");
    for (i, (at, expr)) in exprs.iter().enumerate() {
        let body = substitute(expr).replace('\n', "\n          ");
        text.push_str(&format!(
            "      # {at}\n      - record: portd_dashboard:expr_{i}\n        expr: |\n          {body}\n"
        ));
    }
    let file = dir.join("dashboard-exprs.yml");
    std::fs::write(&file, text).unwrap();
    run_promtool(
        promtool,
        &[OsStr::new("check"), OsStr::new("rules"), file.as_os_str()],
        dir,
    )
}

#[test]
fn every_dashboard_expression_passes_promtool_check_rules() {
    let Some(promtool) = promtool("every_dashboard_expression_passes_promtool_check_rules") else {
        return;
    };
    let exprs = dashboard_exprs(&dashboard());
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_as_rules(&promtool, &exprs, dir.path());
    if !ok {
        // Name each expression promtool rejects.
        let bad: Vec<String> = exprs
            .iter()
            .filter(|e| !check_as_rules(&promtool, std::slice::from_ref(e), dir.path()).0)
            .map(|(at, e)| format!("{at}: {e}"))
            .collect();
        panic!(
            "promtool check rules rejects:\n  {}\n{out}",
            bad.join("\n  ")
        );
    }
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );

    // The wrapping does not hide a broken expression.
    let broken = [(
        "broken".to_string(),
        "sum by (comm) (rate(portd_connect_failures_total{instance=~\"$host\"}[$__rate_interval])"
            .to_string(),
    )];
    assert!(!check_as_rules(&promtool, &broken, dir.path()).0);
}

#[test]
fn grafana_variables_are_substituted_and_unknown_ones_refused() {
    assert_eq!(
        substitute(
            "rate(x{instance=~\"$host\"}[$__rate_interval]) + increase(x[$__range]) + changes(y{i=\"${host}\"}[$__interval])"
        ),
        "rate(x{instance=~\"web1:9100\"}[1m]) + increase(x[1h]) + changes(y{i=\"web1:9100\"}[30s])"
    );
    assert!(std::panic::catch_unwind(|| substitute("x{pod=\"$pod\"}")).is_err());
}
