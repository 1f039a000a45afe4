#!/bin/sh
# Several network namespaces for portd's container-host test (docs/DESIGN.md,
# "Several namespaces"). Run ONLY as
#   unshare --pid --fork --mount-proc --net --mount sh several_netns.sh PORTD OUT [ACTIONS]
# ACTIONS: a shell file sourced in place of the `portd status` runs below
# (tests/helpers/daemon_several_netns.sh), with $BUSY and $QUIET set.
# so that discovery sees only this test's processes and named namespaces,
# and `ip netns add` writes under a private tmpfs /run, never the machine's.
# Every sysctl written here is in a namespace this script created.
set -eu
PORTD=$1
OUT=$2
HELPERS=$(dirname "$0")
[ "$(readlink /proc/1/ns/pid)" = "$(readlink /proc/self/ns/pid)" ] || { echo "not in a private PID namespace" >&2; exit 1; }
[ "$$" = 1 ] || [ "$(cat /proc/1/comm)" != systemd ] || { echo "refusing: /proc is the machine's" >&2; exit 1; }
mount --make-rprivate /
mount -t tmpfs tmpfs /run
ip link set lo up

# The busy namespace: an `unshare -n` child (a container's shape), 15 of 20 ports.
unshare -n python3 "$HELPERS/hold.py" 40000 40019 15 "$OUT/busy.ready" &
BUSY=$!
# A quiet named namespace: 3 connections in a range of 1000.
ip netns add quiet
ip netns exec quiet python3 "$HELPERS/hold.py" 45000 45999 3 "$OUT/quiet.ready" &
QUIET=$!
i=0
while [ ! -e "$OUT/busy.ready" ] || [ ! -e "$OUT/quiet.ready" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "helpers not ready" >&2; exit 1; }
    sleep 0.05
done
echo "$BUSY" > "$OUT/busy.pid"
readlink "/proc/$BUSY/ns/net" > "$OUT/busy.netns"
range() { nsenter -t "$1" -n cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_local_reserved_ports; }
range "$BUSY" > "$OUT/busy.before"; range "$QUIET" > "$OUT/quiet.before"; range $$ > "$OUT/own.before"
count() { nsenter -t "$1" -n ss -Htn state established '( dport = :9000 )' | wc -l; }
count "$BUSY" > "$OUT/busy.ss"; count "$QUIET" > "$OUT/quiet.ss"

# An empty policy: the built-in defaults, whatever the machine's /etc/portd.toml says.
: > "$OUT/defaults.toml"
set +e
if [ -n "${3:-}" ]; then
. "$3"
else
"$PORTD" --config "$OUT/defaults.toml" status --json > "$OUT/all.json"; echo $? > "$OUT/all.rc"
"$PORTD" --config "$OUT/defaults.toml" status > "$OUT/all.txt"; echo $? > "$OUT/all-text.rc"
"$PORTD" --config "$OUT/defaults.toml" status --json --netns quiet > "$OUT/quiet.json"; echo $? > "$OUT/quiet.rc"
"$PORTD" --config "$OUT/defaults.toml" status --json --netns "$(tr -dc 0-9 < "$OUT/busy.netns")" > "$OUT/busy.json"; echo $? > "$OUT/busy.rc"
fi
set -e

range "$BUSY" > "$OUT/busy.after"; range "$QUIET" > "$OUT/quiet.after"; range $$ > "$OUT/own.after"
kill "$BUSY" "$QUIET"
wait 2>/dev/null || true
ip netns del quiet
