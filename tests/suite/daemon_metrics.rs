//! The Prometheus textfile that `portd run` writes after each poll when the
//! policy names one: valid text format, the values of the census, bounded
//! label cardinality, atomic replacement. Fake `/proc` trees, no root.

use super::portd_child::{Notify, Portd};
use super::util::{FakeConn, conns_to, fake_proc, write_policy};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format strictly enough to catch what a
/// scraper would reject: every line is a `# HELP`/`# TYPE` comment or
/// `name{label="value",...} value`; names and label names are valid; label
/// values are properly escaped; every sample's family was declared by a
/// `# TYPE` line before it, exactly once.
pub fn parse_textfile(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str, colon: bool| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the file must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(valid_name(name, true), "bad name in {line:?}");
            match keyword {
                "HELP" => assert!(parts.next().is_some_and(|h| !h.is_empty()), "{line:?}"),
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    assert!(["gauge", "counter"].contains(&kind), "{line:?}");
                    assert!(
                        typed.insert(name.to_string(), kind.to_string()).is_none(),
                        "family {name} declared twice"
                    );
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "empty line in the textfile");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(!value.is_nan(), "{line:?}");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, parse_labels(body, line))
            }
        };
        assert!(valid_name(name, true), "bad metric name in {line:?}");
        // Only a time to exhaustion may be infinite: written `+Inf`.
        assert!(
            value.is_finite()
                || (name == "portd_time_to_exhaustion_seconds" && line.ends_with(" +Inf")),
            "{line:?}"
        );
        for l in labels.keys() {
            assert!(valid_name(l, false), "bad label name in {line:?}");
        }
        assert!(
            typed.contains_key(name),
            "{name} has no # TYPE line before it"
        );
        if typed[name] == "counter" {
            assert!(name.ends_with("_total") && value >= 0.0, "{line:?}");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (name, rest) = body
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    labels
}

fn one(samples: &[Sample], name: &str) -> f64 {
    let found: Vec<_> = samples.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0].value
}

fn labelled<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

/// 12 destinations (10.1.1.N:443, N = 1..=12, with 13-N connections each,
/// 78 in all) plus 3 TIME_WAIT sockets to the busiest one, in 40000-40099.
fn busy_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    let mut conns: Vec<FakeConn> = Vec::new();
    let mut port = 40000;
    for n in 1..=12u8 {
        let count = 13 - u16::from(n);
        conns.extend(conns_to([10, 1, 1, n], 443, port, count));
        port += count;
    }
    let mut tw = conns_to([10, 1, 1, 1], 443, port, 3);
    for c in &mut tw {
        c.state = 0x06;
    }
    conns.extend(tw);
    fake_proc(&root, (40000, 40099), &conns);
    root
}

