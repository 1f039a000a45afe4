# Sourced by several_netns.sh (ACTIONS) in its private PID, network and
# mount namespaces, with a tmpfs /run: `portd run` with the default policy
# but a fast poll, no hold and a metrics file, until it has alerted on the
# busy namespace; then its live view, its metrics and a `status` run as
# nobody (which sees the other namespaces only through the live view).
# tmpfs over everything else portd writes or reads (its state and lock,
# the sysctl.d directories): nothing of the machine's.
for d in /var/lib /etc/sysctl.d /usr/lib/sysctl.d; do
    [ -d "$d" ] && mount -t tmpfs tmpfs "$d"
done
cat > "$OUT/policy.toml" <<TOML
[poll]
interval = "200ms"
[thresholds]
hold = "0s"
[metrics]
file = "$OUT/metrics.prom"
TOML
"$PORTD" --config "$OUT/policy.toml" run 2> "$OUT/daemon.err" &
DAEMON=$!
i=0
until grep -q "critical in .*net:\[$(tr -dc 0-9 < "$OUT/busy.netns")\]" "$OUT/daemon.err" \
    && grep -q '^portd_netns_alert_level{' "$OUT/metrics.prom" 2>/dev/null \
    && grep -q '"advice"' /run/portd/live.json 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || break
    sleep 0.05
done
cp /run/portd/live.json "$OUT/live.json"
cp "$OUT/metrics.prom" "$OUT/metrics.txt"
# An empty policy nobody may read (the built-in defaults), on this test's tmpfs /run.
install -m 0644 /dev/null /run/defaults.toml
setpriv --reuid=65534 --regid=65534 --clear-groups "$PORTD" --config /run/defaults.toml status > "$OUT/nobody.txt"
echo $? > "$OUT/nobody.rc"
kill "$DAEMON"
wait "$DAEMON"
echo $? > "$OUT/daemon.rc"

# Without CAP_SYS_ADMIN (dropped from the bounding set: root's exec then
# gets no such capability) setns fails: portd says so once, in the journal
# (stderr here) and through `check`, and watches its own namespace.
setpriv --bounding-set -sys_admin "$PORTD" --config "$OUT/policy.toml" run 2> "$OUT/nocap.err" &
DAEMON=$!
i=0
until grep -q "cannot enter" "$OUT/nocap.err" && grep -q "cannot enter" /run/portd/live.json 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || break
    sleep 0.05
done
# A few more polls: still said once.
sleep 1
"$PORTD" --config "$OUT/policy.toml" check > "$OUT/nocap-check.txt"
kill "$DAEMON"
wait "$DAEMON"
echo $? > "$OUT/nocap.rc"
