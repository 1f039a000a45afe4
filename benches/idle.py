#!/usr/bin/env python3
"""Idle poll cost of `portd run` (docs/benchmarks.md, "Idle poll cost"): the
CPU time of the whole daemon (every thread, ended ones included) per poll,
over hundreds of polls, for one or more portd binaries. Run by
benches/idle.sh, which gives the defaults.

Each (binary, scenario) runs in a fresh private PID, network and mount
namespace (`unshare --pid --fork --mount-proc -n -m`): every mount private,
tmpfs over /run, /var/lib, /etc/sysctl.d and /usr/lib/sysctl.d (the daemon
writes none of the machine's files), `lo` up, the namespace's own default
range (32768-60999) and no other sysctl written. Discovery of other network
namespaces sees only the processes made here. All cells run at once (the
figure is CPU time, not wall time); `--serial` runs one at a time.

Scenarios:
  empty    nothing but `lo`
  sockets  SOCKETS established loopback connections (both ends held by
           worker processes, made before portd starts and then left idle) from
           ephemeral ports to one server listening on DESTS ports
           (5001, 5002, ...: outside the range), so each destination holds
           SOCKETS/DESTS ports (5,000 of 28,232 = 18 % with the defaults,
           below the warning level), the TCP pool ~70 %: a census has work,
           the fast path may skip it

The daemon: `portd --config POLICY run --log-target stderr` (stderr to a
file), POLICY = config/portd.toml as shipped with only `interval = "1s"`
and `mode = "advise"` set; NOTIFY_SOCKET points at a datagram socket of the
driver. The CPU of the daemon is read with clock_gettime on its process CPU
clock (CLOCK_PROCESS_CPUTIME_ID of another process: the thread group's
sum_exec_runtime, ns, ended threads included). Polls are counted by the
clock, not by STATUS messages (a daemon may send STATUS only when its text
changes): the poll timer fires every second from the first census's poll,
so the CPU is read at READY=1 and then half a second after each poll time,
and each one-second window holds one poll:
  start-up  CPU at READY=1 (set-up, witness, the first census)
  per poll  (CPU at window WARMUP+POLLS - CPU at window WARMUP) / POLLS,
            censuses (max_staleness) included
  one poll  CPU of one window: the median and p10-p90 of the windows without
            a census (no STATUS without "census skipped" in them), and each
            window with a census
and the total from wait4() after SIGTERM as a cross-check.

Usage (root): idle.py [--polls 600] [--warmup 10] [--scenarios empty,sockets]
                      [--sockets 20000] [--dests 4] [--policy config/portd.toml]
                      [--json FILE] [--serial] [--metrics] [--fsyncs]
                      NAME=PORTD [NAME=PORTD ...]
--metrics sets the policy's metrics file (/run/idle-bench/portd.prom);
--fsyncs runs the daemon under `strace -f -c` and reports the fsync,
fdatasync, sync_file_range and rename calls of the whole run (start-up
included) and per poll, in "syscalls"; its CPU figures are then strace's.
Prints one JSON line per cell as it ends, then a Markdown table.
"""

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTEN_BASE = 5001
INTERVAL = 1.0  # the policy's poll interval, seconds (policy_file)
PER_WORKER = 9000


def pdeathsig():
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def process_cpu_ns(pid):
    # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of include/linux/posix-timers.h:
    # the whole thread group's runtime, like clock_getcpuclockid(3).
    return time.clock_gettime_ns(((~pid) << 3) | 2)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# --- inside the namespaces ---------------------------------------------------


def private(outer):
    for kind in ("net", "mnt", "pid"):
        if os.readlink(f"/proc/self/ns/{kind}") == outer[kind]:
            sys.exit(f"refusing to run: the {kind} namespace is not private (use benches/idle.sh)")
    if os.getpid() != 1:
        sys.exit("refusing to run: not the first process of a private PID namespace")


def setup():
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for path in ("/run", "/var/lib", "/etc/sysctl.d", "/usr/lib/sysctl.d"):
        if os.path.isdir(path):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def hold_sockets(n, dests):
    """N loopback connections to DESTS listener ports, both ends held by
    worker processes (children, one after the other) of at most PER_WORKER
    connections each: the open-file limit is 20,000 a process."""
    listeners = []
    for i in range(dests):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", LISTEN_BASE + i))
        ls.listen(4096)
        listeners.append(ls)
    workers, k = [], 0
    while k < n:
        m = min(PER_WORKER, n - k)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            held = []
            for j in range(k, k + m):
                c = socket.socket()
                c.connect(("127.0.0.1", LISTEN_BASE + j % dests))
                held.append(c)
                held.append(listeners[j % dests].accept()[0])
            os.write(w, b"ready\n")
            signal.pause()
            os._exit(0)
        os.close(w)
        if os.read(r, 16) != b"ready\n":
            sys.exit("a socket worker failed")
        os.close(r)
        workers.append(pid)
        k += m
    for ls in listeners:
        ls.close()
    return workers


def sockstat():
    with open("/proc/net/sockstat") as f:
        return next(line.strip() for line in f if line.startswith("TCP:"))


