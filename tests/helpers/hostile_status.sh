#!/bin/sh
# Namespaces that come and go beside `portd status`, and a process name
# chosen by an attacker. Run ONLY as
#   unshare --pid --fork --mount-proc --net --mount sh hostile_status.sh PORTD OUT MODE
# so that discovery sees only this test's processes, and nothing reaches the
# machine's /run. Every sysctl written here is in a namespace this script
# created. MODE:
#   name   one `unshare -n` child, 15 of 20 ports used (critical), named
#          "x|y=1\nOK - ESC[2J" by itself; `status` once, text and JSON.
#   churn  the same critical child, and 250 namespaces created and destroyed
#          over 8 s (each lives 20-300 ms, some with two processes), while
#          `status` runs again and again: each run's exit status and first
#          line in OUT/runs.txt.
set -eu
PORTD=$1
OUT=$2
HELPERS=$(dirname "$0")
MODE=$3
[ "$(readlink /proc/1/ns/pid)" = "$(readlink /proc/self/ns/pid)" ] || { echo "not in a private PID namespace" >&2; exit 1; }
[ "$$" = 1 ] || [ "$(cat /proc/1/comm)" != systemd ] || { echo "refusing: /proc is the machine's" >&2; exit 1; }
mount --make-rprivate /
mount -t tmpfs tmpfs /run
ip link set lo up
: > "$OUT/defaults.toml"

cat > "$OUT/churn.py" <<'PY'
import random, subprocess, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
random.seed(20)
live = []
start = time.monotonic()
for i in range(count):
    due = start + i * seconds / count
    time.sleep(max(0.0, due - time.monotonic()))
    a, b = random.uniform(0.02, 0.3), random.uniform(0.02, 0.3)
    if i % 3 == 0:
        # Two processes in one namespace: the first to exit may be the one
        # discovery picked.
        cmd = ["unshare", "-n", "sh", "-c", f"sleep {a:.3f} & exec sleep {b:.3f}"]
    else:
        cmd = ["unshare", "-n", "sleep", f"{a:.3f}"]
    live.append(subprocess.Popen(cmd))
    live = [p for p in live if p.poll() is None]
for p in live:
    p.wait()
PY

unshare -n python3 "$HELPERS/hold.py" 40000 40019 15 "$OUT/busy.ready" hostile-name &
BUSY=$!
i=0
until [ -e "$OUT/busy.ready" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "holder not ready" >&2; exit 1; }
    sleep 0.05
done
readlink "/proc/$BUSY/ns/net" > "$OUT/busy.netns"
echo "$BUSY" > "$OUT/busy.pid"

set +e
case $MODE in
name)
    "$PORTD" --config "$OUT/defaults.toml" status > "$OUT/status.txt"; echo $? > "$OUT/status.rc"
    "$PORTD" --config "$OUT/defaults.toml" status --json > "$OUT/status.json"; echo $? > "$OUT/status-json.rc"
    ;;
churn)
    python3 "$OUT/churn.py" 250 8 &
    CHURN=$!
    : > "$OUT/runs.txt"
    while kill -0 "$CHURN" 2>/dev/null; do
        "$PORTD" --config "$OUT/defaults.toml" status > "$OUT/run.txt" 2> "$OUT/run.err"
        rc=$?
        printf '%s %s\n' "$rc" "$(head -n 1 "$OUT/run.txt")" >> "$OUT/runs.txt"
        [ "$rc" = 2 ] || { cat "$OUT/run.txt" "$OUT/run.err" >> "$OUT/odd-runs.txt"; }
    done
    wait "$CHURN"
    echo $? > "$OUT/churn.rc"
    ;;
esac
set -e
kill "$BUSY"
wait 2>/dev/null || true
