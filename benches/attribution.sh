#!/bin/sh
# Census-to-decision latency and CPU per census while the holders of the
# headline are looked up, with and without many other open fds
# (docs/benchmarks.md, "Attribution"). Root. Everything runs in a private
# PID and network namespace with its own /proc and a tmpfs /run: the
# daemons (dry runs) see only the sockets and processes made here.
#
# Usage: benches/attribution.sh EXAMPLES_DIR "PORTD..." [SOCKETS] [FDS] [SECONDS]
#   EXAMPLES_DIR  target/release/examples (census_bench holds the sockets)
#   PORTD...      the portd binaries to compare, e.g. "/tmp/portd-main target/release/portd";
#                 each must log "census judged N ms after it began" at debug
#   SOCKETS       sockets held open: both ends of SOCKETS/2 loopback
#                 connections, census_bench workers of at most 9,500
#                 connections each (the fd limit is 20,000 a process), 300000
#   FDS           the levels of other open fds measured, in order (/dev/null,
#                 benches/hold_fds.py, over 7 processes), default "0 120000"
#   SECONDS       each daemon runs this long after a 10 s warm-up, default 30
#
# The policy keeps every census's holders wanted: the headline (9,500 of
# the 28,232 ports of the default range, 34 %) is over the warning level
# (20 %), and a one-hour hold keeps the alert pending, so each poll (1 s)
# takes a census (a pending alert never waits) and looks the holders up.
set -eu
EX=$1
BINS=$2
SOCKETS=${3:-300000}
FDS=${4:-0 120000}
SECONDS_=${5:-30}
HERE=$(cd "$(dirname "$0")" && pwd)
exec unshare --pid --fork --mount-proc --net --mount sh -c '
set -eu
EX='"'$EX'"' BINS='"'$BINS'"' SOCKETS='"$SOCKETS"' FDS="'"$FDS"'" S='"$SECONDS_"' HERE='"'$HERE'"'
mount --make-rprivate /
mount -t tmpfs tmpfs /run
for d in /var/lib /etc/sysctl.d /usr/lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs tmpfs "$d"
done
ip link set lo up
B=/run/attribution-bench
mkdir -p $B
echo "load average before: $(cut -d" " -f1-3 /proc/loadavg)"
pairs=$((SOCKETS / 2)); i=0
while [ $pairs -gt 0 ]; do
    n=$((pairs < 9500 ? pairs : 9500))
    sleep 100000 | $EX/census_bench worker --index $i --v4-pairs $n --v6-pairs 0 > $B/worker.$i &
    pairs=$((pairs - n)); i=$((i + 1))
done
w=$i; t=0
until [ "$(cat $B/worker.* 2>/dev/null | grep -c ^ready)" -eq "$w" ]; do
    t=$((t + 1)); [ $t -lt 6000 ] || { echo "workers not ready" >&2; exit 1; }
    sleep 0.1
done
echo "sockets: $w workers, $(grep ^TCP: /proc/net/sockstat)"
cat > $B/policy.toml <<POLICY
[poll]
interval = "1s"
[thresholds]
warning = 20
critical = 90
clear = 10
hold = "1h"
[widen]
mode = "advise"
target = 15
[metrics]
file = "$B/metrics.prom"
POLICY
fds_now() { ls /proc/[0-9]*/fd 2>/dev/null | grep -c "^[0-9]"; }
for extra in $FDS; do
    holders=""
    if [ $extra -gt 0 ]; then
        k=0
        while [ $k -lt 7 ]; do
            python3 $HERE/hold_fds.py $(( (extra + 6) / 7 )) > $B/fds.$k &
            holders="$holders $!"; k=$((k + 1))
        done
        until [ "$(cat $B/fds.* 2>/dev/null | grep -c ^ready)" -eq 7 ]; do sleep 0.1; done
    fi
    echo "open fds in the namespace: $(fds_now) (extra: $extra)"
    for bin in $BINS; do
        rm -f $B/metrics.prom
        PORTD_LOG=debug "$bin" --config $B/policy.toml run --dry-run 2> $B/daemon.err &
        D=$!
        sleep 10
        [ -d /proc/$D ] || { cat $B/daemon.err >&2; exit 1; }
        cpu() { awk "{ print \$14 + \$15 }" /proc/$D/stat; }
        metric() { awk -v m="$1" "\$1 == m { print \$2 }" $B/metrics.prom; }
        skip=$(grep -c "census judged" $B/daemon.err || true)
        c0=$(cpu); n0=$(metric portd_censuses_total)
        sleep $S
        c1=$(cpu); n1=$(metric portd_censuses_total)
        kill $D; wait $D || true
        hz=$(getconf CLK_TCK)
        grep -o "census judged [0-9.]* ms" $B/daemon.err | tail -n +$((skip + 1)) | awk "{ print \$3 }" | sort -n > $B/lat
        n=$(wc -l < $B/lat)
        q() { awk -v p=$1 -v n=$n "NR == int((n - 1) * p) + 1 { print }" $B/lat; }
        echo "RESULT bin=$bin extra_fds=$extra censuses=$((n1 - n0)) decisions=$n" \
            "latency_ms: min $(head -1 $B/lat) median $(q 0.5) p90 $(q 0.9) max $(tail -1 $B/lat)" \
            "cpu_ms_per_census=$(awk -v c=$((c1 - c0)) -v hz=$hz -v n=$((n1 - n0)) "BEGIN { if (n > 0) printf \"%.0f\", 1000 * c / hz / n }")" \
            "cpu_share=$(awk -v c=$((c1 - c0)) -v hz=$hz -v s=$S "BEGIN { printf \"%.1f%%\", 100 * c / hz / s }")"
        grep -v "census judged" $B/daemon.err | grep -iv " DEBUG \|^$" | tail -3 || true
    done
    [ -z "$holders" ] || kill $holders
done
echo "load average after: $(cut -d" " -f1-3 /proc/loadavg)"
'
