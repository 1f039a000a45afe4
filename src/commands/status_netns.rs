//! `portd status` across network namespaces: a section per namespace, the
//! headline and exit status from the worst. A namespace whose O(1) counters
//! keep every destination below the warning level is reported from them
//! without a census: every census walks the kernel's global socket hash
//! (docs/DESIGN.md, "Other network namespaces").

use std::fmt::Write as _;

use crate::base::host::Host;
use crate::base::untrusted;
use crate::commands::status::{self, Outcome, StatusOptions};
use crate::judge::level::Level;
use crate::judge::quiet::quiet;
use crate::observe::usage::{Usage, UsageOptions};
use crate::publish::live;

use crate::observe::netns::Namespace;

/// One namespace's part of the report.
struct NetnsSection {
    ns: Namespace,
    level: Level,
    /// Its headline usage (a fraction), or the bound its counters give:
    /// among namespaces at one level, the highest is the worst.
    usage: f64,
    /// The full report (text or JSON), or the quiet line.
    text: String,
    json: serde_json::Value,
}

/// The daemon's live view describes portd's own namespace only: the other
/// sections leave it out.
fn measure(
    host: &Host,
    ns: &Namespace,
    opts: &StatusOptions,
    census: bool,
    daemon: &live::DaemonView,
) -> NetnsSection {
    let usage_options = UsageOptions {
        tcp_pool_in_headline: opts.tcp_pool_in_headline,
    };
    if !census
        && !ns.own
        && let Some(section) = quiet_section(host, ns, opts)
    {
        return section;
    }
    match crate::observe::netns::census::take(host, ns, usage_options) {
        Ok(usage) => census_section(&usage, ns, opts, daemon),
        Err(e) => NetnsSection {
            ns: ns.clone(),
            level: Level::Unknown,
            usage: 0.0,
            text: format!("PORTD UNKNOWN - {e}\n"),
            json: serde_json::json!({
                "status": Level::Unknown,
                "exit_code": Level::Unknown.exit_code(),
                "error": e,
            }),
        },
    }
}

/// The quiet line of another namespace whose counters alone bound its
/// usage under the thresholds, so no census is needed; `None` otherwise.
fn quiet_section(host: &Host, ns: &Namespace, opts: &StatusOptions) -> Option<NetnsSection> {
    let (totals, _) = crate::observe::netns::census::counters(host, ns)?;
    let settings = crate::observe::netns::census::settings(host, ns).ok()?;
    let q = quiet(&settings, &totals, &opts.thresholds)?;
    Some(NetnsSection {
        ns: ns.clone(),
        level: Level::Ok,
        usage: q.usage.fraction(),
        text: format!(
            "PORTD OK - at most {} of {} ports towards any destination ({}; sockstat, no census)\nrange      {}\n",
            q.bound, q.capacity, q.usage, settings.port_range
        ),
        json: serde_json::json!({
            "status": Level::Ok,
            "exit_code": Level::Ok.exit_code(),
            "census": false,
            "range": settings.port_range,
            "bound": q,
        }),
    })
}

/// The full report of a census, in text and JSON; another namespace's
/// leaves out the daemon's line.
fn census_section(
    usage: &Usage,
    ns: &Namespace,
    opts: &StatusOptions,
    daemon: &live::DaemonView,
) -> NetnsSection {
    let render = |json: bool| {
        status::render(
            usage,
            None,
            daemon,
            &StatusOptions {
                json,
                ..opts.clone()
            },
        )
    };
    let mut text = render(false);
    let json = render(true);
    let mut value = serde_json::from_str(&json.text).unwrap_or(serde_json::Value::Null);
    if !ns.own {
        text.text = text.text.replace(&daemon.line(), "");
        if let Some(obj) = value.as_object_mut() {
            obj.remove("daemon");
        }
    }
    NetnsSection {
        ns: ns.clone(),
        level: text.level,
        usage: usage.headline.usage.fraction(),
        text: text.text,
        json: value,
    }
}

