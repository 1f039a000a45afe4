#!/bin/sh
# Per-poll cost of watching N other network namespaces (docs/benchmarks.md,
# "Other network namespaces"). Root. Everything runs in a private PID
# namespace with its own /proc and a tmpfs /run (DESIGN.md, "Several
# namespaces"): discovery sees only the namespaces made here.
# Usage: benches/netns.sh PORTD_EXAMPLES_DIR [N] [ROUNDS]
set -eu
BIN=$1/netns_poll
N=${2:-200}
ROUNDS=${3:-200}
exec unshare --pid --fork --mount-proc --net --mount sh -c '
set -eu
mount --make-rprivate /
mount -t tmpfs tmpfs /run
i=0
while [ $i -lt '"$N"' ]; do unshare -n sleep 600 & i=$((i + 1)); done
sleep 1
'"$BIN"' '"$ROUNDS"'
'
