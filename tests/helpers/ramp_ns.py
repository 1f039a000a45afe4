#!/usr/bin/env python3
"""One cell of a load ramp against `portd run` with the shipped policy, in a
private network AND mount namespace. Used by the ramp tests
(tests/suite/ramp.rs) and the ramp benchmark (benches/ramp.py).

Run only as `unshare -n -m python3 -u ramp_ns.py OUTER_NET OUTER_MNT SPEC`,
where OUTER_NET and OUTER_MNT are the `net:[...]` and `mnt:[...]` links of
the caller. The script refuses to mount anything or write any sysctl unless
both of its own namespaces differ from them and from PID 1's.

SPEC is JSON:
  {"portd": PATH or null,        the portd binary; null: a run without portd
   "policy": PATH,               config/portd.toml of the tree (shipped policy)
   "mode": "auto" | "advise",    the only key changed in it
   "range": "40000 41999",       net.ipv4.ip_local_port_range of the namespace
   "load": "time_wait" | "concurrency" | "burst" | "churn",
   "rate": R,                    new connections/s at the step (time_wait, concurrency)
   "accel": A,                   optional: the rate grows by A/s every second
                                 instead (time_wait: a steadily rising load)
   "plateau": N,                 concurrency, burst, churn: connections held at the end
   "hold_for": S,                burst: seconds the plateau is held before every
                                 connection is reset (SO_LINGER 0: no TIME_WAIT)
   "stop_at": S,                 time_wait: no new connection after S seconds
                                 (the TIME_WAIT sockets then drain)
   "destinations": N,            time_wait: the rate is spread round-robin over N
                                 destinations 127.0.0.1:5001..5000+N (1)
   "workers": N,                 time_wait: client processes sharing the rate (1)
   "duration": S,                seconds from the step to the end of the run
   "warmup": S,                  seconds portd runs before the step (cold start)
   "dir": PATH}                  a directory of the caller for the policy copy

Set up: every mount private, tmpfs over /etc/sysctl.d, /usr/lib/sysctl.d,
/var/lib (portd's state) and /run (a systemd-journald of its own: portd logs
there with --log-target journal), `lo` up, tcp_tw_reuse=0, the range, no
reserved ports. A server on 127.0.0.1:5001 (port outside every range used)
and the clients run as child processes in the same namespaces. In the
time_wait load the client closes first and the server closes on end of
file, so each connection leaves a TIME_WAIT on the client's side for 60 s.
In the concurrency load the clients hold their connections and the server
leaves them in its accept queue (somaxconn raised in the namespace), so no
process needs more than 20 000 descriptors. The burst load opens its plateau
at once (as fast as one process can), holds it, then resets every connection,
so the ports are free again at once. The churn load opens its plateau at
once too, then replaces `rate` connections a second, oldest first, each
closed with a reset (as when the upstream closes first: no TIME_WAIT on the
client's side), so the pool keeps its size while connect()s go on.

Prints one JSON line: the summary (times in seconds from the step, usage as
ground truth counted with `ss` every half second, of the busiest destination
when there are several; "demand": the ports the load
asked for, in use plus failed connects that would hold one; "fits": demand at
most the capacity at the ceiling 65535; "first_failure_exact": the client's
own clock at its first EADDRNOTAVAIL; "forecast": portd's time to exhaustion
as its live view said it, read with each sample, each change listed, and
"forecast_min", the least of them) and a per-second timeline.
An alarm ends everything after the duration plus a margin.
"""

import ctypes
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

from sandbox import check_private, read, run, start_journald, stop, write

PORT = 5001
DEST = ("127.0.0.1", PORT)
SAMPLE = 0.5
MAX_FDS_PER_CLIENT = 15000


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def pdeathsig():
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


# --- roles run as children: server, client ----------------------------------


def dests(n):
    return [(DEST[0], PORT + i) for i in range(n)]


