#!/bin/sh
# The failure witness's cost (results: docs/benchmarks.md): builds
# examples/connect_loop and examples/witness_count in release mode and runs
# benches/witness_cost.py in a private network and mount namespace (tracefs
# is mounted there if the machine has none). Needs root.
#
#   benches/witness_cost.sh [PAIRS [CONNECTS]]     # default 10 pairs of 20000
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --example connect_loop --example witness_count
ex=${CARGO_TARGET_DIR:-target}/release/examples
exec unshare -n -m --propagation private python3 benches/witness_cost.py "$ex" "${1:-10}" "${2:-20000}" \
    "$(readlink /proc/self/ns/net)" "$(readlink /proc/self/ns/mnt)"
