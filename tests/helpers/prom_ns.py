#!/usr/bin/env python3
"""One load against `portd run` (the shipped policy) watched by a real
Prometheus evaluating the shipped alert rules, in a private PID, network
AND mount namespace. Used by tests/suite/prom_alerts.rs.

Run only as
  unshare --pid --fork --mount-proc --net --mount python3 -u prom_ns.py \
      OUTER_NET OUTER_MNT OUTER_PID HOST_NET HOST_MNT SPEC
where OUTER_* are the caller's `net:[...]`, `mnt:[...]` and `pid:[...]`
links and HOST_* those of the machine's PID 1 (read by the caller: this
process has its own /proc; "-" where the caller may not read them). It refuses to mount anything or write any
sysctl unless its namespaces differ from all of them.

SPEC is JSON: ramp_ns.py's keys (portd, policy, mode, range, load, rate,
accel, plateau, hold_for, stop_at, destinations, workers, duration, dir) and
  "rules": [PATH...],    the shipped rule files (packaging/prometheus/*.yml)
  "preopen": bool,       start the clients (the step) before portd, so a
                         pool is open when portd first looks (churn)
  "settle": S,           seconds portd runs, scraped, before the step (3)
  "linger": S            seconds the alerts are still read after the load's
                         end (held connections stay open) (0)

Set up as ramp_ns.py's (tmpfs over /etc/sysctl.d, /usr/lib/sysctl.d,
/var/lib and /run, a journald of the sandbox's own, lo up, tcp_tw_reuse=0,
the range), plus a tracefs of this mount namespace for the failure witness.
Started as children, in this order: the server, portd (metrics textfile in
DIR/textfile/portd.prom), node_exporter (textfile collector only, on
127.0.0.1:9100), Prometheus (scrape and evaluation every second, the rule
files, its storage in DIR/prometheus, on 127.0.0.1:9090). Once Prometheus
has scraped portd's series the load starts (the step), and every second this
script reads GET /api/v1/alerts and the time to exhaustion Prometheus holds.
Every child is stopped by its pid at the end; PID 1 of the namespace is
this process, so nothing outlives it.

Prints one JSON line: for each alert (name and severity) when it became
pending (its activeAt) and the first read that showed it firing, in seconds
from the step; the first failed connect()
as the client saw it (CLOCK_MONOTONIC, from the step); the failed connects;
ground-truth usage (`ss`) of the busiest destination; portd's journal
events; and a per-second timeline.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from urllib.parse import quote

import ramp_ns
from ramp_ns import out, pdeathsig, port_range, setup, spawn_role, usage_now
from sandbox import run, stop, write, start_journald

NODE = ("127.0.0.1", 9100)
PROM = ("127.0.0.1", 9090)


def check_private(outer, fail):
    """fail(message) unless this process's net, mnt and pid namespaces
    differ from every one of OUTER (kind -> links that must not match)."""
    for kind, links in outer.items():
        own = os.readlink(f"/proc/self/ns/{kind}")
        if own in links:
            fail(f"refusing to run: {kind} namespace {own} is the caller's or PID 1's")


def prometheus_config(spec, d):
    rules = "\n".join(f"  - {json.dumps(r)}" for r in spec["rules"])
    text = f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
{rules}
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["{NODE[0]}:{NODE[1]}"]
"""
    path = os.path.join(d, "prometheus.yml")
    write(path, text)
    return path


class Api:
    """Prometheus' HTTP API over one kept-alive connection (one local port,
    not one per request: the range is small)."""

    def __init__(self):
        self.conn = None

    def get(self, path):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(*PROM, timeout=5)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                if r.status != 200:
                    return None
                return json.loads(body)
            except (OSError, http.client.HTTPException, ValueError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
        return None

    def scalar(self, query):
        r = self.get(f"/api/v1/query?query={quote(query)}")
        if not r or r.get("status") != "success" or not r["data"]["result"]:
            return None
        return r["data"]["result"][0]["value"][1]


def start(args, logname, d):
    log = open(os.path.join(d, logname), "w")
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=pdeathsig)


