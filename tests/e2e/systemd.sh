#!/bin/sh
# End-to-end test of portd.service under a real systemd as PID 1.
#
# Recipe (docs/DESIGN.md, "systemd as PID 1"): systemd runs as PID 1 of
# private pid, mount and network namespaces (and UTS, so that its hostname
# setup cannot rename the machine), started by
#     setsid unshare -pfmnu --mount-proc BOOT.sh
# BOOT.sh makes every mount private, puts tmpfs on /run, /tmp, /var/tmp,
# /var/log, /var/lib and /etc/sysctl.d, mounts tracefs on /sys/kernel/tracing
# (in this mount namespace only), overlays /etc and /usr/sbin with tmpfs
# upper layers (so /etc/portd.toml and /usr/sbin/portd can exist in the
# namespace only), bind-mounts the binary extracted from the .deb, sets a tiny
# port range in the private network namespace, writes a minimal target and
# the units under /run/systemd/system/ (the unit from the .deb, with a test
# drop-in: DefaultDependencies=no, WatchdogSec=3s, and the example
# metrics.conf), makes /proc/sys/fs and /proc/sys/kernel read-only (a system
# manager as PID 1 raises the global fs.file-max), and execs systemd. This
# script talks to it with `nsenter -t PID -m -p -n systemctl ...` and stops
# it only with `kill -9 PID`, on every exit path. Nothing of the machine's own
# namespaces is written: no sysctl, no file under /etc, /usr or /var/lib; the
# global state systemd could reach (fs.file-max, the hostname, the cgroup
# release agent) is compared before and after, and the cgroups it created
# in the shared hierarchy are removed.
#
# Checks, in order; the first that fails stops the test with its reason:
#   1. `systemctl start portd` reaches active (running) with portd's STATUS=;
#   1a. the failure witness is on under the packaged unit (tracefs mounted
#      by BOOT.sh at /sys/kernel/tracing, as systemd hosts have it): a client
#      holds the 100 ports towards one listener and sees 25 EADDRNOTAVAIL;
#      portd counts exactly 25 in the metrics file, in `portd status --json`
#      and names the client in a port-allocation-failed journal entry;
#   2. `systemctl reload portd` takes a changed policy (advise -> auto);
#   3. an exhaustion ramp (60 connections to one loopback destination in a
#      100-port range) gives journal entries with _SYSTEMD_UNIT=portd.service
#      and a widened range, persisted in /etc/sysctl.d (under the unit's
#      ProtectSystem=strict / ProtectKernelTunables=yes) and shown in the
#      metrics file, written through the example drop-in metrics.conf;
#   4. SIGSTOP of portd makes systemd's watchdog kill and restart it;
#   5. `systemctl stop portd` is clean (inactive, result success);
#   6. the .deb's prerm (remove) stops portd and rolls back (range, drop-in),
#      its postrm (purge) removes /var/lib/portd;
#   5a. with the example containers.conf drop-in, portd watches a second
#      network namespace (an `unshare -n` child inside the test's namespaces
#      holding 15 connections in a 20-port range of its own): its critical
#      alert names it (PORTD_NETNS) with the count `ss` shows inside it, and
#      its range is left as it was (advice only); without the drop-in
#      (steps 1-5) portd said that it cannot watch other namespaces;
#   5b. still with containers.conf, a policy selecting one of two named
#      namespaces (`ip netns add`, 15 of 20 ports held in each) in
#      [namespaces] mode = "auto": portd widens the selected one (range and
#      reserved ports read back inside both), journals it with PORTD_NETNS,
#      leaves the other as it was, and `portd rollback` restores it;
#   7. with the example attribution.conf drop-in, the alert names the
#      ramp's process; then the same as 6 for the .rpm's %preun and %postun.
# Steps 6 and 7 run the packages' own scripts inside the namespace.
#
# Usage: tests/e2e/systemd.sh [PORTD.deb]   (default: target/debian/portd_*.deb,
# built by packaging/build.sh). Needs root; skips without it unless CI is set.
set -eu
export LC_ALL=C
cd "$(dirname "$0")/../.."
repo=$(pwd)
started_at=$(date +%s)