/// The section of `ns`, or `None` when the namespace vanished while it
/// was measured: its process exited between discovery and measurement. A
/// namespace whose first process exited while others remain in it is
/// measured through another of them.
fn measure_or_gone(
    host: &Host,
    ns: &Namespace,
    opts: &StatusOptions,
    census: bool,
    daemon: &live::DaemonView,
) -> Option<NetnsSection> {
    let section = measure(host, ns, opts, census, daemon);
    if section.level != Level::Unknown || !ns.is_gone(host) {
        return Some(section);
    }
    let other = ns.through_another_pid(host)?;
    let section = measure(host, &other, opts, census, daemon);
    (section.level != Level::Unknown || !other.is_gone(host)).then_some(section)
}

/// Another namespace's section with the daemon's forecast for it, when
/// the daemon holds one: a single look has no rate, the daemon's
/// successive censuses do (its live view, `time_to_exhaustion_seconds`).
fn with_forecast(mut section: NetnsSection, daemon: &live::DaemonView) -> NetnsSection {
    let live::DaemonView::Running { live, .. } = daemon else {
        return section;
    };
    let Some(t) = live
        .namespaces
        .iter()
        .find(|n| n.inode == section.ns.inode && !section.ns.own)
        .and_then(|n| n.time_to_exhaustion_seconds)
    else {
        return section;
    };
    section.text.push_str(&format!(
        "forecast   runs out in {t:.0}s at the present growth (the daemon's)\n"
    ));
    if let Some(obj) = section.json.as_object_mut() {
        obj.insert("time_to_exhaustion_seconds".into(), t.into());
    }
    section
}

/// The worst section: by [`Level::rank`] (a measured critical outranks a
/// namespace that could not be measured), then by usage; the first of
/// equals (portd's own namespace comes first).
fn worst(sections: &[NetnsSection]) -> Option<&NetnsSection> {
    sections.iter().reduce(|worst, s| {
        let key = |s: &NetnsSection| (s.level.rank(), s.usage);
        if key(s).partial_cmp(&key(worst)) == Some(std::cmp::Ordering::Greater) {
            s
        } else {
            worst
        }
    })
}

/// Whether a plain `status` reports the other namespaces: as root, on the
/// real root, from the namespace of pid 1 (the host's).
pub fn watches_others(host: &Host) -> bool {
    host.root() == std::path::Path::new("/")
        && rustix::process::geteuid().is_root()
        && crate::observe::netns::discovery::own_inode(host)
            .is_some_and(|own| crate::observe::netns::discovery::pid1_inode(host) == Some(own))
}

/// The report over `namespaces` (portd's own first). `census_all` takes a
/// census of each even where the counters show it quiet (`--netns`).
pub fn run(
    host: &Host,
    namespaces: &[Namespace],
    unreadable: u32,
    opts: &StatusOptions,
    census_all: bool,
) -> Outcome {
    let daemon = live::read(host, std::time::SystemTime::now());
    let mut vanished = 0;
    let sections: Vec<NetnsSection> = namespaces
        .iter()
        .filter_map(|ns| {
            let section = measure_or_gone(host, ns, opts, census_all, &daemon);
            vanished += u32::from(section.is_none());
            section.map(|s| with_forecast(s, &daemon))
        })
        .collect();
    let Some(worst) = worst(&sections) else {
        let why = if vanished > 0 {
            "every network namespace that matched vanished while status measured it"
        } else {
            "no network namespace matches"
        };
        return status::unknown(why, opts.json);
    };
    let level = worst.level;
    let mut notes = Vec::new();
    if unreadable > 0 {
        notes.push(format!("{unreadable} processes' network namespaces are not readable (CAP_SYS_PTRACE, or /proc mounted with hidepid)"));
    }
    if vanished > 0 {
        notes.push(format!(
            "{vanished} network namespaces vanished (their last process exited) while status measured them"
        ));
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    let text = if opts.json {
        json(&sections, level, note.as_deref())
    } else {
        human(&sections, worst, note.as_deref())
    };
    Outcome { text, level }
}

fn json(sections: &[NetnsSection], level: Level, note: Option<&str>) -> String {
    // The first section's report stays at the top level (portd's own
    // namespace, or the one --netns picked), as without namespaces.
    let mut top = sections
        .first()
        .map(|s| s.json.clone())
        .unwrap_or(serde_json::Value::Null);
    let list: Vec<serde_json::Value> = sections
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s.ns).unwrap_or(serde_json::Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("report".into(), s.json.clone());
            }
            v
        })
        .collect();
    if let Some(obj) = top.as_object_mut() {
        obj.insert("schema_version".into(), status::SCHEMA_VERSION.into());
        obj.insert(
            "status".into(),
            serde_json::to_value(level).unwrap_or_default(),
        );
        obj.insert("exit_code".into(), level.exit_code().into());
        obj.insert("namespaces".into(), list.into());
        if let Some(note) = note {
            obj.insert("namespaces_note".into(), note.into());
        }
    }
    format!("{top:#}\n")
}

