//! The Grafana dashboard `packaging/grafana/portd.json` (rendered from
//! packaging/mixin/), checked without a Grafana: its structure (schema
//! version, variables job, instance and cluster, ids, layout, the views an
//! operator needs), the policy's levels as threshold steps, one unit per
//! axis, the namespaces table as one joined frame, and every PromQL
//! expression, with Grafana's variables substituted, wrapped as a
//! recording rule for `promtool check rules`.

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
    out.extend(variable_problems(&vars));
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
    out.extend(selector_problems(d));
    out.extend(threshold_problems(d, policy_levels()));
    out.extend(unit_problems(d));
    out.extend(netns_table_problems(d));
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

/// The query of a `query` variable (the editor's object or a bare string).
fn variable_query(v: &Value) -> &str {
    v["query"]["query"]
        .as_str()
        .or(v["query"].as_str())
        .unwrap_or("")
}

/// The variables: the Prometheus to ask, then cluster, job and instance,
/// each a `label_values()` of portd's poll timestamp on that Prometheus.
/// The cluster variable yields nothing where no series has the label, so
/// it must offer "All" as a regex that matches series without it.
fn variable_problems(vars: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => out.push(format!(
            "no variable `datasource` of type datasource for prometheus: {other:?}"
        )),
    }
    for label in ["cluster", "job", "instance"] {
        let Some(v) = var(label) else {
            out.push(format!("no variable `{label}`"));
            continue;
        };
        let query = variable_query(v);
        let ok = v["type"] == "query"
            && v["datasource"]["uid"] == "${datasource}"
            && query.starts_with("label_values(portd_poll_timestamp_seconds")
            && query.ends_with(&format!(", {label})"));
        if !ok {
            out.push(format!(
                "variable `{label}`: not label_values(portd_poll_timestamp_seconds..., {label}) on ${{datasource}}: {v}"
            ));
        }
    }
    if let Some(v) = var("cluster")
        && (v["includeAll"] != true || v["allValue"] != ".*")
    {
        out.push(format!(
            "variable `cluster`: without includeAll and allValue \".*\" a fleet without the label selects nothing: {v}"
        ));
    }
    // Each narrows the next: job within the cluster, instance within both.
    if let (Some(job), Some(instance)) = (var("job"), var("instance"))
        && (!variable_query(job).contains("cluster=~\"$cluster\"")
            || !variable_query(instance).contains("job=~\"$job\""))
    {
        out.push("variables: job is not within $cluster, or instance not within $job".into());
    }
    out
}

/// Every panel's queries select the chosen cluster and job; those below
/// the first host row also the chosen instance.
fn selector_problems(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut per_host = false;
    for p in panels(d) {
        if p["type"] == "row" {
            per_host |= p["title"].as_str().unwrap_or("").contains("$instance");
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            let mut needs = vec!["cluster=~\"$cluster\"", "job=~\"$job\""];
            if per_host {
                needs.push("instance=~\"$instance\"");
            }
            for n in needs {
                if !expr.contains(n) {
                    out.push(format!("panel {:?}: {expr:?} lacks {n}", p["title"]));
                }
            }
        }
    }
    out
}

/// The policy's warning and critical levels as ratios, from the shipped
/// config/portd.toml ([thresholds], in percent).
fn policy_levels() -> (f64, f64) {
    let text = std::fs::read_to_string(super::fleet::repo().join("config/portd.toml")).unwrap();
    let policy: toml::Table = toml::from_str(&text).unwrap();
    let level = |name: &str| {
        policy["thresholds"][name]
            .as_integer()
            .unwrap_or_else(|| panic!("config/portd.toml: no [thresholds] {name}"))
    };
    #[allow(clippy::cast_precision_loss)]
    let ratio = |name: &str| level(name) as f64 / 100.0;
    (ratio("warning"), ratio("critical"))
}

