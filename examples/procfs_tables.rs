//! The procfs crate's socket-table readers, `procfs::net::tcp()` and
//! `tcp6()`, as one process: the reference the macro benchmark
//! (examples/census_bench.rs) times beside portd, `ss` and `cat`.
//!
//! Usage: `procfs_tables [RUNS]` (default 1); prints the entry count.

fn main() -> std::process::ExitCode {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut entries = 0;
    for _ in 0..runs {
        match (procfs::net::tcp(), procfs::net::tcp6()) {
            (Ok(v4), Ok(v6)) => entries = v4.len() + v6.len(),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("procfs_tables: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("{entries}");
    std::process::ExitCode::SUCCESS
}
