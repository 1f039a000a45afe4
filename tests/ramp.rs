//! The load ramps (`suite/ramp.rs`) and the shipped alert rules evaluated by
//! a real Prometheus under load (`suite/prom_alerts.rs`), results in
//! docs/ramps.md, in a test binary of their own: cargo runs test binaries
//! one after another, and a ramp loads both cores for minutes, which would
//! disturb the timing of the daemon tests in `tests/tests.rs` if they
//! shared a run.

mod suite {
    // The shared harness; this binary uses only part of it.
    #[allow(dead_code)]
    pub mod util;

    mod prom_alerts;
    mod ramp;
}
