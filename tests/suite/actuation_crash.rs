//! Crash safety of the drop-in: portd's real persistence code
//! (examples/persist_cycles.rs, alternating two versions) killed with
//! SIGKILL at random moments never leaves a partial or unparsable file.
//!
//! It writes under a temporary root only, so it needs neither root nor a
//! namespace. The seed is printed; `PORTD_CRASH_SEED=N` replays a run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::util::parse_dropin;
use portd::act::actuator::dropin_text;
use portd::base::ports::{PortRange, PortSet};

const CYCLES: usize = 200;
/// Longest wait before the kill: a few hundred writes at most.
const MAX_DELAY_US: u64 = 20_000;
const DROPIN_NAME: &str = "60-portd.conf";

/// The two versions examples/persist_cycles.rs writes in turn, and the
/// fixed time it stamps them with.
fn versions() -> [String; 2] {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let text = |low, high, reserved| {
        dropin_text(
            PortRange::new(low, high).unwrap(),
            &PortSet::parse(reserved).unwrap(),
            at,
            None,
        )
    };
    [
        text(40000, 40181, "40120"),
        text(40000, 40499, "40120,40300"),
    ]
}

/// The example binary, built by `cargo test` next to the test binary.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/persist_cycles");
    assert!(
        path.exists(),
        "{} is missing: run the whole `cargo test` (it builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

/// xorshift64*: enough randomness for kill times, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The drop-in, if any, and the names of the other files in its directory.
fn inspect(dir: &Path) -> (Option<String>, Vec<String>) {
    let mut dropin = None;
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == DROPIN_NAME {
            dropin = Some(std::fs::read_to_string(dir.join(&name)).unwrap());
        } else {
            others.push(name);
        }
    }
    (dropin, others)
}

/// A drop-in sysctl and systemd-sysctl would accept: only comments and
/// `key = value` lines, with values the kernel takes.
fn assert_parses(text: &str, context: &str) {
    let assignments = parse_dropin(text);
    let keys: Vec<&str> = assignments.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.ip_local_port_range"
        ],
        "{context}"
    );
    PortSet::parse(&assignments[0].1).unwrap_or_else(|e| panic!("{context}: {e}"));
    PortRange::parse(&assignments[1].1).unwrap_or_else(|e| panic!("{context}: {e}"));
}

#[test]
fn a_persist_killed_at_any_moment_leaves_the_old_or_the_new_dropin() {
    let seed = std::env::var("PORTD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("actuation_crash: seed {seed} (PORTD_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let example = example();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = root.path().join("etc/sysctl.d");
    let versions = versions();
    let mut seen = [0usize; 3]; // absent, old/new version 0, version 1
    let mut temps_left = 0;

    for cycle in 0..CYCLES {
        let mut child = Command::new(&example).arg(root.path()).spawn().unwrap();
        let delay = rng.next() % MAX_DELAY_US;
        std::thread::sleep(Duration::from_micros(delay));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let context = format!("cycle {cycle}, killed after {delay} us, seed {seed}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "persist_cycles ended before the kill: {status} ({context})"
        );

        let (dropin, others) = if dir.exists() {
            inspect(&dir)
        } else {
            (None, Vec::new())
        };
        match &dropin {
            None => {
                assert_eq!(seen[1] + seen[2], 0, "the drop-in disappeared ({context})");
                seen[0] += 1;
            }
            Some(text) => {
                let which = versions.iter().position(|v| v == text).unwrap_or_else(|| {
                    panic!("the drop-in is neither version ({context}):\n{text}")
                });
                assert_parses(text, &context);
                seen[which + 1] += 1;
            }
        }
        // A killed write may leave its temp file: hidden, not a .conf, so
        // systemd-sysctl never reads it, and removed by the next write.
        for name in &others {
            assert!(
                name.starts_with(&format!(".{DROPIN_NAME}.portd-tmp-")) && !name.ends_with(".conf"),
                "unexpected file {name} ({context})"
            );
        }
        assert!(
            others.len() <= 1,
            "stale temp files pile up: {others:?} ({context})"
        );
        temps_left += others.len();
    }
    eprintln!(
        "actuation_crash: {CYCLES} kills: drop-in absent {}, version A {}, version B {}; \
         a temp file was left {temps_left} times",
        seen[0], seen[1], seen[2]
    );
    assert!(
        seen[1] > 0 && seen[2] > 0,
        "the kills never caught both versions on disk: {seen:?} (seed {seed})"
    );

    // A run that completes cleans up after the killed ones.
    let status = Command::new(&example)
        .arg(root.path())
        .arg("3")
        .status()
        .unwrap();
    assert!(status.success());
    let (dropin, others) = inspect(&dir);
    assert!(others.is_empty(), "left behind: {others:?}");
    assert!(versions.contains(&dropin.unwrap()));
}