def policy_file(src, d, metrics):
    text = open(src).read()
    for key, value in (("interval", f'"{INTERVAL:g}s"'), ("mode", '"advise"')):
        text, n = re.subn(rf'(?m)^{key} = .*$', f"{key} = {value}", text)
        if n != 1:
            sys.exit(f"{src}: expected one `{key} = ` line, found {n}")
    if metrics:
        # The shipped `[metrics]` has `file = ""` (none): write one here.
        text, n = re.subn(r'(?m)^file = ""$', f'file = "{d}/portd.prom"', text)
        if n != 1:
            sys.exit(f'{src}: expected one `file = ""` line ([metrics]), found {n}')
    path = os.path.join(d, "portd.toml")
    write(path, text)
    os.chmod(path, 0o644)
    return path


# What --fsyncs counts (strace -c), over the whole run.
TRACED = ("fsync", "fdatasync", "sync_file_range", "rename", "renameat", "renameat2")


def strace_calls(path):
    """Calls per syscall from the summary of `strace -c -o PATH`."""
    calls = {k: 0 for k in TRACED}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[-1] in calls and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    return calls


def inner(spec):
    private(spec["outer"])
    setup()
    out = {"name": spec["name"], "portd": spec["portd"], "scenario": spec["scenario"]}
    workers = []
    if spec["scenario"] == "sockets":
        workers = hold_sockets(spec["sockets"], spec["dests"])
    out["sockstat"] = sockstat()
    d = "/run/idle-bench"  # the namespace's own tmpfs
    os.makedirs(d)
    policy = policy_file(spec["policy"], d, spec["metrics"])
    sock_path = os.path.join(d, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(120)
    env = {k: v for k, v in os.environ.items()
           if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "PORTD_ROOT", "NOTIFY_SOCKET")}
    env["NOTIFY_SOCKET"] = sock_path
    log = open(spec["log"], "w")
    t0 = time.monotonic()
    argv = [spec["portd"], "--config", policy, "run", "--log-target", "stderr"]
    trace = os.path.join(d, "strace")
    if spec["fsyncs"]:
        # The CPU figures are then strace's, not the daemon's: count only.
        argv = ["strace", "-f", "-qq", "-c", "-o", trace, "-e", "trace=" + ",".join(TRACED)] + argv
    daemon = subprocess.Popen(argv,
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                              preexec_fn=pdeathsig)
    pid = daemon.pid
    # Polls are counted by the clock, not by STATUS (sent only when its text
    # changes): the poll timer fires every INTERVAL from the first census's
    # poll, so the CPU is read half an interval after each poll time, and
    # every window between two readings holds one poll.
    polls, marks, steps = 0, {}, []  # steps: (CPU ns of the window, census in it)
    warmup, n = spec["warmup"], spec["polls"]
    statuses, census_seen, last_status, at = 0, False, "", None
    try:
        while polls < warmup + n:
            # (a timeout of 0 would make the socket non-blocking)
            timeout = 120 if at is None else max(1e-4, at - time.monotonic())
            notify.settimeout(timeout)
            try:
                msg = notify.recv(65536).decode(errors="replace")
            except socket.timeout:
                if at is None:
                    raise
                polls += 1
                now = (process_cpu_ns(pid), time.monotonic())
                if polls > warmup:
                    steps.append((now[0] - prev[0], census_seen))
                if polls == warmup:
                    marks["from"] = now
                prev, census_seen = now, False
                at += INTERVAL
                continue
            if "READY=1" in msg:
                marks["ready"] = prev = (process_cpu_ns(pid), time.monotonic())
                at = marks["ready"][1] + INTERVAL / 2
            if "STATUS=" not in msg:
                continue
            statuses += 1
            last_status = msg
            census_seen |= "census skipped" not in msg and "READY=1" not in msg
        marks["to"] = prev
    except socket.timeout:
        daemon.kill()
        daemon.wait()
        sys.exit(f"{spec['name']}/{spec['scenario']}: no READY=1 in 120 s; log {spec['log']}")
    live = None
    try:
        live = json.load(open("/run/portd/live.json"))
    except (OSError, ValueError):
        pass
    threads = len(os.listdir(f"/proc/{pid}/task"))
    if spec["fsyncs"]:
        # strace waits for the daemon it started: end the daemon.
        for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
            os.kill(int(child), signal.SIGTERM)
    else:
        daemon.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(pid, 0)
    log.close()
    cpu = lambda k: marks[k][0]
    skipped = sorted(c for c, census in steps if not census)
    with_census = [c for c, census in steps if census]
    pct = lambda q: skipped[min(len(skipped) - 1, int(q * len(skipped)))] / 1e3 if skipped else None
    out.update({
        "polls": n,
        "warmup_polls": warmup,
        "censuses": len(with_census),
        "skipped": len(skipped),
        "skipped_poll_us_median": pct(0.5),
        "skipped_poll_us_p10": pct(0.1),
        "skipped_poll_us_p90": pct(0.9),
        "skipped_poll_us_mean": sum(skipped) / len(skipped) / 1e3 if skipped else None,
        "census_polls_ms": [c / 1e6 for c in with_census],
        # Each poll's CPU in order (--json): the periodic parts show as
        # spikes every 5, 10 or 15 polls.
        "per_poll_us": [round(c / 1e3, 1) for c, _ in steps],
        "startup_cpu_ms": cpu("ready") / 1e6 if "ready" in marks else None,
        "cpu_us_per_poll": (cpu("to") - cpu("from")) / n / 1e3,
        "seconds_per_poll": (marks["to"][1] - marks["from"][1]) / n,
        "total_cpu_ms_wait4": (ru.ru_utime + ru.ru_stime) * 1e3,
        "cpu_ms_at_last_status": cpu("to") / 1e6,
        "exit_status": os.waitstatus_to_exitcode(status),
        "threads_at_end": threads,
        "wall_seconds": time.monotonic() - t0,
        "statuses": statuses,
        "last_status": last_status.strip(),
    })
    if live:
        out["live_census"] = live.get("census")
    if spec["fsyncs"]:
        calls = strace_calls(trace)
        out["syscalls"] = calls
        out["syscalls_per_poll"] = {k: v / (warmup + n) for k, v in calls.items()}
    for w in workers:
        os.kill(w, signal.SIGKILL)
        os.waitpid(w, 0)
    print(json.dumps(out), flush=True)