#[test]
fn metrics_file_is_valid_prometheus_text_with_the_census_and_bounded_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = busy_root(dir.path());
    let prom_dir = dir.path().join("textfile");
    std::fs::create_dir(&prom_dir).unwrap();
    let prom = prom_dir.join("portd.prom");
    let policy = root.join("policy.toml");
    write_policy(
        &policy,
        &format!(
            "[poll]\ninterval = \"100ms\"\n\n[widen]\nmode = \"advise\"\n\n[metrics]\nfile = {:?}\n",
            prom.display().to_string()
        ),
    );
    let mut notify = Notify::bind(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portd"));
    cmd.arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(&policy)
        .args(["run", "--log-target", "stderr"])
        .env_remove("PORTD_ROOT")
        .env("NOTIFY_SOCKET", notify.path());
    let mut portd = Portd::spawn(cmd, &dir.path().join("stderr"));
    notify.wait_for("READY", Duration::from_secs(5), |m| m.contains("READY=1"));
    // Held open, so its inode cannot be freed and reused by the next version.
    let first = std::fs::File::open(&prom).unwrap();
    let first_inode = first.metadata().unwrap().ino();
    // Two more polls (each takes a census here), which replace the file.
    // STATUS= does not count them: it is sent only when it changes.
    super::portd_child::wait_for("two more censuses", Duration::from_secs(2), || {
        let text = std::fs::read_to_string(&prom).ok()?;
        let samples = parse_textfile(&text);
        let censuses = samples.iter().find(|s| s.name == "portd_censuses_total")?;
        (censuses.value >= 3.0).then_some(())
    });
    let text = std::fs::read_to_string(&prom).unwrap();
    let second_inode = std::fs::metadata(&prom).unwrap().ino();
    assert!(portd.stop().0.success());

    // Replaced by rename after each poll, never rewritten in place (the
    // first version is still whole), and no temporary file left behind.
    assert_ne!(first_inode, second_inode, "the file was rewritten in place");
    let mut first_text = String::new();
    std::io::Read::read_to_string(&mut &first, &mut first_text).unwrap();
    parse_textfile(&first_text);
    let names: Vec<_> = std::fs::read_dir(&prom_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["portd.prom"], "left in the textfile directory");
    let mode = std::fs::metadata(&prom).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must be able to read it");

    let samples = parse_textfile(&text);
    assert_eq!(one(&samples, "portd_range_low"), 40000.0);
    assert_eq!(one(&samples, "portd_range_high"), 40099.0);
    assert_eq!(one(&samples, "portd_range_ports"), 100.0);
    assert_eq!(one(&samples, "portd_capacity_ports"), 100.0);
    // The busiest destination: 12 established + 3 TIME_WAIT (tcp_tw_reuse=0).
    assert_eq!(one(&samples, "portd_headline_used_ports"), 15.0);
    assert!((one(&samples, "portd_headline_usage_ratio") - 0.15).abs() < 1e-9);
    assert_eq!(one(&samples, "portd_alert_level"), 0.0);
    assert_eq!(one(&samples, "portd_destinations"), 12.0);
    assert_eq!(one(&samples, "portd_time_wait_in_range_sockets"), 3.0);

    let top = labelled(&samples, "portd_destination_used_ports");
    assert_eq!(
        top.len(),
        10,
        "top destinations must be bounded to 10: {top:#?}"
    );
    let first = top[0];
    assert_eq!(first.labels["remote"], "10.1.1.1");
    assert_eq!(first.labels["remote_port"], "443");
    assert_eq!(first.labels["local"], "10.0.0.5");
    assert_eq!(first.value, 15.0);
    assert!(
        top.iter()
            .all(|s| !["10.1.1.11", "10.1.1.12"].contains(&s.labels["remote"].as_str())),
        "the two least used destinations are left out"
    );
    assert_eq!(
        labelled(&samples, "portd_destination_usage_ratio").len(),
        10
    );

    let pool = |name: &str, proto: &str| {
        labelled(&samples, name)
            .into_iter()
            .find(|s| s.labels["proto"] == proto)
            .unwrap_or_else(|| panic!("{name}{{proto={proto}}}"))
            .value
    };
    assert_eq!(pool("portd_pool_used_ports", "tcp"), 81.0);
    assert_eq!(pool("portd_pool_used_ports", "udp"), 0.0);
    assert_eq!(pool("portd_pool_capacity_ports", "tcp"), 100.0);
    assert!((pool("portd_pool_usage_ratio", "tcp") - 0.81).abs() < 1e-9);

    assert_eq!(one(&samples, "portd_range_changes_total"), 0.0);
    assert!(one(&samples, "portd_censuses_total") >= 3.0);
    let took = one(&samples, "portd_census_duration_seconds");
    assert!(took > 0.0 && took < 5.0, "census duration {took}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for name in [
        "portd_census_timestamp_seconds",
        "portd_poll_timestamp_seconds",
    ] {
        let t = one(&samples, name);
        assert!((now - t).abs() < 60.0, "{name} {t}, now {now}");
    }
    let info = labelled(&samples, "portd_info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["mode"], "advise");
    assert_eq!(one(&samples, "portd_yielded"), 0.0);
    let blocked = labelled(&samples, "portd_widening_blocked");
    assert_eq!((blocked.len(), blocked[0].value), (1, 0.0), "{blocked:?}");
    // The same connections on every census: nothing grows.
    assert_eq!(
        one(&samples, "portd_time_to_exhaustion_seconds"),
        f64::INFINITY
    );
    // The metric names of the alert rules and the dashboard are checked
    // against a real run under load: fleet_metric_names.rs.
}

#[test]
fn textfile_parser_rejects_what_prometheus_rejects() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"q\\\"\\\\\"} 3\n";
    assert_eq!(parse_textfile(ok)[0].labels["l"], "q\"\\");
    for bad in [
        "a 1\n",                                 // no TYPE
        "# TYPE a gauge\na{l=\"x} 1\n",          // unterminated value
        "# TYPE a gauge\n1a 1\n",                // bad name
        "# TYPE a gauge\na one\n",               // bad value
        "# TYPE a gauge\n# TYPE a gauge\na 1\n", // declared twice
        "# TYPE a_total counter\na_total -1\n",  // negative counter
    ] {
        let result = std::panic::catch_unwind(|| parse_textfile(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}
