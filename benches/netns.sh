#!/bin/sh
# Per-poll cost of watching N other network namespaces (docs/benchmarks.md,
# "Other network namespaces"). Root. Everything runs in a private PID
# namespace with its own /proc and a tmpfs /run (docs/DESIGN.md, "Several
# namespaces"): discovery sees only the namespaces made here, and every
# process started here dies with it.
#
# Usage: benches/netns.sh EXAMPLES_DIR [N] [ROUNDS] [SOCKETS] [DAEMON_SECONDS]
#   EXAMPLES_DIR    target/release/examples (netns_poll; census_bench when
#                   SOCKETS > 0; portd is taken from EXAMPLES_DIR/../portd,
#                   or $PORTD)
#   N               quiet namespaces (`unshare -n sleep`), default 200
#   ROUNDS          polls timed by examples/netns_poll, default 200
#   SOCKETS         sockets held open in one more namespace (both ends of
#                   SOCKETS/2 loopback connections, census_bench workers of
#                   at most 9,500 connections each: the open-file limit is
#                   20,000 a process), default 0
#   DAEMON_SECONDS  then `portd run` at the shipped policy (2 s interval) but
#                   for `[widen] mode = "advise"` (nothing written; a dry
#                   run writes no metrics file) is measured for this long
#                   after a 30 s
#                   warm-up: its CPU (utime + stime of the whole process,
#                   ended threads included) and the censuses it took in the
#                   window (portd_censuses_total, portd_netns_censuses_total
#                   from its metrics file); default 0 (skipped)
set -eu
EX=$1
N=${2:-200}
ROUNDS=${3:-200}
SOCKETS=${4:-0}
DAEMON_SECONDS=${5:-0}
PORTD=${PORTD:-$EX/../portd}
exec unshare --pid --fork --mount-proc --net --mount sh -c '
set -eu
EX='"'$EX'"' N='"$N"' ROUNDS='"$ROUNDS"' SOCKETS='"$SOCKETS"'
DAEMON_SECONDS='"$DAEMON_SECONDS"' PORTD='"'$PORTD'"'
mount --make-rprivate /
mount -t tmpfs tmpfs /run
# Nothing of the machine is read or written by the daemon below (advise
# mode; /run, /var/lib and the sysctl.d directories are tmpfs mounts here).
for d in /var/lib /etc/sysctl.d /usr/lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs tmpfs "$d"
done
B=/run/netns-bench
mkdir -p $B
echo "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
i=0
while [ $i -lt $N ]; do unshare -n sleep 100000 & i=$((i + 1)); done
if [ "$SOCKETS" -gt 0 ]; then
    unshare -n sh -c "
        set -eu
        ip link set lo up
        pairs=\$(($SOCKETS / 2)); i=0
        while [ \$pairs -gt 0 ]; do
            n=\$((pairs < 9500 ? pairs : 9500))
            sleep 100000 | $EX/census_bench worker --index \$i --v4-pairs \$n --v6-pairs 0 > $B/worker.\$i &
            pairs=\$((pairs - n)); i=\$((i + 1))
        done
        echo \$i > $B/workers
        echo \$\$ > $B/busy.pid
        wait
    " &
    until [ -s $B/workers ]; do sleep 0.1; done
    w=$(cat $B/workers)
    t=0
    until [ "$(cat $B/worker.* 2>/dev/null | grep -c ^ready)" -eq "$w" ]; do
        t=$((t + 1)); [ $t -lt 3000 ] || { echo "workers not ready" >&2; exit 1; }
        sleep 0.1
    done
    echo "busy namespace $(readlink /proc/$(cat $B/busy.pid)/ns/net): $w workers," \
        "sockstat: $(grep ^TCP: /proc/$(cat $B/busy.pid)/net/sockstat)"
fi
sleep 1
echo "load average at start: $(cut -d" " -f1-3 /proc/loadavg)"
$EX/netns_poll $ROUNDS
if [ "$DAEMON_SECONDS" -gt 0 ]; then
    printf "[widen]\nmode = \"advise\"\n[metrics]\nfile = \"%s\"\n" $B/metrics.prom > $B/policy.toml
    "$PORTD" --config $B/policy.toml run 2> $B/daemon.err &
    D=$!
    sleep 30
    [ -s $B/metrics.prom ] || { echo "no metrics file:" >&2; cat $B/daemon.err >&2; exit 1; }
    cpu() { awk "{ print \$14 + \$15 }" /proc/$D/stat; }
    metric() { awk -v m="$1" "\$1 == m { print \$2 }" $B/metrics.prom; }
    c0=$(cpu); o0=$(metric portd_censuses_total); n0=$(metric portd_netns_censuses_total)
    w0=$(metric portd_netns_watched)
    sleep "$DAEMON_SECONDS"
    c1=$(cpu); o1=$(metric portd_censuses_total); n1=$(metric portd_netns_censuses_total)
    hz=$(getconf CLK_TCK)
    kill $D; wait $D || true
    echo "daemon (portd run, advise, shipped interval) over $DAEMON_SECONDS s after 30 s:" \
        "other namespaces watched $w0, CPU $(( (c1 - c0) * 1000 / hz )) ms" \
        "= $(awk -v c=$((c1 - c0)) -v hz=$hz -v s=$DAEMON_SECONDS "BEGIN { printf \"%.3f\", 100 * c / hz / s }") % of a core;" \
        "censuses in the window: own $((o1 - o0)), other namespaces $((n1 - n0))" \
        "(in the warm-up: own $o0, other namespaces $n0)"
fi
echo "load average after: $(cut -d" " -f1-3 /proc/loadavg)"
'