say() { echo "e2e: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    if [ -n "${CI:-}" ]; then
        echo "e2e: FAIL: must run as root (systemd as PID 1 in private namespaces)" >&2
        exit 1
    fi
    echo "e2e: SKIP: needs root (systemd as PID 1 in private namespaces)"
    exit 0
fi

target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$repo/$target ;; esac
deb=${1:-$(ls "$target"/debian/portd_*.deb 2>/dev/null | head -n 1)}
if [ ! -f "$deb" ]; then
    echo "e2e: FAIL: no .deb (build it with packaging/build.sh, or pass its path)" >&2
    exit 1
fi
for tool in unshare nsenter setsid dpkg-deb python3 ip; do
    command -v "$tool" >/dev/null || { echo "e2e: FAIL: $tool is missing" >&2; exit 1; }
done
[ -x /usr/lib/systemd/systemd ] || { echo "e2e: FAIL: /usr/lib/systemd/systemd is missing" >&2; exit 1; }

# The work tree must stay visible inside the namespace: not under a path
# BOOT.sh covers with tmpfs or an overlay. A clone under one of those (CI may
# clone into /tmp) works in /var/cache/portd-e2e instead, removed afterwards.
work=$target/e2e
work_is_ours=""
case $work/ in
    /run/*|/tmp/*|/var/tmp/*|/var/log/*|/var/lib/*|/etc/*|/usr/sbin/*)
        work=/var/cache/portd-e2e
        work_is_ours=yes ;;
esac
rm -rf "$work"
mkdir -p "$work"
dpkg-deb -x "$deb" "$work/root"
# The ramp runs inside the namespace, which may not see the clone.
cp "$repo/tests/e2e/ramp.py" "$work/ramp.py"
python=$(command -v python3)

# --- the namespace ---------------------------------------------------------

passed=0      # checks passed; the first failure ends the test
failed=0
pid=""        # host pid of the namespace's systemd (PID 1 inside)
outer=""      # host pid of setsid/unshare
ramp=""       # host pid of the nsenter running the ramp
holder=""     # host pid of the nsenter running the second namespace's holder
holders=""    # host pids of the nsenters running the named namespaces' holders
exhaust=""    # host pid of the nsenter running the witness step's client
cgroups_before=$work/cgroups.before

cleanup() {
    status=$?
    trap - EXIT INT TERM
    # PID 1 of the namespace (checked: still in another network namespace);
    # everything in the namespace dies with it.
    if [ -n "$pid" ] && [ "$(readlink /proc/"$pid"/ns/net 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] \
        && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"
    fi
    # Reap what we started; each exits once the namespace is gone.
    for p in $ramp $holder $holders $exhaust $outer; do
        wait "$p" 2>/dev/null || true
    done
    remove_cgroups
    if [ -f "$work/global.before" ] && ! global_state | cmp -s "$work/global.before" -; then
        echo "e2e: FAIL: the machine's global state changed during the test:" >&2
        global_state | diff "$work/global.before" - >&2 || true
        status=1
    fi
    [ "$status" -eq 0 ] || failed=1
    # The fallback work directory outside the clone goes; a failed run's is
    # kept for its logs.
    if [ -n "$work_is_ours" ] && [ "$status" -eq 0 ]; then
        rm -rf "$work"
    fi
    say "finished in $(( $(date +%s) - started_at ))s"
    echo "e2e: $passed passed, $failed failed"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The namespace's systemd shares the machine's cgroup hierarchy and creates
# init.scope and system.slice/ in it. Remove those it created (empty once
# it is dead); nothing else is touched.
ls_cgroups() {
    find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d \
        \( -path '*/init.scope' -o -path '*/system.slice' -o -path '*/system.slice/*' \) \
        2>/dev/null | sort
}
remove_cgroups() {
    [ -f "$cgroups_before" ] || return 0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        left=$(ls_cgroups | comm -13 "$cgroups_before" - | sort -r)
        [ -n "$left" ] || return 0
        for d in $left; do rmdir "$d" 2>/dev/null || true; done
        sleep 0.2
    done
}

ns() { nsenter -t "$pid" -m -p -n "$@"; }
prop() { ns systemctl show -P "$1" portd.service; }
# journal_has EVENT MESSAGE_ID: an entry of portd.service with both.
journal_has() {
    ns journalctl --no-pager -o json _SYSTEMD_UNIT=portd.service "PORTD_EVENT=$1" | grep -q "\"MESSAGE_ID\":\"$2\""
}

fail() {
    echo "e2e: FAIL: $*" >&2
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "--- systemctl status portd" >&2
        ns systemctl status --no-pager --lines=0 portd.service >&2 || true
        echo "--- journal of portd.service in the namespace (last 40 lines)" >&2
        ns journalctl --no-pager -n 40 -o short-monotonic _SYSTEMD_UNIT=portd.service >&2 || true
    fi
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    secs=$1; limit=$(( $(date +%s) + $1 )); what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$limit" ] || fail "$what (waited ${secs}s)"
        sleep 0.2
    done
}

cat > "$work/portd.toml.sed" <<'EOF'
s/^interval = .*/interval = "1s"/
s/^hold = .*/hold = "0s"/
s/^mode = .*/mode = "advise"/
s|^file = ""|file = "/var/lib/prometheus/node-exporter/portd.prom"|
EOF
# The packaged policy file with the test's values, so its syntax is tested too.
sed -f "$work/portd.toml.sed" "$work/root/etc/portd.toml" > "$work/portd.toml"

cat > "$work/boot.sh" <<EOF
#!/bin/sh
# PID 1 of the test's namespaces until it execs systemd; written by
# tests/e2e/systemd.sh.
set -eu
# Refuse to run anywhere but in the new namespaces.
[ "\$\$" -eq 1 ] || { echo "boot.sh: not PID 1 of a new pid namespace" >&2; exit 1; }
[ "\$(readlink /proc/self/ns/net)" != "$(readlink /proc/self/ns/net)" ] || { echo "boot.sh: not in a new network namespace" >&2; exit 1; }
[ "\$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] || { echo "boot.sh: not in a new mount namespace" >&2; exit 1; }

mount --make-rprivate /
for d in /run /var/tmp /var/log /var/lib; do mount -t tmpfs -o mode=0755 tmpfs "\$d"; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
# /etc and /usr/sbin: writable, with every change in a tmpfs of this namespace.
for d in etc usr/sbin; do
    mkdir -p "/run/e2e/\$d/upper" "/run/e2e/\$d/work"
    mount -t overlay overlay -o "lowerdir=/\$d,upperdir=/run/e2e/\$d/upper,workdir=/run/e2e/\$d/work" "/\$d"
done
mount -t tmpfs -o mode=0755 tmpfs /etc/sysctl.d
for m in /etc:overlay /usr/sbin:overlay /etc/sysctl.d:tmpfs /var/lib:tmpfs /run:tmpfs; do
    [ "\$(findmnt -n -o FSTYPE "\${m%:*}")" = "\${m#*:}" ] || { echo "boot.sh: \${m%:*} is not \${m#*:}" >&2; exit 1; }
done
# A container-style policy-rc.d (exit 101) would forbid deb-systemd-invoke
# to stop portd in the maintainer-script steps: hide it in this namespace.
rm -f /usr/sbin/policy-rc.d

# The package's binary (bind-mounted: it stays outside the tmpfs) and policy.
: > /usr/sbin/portd
mount --bind "$work/root/usr/sbin/portd" /usr/sbin/portd
install -m 0644 "$work/portd.toml" /etc/portd.toml

# tracefs, where systemd hosts mount it (sys-kernel-tracing.mount), in this
# mount namespace only: the failure witness finds its tracepoints there.
mount -t tracefs tracefs /sys/kernel/tracing
[ -d /sys/kernel/tracing/events/syscalls ] || { echo "boot.sh: tracefs has no events/syscalls" >&2; exit 1; }

# The private network namespace: loopback up, a tiny range (100 ports).
ip link set lo up
printf '40000 40099\n' > /proc/sys/net/ipv4/ip_local_port_range

mkdir -p /run/systemd/system/portd.service.d
cp "$work/root/usr/lib/systemd/system/portd.service" /run/systemd/system/
# The metrics drop-in the package ships as an example, for node_exporter's
# textfile directory (root-owned, as Debian's prometheus-node-exporter makes it).
mkdir -p /var/lib/prometheus/node-exporter
cp "$work/root/usr/share/doc/portd/examples/metrics.conf" /run/systemd/system/portd.service.d/
cat > /run/systemd/system/portd.service.d/e2e.conf <<'UNIT'
[Unit]
# Never pull sysinit.target here (it would run systemd-tmpfiles & co.).
DefaultDependencies=no
[Service]
WatchdogSec=3s
UNIT
cat > /run/systemd/system/minimal.target <<'UNIT'
[Unit]
Description=portd end-to-end test
DefaultDependencies=no
Wants=systemd-journald.socket systemd-journald.service
UNIT

# Global (not per-namespace) sysctls stay out of reach: PID 1 would raise
# fs.file-max. The net.* keys portd tunes are per network namespace.
for d in fs kernel; do
    mount --bind "/proc/sys/\$d" "/proc/sys/\$d"
    mount -o remount,bind,ro "/proc/sys/\$d"
done
exec /usr/lib/systemd/systemd --system --unit=minimal.target --log-target=null --show-status=no
EOF
chmod 755 "$work/boot.sh"

# What a system manager could change outside its namespaces; compared at exit.
global_state() {
    echo "fs.file-max $(cat /proc/sys/fs/file-max)"
    echo "hostname $(hostname)"
    for h in /sys/fs/cgroup/*/release_agent; do
        [ -f "$h" ] && echo "$h $(cat "$h") $(cat "${h%/*}/notify_on_release")"
    done
}
global_state > "$work/global.before"
ls_cgroups > "$cgroups_before"
setsid unshare -pfmnu --mount-proc "$work/boot.sh" </dev/null >"$work/boot.log" 2>&1 &
outer=$!

# Find PID 1 of the new pid namespace among outer's descendants.
find_pid1() {
    for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        if grep -q '^NSpid:.*[[:space:]]1$' /proc/"$p"/status 2>/dev/null; then
            echo "$p"; return 0
        fi
        find_pid1 "$p" && return 0
    done
    return 1
}
limit=$(( $(date +%s) + 10 ))
until pid=$(find_pid1 "$outer"); do
    kill -0 "$outer" 2>/dev/null || { cat "$work/boot.log" >&2; pid=""; fail "boot.sh exited"; }
    [ "$(date +%s)" -lt "$limit" ] || { pid=""; fail "no PID 1 in a new pid namespace after 10s"; }
    sleep 0.1
done
[ "$(readlink /proc/"$pid"/ns/net)" != "$(readlink /proc/self/ns/net)" ] || fail "PID $pid is not in a new network namespace"
[ "$(readlink /proc/"$pid"/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] || fail "PID $pid is not in a new mount namespace"
say "systemd is PID 1 of new pid/mount/net namespaces (host pid $pid)"

wait_for 20 "systemd did not come up" sh -c "
    [ \"\$(cat /proc/$pid/comm)\" = systemd ] &&
    nsenter -t $pid -m -p -n systemctl show -P SystemState | grep -Eq 'running|degraded|starting'"
wait_for 20 "systemd-journald did not start" sh -c \
    "[ \"\$(nsenter -t $pid -m -p -n systemctl show -P ActiveState systemd-journald.service)\" = active ]"
say "systemd and journald are up ($(ns systemctl --version | head -n 1))"

# --- 1. start ---------------------------------------------------------------

timeout 30 nsenter -t "$pid" -m -p -n systemctl start portd.service \
    || fail "systemctl start portd failed"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] \
    || fail "portd is $(prop ActiveState)/$(prop SubState) after start, not active/running"
status=$(prop StatusText)
case $status in
    "usage "*"range 40000-40099; mode advise"*) ;;
    *) fail "StatusText after start is '$status', not portd's 'usage ...; range 40000-40099; mode advise'" ;;
esac
passed=$((passed + 1)); say "1. started: active (running), StatusText: $status"

# --- 1a. the failure witness under the packaged unit -------------------------
# The unit as shipped (plus the test's drop-ins: DefaultDependencies=no,
# WatchdogSec=, metrics.conf): CAP_BPF and CAP_PERFMON, bpf() and
# perf_event_open() allowed, tracefs mounted by boot.sh. In advise mode the
# range stays 40000-40099: a client holds all 100 ports towards one
# listener, then 25 more connects fail with EADDRNOTAVAIL; portd must count
# exactly the failures the client saw, in its metrics, its live view
# (`portd status --json`) and one port-allocation-failed journal entry.

witness_said=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service | grep '^failure witness ' | tail -n 1)
case $witness_said in
    "failure witness on: "*) ;;
    *) fail "under the packaged unit the failure witness is not on; portd said: '${witness_said:-nothing about it}'" ;;
esac
cat > "$work/exhaust.py" <<'PY'
# Inside the test's network namespace: a listener on 127.0.0.1:5600 and a
# client (comm e2e-exhaust) that connects until the 100-port range is held,
# then makes EXTRA more attempts; prints what it saw, then holds the
# connections until READ_FILE appears and closes them with RST (no
# TIME_WAIT left for the later steps).
import ctypes, errno, os, socket, struct, sys, time
extra, ready, release = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctypes.CDLL(None).prctl(15, b"e2e-exhaust", 0, 0, 0)  # PR_SET_NAME
with open("/proc/sys/net/ipv4/tcp_tw_reuse", "w") as f:
    f.write("0\n")
srv = socket.socket(); srv.bind(("127.0.0.1", 5600)); srv.listen(256)
held, failed, attempts = [], 0, 0
while failed < extra and attempts < 1000:
    attempts += 1
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", 5600))
    except OSError as e:
        c.close()
        if e.errno != errno.EADDRNOTAVAIL:
            raise
        failed += 1
        continue
    a, _ = srv.accept(); held += [c, a]
    if failed:
        sys.exit(f"connect succeeded after {failed} failures: the range was not exhausted")
with open(ready + ".tmp", "w") as f:
    f.write(f"{len(held) // 2} {failed}\n")
os.rename(ready + ".tmp", ready)
deadline = time.time() + 60
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.1)
for s in held:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
PY
rm -f "$work/exhaust.ready" "$work/exhaust.release"
nsenter -t "$pid" -m -p -n "$python" "$work/exhaust.py" 25 "$work/exhaust.ready" "$work/exhaust.release" \
    >"$work/exhaust.out" 2>&1 &
exhaust=$!
wait_for 20 "the exhausting client did not finish: $(cat "$work/exhaust.out" 2>/dev/null)" test -s "$work/exhaust.ready"
read -r exhaust_held exhaust_failed < "$work/exhaust.ready"
[ "$exhaust_held" -eq 100 ] && [ "$exhaust_failed" -eq 25 ] \
    || fail "the client held $exhaust_held connections and saw $exhaust_failed EADDRNOTAVAIL, not 100 and 25"
prom=/proc/$pid/root/var/lib/prometheus/node-exporter/portd.prom
witness_metric='portd_connect_failures_total{local="0.0.0.0",remote="127.0.0.1",remote_port="5600",comm="e2e-exhaust"}'
metrics_witnessed() { grep -qxF "$witness_metric $exhaust_failed" "$prom"; }
wait_for 10 "the metrics file has no '$witness_metric $exhaust_failed': $(grep -F portd_connect_failures_total "$prom" || echo 'no portd_connect_failures_total')" metrics_witnessed
all_failures=$(grep -E '^portd_(connect|bind|udp_autobind)_failures_total\{' "$prom" | awk '{ n += $2 } END { print n + 0 }')
[ "$all_failures" -eq "$exhaust_failed" ] || fail "the metrics count $all_failures failures in all, the client saw $exhaust_failed: $(grep -E '_failures_total' "$prom")"
grep -qx 'portd_witness_dropped_total 0' "$prom" || fail "the witness dropped failures: $(grep witness_dropped "$prom")"
# Exit code 2: critical (the 100 held ports); the JSON is what counts.
status_json=$(ns /usr/sbin/portd status --json) || [ $? -eq 2 ] || fail "portd status --json failed: $status_json"
status_total=$(printf '%s' "$status_json" | "$python" -c 'import json, sys; w = json.load(sys.stdin)["daemon"]["live"]["witness"]; print(w["failures_total"] if w["active"] else "inactive")')
[ "$status_total" = "$exhaust_failed" ] || fail "portd status --json (the live view) shows $status_total witnessed failures, the client saw $exhaust_failed"
witness_alert() {
    ns journalctl --no-pager -o json _SYSTEMD_UNIT=portd.service PORTD_EVENT=port-allocation-failed \
        PORTD_DESTINATION=127.0.0.1:5600 | grep '"MESSAGE_ID":"bc91379153534ca58f0c1d5d8a11bbbd"' \
        | grep -q '"PORTD_PROCESS":"e2e-exhaust (pid [0-9]*)"'
}
wait_for 5 "no port-allocation-failed entry (MESSAGE_ID bc91379153534ca58f0c1d5d8a11bbbd) for 127.0.0.1:5600 naming e2e-exhaust: $(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service | tail -n 5)" witness_alert
witness_entry=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=port-allocation-failed | tail -n 1)
: > "$work/exhaust.release"
wait "$exhaust" || fail "the exhausting client failed: $(cat "$work/exhaust.out")"
exhaust=""
say "   $witness_said"
say "   journal: $witness_entry"
passed=$((passed + 1)); say "1a. witness: $exhaust_failed EADDRNOTAVAIL seen by the client (100 ports held), $exhaust_failed in the metrics ($witness_metric), in portd status --json and in the journal"

# --- 2. reload a changed policy ---------------------------------------------

ns sed -i 's/^mode = "advise"/mode = "auto"/' /etc/portd.toml
grep -q '^mode = "auto"' "/proc/$pid/root/etc/portd.toml" || fail "could not change the policy in the namespace"
timeout 30 nsenter -t "$pid" -m -p -n systemctl reload portd.service || fail "systemctl reload portd failed"
mode_auto() { prop StatusText | grep -q 'mode auto'; }
wait_for 10 "StatusText did not show 'mode auto' after the reload: '$(prop StatusText)'" mode_auto
reloaded() { journal_has policy-reloaded 2bf45d51d74f46d0b751b4421bac85c7; }
wait_for 10 "no policy-reloaded entry with _SYSTEMD_UNIT=portd.service in the journal" reloaded
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] || fail "portd is not active/running after the reload"
passed=$((passed + 1)); say "2. reloaded: $(prop StatusText)"

# --- 3. exhaustion ramp -----------------------------------------------------

# Step 1a's exhaustion alerted already: wait for entries newer than these.
journal_count() { ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service "PORTD_EVENT=$1" | wc -l; }
critical_before=$(journal_count usage-critical)
nsenter -t "$pid" -m -p -n "$python" "$work/ramp.py" 5555 60 120 >"$work/ramp.out" 2>&1 &
ramp=$!
wait_for 15 "ramp did not connect: $(cat "$work/ramp.out")" grep -q '^connected 60$' "$work/ramp.out"
new_critical() { [ "$(journal_count usage-critical)" -gt "$critical_before" ] && journal_has usage-critical 836298aa8ba84dba8e0aad24fb3774d0; }
wait_for 20 "no new usage-critical entry with _SYSTEMD_UNIT=portd.service in the journal (after the $critical_before of step 1a)" \
    new_critical
wait_for 20 "no range-widened entry with _SYSTEMD_UNIT=portd.service in the journal" \
    journal_has range-widened d6b85f7829634a5bb5227482ec76a960
range=$(ns cat /proc/sys/net/ipv4/ip_local_port_range | tr -s ' \t' '  ')
low=${range% *}; high=${range#* }
[ "$low" -eq 40000 ] && [ "$high" -gt 40099 ] || fail "the range in the namespace is '$range', not widened upward from 40000 40099"
widened=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=range-widened | tail -n 1)
alert=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=usage-critical | tail -n 1)
dropin=$(ns cat /etc/sysctl.d/60-portd.conf 2>/dev/null) || fail "portd did not write /etc/sysctl.d/60-portd.conf"
printf '%s\n' "$dropin" | grep -q "^net.ipv4.ip_local_port_range = $low $high\$" \
    || fail "the drop-in does not hold the live range $low $high: $dropin"
[ -s "/proc/$pid/root/var/lib/portd/state.json" ] || fail "portd wrote no state to /var/lib/portd (StateDirectory=)"
metrics_range() { grep -qx "portd_range_high $high" "/proc/$pid/root/var/lib/prometheus/node-exporter/portd.prom"; }
wait_for 5 "no metrics with portd_range_high $high in /var/lib/prometheus/node-exporter/portd.prom (the metrics.conf drop-in)" metrics_range
say "   alert: $alert"
passed=$((passed + 1)); say "3. ramp: journal: $widened; live range $low $high, persisted in /etc/sysctl.d/60-portd.conf, in the metrics"

# --- 4. watchdog ------------------------------------------------------------

main_before=$(prop MainPID)
restarts_before=$(prop NRestarts)
ns kill -STOP "$main_before"
# systemd records why it killed the process until the restart starts it anew.
watchdog_fired() { [ "$(prop Result)" = watchdog ]; }
wait_for 15 "systemd's watchdog did not fire for the stopped portd (Result $(prop Result), $(prop ActiveState)/$(prop SubState))" watchdog_fired
restarted() {
    main=$(prop MainPID)
    [ "$(prop NRestarts)" -gt "$restarts_before" ] && [ "$main" -ne 0 ] && [ "$main" -ne "$main_before" ] \
        && [ "$(prop ActiveState)/$(prop SubState)" = active/running ]
}
# WatchdogSec=3s: SIGABRT (and SIGCONT), RestartSec=2s, then a census
# until READY=1.
wait_for 40 "the watchdog did not restart the stopped portd (NRestarts $(prop NRestarts), MainPID $(prop MainPID), $(prop ActiveState)/$(prop SubState))" restarted
case $(prop StatusText) in
    *"range $low-$high; mode auto"*) ;;
    *) fail "StatusText after the watchdog restart is '$(prop StatusText)'" ;;
esac
passed=$((passed + 1)); say "4. watchdog: SIGSTOPped pid $main_before was killed (result watchdog) and restarted as pid $(prop MainPID) (NRestarts $(prop NRestarts))"

# --- 5. stop ----------------------------------------------------------------

stop_started=$(date +%s)
timeout 30 nsenter -t "$pid" -m -p -n systemctl stop portd.service || fail "systemctl stop portd failed"
stop_took=$(( $(date +%s) - stop_started ))
[ "$(prop ActiveState)" = inactive ] || fail "portd is $(prop ActiveState) after stop, not inactive"
[ "$(prop Result)" = success ] || fail "portd's result after stop is $(prop Result), not success"
[ "$stop_took" -le 5 ] || fail "systemctl stop took ${stop_took}s (portd must stop within 2s of SIGTERM)"
passed=$((passed + 1)); say "5. stopped cleanly in ${stop_took}s: inactive, result success"

# --- 5a. another network namespace, with containers.conf ---------------------

cat > "$work/hold.py" <<'PY'
# Inside a network namespace of its own (unshare -n, within the test's
# namespaces): a 20-port range, 15 connections to itself held open.
import os, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("40000 40019\n")
srv = socket.socket(); srv.bind(("127.0.0.1", 9000)); srv.listen(64)
held = []
for _ in range(15):
    c = socket.create_connection(("127.0.0.1", 9000)); a, _ = srv.accept(); held += [c, a]
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {os.readlink('/proc/self/ns/net')}\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
PY
rm -f "$work/hold.ready"
nsenter -t "$pid" -m -p -n unshare -n "$python" "$work/hold.py" "$work/hold.ready" >"$work/hold.out" 2>&1 &
holder=$!
wait_for 15 "the second namespace's holder did not connect: $(cat "$work/hold.out" 2>/dev/null)" test -s "$work/hold.ready"
read -r hold_pid hold_netns < "$work/hold.ready"
hold_range() { ns nsenter -t "$hold_pid" -n cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_local_reserved_ports; }
hold_before=$(hold_range)
hold_ss=$(ns nsenter -t "$hold_pid" -n ss -Htn state established '( dport = :9000 )' | wc -l)
# Without the drop-in (steps 1-5) portd said what it cannot see.
unwatched=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service | grep -c '^other network namespaces are not watched' || true)
[ "$unwatched" -ge 1 ] || fail "under the default unit, portd did not say that it cannot watch other network namespaces"
cp "$work/root/usr/share/doc/portd/examples/containers.conf" \
    "/proc/$pid/root/run/systemd/system/portd.service.d/containers.conf"
ns systemctl daemon-reload
timeout 30 nsenter -t "$pid" -m -p -n systemctl start portd.service || fail "systemctl start portd (with containers.conf) failed"
netns_alert() {
    ns journalctl --no-pager -o json _SYSTEMD_UNIT=portd.service PORTD_EVENT=usage-critical "PORTD_NETNS=$hold_netns" \
        | grep -q "\"PORTD_USED\":\"$hold_ss\""
}
wait_for 20 "with containers.conf, no usage-critical entry with PORTD_NETNS=$hold_netns and PORTD_USED=$hold_ss (ss inside it); journal: $(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service | tail -n 5)" netns_alert
netns_entry=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service "PORTD_NETNS=$hold_netns" | tail -n 1)
[ "$(hold_range)" = "$hold_before" ] || fail "the second namespace's range or reserved ports changed: '$hold_before' -> '$(hold_range)'"
timeout 30 nsenter -t "$pid" -m -p -n systemctl stop portd.service || fail "systemctl stop portd (with containers.conf) failed"
kill "$holder" 2>/dev/null || true
ns kill "$hold_pid" 2>/dev/null || true
say "   with containers.conf: $netns_entry"
passed=$((passed + 1)); say "5a. containers.conf: the second namespace $hold_netns is reported critical ($hold_ss of 20, as ss shows), its range left as it was"

# --- 5b. widening a selected namespace, with containers.conf -----------------
# The policy selects one namespace ([namespaces] mode = "auto", select =
# ["netns:e2e-sel"]); two named namespaces (`ip netns add` in the test's
# namespaces, /run being its tmpfs) each hold 15 connections in a 20-port
# range of their own. portd widens e2e-sel from a thread inside it, through
# the unit's ProtectKernelTunables=yes and containers.conf's
# ReadWritePaths=/proc/sys/net; e2e-other is left as it was. Both are read
# back from inside them; `portd rollback` restores e2e-sel.

ns sed -i 's/^select = \[\]/select = ["netns:e2e-sel"]/' /etc/portd.toml
sed -n '/^\[namespaces\]/,$p' "/proc/$pid/root/etc/portd.toml" | grep -q '^mode = "auto"' \
    || fail "the policy's [namespaces] mode is not auto: $(sed -n '/^\[namespaces\]/,$p' "/proc/$pid/root/etc/portd.toml" | grep '^mode')"
grep -q '^select = \["netns:e2e-sel"\]' "/proc/$pid/root/etc/portd.toml" || fail "could not select netns:e2e-sel in the policy"
for n in e2e-sel e2e-other; do
    ns ip netns add "$n" || fail "ip netns add $n failed"
    rm -f "$work/$n.ready"
    nsenter -t "$pid" -m -p -n ip netns exec "$n" "$python" "$work/hold.py" "$work/$n.ready" >"$work/$n.out" 2>&1 &
    holders="$holders $!"
done
for n in e2e-sel e2e-other; do
    wait_for 15 "the holder in $n did not connect: $(cat "$work/$n.out" 2>/dev/null)" test -s "$work/$n.ready"
done
read -r _ sel_netns < "$work/e2e-sel.ready"
named_values() { ns nsenter --net="/run/netns/$1" sysctl -n net.ipv4.ip_local_port_range net.ipv4.ip_local_reserved_ports | tr -s ' \t\n' '   ' | sed 's/ $//'; }
named_range() { named_values "$1" | cut -d' ' -f1-2; }
sel_before=$(named_values e2e-sel); other_before=$(named_values e2e-other)
[ "$(named_range e2e-sel)" = "40000 40019" ] || fail "e2e-sel's range is '$(named_range e2e-sel)', not 40000 40019"
timeout 30 nsenter -t "$pid" -m -p -n systemctl start portd.service || fail "systemctl start portd (selecting e2e-sel) failed"
sel_widened() { [ "$(named_range e2e-sel)" != "40000 40019" ]; }
wait_for 30 "portd did not widen e2e-sel (range $(named_range e2e-sel)); journal: $(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service | tail -n 5)" sel_widened
sel_after=$(named_values e2e-sel)
sel_high=$(named_range e2e-sel | cut -d' ' -f2)
[ "$(named_range e2e-sel | cut -d' ' -f1)" = 40000 ] && [ "$sel_high" -gt 40019 ] \
    || fail "e2e-sel's range is '$(named_range e2e-sel)', not widened upward from 40000 40019"
netns_widened() {
    ns journalctl --no-pager -o json _SYSTEMD_UNIT=portd.service PORTD_EVENT=range-widened "PORTD_NETNS=$sel_netns" \
        | grep -q '"MESSAGE_ID":"d6b85f7829634a5bb5227482ec76a960"'
}
wait_for 10 "no range-widened entry with PORTD_NETNS=$sel_netns" netns_widened
widened_entry=$(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=range-widened "PORTD_NETNS=$sel_netns" | tail -n 1)
# A few more polls: the unselected one stays as it was.
sleep 3
[ "$(named_values e2e-other)" = "$other_before" ] || fail "e2e-other (not selected) changed: '$other_before' -> '$(named_values e2e-other)'"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] || fail "portd is $(prop ActiveState)/$(prop SubState) after widening e2e-sel"
timeout 30 nsenter -t "$pid" -m -p -n systemctl stop portd.service || fail "systemctl stop portd (selecting e2e-sel) failed"
ns /usr/sbin/portd rollback >"$work/netns-rollback.out" 2>&1 || fail "portd rollback failed: $(cat "$work/netns-rollback.out")"
grep -qF "netns e2e-sel (${sel_netns}): restored ip_local_port_range 40000-$sel_high -> 40000-40019" "$work/netns-rollback.out" \
    || fail "portd rollback did not restore e2e-sel: $(cat "$work/netns-rollback.out")"
[ "$(named_values e2e-sel)" = "$sel_before" ] || fail "after rollback e2e-sel is '$(named_values e2e-sel)', not '$sel_before'"
[ "$(named_values e2e-other)" = "$other_before" ] || fail "after rollback e2e-other is '$(named_values e2e-other)', not '$other_before'"
for n in e2e-sel e2e-other; do
    ns sh -c "ip netns pids $n | xargs -r kill"
    ns ip netns del "$n" || true
done
for p in $holders; do wait "$p" 2>/dev/null || true; done
holders=""
ns sed -i 's/^select = \["netns:e2e-sel"\]/select = []/' /etc/portd.toml
rm -f "/proc/$pid/root/run/systemd/system/portd.service.d/containers.conf"
ns systemctl daemon-reload
say "   journal: $widened_entry"
say "   rollback: $(grep e2e-sel "$work/netns-rollback.out")"
passed=$((passed + 1)); say "5b. containers.conf + [namespaces] auto: e2e-sel widened '$sel_before' -> '$sel_after' (read back inside it), e2e-other left '$other_before'; rollback restored e2e-sel"

# --- 6, 7. removal: the packages' own maintainer scripts ---------------------
# Run inside the namespace, where every path they touch (/etc through the
# overlay, /etc/sysctl.d, /var/lib, systemctl) is the namespace's.

live_range() { ns cat /proc/sys/net/ipv4/ip_local_port_range | tr -s ' \t' '  '; }
widened_again() { [ "$(live_range)" != "40000 40099" ]; }
check_removed() { # WHAT OUTPUT: the range is the original again, no drop-in, no state
    [ "$(live_range)" = "40000 40099" ] || fail "$1: the range is '$(live_range)', not the original 40000 40099; the scripts said: $(cat "$2")"
    [ "$(prop ActiveState)" = inactive ] || fail "$1: portd is $(prop ActiveState), not stopped"
    [ ! -e "/proc/$pid/root/etc/sysctl.d/60-portd.conf" ] || fail "$1: /etc/sysctl.d/60-portd.conf is still there"
    [ ! -e "/proc/$pid/root/var/lib/portd" ] || fail "$1: /var/lib/portd is still there"
}

dpkg-deb -e "$deb" "$work/deb.control"
timeout 30 nsenter -t "$pid" -m -p -n systemctl start portd.service || fail "systemctl start portd (again) failed"
ns sh "$work/deb.control/prerm" remove >"$work/prerm.out" 2>&1 || fail "prerm remove failed: $(cat "$work/prerm.out")"
ns sh "$work/deb.control/postrm" remove >"$work/postrm.out" 2>&1 || fail "postrm remove failed: $(cat "$work/postrm.out")"
[ -e "/proc/$pid/root/var/lib/portd" ] || fail "postrm remove (not purge) removed /var/lib/portd"
ns sh "$work/deb.control/postrm" purge >>"$work/postrm.out" 2>&1 || fail "postrm purge failed: $(cat "$work/postrm.out")"
check_removed "deb prerm remove + postrm purge" "$work/prerm.out"
passed=$((passed + 1)); say "6. deb: prerm remove stopped portd and rolled back to 40000 40099 (drop-in removed); postrm purge removed /var/lib/portd"

rpm_file=$(ls "$target"/generate-rpm/portd-*.rpm 2>/dev/null | head -n 1)
if [ -n "$rpm_file" ] && command -v rpm >/dev/null; then
    rpm -qp --qf '%{PREUN}' "$rpm_file" > "$work/rpm.preun"
    rpm -qp --qf '%{POSTUN}' "$rpm_file" > "$work/rpm.postun"
    # The .deb's postrm unmasked the unit; start afresh, this time with the
    # example attribution.conf drop-in: the state is gone, so the
    # still-running ramp makes portd alert (naming the ramp's process) and
    # widen again.
    cp "$work/root/usr/share/doc/portd/examples/attribution.conf" \
        "/proc/$pid/root/run/systemd/system/portd.service.d/attribution.conf"
    ns systemctl daemon-reload
    timeout 30 nsenter -t "$pid" -m -p -n systemctl start portd.service || fail "systemctl start portd (for rpm) failed"
    wait_for 20 "portd did not widen the range again for the rpm test (range $(live_range))" widened_again
    named() {
        ns journalctl --no-pager -o json _SYSTEMD_UNIT=portd.service PORTD_EVENT=usage-critical \
            | grep -q '"PORTD_PROCESS":"python3\[[0-9]*\] 60 sockets'
    }
    wait_for 5 "with attribution.conf, the critical alert does not name the ramp's process (PORTD_PROCESS): $(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=usage-critical | tail -n 1)" named
    say "   with attribution.conf: $(ns journalctl --no-pager -o cat _SYSTEMD_UNIT=portd.service PORTD_EVENT=usage-critical | tail -n 1)"
    ns sh "$work/rpm.preun" 0 >"$work/preun.out" 2>&1 || fail "rpm %preun 0 failed: $(cat "$work/preun.out")"
    ns sh "$work/rpm.postun" 0 >"$work/postun.out" 2>&1 || fail "rpm %postun 0 failed: $(cat "$work/postun.out")"
    check_removed "rpm %preun + %postun (erase)" "$work/preun.out"
    passed=$((passed + 1)); say "7. attribution.conf names the process; rpm: %preun stopped portd and rolled back to 40000 40099 (drop-in removed); %postun removed /var/lib/portd"
else
    say "7. rpm scriptlets: SKIP (no .rpm or no rpm tool)"
fi

say "PASS: portd.service under systemd $(ns systemctl --version | head -n 1 | cut -d' ' -f2) as PID 1"