def serve(accepting, n):
    listeners = []
    for dest in dests(n):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(dest)
        ls.listen(65535)
        listeners.append(ls)
    out({"ready": True})
    if not accepting:
        signal.pause()
        return
    sel = selectors.DefaultSelector()
    for ls in listeners:
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        c, _ = key.fileobj.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, True)
            else:
                c = key.fileobj
                try:
                    data = c.recv(64)
                except OSError:
                    data = b""
                if not data:  # the client closed first: close, its side keeps TIME_WAIT
                    sel.unregister(c)
                    c.close()


def reset_all(held):
    """Closes with SO_LINGER 0: a reset, no TIME_WAIT, the port free at once."""
    for c in held:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    held.clear()


def client(load, rate, accel, plateau, duration, n_dests, hold_for, stop_at=None):
    """Opens connections at the scheduled rate from now; one line per second:
    {"t": second, "ok": n, "eaddrnotavail": n, "other": n, "errno": name,
    "first_fail": the CLOCK_MONOTONIC time of the second's first
    EADDRNOTAVAIL or null}."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    targets = dests(n_dests)
    start = time.monotonic()
    held = []
    opened = 0
    sec, ok, fail, other, last_err, first_fail = 0, 0, 0, 0, None, None
    replaced = 0
    while True:
        now = time.monotonic() - start
        if now >= duration:
            break
        while now >= sec + 1:
            out({"t": sec, "ok": ok, "eaddrnotavail": fail, "other": other, "errno": last_err,
                 "first_fail": first_fail})
            sec, ok, fail, other, last_err, first_fail = sec + 1, 0, 0, 0, None, None
        if load == "burst" and now >= hold_for:
            reset_all(held)
            time.sleep(0.05)
            continue
        # Connections due by now: rate*t, or accel*t^2/2 for a rising rate;
        # a burst's plateau at once; a churning pool's plateau plus its
        # replacements.
        t_due = now if stop_at is None else min(now, stop_at)
        due = accel * t_due * t_due / 2 if accel else rate * t_due
        if load == "concurrency":
            due = min(due, plateau)
        elif load == "burst":
            due = plateau
        elif load == "churn":
            if held and opened >= plateau and replaced < int(rate * now):
                c = held.pop(0)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                replaced += 1
            due = plateau + replaced
        if opened >= due:
            if stop_at is not None and now >= stop_at:
                time.sleep(0.05)
                continue
            wait = (opened + 1 - due) / max(rate or accel * now, 1.0)
            time.sleep(min(max(wait, 0.0005), 0.05))
            continue
        dest = targets[opened % len(targets)]
        opened += 1
        c = socket.socket()
        try:
            c.connect(dest)
        except OSError as e:
            c.close()
            if e.errno == errno.EADDRNOTAVAIL:
                fail += 1
                if first_fail is None:
                    first_fail = time.monotonic()
            else:
                other += 1
            last_err = errno.errorcode.get(e.errno, str(e.errno))
            continue
        ok += 1
        if load in ("concurrency", "burst", "churn"):
            held.append(c)
        else:
            c.close()  # first: the TIME_WAIT stays on this side
    out({"t": sec, "ok": ok, "eaddrnotavail": fail, "other": other, "errno": last_err,
         "first_fail": first_fail})
    out({"done": True})
    # Concurrency: hold until killed, so the ports stay in use until the end.
    if held:
        signal.pause()


# --- the cell ------------------------------------------------------------------


class Reports:
    """What the clients report, one JSON line a second each (`client`):
    per second [ok, eaddrnotavail, other], the errnos, the clients' clock
    (CLOCK_MONOTONIC) at the first EADDRNOTAVAIL, and how many are done."""

    def __init__(self, clients):
        self.clients = clients
        self.buffers = ["" for _ in clients]
        self.per_sec = {}
        self.errnos = set()
        self.first_fail = None
        self.done = 0
        for c in clients:
            os.set_blocking(c.stdout.fileno(), False)

    def all_done(self):
        return self.done >= len(self.clients)

    def read(self):
        """Takes in every whole line the clients have written."""
        for i, c in enumerate(self.clients):
            try:
                chunk = c.stdout.read()
            except (BlockingIOError, TypeError):
                chunk = None
            if chunk:
                self.buffers[i] += chunk
            while "\n" in self.buffers[i]:
                line, self.buffers[i] = self.buffers[i].split("\n", 1)
                self.take(json.loads(line))

    def take(self, m):
        if m.get("done"):
            self.done += 1
            return
        s = self.per_sec.setdefault(m["t"], [0, 0, 0])
        s[0] += m["ok"]
        s[1] += m["eaddrnotavail"]
        s[2] += m["other"]
        if m["errno"]:
            self.errnos.add(m["errno"])
        if m.get("first_fail") is not None:
            self.first_fail = min(self.first_fail or m["first_fail"], m["first_fail"])


def setup(spec):
    run("mount", "--make-rprivate", "/")
    for path in ("/etc/sysctl.d", "/usr/lib/sysctl.d", "/var/lib", "/run"):
        if os.path.isdir(path):
            run("mount", "-t", "tmpfs", "tmpfs", path)
    run("ip", "link", "set", "lo", "up")
    write("/proc/sys/net/ipv4/ip_local_port_range", spec["range"])
    write("/proc/sys/net/ipv4/ip_local_reserved_ports", "\n")
    write("/proc/sys/net/ipv4/tcp_tw_reuse", "0")
    write("/proc/sys/net/core/somaxconn", "65535")
    write("/proc/sys/net/ipv4/tcp_max_syn_backlog", "65535")


def shipped_policy(spec):
    """config/portd.toml as shipped, with only `mode` set."""
    text = read(spec["policy"])
    text, n = re.subn(r'(?m)^mode = "[a-z]+"$', f'mode = "{spec["mode"]}"', text)
    if n != 1:
        sys.exit(f"{spec['policy']}: expected one `mode = \"...\"` line, found {n}")
    path = os.path.join(spec["dir"], "portd.toml")
    write(path, text)
    os.chmod(path, 0o644)
    return path


def client_stop(spec):
    """The client's optional last argument: when it stops opening."""
    return [] if spec.get("stop_at") is None else [str(spec["stop_at"])]


