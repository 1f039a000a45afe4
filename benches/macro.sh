#!/bin/sh
# The census macro benchmark (results: docs/benchmarks.md): builds
# portd, examples/census_bench and examples/procfs_tables in release mode and
# runs census_bench in a private network namespace (`unshare -n`; it refuses
# to run anywhere else). Needs root. Arguments are passed to
# `census_bench run`, for example:
#
#   benches/macro.sh                                   # 10k, 100k, 300k sockets
#   benches/macro.sh --sizes 10000,100000,300000,1000000 --daemon-seconds 60
#   benches/macro.sh --sizes 300000 --v6-percent 50 --runs 5
#
# Timings are noisy while other work runs on the machine: the output gives the
# machine's busy share per block (50 % on 2 CPUs = the benchmark alone).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin portd --example census_bench --example procfs_tables
outer=$(readlink /proc/self/ns/net)
exec unshare -n target/release/examples/census_bench run \
    --outer-netns "$outer" \
    --portd target/release/portd \
    --procfs-tables target/release/examples/procfs_tables \
    "$@"
