#!/bin/sh
# Idle poll cost of `portd run`: CPU time of the whole daemon per poll over
# 600 polls at a 1 s interval, in an empty namespace and in one holding
# 20,000 idle loopback connections, for each binary given (results:
# docs/benchmarks.md, "Idle poll cost"). Needs root; each run is in a private
# PID, network and mount namespace of its own (benches/idle.py). All runs go
# at once: about 10 minutes whatever the number of binaries.
#
#   benches/idle.sh NAME=PORTD [NAME=PORTD ...] [idle.py options]
#   benches/idle.sh before=/tmp/b/release/portd after=target/release/portd
#   benches/idle.sh now=target/release/portd --polls 60 --scenarios empty
#
# Options of benches/idle.py: --polls N (600), --warmup N (10 polls not
# counted), --scenarios empty,sockets, --sockets 20000, --dests 4,
# --json FILE, --serial, --metrics (write a metrics file), --fsyncs (count
# fsyncs and renames with strace -c; CPU figures then not the daemon's).
set -eu
[ "$(id -u)" -eq 0 ] || { echo "benches/idle.sh: needs root" >&2; exit 1; }
cd "$(dirname "$0")/.."
exec python3 -u benches/idle.py "$@"