# --- the caller ----------------------------------------------------------------


def table(rows):
    lines = ["| binary | scenario | polls | censuses | CPU per poll, µs (all polls) "
             "| skipped polls: median µs (p10-p90) | a poll with a census, ms | start-up CPU, ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        census = ", ".join(f"{c:.1f}" for c in r["census_polls_ms"]) or "-"
        lines.append(f"| {r['name']} | {r['scenario']} | {r['polls']} | {r['censuses']} "
                     f"| {r['cpu_us_per_poll']:.0f} | {r['skipped_poll_us_median']:.0f} "
                     f"({r['skipped_poll_us_p10']:.0f}-{r['skipped_poll_us_p90']:.0f}) "
                     f"| {census} | {r['startup_cpu_ms']:.1f} |")
    return "\n".join(lines)


def stop(procs):
    """Ends the cells still running: SIGKILL to the first process of each
    PID namespace (the child of its `unshare`), which ends all of it."""
    for pr in procs:
        if pr.poll() is None:
            try:
                children = open(f"/proc/{pr.pid}/task/{pr.pid}/children").read().split()
            except OSError:
                children = []
            for child in children:
                os.kill(int(child), signal.SIGKILL)
            pr.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inner", help=argparse.SUPPRESS)
    p.add_argument("--polls", type=int, default=600)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--scenarios", default="empty,sockets")
    p.add_argument("--sockets", type=int, default=20000)
    p.add_argument("--dests", type=int, default=4)
    p.add_argument("--policy", default=os.path.join(ROOT, "config/portd.toml"))
    p.add_argument("--json")
    p.add_argument("--serial", action="store_true")
    p.add_argument("--metrics", action="store_true",
                   help="the policy writes a metrics file (the shipped one writes none)")
    p.add_argument("--fsyncs", action="store_true",
                   help="run the daemon under strace -c and count fsyncs and renames "
                        "(the CPU figures are then not the daemon's)")
    p.add_argument("binaries", nargs="*", metavar="NAME=PORTD")
    a = p.parse_args()
    if a.inner:
        return inner(json.loads(a.inner))
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces)")
    if not a.binaries:
        p.error("give at least one NAME=PORTD")
    outer = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("net", "mnt", "pid")}
    logs = tempfile.mkdtemp(prefix="portd-idle-")
    print(f"logs: {logs}", file=sys.stderr)
    cells = []
    for b in a.binaries:
        name, _, path = b.partition("=")
        path = os.path.abspath(path)
        if not os.access(path, os.X_OK):
            sys.exit(f"{path}: not an executable")
        for s in a.scenarios.split(","):
            cells.append({"name": name, "portd": path, "scenario": s, "polls": a.polls,
                          "warmup": a.warmup, "sockets": a.sockets, "dests": a.dests,
                          "policy": os.path.abspath(a.policy), "outer": outer,
                          "metrics": a.metrics, "fsyncs": a.fsyncs,
                          "log": os.path.join(logs, f"{name}-{s}.log")})
    cmd = lambda c: ["unshare", "--pid", "--fork", "--mount-proc", "-n", "-m",
                     sys.executable, "-u", os.path.abspath(__file__), "--inner", json.dumps(c)]
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr)
    rows = []
    procs = []
    for c in cells:
        procs.append(subprocess.Popen(cmd(c), stdout=subprocess.PIPE, text=True, preexec_fn=pdeathsig))
        if a.serial:
            procs[-1].wait()
    for c, pr in zip(cells, procs):
        text = pr.communicate()[0]
        if pr.returncode != 0:
            stop(procs)
            sys.exit(f"{c['name']}/{c['scenario']} failed ({pr.returncode}); log {c['log']}")
        row = json.loads(text.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_poll_us"}), flush=True)
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr)
    if a.json:
        write(a.json, json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
