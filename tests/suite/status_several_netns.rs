//! `portd status` on a container host: several network namespaces, one
//! near exhaustion with a tiny range, one quiet, portd's own idle, all in
//! a private PID namespace with its own /proc and a tmpfs /run
//! (tests/helpers/several_netns.sh). portd's numbers equal `ss` inside
//! each, and no namespace's settings change (needs root).

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use super::util::{helper_in_private_namespaces, root_test};

/// A file the helper wrote into the test's output directory.
pub(super) fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs tests/helpers/several_netns.sh in a private PID, network and mount
/// namespace with its own /proc, writing into `out`; `actions` is a script
/// it runs once the namespaces hold their sockets.
pub(super) fn several_netns(out: &Path, actions: Option<&Path>) -> Output {
    helper_in_private_namespaces("several_netns.sh")
        .arg(out)
        .args(actions)
        .output()
        .unwrap()
}

fn json(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&read(dir, name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn number(dir: &Path, name: &str) -> u64 {
    read(dir, name).trim().parse().unwrap()
}

#[test]
fn status_reports_every_namespace_worst_first_and_equal_to_ss() {
    root_test!();
    let out = tempfile::tempdir().unwrap();
    let run = several_netns(out.path(), None);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let dir = out.path();
    let busy_ss = number(dir, "busy.ss");
    let quiet_ss = number(dir, "quiet.ss");
    assert_eq!((busy_ss, quiet_ss), (15, 3), "the helpers' own sockets");
    let busy_inode: u64 = read(dir, "busy.netns")
        .trim()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();

    // Every namespace: the worst (15 of 20 in the busy one) is the headline.
    let all = json(dir, "all.json");
    assert_eq!(number(dir, "all.rc"), 2, "{all:#}");
    assert_eq!(all["status"], "critical");
    let list = all["namespaces"].as_array().unwrap();
    assert_eq!(list.len(), 3, "own, busy, quiet: {all:#}");
    assert_eq!(list[0]["own"], true);
    let busy = list
        .iter()
        .find(|n| n["inode"] == busy_inode)
        .expect("the busy namespace is listed");
    assert_eq!(busy["report"]["status"], "critical");
    assert_eq!(busy["report"]["capacity"], 20);
    assert_eq!(busy["report"]["destinations"][0]["used"], busy_ss);
    assert_eq!(busy["report"]["destinations"][0]["remote_port"], 9000);
    let quiet = list.iter().find(|n| n["names"][0] == "quiet").unwrap();
    assert_eq!(quiet["enter"], "ip netns exec quiet COMMAND");
    // Quiet by its counters: no census, a bound at least what ss sees.
    assert_eq!(quiet["report"]["census"], false, "{quiet:#}");
    assert!(quiet["report"]["bound"]["bound"].as_u64().unwrap() >= quiet_ss);
    let text = read(dir, "all.txt");
    assert_eq!(number(dir, "all-text.rc"), 2);
    assert!(
        text.starts_with("PORTD CRITICAL - pid "),
        "the headline names the namespace: {text}"
    );
    assert!(text.contains(&format!("net:[{busy_inode}] - enter: nsenter -t ")));

    // --netns picks one, by name or inode, with a full census.
    let q = json(dir, "quiet.json");
    assert_eq!(number(dir, "quiet.rc"), 0);
    assert_eq!(q["namespaces"].as_array().unwrap().len(), 1);
    assert_eq!(q["range"]["low"], 45000, "{q:#}");
    assert_eq!(q["destinations"][0]["used"], quiet_ss);
    let b = json(dir, "busy.json");
    assert_eq!(number(dir, "busy.rc"), 2);
    assert_eq!(b["destinations"][0]["used"], busy_ss);
    assert_eq!(b["capacity"], 20);

    // Nothing written anywhere: every namespace's range and reserved ports
    // are what they were.
    for ns in ["busy", "quiet", "own"] {
        assert_eq!(
            read(dir, &format!("{ns}.before")),
            read(dir, &format!("{ns}.after")),
            "{ns}"
        );
    }
}