/// Every panel that shows usage (unit percentunit) has the policy's levels
/// as threshold steps, drawn as lines on a time series.
fn threshold_problems(d: &Value, (warning, critical): (f64, f64)) -> Vec<String> {
    let mut out = Vec::new();
    let mut usage_panels = 0;
    for p in panels(d) {
        let defaults = &p["fieldConfig"]["defaults"];
        if defaults["unit"] != "percentunit" {
            continue;
        }
        usage_panels += 1;
        let steps: Vec<Option<f64>> = defaults["thresholds"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["value"].as_f64())
            .collect();
        if steps != [None, Some(warning), Some(critical)] {
            out.push(format!(
                "panel {:?}: threshold steps {steps:?}, not the policy's [base, {warning}, {critical}]",
                p["title"]
            ));
        }
        let style = &defaults["custom"]["thresholdsStyle"]["mode"];
        if p["type"] == "timeseries" && (style.is_null() || style == "off") {
            out.push(format!(
                "panel {:?}: the levels are not drawn (thresholdsStyle {style})",
                p["title"]
            ));
        }
    }
    if usage_panels < 4 {
        out.push(format!(
            "only {usage_panels} panels show usage in percentunit"
        ));
    }
    out
}

/// One unit per axis: every panel has a unit; a time series that draws a
/// second unit puts it on the right axis; port numbers (the range's
/// bounds) never share a panel with counts of ports.
fn unit_problems(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(d) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("");
        if p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            out.push(format!("panel {title:?}: no unit"));
        }
        if p["type"] == "timeseries" {
            for o in p["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let props = o["properties"].as_array().cloned().unwrap_or_default();
                let has = |id: &str| props.iter().any(|x| x["id"] == id);
                let right = props
                    .iter()
                    .any(|x| x["id"] == "custom.axisPlacement" && x["value"] == "right");
                if has("unit") && !right {
                    out.push(format!(
                        "panel {title:?}: a second unit on the same axis ({})",
                        o["matcher"]
                    ));
                }
            }
        }
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        let numbers = exprs.iter().any(|e| e.contains("portd_range_low"));
        let counts = exprs
            .iter()
            .any(|e| e.contains("_ports{") || e.contains("_sockets{"));
        if numbers && counts {
            out.push(format!(
                "panel {title:?}: port numbers and port counts share an axis"
            ));
        }
    }
    out
}

/// The namespaces table: the namespaces' usage, ports and level as one
/// frame, joined (merge, or join by the netns label) on the namespace,
/// whose name columns (netns, and pod, pod_namespace, container where the
/// series have them) stay visible. The queries drop the metric name, which
/// would otherwise keep the frames' rows apart.
fn netns_table_problems(d: &Value) -> Vec<String> {
    let tables: Vec<&Value> = panels(d)
        .into_iter()
        .filter(|p| {
            p["type"] == "table"
                && p["targets"].as_array().into_iter().flatten().any(|t| {
                    t["expr"]
                        .as_str()
                        .unwrap_or("")
                        .contains("portd_netns_usage_ratio")
                })
        })
        .collect();
    let [table] = tables[..] else {
        return vec![format!("{} namespaces tables, not one", tables.len())];
    };
    let mut out = Vec::new();
    let targets = table["targets"].as_array().cloned().unwrap_or_default();
    for family in [
        "portd_netns_usage_ratio",
        "portd_netns_used_ports",
        "portd_netns_alert_level",
    ] {
        match targets
            .iter()
            .find(|t| t["expr"].as_str().unwrap_or("").contains(family))
        {
            Some(t) if t["format"] == "table" && t["instant"] == true => {
                if t["expr"].as_str().unwrap_or("").starts_with(family) {
                    out.push(format!("namespaces table: {family} keeps its metric name"));
                }
            }
            other => out.push(format!(
                "namespaces table: no instant table query of {family}: {other:?}"
            )),
        }
    }
    let transformations = table["transformations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let joined = transformations.iter().any(|t| {
        t["id"] == "merge" || (t["id"] == "joinByField" && t["options"]["byField"] == "netns")
    });
    if !joined {
        out.push(format!(
            "namespaces table: no merge or joinByField(netns) transformation: {transformations:?}"
        ));
    }
    for t in transformations.iter().filter(|t| t["id"] == "organize") {
        for column in ["netns", "pod", "pod_namespace", "container"] {
            if t["options"]["excludeByName"][column] == true {
                out.push(format!("namespaces table: column {column} is hidden"));
            }
        }
    }
    out
}

