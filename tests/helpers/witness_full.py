#!/usr/bin/env python3
"""A full failure witness, end to end, for tests/suite/witness_full.rs.

Runs as root as PID 1 of a private PID, network and mount namespace (the
Rust test starts it with `unshare --pid --fork --mount-proc --net --mount`)
and refuses to run anywhere else:

  witness_full.py OUTER_NET OUTER_MNT PORTD CATALOG DIR

It puts tmpfs over /run (and every path portd writes or reads sysctl.d
from), starts a journald of its own, mounts tracefs, sets a 2-port range
and starts `portd run` (advise mode, 200 ms polls, the metrics file in DIR).
Both ports of the range are then held by sockets that are bound but neither
listening nor connected: every connect() fails with EADDRNOTAVAIL, while
the socket counters portd's fast path reads stay at zero, so portd takes a
census only when something forces one.

  1. 4200 short-lived processes (forked from one parent, comm "wcron") each
     fail once towards 127.0.0.1:5201; once the metrics settle, one new
     process (comm "wnewdest") fails towards 127.0.0.1:5202.
  2. portd is stopped (SIGSTOP) so that everything lands within one poll:
     4200 processes, each with its own comm "wb-NNNN", fail towards
     127.0.0.1:5203, then one process (comm "wnewdest2") towards
     127.0.0.1:5204; portd is continued (SIGCONT).

After each phase it records the metrics file, the censuses taken and the
journal; it prints one JSON object with what the clients saw and those.
"""

import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import sandbox
from sandbox import run, write

PR_SET_NAME = 15
libc = ctypes.CDLL(None, use_errno=True)
journald = None
portd = None


def fail(message):
    print(json.dumps({"error": message}))
    cleanup()
    sys.exit(1)


def cleanup():
    for p in (portd, journald):
        if p is portd and p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        sandbox.stop(p)  # our own children, by pid


def check_private(outer_net, outer_mnt):
    if os.getpid() != 1:
        fail("refusing to run: not PID 1 of a private PID namespace")
    for kind, outer in (("net", outer_net), ("mnt", outer_mnt)):
        if os.readlink(f"/proc/self/ns/{kind}") == outer:
            fail(f"refusing to run: the {kind} namespace is the test's own")


def setup(catalog):
    global journald
    run("mount", "--make-rprivate", "/")
    for path in ("/run", "/etc/sysctl.d", "/var/lib", "/usr/lib/sysctl.d"):
        if os.path.isdir(path):
            run("mount", "-t", "tmpfs", "tmpfs", path)
    run("mount", "-t", "tmpfs", "tmpfs", "/usr/lib/systemd/catalog")
    with open(catalog) as src:
        write("/usr/lib/systemd/catalog/portd.catalog", src.read())
    run("mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing")
    journald = sandbox.start_journald(fail, death=None)
    run("ip", "link", "set", "lo", "up")
    write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40001")
    write("/proc/sys/net/ipv4/ip_local_reserved_ports", "\n")


POLICY = """
[poll]
interval = "200ms"
max_staleness = "1h"

[widen]
mode = "advise"

[metrics]
file = "%s"
"""


def metrics(path):
    """The samples of the metrics file: [[name, {labels}, value], ...]."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in head:
            name, rest = head.split("{", 1)
            rest = rest[:-1]
            while rest:
                k, rest = rest.split("=", 1)
                assert rest[0] == '"', line
                i, v = 1, ""
                while rest[i] != '"':
                    if rest[i] == "\\":
                        i += 1
                        v += {"n": "\n"}.get(rest[i], rest[i])
                    else:
                        v += rest[i]
                    i += 1
                labels[k] = v
                rest = rest[i + 1:].lstrip(",")
        else:
            name = head
        v = float(value)
        out.append([name, labels, v if abs(v) != float("inf") else str(value)])
    return out


def value(samples, name):
    return sum(v for n, _, v in samples if n == name)


def start_portd(binary, directory):
    global portd
    prom = os.path.join(directory, "metrics.prom")
    policy = os.path.join(directory, "portd.toml")
    write(policy, POLICY % prom)
    stderr = open(os.path.join(directory, "stderr"), "w")
    st = os.fstat(stderr.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PORTD_ROOT"):
        env.pop(var, None)
    portd = subprocess.Popen([binary, "--config", policy, "run"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if value(metrics(prom), "portd_witness_active") == 1:
            return prom
        if portd.poll() is not None:
            break
        time.sleep(0.05)
    with open(os.path.join(directory, "stderr")) as f:
        fail("portd did not start its witness: " + f.read())


def set_comm(name):
    if libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def fail_once(comm, dest):
    """In a fresh process (forked): one connect() towards dest. Returns
    True when that process saw EADDRNOTAVAIL."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            set_comm(comm)
            s = socket.socket()
            try:
                s.connect(dest)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# One bash subshell per process (cheaper to fork than python): it names