def wait_for(what, pred, timeout, procs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs:
            if p is not None and p.poll() is not None:
                sys.exit(f"{name} exited with {p.returncode} while waiting for {what}")
        if pred():
            return
        time.sleep(0.1)
    sys.exit(f"no {what} within {timeout} s")


def cell(spec):
    setup(spec)
    run("mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing")
    d = spec["dir"]
    textfile = os.path.join(d, "textfile")
    os.makedirs(textfile, exist_ok=True)
    os.makedirs(os.path.join(d, "prometheus"), exist_ok=True)
    journald = start_journald(sys.exit, tries=400, death=signal.SIGKILL)
    server = portd = node = prom = None
    clients = []
    try:
        low0, _ = port_range()
        n_dests = int(spec.get("destinations", 1))
        server = spawn_role(["server", "1" if spec["load"] == "time_wait" else "0",
                             str(n_dests)])
        if json.loads(server.stdout.readline()).get("ready") is not True:
            sys.exit("the server did not start")

        def step_now():
            nonlocal step
            step = time.monotonic()
            # As ramp_ns.py: held loads spread over processes of at most
            # MAX_FDS_PER_CLIENT descriptors, the rate over `workers`.
            n = spec.get("workers", 1)
            if spec["load"] in ("concurrency", "burst", "churn"):
                n = max(1, -(-spec["plateau"] // ramp_ns.MAX_FDS_PER_CLIENT))
            for _ in range(n):
                clients.append(spawn_role([
                    "client", spec["load"], str(spec.get("rate", 0) / n),
                    str(spec.get("accel", 0) / n), str(spec.get("plateau", 0) // n),
                    str(spec["duration"]), str(n_dests), str(spec.get("hold_for", 0)),
                    *ramp_ns.client_stop(spec)]))

        step = None
        if spec.get("preopen"):
            step_now()
            time.sleep(1)

        policy = ramp_ns.shipped_policy(spec)
        metrics = os.path.join(textfile, "portd.prom")
        # The shipped [metrics] file is empty: point it at node_exporter's directory.
        text, n = re.subn(r'(?m)^file = ""$', f'file = {json.dumps(metrics)}', open(policy).read())
        if n != 1:
            sys.exit(f"{spec['policy']}: expected one `file = \"\"` line ([metrics]), found {n}")
        write(policy, text)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PORTD_ROOT", "JOURNAL_STREAM", "NOTIFY_SOCKET",
                            "WATCHDOG_USEC", "WATCHDOG_PID")}
        portd = subprocess.Popen(
            [spec["portd"], "--config", policy, "run", "--log-target", "journal"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(d, "portd.stderr"), "w"), env=env, preexec_fn=pdeathsig)
        node = start(["prometheus-node-exporter", "--collector.disable-defaults",
                      "--collector.textfile", "--collector.textfile.directory", textfile,
                      "--web.listen-address", f"{NODE[0]}:{NODE[1]}"], "node_exporter.log", d)
        prom = start(["prometheus", "--config.file", prometheus_config(spec, d),
                      "--storage.tsdb.path", os.path.join(d, "prometheus"),
                      "--web.listen-address", f"{PROM[0]}:{PROM[1]}",
                      "--web.console.templates", os.path.join(d, "consoles"),
                      "--web.console.libraries", os.path.join(d, "console_libraries")],
                     "prometheus.log", d)
        procs = [("portd", portd), ("node_exporter", node), ("prometheus", prom)]
        api = Api()
        started = time.monotonic()
        wait_for("Prometheus scraping portd's series",
                 lambda: api.scalar("portd_poll_timestamp_seconds") is not None, 60, procs)
        pipeline = round(time.monotonic() - started, 2)
        time.sleep(spec.get("settle", 3))
        if step is None:
            step_now()

        alerts = {}  # "name severity" -> {"pending": t, "firing": t, "active_at": t}
        timeline = []
        reports = ramp_ns.Reports(clients)
        peak = 0
        linger_until = None
        while True:
            if reports.all_done():
                if linger_until is None:
                    linger_until = time.monotonic() + spec.get("linger", 0)
                if time.monotonic() >= linger_until:
                    break
            t = time.monotonic() - step
            step_wall = time.time() - t
            r = api.get("/api/v1/alerts")
            seen = []
            for a in (r or {}).get("data", {}).get("alerts", []):
                key = f"{a['labels'].get('alertname')} {a['labels'].get('severity', '')}"
                rec = alerts.setdefault(key, {"pending": None, "firing": None, "seen": round(t, 2)})
                # Pending since activeAt (Prometheus' own clock); firing when a
                # read first shows it (at most a second late).
                if rec["pending"] is None and a.get("activeAt"):
                    rec["pending"] = round(parse_time(a["activeAt"]) - step_wall, 2)
                if a["state"] == "firing" and rec["firing"] is None:
                    rec["firing"] = round(t, 2)
                seen.append(f"{a['labels'].get('alertname')}:{a['state']}")
            tte = api.scalar("portd_time_to_exhaustion_seconds")
            level = api.scalar("portd_alert_level")
            worst, _ = usage_now(low0, port_range()[1], n_dests)
            peak = max(peak, worst)
            timeline.append({"t": round(t, 2), "usage": worst, "tte": tte, "level": level,
                             "alerts": seen})
            reports.read()
            for name, p in procs:
                if p.poll() is not None:
                    sys.exit(f"{name} exited with {p.returncode} during the run")
            if t > spec["duration"] + spec.get("linger", 0) + 30:
                sys.exit("the clients did not finish in time")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - step - t)))
        per_sec, first_fail = reports.per_sec, reports.first_fail
        entries = ramp_ns.journal()
    finally:
        for p in clients:
            stop(p)
        stop(prom)
        stop(node)
        stop(portd)
        stop(server)
        stop(journald)

    out({
        "spec": {k: spec.get(k) for k in ("mode", "range", "load", "rate", "plateau",
                                           "hold_for", "stop_at", "duration", "preopen")},
        "pipeline_seconds": pipeline,
        "capacity": port_range_capacity(spec["range"]),
        "peak_usage": peak,
        "first_failure": None if first_fail is None else round(first_fail - step, 3),
        "failed_connects": sum(v[1] for v in per_sec.values()),
        "other_errors": sum(v[2] for v in per_sec.values()),
        "alerts": alerts,
        "events": [{"t": round(int(e["__REALTIME_TIMESTAMP"]) / 1e6 - step_wall, 2),
                    "event": e["PORTD_EVENT"]} for e in entries],
        "timeline": timeline,
    })


def port_range_capacity(text):
    low, high = (int(x) for x in text.split())
    return high - low + 1


def parse_time(rfc3339):
    """Prometheus' activeAt (RFC 3339, nanoseconds, UTC) as a Unix time."""
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def main():
    outer = {"net": set(), "mnt": set(), "pid": set()}
    for kind, link in zip(("net", "mnt", "pid", "net", "mnt"), sys.argv[1:6]):
        if link != "-":
            outer[kind].add(link)
    spec = json.loads(sys.argv[6])
    check_private(outer, sys.exit)
    if os.getpid() != 1:
        sys.exit("refusing to run: not PID 1 of a private PID namespace")
    # PID 1 of a namespace ignores a signal it has no handler for, SIGALRM too.
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("prom_ns.py: out of time"))
    signal.alarm(int(spec["duration"]) + int(spec.get("settle", 3))
                 + int(spec.get("linger", 0)) + 150)
    cell(spec)


if __name__ == "__main__":
    main()