def spawn_role(args):
    return subprocess.Popen([sys.executable, "-u", __file__, *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            preexec_fn=pdeathsig, text=True)


def usage_now(low, high, n_dests):
    """Ground truth: client sockets to the busiest destination with a local
    port in the range, any state (TIME_WAIT, SYN_SENT, ESTABLISHED,
    FIN_WAIT...), and to all destinations together."""
    r = subprocess.run(["ss", "-Htan", "dst", DEST[0]],
                       capture_output=True, text=True, check=True)
    counts = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            try:
                port = int(fields[3].rsplit(":", 1)[1])
                peer = int(fields[4].rsplit(":", 1)[1])
            except ValueError:  # "*" for a socket not bound (yet)
                continue
            if low <= port <= high and PORT <= peer < PORT + n_dests:
                counts[peer] = counts.get(peer, 0) + 1
    return max(counts.values(), default=0), sum(counts.values())


def port_range():
    low, high = read("/proc/sys/net/ipv4/ip_local_port_range").split()
    return int(low), int(high)


def journal():
    r = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"],
                       capture_output=True, text=True)
    entries = []
    for line in r.stdout.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("SYSLOG_IDENTIFIER") == "portd" and e.get("PORTD_EVENT"):
            entries.append(e)
    return entries


ALERTS = ("usage-warning", "usage-critical")


def is_alert(event):
    return event in ALERTS or "exhaust" in event


LIVE = "/run/portd/live.json"


