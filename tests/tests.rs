//! portd's integration tests: one binary (one link step; docs/DESIGN.md,
//! "Testing in a namespace"), one module per area.
//!
//! The modules live in `tests/suite/` because Cargo builds every `tests/*.rs`
//! file as a test binary of its own.

mod suite {
    pub mod portd_child;
    pub mod sandbox;
    pub mod ss;
    pub mod util;

    mod actuation_clock;
    mod actuation_crash;
    mod actuation_dropin;
    mod actuation_faults;
    mod actuation_foreign;
    mod actuation_record;
    mod actuation_rollback;
    mod actuation_stop;
    mod actuation_widen;
    mod actuation_yield;
    mod architecture;
    mod attribution_netns;
    mod census_sources;
    mod check_cli;
    mod cli_conventions;
    mod daemon_catalog;
    mod daemon_fastpath;
    mod daemon_forecast;
    mod daemon_journal;
    mod daemon_live;
    mod daemon_metrics;
    mod daemon_notify;
    mod daemon_several_netns;
    mod docs_links;
    mod fleet;
    mod fleet_dashboard;
    mod fleet_metric_names;
    mod fleet_rules;
    mod harness;
    mod hostile_actuation;
    mod hostile_churn;
    mod hostile_reads;
    mod hostile_status;
    mod live_owner;
    mod mixin;
    mod netns_forecast;
    mod netns_widen;
    mod output_errors;
    mod readme_demo;
    mod status_errors;
    mod status_golden;
    mod status_netns;
    mod status_several_netns;
    mod status_watch;
    mod sysctld_cat_config;
    mod witness_counts;
    mod witness_daemon;
    mod witness_full;
    mod writes_golden;
}