# itself, then connect()s through /dev/tcp; bash says why it failed.
BURST = """
i=0
while [ $i -lt $1 ]; do
  ( printf "$2" $i > /proc/$BASHPID/comm; exec 3<>/dev/tcp/127.0.0.1/$3 ) 2>&1
  i=$((i+1))
done | grep -c 'connect: Cannot assign requested address'
"""


def burst(n, comm_format, port):
    """n fresh processes, each failing once towards 127.0.0.1:port, named
    comm_format % i: how many saw EADDRNOTAVAIL."""
    out = subprocess.run(["bash", "-c", BURST, "burst", str(n), comm_format, str(port)],
                         stdout=subprocess.PIPE, text=True)
    return int(out.stdout.strip() or "0")


def settle(prom, want, timeout=15):
    """Waits until the connect failure counters plus the dropped counter
    reach `want`, then until the censuses taken stop changing (portd takes
    none unless forced: the fast path's bounds stay at zero)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = metrics(prom)
        if value(s, "portd_connect_failures_total") + value(s, "portd_witness_dropped_total") >= want:
            break
        time.sleep(0.1)
    censuses, since = value(metrics(prom), "portd_censuses_total"), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 1.5:
        time.sleep(0.1)
        now = value(metrics(prom), "portd_censuses_total")
        if now != censuses:
            censuses, since = now, time.monotonic()
    return censuses


def journal():
    out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"],
                         check=True, stdout=subprocess.PIPE, text=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def alerted(dest):
    return [e for e in journal()
            if e.get("PORTD_EVENT") == "port-allocation-failed"
            and e.get("PORTD_DESTINATION") == dest]


def await_new(prom, dest, censuses_before, timeout=5):
    """Waits until `dest` is journaled, in the metrics, and a census was
    taken after `censuses_before` (or the timeout); returns what it saw."""
    port = dest.rsplit(":", 1)[1]
    deadline = time.monotonic() + timeout
    while True:
        s = metrics(prom)
        rows = [[n, l, v] for n, l, v in s
                if n == "portd_connect_failures_total" and l.get("remote_port") == port]
        entries = alerted(dest)
        censuses = value(s, "portd_censuses_total")
        if (rows and entries and censuses > censuses_before) or time.monotonic() > deadline:
            return {"rows": rows, "journal": [e["MESSAGE"] for e in entries],
                    "censuses_before": censuses_before, "censuses_after": censuses}
        time.sleep(0.1)


def main():
    outer_net, outer_mnt, binary, catalog, directory = sys.argv[1:6]
    check_private(outer_net, outer_mnt)
    setup(catalog)
    prom = start_portd(binary, directory)
    held = []
    for port in (40000, 40001):
        s = socket.socket()
        s.bind(("0.0.0.0", port))
        held.append(s)
    result = {}
    started = time.monotonic()

    # 1. The minute: short-lived processes with one name, then a
    # new destination.
    seen = burst(4200, "wcron", 5201)
    result["burst_seconds"] = time.monotonic() - started
    before = settle(prom, seen)
    new = 1 if fail_once("wnewdest", ("127.0.0.1", 5202)) else 0
    result["phase1"] = {"burst": seen, "new": new,
                        "after_new": await_new(prom, "127.0.0.1:5202", before)}
    result["phase1"]["metrics"] = metrics(prom)

    # 2. All within one poll: portd stopped while 4200 processes with
    # 4200 names fail, and a new destination after them.
    os.kill(portd.pid, signal.SIGSTOP)
    seen2 = burst(4200, "wb-%04d", 5203)
    new2 = 1 if fail_once("wnewdest2", ("127.0.0.1", 5204)) else 0
    before = value(metrics(prom), "portd_censuses_total")
    os.kill(portd.pid, signal.SIGCONT)
    result["phase2"] = {"burst": seen2, "new": new2,
                        "after_new": await_new(prom, "127.0.0.1:5204", before)}
    settle(prom, seen + new + seen2 + new2)
    result["phase2"]["metrics"] = metrics(prom)
    result["seconds"] = time.monotonic() - started
    result["portd_running"] = portd.poll() is None
    cleanup()
    with open(os.path.join(directory, "stderr")) as f:
        result["stderr"] = f.read()[-4000:]
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:
        fail(f"{type(e).__name__}: {e}")