def live_forecast():
    """portd's time to exhaustion as its live view says it now: a number,
    "none" (nothing grows towards running out) or None (no view yet)."""
    try:
        with open(LIVE) as f:
            view = json.load(f)
    except (OSError, ValueError):
        return None
    tte = (view.get("forecast") or {}).get("time_to_exhaustion_seconds")
    return "none" if tte is None else tte


def cell(spec):
    setup(spec)
    journald = start_journald(sys.exit, tries=400, death=signal.SIGKILL) if spec.get("portd") else None
    portd = server = None
    clients = []
    try:
        low0, high0 = port_range()
        n_dests = int(spec.get("destinations", 1))
        server = spawn_role(["server", "1" if spec["load"] == "time_wait" else "0",
                             str(n_dests)])
        if json.loads(server.stdout.readline()).get("ready") is not True:
            sys.exit("the server did not start")
        if spec.get("portd"):
            policy = shipped_policy(spec)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PORTD_ROOT", "JOURNAL_STREAM", "NOTIFY_SOCKET",
                                "WATCHDOG_USEC", "WATCHDOG_PID")}
            portd = subprocess.Popen(
                [spec["portd"], "--config", policy, "run", "--log-target", "journal"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(spec["dir"], "portd.stderr"), "w"),
                env=env, preexec_fn=pdeathsig)
            time.sleep(spec.get("warmup", 3))
            if portd.poll() is not None:
                sys.exit(f"portd exited with {portd.returncode} before the step")

        duration = spec["duration"]
        rate, accel = spec.get("rate", 0), spec.get("accel", 0)
        n = spec.get("workers", 1)
        if spec["load"] in ("concurrency", "burst", "churn"):
            n = max(1, -(-spec["plateau"] // MAX_FDS_PER_CLIENT))
        step_wall = time.time()
        step = time.monotonic()
        for _ in range(n):
            clients.append(spawn_role([
                "client", spec["load"], str(rate / n), str(accel / n),
                str(spec.get("plateau", 0) // n), str(duration), str(n_dests),
                str(spec.get("hold_for", 0)), *client_stop(spec)]))
        reports = Reports(clients)

        samples = []  # (t, usage, low, high)
        forecast = []  # (t, time to exhaustion) at each change of the live view's
        while not reports.all_done():
            t = time.monotonic() - step
            low, high = port_range()
            worst, total = usage_now(low0, high, n_dests)
            samples.append((round(t, 2), worst, low, high, total))
            if portd is not None:
                tte = live_forecast()
                if tte is not None and (not forecast or forecast[-1][1] != tte):
                    forecast.append((round(t, 2), tte))
            reports.read()
            if t > duration + 30:
                sys.exit("the clients did not finish in time")
            time.sleep(max(0.0, SAMPLE - (time.monotonic() - step - t)))
        entries = journal() if portd is not None else []
        if portd is not None and portd.poll() is not None:
            sys.exit(f"portd exited with {portd.returncode} during the run")
    finally:
        for p in clients:
            stop(p)
        stop(portd)
        stop(server)
        stop(journald)

    per_sec, errnos, first_fail = reports.per_sec, reports.errnos, reports.first_fail
    capacity0 = high0 - low0 + 1
    capacity_ceiling = 65535 - low0 + 1

    def usage_at(t):
        """Ground-truth usage (count, ratio of the range then) last sampled at or before t."""
        best = None
        for s in samples:
            if s[0] <= t:
                best = s
        if best is None:
            return None, None
        return best[1], round(best[1] / (best[3] - best[2] + 1), 4)

    def first(pred):
        return first_with(lambda e: pred(e["PORTD_EVENT"]))

    def first_with(pred):
        for e in entries:
            if pred(e):
                t = int(e["__REALTIME_TIMESTAMP"]) / 1e6 - step_wall
                count, ratio = usage_at(t)
                return {"t": round(t, 2), "event": e["PORTD_EVENT"], "usage": count,
                        "ratio": ratio, "portd_usage": e.get("PORTD_USAGE"),
                        "remedy": e.get("PORTD_REMEDY"), "message": e.get("MESSAGE"),
                        "time_to_exhaustion": e.get("PORTD_TIME_TO_EXHAUSTION")}
        return None

    widened = next(({"t": s[0], "range": f"{s[2]} {s[3]}"} for s in samples
                    if (s[2], s[3]) != (low0, high0)), None)
    failures = sum(v[1] for v in per_sec.values())
    first_failure = min((t for t, v in per_sec.items() if v[1]), default=None)
    secs = sorted(per_sec)
    steady = [per_sec[t][0] + per_sec[t][1] for t in secs[1:-1]] or [0]
    peak = max((s[1] for s in samples), default=0)
    # Ports the load asked for (ground truth): sockets in use plus the
    # connects that failed and would hold a port then, those of the last
    # 60 s (TIME_WAIT) or all so far (concurrency: held).
    window = 60 if spec["load"] == "time_wait" else len(secs) + 1
    demand = peak
    for i, t in enumerate(secs):
        failed = sum(per_sec[x][1] for x in secs[max(0, i - window + 1):i + 1])
        demand = max(demand, (usage_at(t + 1)[0] or 0) + failed)
    summary = {
        "spec": {k: spec.get(k) for k in ("mode", "range", "load", "rate", "accel",
                                           "plateau", "hold_for", "destinations",
                                           "duration")},
        "portd": bool(spec.get("portd")),
        "range_before": f"{low0} {high0}",
        "range_after": f"{samples[-1][2]} {samples[-1][3]}" if samples else None,
        "capacity": capacity0,
        "capacity_at_ceiling": capacity_ceiling,
        "peak_usage": peak,
        "peak_ratio": round(peak / capacity0, 4),
        "peak_total": max((s[4] for s in samples), default=0),
        "demand": demand,
        "fits": demand <= capacity_ceiling,
        "first_alert": first(is_alert),
        "first_widening": first(lambda ev: ev == "range-widened"),
        "first_remedy": first_with(lambda e: is_alert(e["PORTD_EVENT"]) and e.get("PORTD_REMEDY")),
        "range_changed": widened,
        "first_failure": first_failure,
        "first_failure_exact": None if first_fail is None else round(first_fail - step, 2),
        "forecast": forecast,
        "forecast_min": min((v for _, v in forecast if v != "none"), default=None),
        "failed_connects": failures,
        "other_errors": sum(v[2] for v in per_sec.values()),
        "errnos": sorted(errnos),
        "attempts_per_second_mean": round(sum(steady) / len(steady), 1),
        "attempts_per_second_min": min(steady),
        "events": [{"t": round(int(e["__REALTIME_TIMESTAMP"]) / 1e6 - step_wall, 2),
                    "event": e["PORTD_EVENT"], "message": e.get("MESSAGE")} for e in entries],
        "timeline": [{"t": t, "ok": per_sec[t][0], "eaddrnotavail": per_sec[t][1],
                      "usage": usage_at(t + 1)[0]} for t in secs],
    }
    out(summary)


def main():
    role = sys.argv[1]
    if role == "server":
        serve(sys.argv[2] == "1", int(sys.argv[3]))
    elif role == "client":
        load, rate, accel, plateau, duration, n_dests, hold_for = sys.argv[2:9]
        stop_at = float(sys.argv[9]) if len(sys.argv) > 9 else None
        client(load, float(rate), float(accel), int(plateau), float(duration),
               int(n_dests), float(hold_for), stop_at)
    else:
        outer_net, outer_mnt, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        check_private(outer_net, outer_mnt, sys.exit)
        signal.alarm(int(spec["duration"]) + int(spec.get("warmup", 3)) + 90)
        cell(spec)


if __name__ == "__main__":
    main()