fn human(sections: &[NetnsSection], worst: &NetnsSection, note: Option<&str>) -> String {
    let mut out = headline(worst, sections.len());
    out.push('\n');
    for s in sections {
        let _ = writeln!(
            out,
            "\n== {} net:[{}]{}",
            s.ns.label,
            s.ns.inode,
            if s.ns.own {
                String::new()
            } else {
                format!(" - enter: {}", s.ns.enter)
            }
        );
        out.push_str(&s.text);
    }
    if let Some(note) = note {
        let _ = writeln!(out, "\nnote: {note}");
    }
    out
}

/// The worst namespace's first line, naming it when there are several (its
/// label is escaped display text: the line stays one line with one `|`).
fn headline(worst: &NetnsSection, sections: usize) -> String {
    let first = worst.text.lines().next().unwrap_or_default();
    if worst.ns.own || sections == 1 {
        first.to_string()
    } else {
        first.replacen(" - ", &format!(" - {}: ", worst.ns.label), 1)
    }
}

/// `portd status` when it reports more than portd's own namespace:
/// `--netns WHICH` picks one (by inode, name, container, pod or label);
/// without it, root on the real root in the host's namespace (pid 1's)
/// reports every namespace; run inside a container or a test's namespace
/// it reports its own. `None`: the plain report of portd's own namespace.
pub fn command(host: &Host, pick: Option<&str>, opts: &StatusOptions) -> Option<Outcome> {
    if pick.is_none() && !watches_others(host) {
        return None;
    }
    let (all, unreadable) = crate::observe::netns::all(host);
    match pick {
        Some(want) => {
            let chosen: Vec<Namespace> = all.into_iter().filter(|n| n.matches(want)).collect();
            if chosen.is_empty() {
                let e = format!(
                    "--netns {want:?}: no network namespace has that inode, name, container, pod or label (`portd status` as root lists them)"
                );
                return Some(status::unknown(&e, opts.json));
            }
            Some(run(host, &chosen, unreadable, opts, true))
        }
        None if all.iter().all(|n| n.own) => None,
        None => Some(run(host, &all, unreadable, opts, false)),
    }
}

/// A plain `status` of portd's own namespace while the daemon watches the
/// others (its live view lists them, each a line in the daemon's part of
/// the report): the headline and the exit status are the worst namespace's
/// when the daemon holds one worse than portd's own.
pub fn with_daemon_view(host: &Host, outcome: Outcome, json: bool) -> Outcome {
    let daemon = live::read(host, std::time::SystemTime::now());
    raise_to_worst(&daemon, outcome, json)
}

