//! Runs portd's real persistence code (`actuator::persist`) in a loop,
//! alternating between two drop-ins, for the crash-safety test
//! (tests/suite/actuation_crash.rs), which kills it with SIGKILL at random
//! moments and checks what is left on disk.
//!
//! Usage: `persist_cycles ROOT [ITERATIONS]`: the drop-in is written to
//! ROOT/etc/sysctl.d/60-portd.conf; without ITERATIONS it loops until killed.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use portd::act::actuator;
use portd::act::state::{State, Values, Written};
use portd::base::host::Host;
use portd::base::ports::{PortRange, PortSet};
use portd::observe::sysctld;

const DROPIN_NAME: &str = "60-portd.conf";

/// The two versions written in turn: (range, reserved ports). The test
/// derives the expected texts from the same values with `dropin_text`.
const VERSIONS: [(u16, u16, &str); 2] = [(40000, 40181, "40120"), (40000, 40499, "40120,40300")];

/// A fixed time, so that each version's text is always the same.
fn written_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn state(version: (u16, u16, &str)) -> Result<State, String> {
    let (low, high, reserved) = version;
    let range = PortRange::new(low, high).map_err(|e| e.to_string())?;
    let reserved = PortSet::parse(reserved).map_err(|e| e.to_string())?;
    Ok(State {
        last_written: Some(Written {
            values: Values {
                range,
                reserved: reserved.clone(),
            },
            at: written_at(),
            persisted: false,
        }),
        added_reserved: reserved,
        ..State::default()
    })
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .ok_or("usage: persist_cycles ROOT [ITERATIONS]")?;
    let iterations = match args.next() {
        Some(n) => n.parse::<u64>().map_err(|e| format!("ITERATIONS: {e}"))?,
        None => u64::MAX,
    };
    let host = Host::new(&root);
    let dir = host.path("/etc/sysctl.d");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let states = [state(VERSIONS[0])?, state(VERSIONS[1])?];
    // Start with the version that is not on disk, so every write is a change.
    let on_disk = std::fs::read_to_string(dir.join(DROPIN_NAME)).ok();
    let first_text = {
        let (low, high, reserved) = VERSIONS[0];
        actuator::dropin_text(
            PortRange::new(low, high).map_err(|e| e.to_string())?,
            &PortSet::parse(reserved).map_err(|e| e.to_string())?,
            written_at(),
            None,
        )
    };
    let mut next = usize::from(on_disk.as_deref() == Some(first_text.as_str()));
    for _ in 0..iterations {
        // One scan a cycle, as the daemon takes one a poll.
        let scan = sysctld::scan(&host).map_err(|e| e.to_string())?;
        actuator::persist(&host, &scan, DROPIN_NAME, &states[next], written_at())
            .map_err(|e| e.to_string())?;
        next = 1 - next;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("persist_cycles: {e}");
            ExitCode::FAILURE
        }
    }
}