/// The views the issue asks for, by what their expressions read.
fn missing_views(d: &Value) -> Vec<&'static str> {
    let exprs: Vec<(String, String)> = dashboard_exprs(d);
    let has = |pred: &dyn Fn(&str, &str) -> bool| exprs.iter().any(|(at, e)| pred(at, e));
    // The chosen host's series of a family.
    let host = |e: &str, family: &str| {
        e.contains(&format!("{family}{{")) && e.contains("instance=~\"$instance\"")
    };
    let mut missing = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        (
            "fleet: hosts by worst usage",
            has(&|at, e| {
                at.starts_with("panel")
                    && e.contains("max by (cluster, instance) (portd_headline_usage_ratio{")
            }),
        ),
        (
            "fleet: time to exhaustion",
            has(&|at, e| {
                at.starts_with("panel")
                    && e.contains("by (cluster, instance) (portd_time_to_exhaustion_seconds{")
            }),
        ),
        (
            "fleet: alerts firing",
            has(&|_, e| e.contains("ALERTS{alertstate=\"firing\"")),
        ),
        (
            "host: usage per top destination",
            has(&|_, e| {
                e.starts_with("portd_destination_usage_ratio{")
                    && host(e, "portd_destination_usage_ratio")
            }),
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
            has(&|_, e| host(e, "portd_time_wait_in_range_sockets")),
        ),
        (
            "host: witnessed failures",
            has(&|_, e| host(e, "portd_connect_failures_total")),
        ),
        (
            "host: census cost",
            has(&|_, e| host(e, "portd_census_duration_seconds")),
        ),
        (
            "per namespace",
            has(&|_, e| host(e, "portd_netns_usage_ratio")),
        ),
        (
            "instance variable",
            has(&|at, e| {
                at == "variable \"instance\"" && e.starts_with("portd_poll_timestamp_seconds")
            }),
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

/// The variable called `name`, to break it.
fn variable<'a>(d: &'a mut Value, name: &str) -> &'a mut Value {
    d["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// The top-level panel titled `title`, to break it.
fn panel<'a>(d: &'a mut Value, title: &str) -> &'a mut Value {
    d["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

/// A way to break a dashboard, and what it is called.
type Breakage = (&'static str, fn(&mut Value));

#[test]
fn the_structural_check_finds_what_grafana_would_get_wrong() {
    let good = dashboard();
    assert!(problems(&good).is_empty());
    let cases: [Breakage; 13] = [
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
        ("instance from another metric", |d| {
            variable(d, "instance")["query"]["query"] = "label_values(up, instance)".into();
        }),
        ("no cluster variable", |d| {
            variable(d, "cluster")["name"] = "region".into();
        }),
        ("cluster without All", |d| {
            variable(d, "cluster")["includeAll"] = false.into();
        }),
        ("a panel ignoring $job", |d| {
            let e = d["panels"][1]["targets"][0]["expr"]
                .as_str()
                .unwrap()
                .to_string();
            d["panels"][1]["targets"][0]["expr"] = e.replace(", job=~\"$job\"", "").into();
        }),
        ("warning line at 45 %", |d| {
            d["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] =
                0.45.into();
        }),
        ("a second unit on the same axis", |d| {
            let p = panel(d, "Census cost");
            p["fieldConfig"]["overrides"][0]["properties"]
                .as_array_mut()
                .unwrap()
                .retain(|x| x["id"] != "custom.axisPlacement");
        }),
        ("port numbers beside counts", |d| {
            let low = panel(d, "Port range")["targets"][0].clone();
            panel(d, "TIME_WAIT")["targets"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"refId": "Z", "expr": low["expr"], "datasource": low["datasource"]}));
        }),
        ("namespaces table not joined", |d| {
            panel(d, "Namespaces")["transformations"]
                .as_array_mut()
                .unwrap()
                .retain(|t| t["id"] != "merge");
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
        "sum by (comm) (rate(portd_connect_failures_total{instance=~\"$instance\"}[$__rate_interval])"
            .to_string(),
    )];
    assert!(!check_as_rules(&promtool, &broken, dir.path()).0);
}

#[test]
fn grafana_variables_are_substituted_and_unknown_ones_refused() {
    assert_eq!(
        substitute(
            "rate(x{instance=~\"$instance\"}[$__rate_interval]) + increase(x[$__range]) + changes(y{i=\"${instance}\"}[$__interval])"
        ),
        "rate(x{instance=~\"web1:9100\"}[1m]) + increase(x[1h]) + changes(y{i=\"web1:9100\"}[30s])"
    );
    assert!(std::panic::catch_unwind(|| substitute("x{pod=\"$pod\"}")).is_err());
}