fn raise_to_worst(daemon: &live::DaemonView, mut outcome: Outcome, json: bool) -> Outcome {
    let Some(worst) = live::worst_namespace(daemon) else {
        return outcome;
    };
    let Some(level) = worst.level else {
        return outcome;
    };
    if level.rank() <= outcome.level.rank() {
        return outcome;
    }
    outcome.level = level;
    let what = match &worst.headline {
        Some(h) => format!(
            "{:.1}% ({}/{}) {}",
            h.usage * 100.0,
            h.used,
            h.capacity,
            untrusted::escape(&h.cause)
        ),
        None => "raised".into(),
    };
    if json {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&outcome.text)
            && let Some(obj) = v.as_object_mut()
        {
            obj.insert(
                "status".into(),
                serde_json::to_value(level).unwrap_or_default(),
            );
            obj.insert("exit_code".into(), level.exit_code().into());
            obj.insert(
                "worst_namespace".into(),
                serde_json::to_value(worst).unwrap_or_default(),
            );
            outcome.text = format!("{v:#}\n");
        }
    } else {
        // The perfdata stays on the first line (portd's own namespace, as
        // without the raise): a plugin line has one `|`, before it.
        let (first, rest) = outcome.text.split_once('\n').unwrap_or((&outcome.text, ""));
        let (own, perfdata) = match first.split_once(" | ") {
            Some((own, perfdata)) => (own, format!(" | {perfdata}")),
            None => (first, String::new()),
        };
        outcome.text = format!(
            "PORTD {} - {} net:[{}]: {what}{} (the daemon's view){perfdata}\n{own}\n{rest}",
            level.label(),
            untrusted::escape(&worst.label),
            worst.inode,
            worst
                .time_to_exhaustion_seconds
                .map(|t| format!(", runs out in {t:.0}s"))
                .unwrap_or_default(),
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ports::PortSet;

    use crate::observe::census::settings::for_tests as settings;

    #[test]
    fn the_daemon_view_of_a_worse_namespace_is_the_headline() {
        let ns = |inode, level| live::NamespaceView {
            inode,
            label: format!("netns n{inode}"),
            level: Some(level),
            headline: Some(live::HeadlineView {
                usage: 0.75,
                used: 15,
                capacity: 20,
                cause: "destination 127.0.0.1 -> 127.0.0.1:9000".into(),
                level: Some(level),
            }),
            ..live::NamespaceView::default()
        };
        let daemon = live::DaemonView::Running {
            live: Box::new(live::Live {
                namespaces: vec![ns(7, Level::Warning), ns(9, Level::Critical)],
                ..live::Live::default()
            }),
            age: std::time::Duration::ZERO,
        };
        let own = |level| Outcome {
            text: "PORTD OK - 0.0% ... | usage=0.00%;80;90;0;100\nrange ...\n".into(),
            level,
        };
        let raised = raise_to_worst(&daemon, own(Level::Ok), false);
        assert_eq!(raised.level, Level::Critical);
        assert_eq!(
            raised.text,
            "PORTD CRITICAL - netns n9 net:[9]: 75.0% (15/20) destination 127.0.0.1 -> 127.0.0.1:9000 (the daemon's view) | usage=0.00%;80;90;0;100\nPORTD OK - 0.0% ...\nrange ...\n",
        );
        // Its own report stays when it is as bad; a measured critical
        // outranks its own unknown.
        assert_eq!(
            raise_to_worst(&daemon, own(Level::Critical), false).text,
            own(Level::Ok).text
        );
        assert_eq!(
            raise_to_worst(&daemon, own(Level::Unknown), false).level,
            Level::Critical
        );
        let json = Outcome {
            text: "{\"status\": \"ok\", \"exit_code\": 0}".into(),
            level: Level::Ok,
        };
        let v: serde_json::Value =
            serde_json::from_str(&raise_to_worst(&daemon, json, true).text).unwrap();
        assert_eq!(v["status"], "critical");
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["worst_namespace"]["inode"], 9);
        // No daemon: nothing changes.
        let none = live::DaemonView::NotRunning(live::NotRunning::Absent);
        assert_eq!(
            raise_to_worst(&none, own(Level::Ok), false).level,
            Level::Ok
        );
    }

    /// A namespace with 18 of 20 ports used towards one destination.
    fn critical_usage() -> crate::observe::usage::Usage {
        use crate::observe::census::{Proto, Socket};
        let mut agg =
            crate::observe::usage::Aggregator::new(settings(40000, 40019, &[]), PortSet::new());
        for port in 40000..40018 {
            agg.visit(&Socket {
                proto: Proto::Tcp,
                local: [10, 0, 0, 1].into(),
                local_port: port,
                remote: [10, 0, 0, 2].into(),
                remote_port: 443,
                state: crate::base::kernel::TcpState::Established,
                uid: 0,
                inode: 1,
            });
        }
        agg.finish("fixture", true, UsageOptions::default())
    }

    fn options() -> StatusOptions {
        StatusOptions {
            json: false,
            top: 10,
            processes: false,
            thresholds: crate::policy::Policy::default().thresholds,
            tcp_pool_in_headline: false,
        }
    }

    /// The namespace of pid 8 whose process named itself `comm`, as
    /// discovery names it from a fixture /proc.
    fn named_by(comm: &[u8]) -> Namespace {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc/8");
        std::fs::create_dir_all(&proc).unwrap();
        let mut text = comm.to_vec();
        text.push(b'\n');
        std::fs::write(proc.join("comm"), text).unwrap();
        let found = crate::observe::netns::Found {
            inode: 40,
            pid: Some(8),
            processes: 1,
            names: Vec::new(),
            own: false,
        };
        crate::observe::netns::describe(&Host::new(dir.path()), &found)
    }

    proptest::proptest! {
        #[test]
        fn any_process_name_leaves_the_plugin_line_one_line_with_one_pipe(
            comm in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)
        ) {
            let none = live::DaemonView::NotRunning(live::NotRunning::Absent);
            let critical = status::render(&critical_usage(), None, &none, &options());
            proptest::prop_assert_eq!(critical.level, Level::Critical);
            let own = NetnsSection {
                ns: Namespace { own: true, label: "host".into(), ..named_by(b"portd") },
                level: Level::Ok,
                usage: 0.0,
                text: "PORTD OK - 0.00% ... | usage=0.00%;80;90;0;100\n".into(),
                json: serde_json::Value::Null,
            };
            let worst = NetnsSection {
                ns: named_by(&comm),
                level: critical.level,
                usage: 0.9,
                text: critical.text,
                json: serde_json::Value::Null,
            };
            let sections = [own, worst];
            let text = human(&sections, &sections[1], None);
            let first = text.lines().next().unwrap();
            let line = format!("{first}\n");
            proptest::prop_assert!(text.starts_with(&line));
            proptest::prop_assert_eq!(first.matches('|').count(), 1, "{}", first);
            let (before, perfdata) = first.split_once(" | ").unwrap();
            proptest::prop_assert!(before.starts_with("PORTD CRITICAL - pid 8"), "{}", before);
            proptest::prop_assert!(perfdata.starts_with("usage=90.00%;"), "{}", perfdata);
            proptest::prop_assert!(!first.chars().any(char::is_control), "{}", first);
        }
    }

    fn section(label: &str, level: Level, usage: f64) -> NetnsSection {
        NetnsSection {
            ns: Namespace {
                label: label.into(),
                ..named_by(b"x")
            },
            level,
            usage,
            text: format!("PORTD {} - {label}\n", level.label()),
            json: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_headline_names_the_namespace_with_the_highest_usage_at_the_worst_level() {
        let sections = [
            section("host", Level::Ok, 0.1),
            section("a", Level::Critical, 0.90),
            section("b", Level::Critical, 0.95),
            section("c", Level::Critical, 0.91),
            section("d", Level::Warning, 0.85),
        ];
        assert_eq!(worst(&sections).unwrap().ns.label, "b");
        // Equal usage: the first listed.
        let tied = [
            section("a", Level::Critical, 0.9),
            section("b", Level::Critical, 0.9),
        ];
        assert_eq!(worst(&tied).unwrap().ns.label, "a");
        assert!(
            human(&sections, worst(&sections).unwrap(), None)
                .starts_with("PORTD CRITICAL - b: b\n")
        );
    }

    #[test]
    fn a_measured_critical_outranks_a_namespace_that_could_not_be_measured() {
        let sections = [
            section("a", Level::Unknown, 0.0),
            section("b", Level::Critical, 0.9),
            section("c", Level::Unknown, 0.0),
        ];
        assert_eq!(worst(&sections).unwrap().level, Level::Critical);
        let sections = [
            section("a", Level::Warning, 0.7),
            section("b", Level::Unknown, 0.0),
        ];
        assert_eq!(worst(&sections).unwrap().level, Level::Unknown);
    }

    #[test]
    fn a_namespace_whose_process_exited_is_measured_through_another_or_left_out() {
        let dir = tempfile::tempdir().unwrap();
        for pid in [8, 9] {
            let ns = dir.path().join(format!("proc/{pid}/ns"));
            std::fs::create_dir_all(&ns).unwrap();
            std::os::unix::fs::symlink("net:[40]", ns.join("net")).unwrap();
        }
        let host = Host::new(dir.path());
        let ns = Namespace {
            inode: 40,
            pid: Some(8),
            ..named_by(b"x")
        };
        let none = live::DaemonView::NotRunning(live::NotRunning::Absent);
        // A fixture root cannot be entered: unknown, but still there.
        let s = measure_or_gone(&host, &ns, &options(), false, &none).unwrap();
        assert_eq!((s.level, s.ns.pid), (Level::Unknown, Some(8)));
        // Its first process exits: measured through the other.
        std::fs::remove_dir_all(dir.path().join("proc/8")).unwrap();
        let s = measure_or_gone(&host, &ns, &options(), false, &none).unwrap();
        assert_eq!(s.ns.pid, Some(9));
        assert_eq!(s.ns.enter, "nsenter -t 9 -n COMMAND");
        // Pid 8 reused by a process of another namespace: still gone.
        let reused = dir.path().join("proc/8/ns");
        std::fs::create_dir_all(&reused).unwrap();
        std::os::unix::fs::symlink("net:[41]", reused.join("net")).unwrap();
        std::fs::remove_dir_all(dir.path().join("proc/9")).unwrap();
        assert!(measure_or_gone(&host, &ns, &options(), false, &none).is_none());
    }

    /// The status lines name a pod's namespace by the pod and its
    /// container, a Docker container by its name (the fixtures of
    /// tests/fixtures/netns-names, src/observe/netns/identity_tests.rs).
    #[test]
    fn the_status_lines_name_the_pod_and_container_the_runtimes_files_give() {
        let root = |case: &str| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/netns-names")
                .join(case)
                .join("root")
        };
        for (case, inode, pid, name) in [
            (
                "crio-cgroupfs-v1",
                20,
                200,
                "pod shop/checkout-7f9c, container envoy",
            ),
            ("docker-systemd-v2", 50, 500, "docker container api-1"),
        ] {
            let (list, _) = crate::observe::netns::all(&Host::new(root(case)));
            let ns = list.into_iter().find(|n| n.inode == inode).expect(case);
            let sections = [
                section("host", Level::Ok, 0.1),
                NetnsSection {
                    ns,
                    level: Level::Warning,
                    usage: 0.8,
                    text: "PORTD WARNING - 80.0% of ephemeral ports in use (800/1000)\n".into(),
                    json: serde_json::Value::Null,
                },
            ];
            let text = human(&sections, &sections[1], None);
            let mut lines = text.lines();
            assert_eq!(
                lines.next(),
                Some(
                    format!("PORTD WARNING - {name}: 80.0% of ephemeral ports in use (800/1000)")
                        .as_str()
                ),
                "{case}"
            );
            assert!(
                text.contains(&format!(
                    "\n== {name} net:[{inode}] - enter: nsenter -t {pid} -n COMMAND\n"
                )),
                "{text}"
            );
        }
    }
}
