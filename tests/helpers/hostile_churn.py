#!/usr/bin/env python3
"""Namespace churn beside `portd run`, for tests/suite/hostile_churn.rs.

Run ONLY as
  unshare --pid --fork --mount-proc --net --mount python3 hostile_churn.py PORTD OUT
so that discovery sees only this script's processes (a private PID namespace
with its own /proc), and every mount (tmpfs over /run and every directory
portd writes or reads policy from) and every sysctl is private: each
namespace below is an `unshare(CLONE_NEWNET)` child that sets its own range.

What it does: starts a systemd-journald of its own and `portd run` logging
to it; then, over CHURN seconds, creates and destroys NAMESPACES network
namespaces, each a forked child in a namespace of its own with a tiny range
(20 ports) holding 2 connections for a fraction of a second; CRITICAL of them,
started together, hold 15 of 20 ports (75 %: critical) for CRITICAL_FOR
seconds. When the last child is gone it waits a few polls, then writes into
OUT: namespaces.json (by pid: its namespace's `net:[INODE]`, its
connections, when they held and when it went), journal.json (`journalctl -o json`), live.json,
metrics.txt, daemon.alive (whether portd still ran), daemon.rc.
"""

import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from sandbox import run, start_journald, write

NAMESPACES = 250
CHURN = 8.0
CRITICAL = 5
CRITICAL_AT = 1.0
CRITICAL_FOR = 6.0
RANGE = "40000 40019"
DEADLINE = 90

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


def die(message):
    sys.stderr.write(f"hostile_churn.py: {message}\n")
    sys.exit(1)


def pdeathsig():
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def lo_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    s.close()


def child(connections, lifetime, report):
    """In a forked child: a network namespace of its own, its range, a
    listener on 9000 and `connections` connections to it, for `lifetime`
    seconds. Writes its namespace link to `report` once its sockets hold."""
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        lo_up()
        write("/proc/sys/net/ipv4/ip_local_port_range", RANGE + "\n")
        srv = socket.socket()
        srv.bind(("127.0.0.1", 9000))
        srv.listen(64)
        held = [srv]
        for _ in range(connections):
            c = socket.create_connection(("127.0.0.1", 9000))
            a, _ = srv.accept()
            held += [c, a]
        start = time.monotonic()
        link = os.readlink("/proc/self/ns/net")
        os.write(report, f"{os.getpid()} {link} {connections} {start}\n".encode())
        time.sleep(lifetime)
        os.write(report, f"{os.getpid()} {link} {connections} {time.monotonic()} gone\n".encode())
    except BaseException as e:  # noqa: BLE001 - a child never returns
        os.write(2, f"churn child: {e!r}\n".encode())
        os._exit(1)
    os._exit(0)


def spawn(connections, lifetime, report):
    pid = os.fork()
    if pid == 0:
        child(connections, lifetime, report)
    return pid


def main():
    portd, out = sys.argv[1], sys.argv[2]
    if os.getpid() != 1 or os.readlink("/proc/1/ns/pid") != os.readlink("/proc/self/ns/pid"):
        die("not PID 1 of a private PID namespace with its own /proc")
    signal.alarm(DEADLINE)
    run("mount", "--make-rprivate", "/")
    for path in ("/run", "/var/lib", "/etc/sysctl.d", "/usr/lib/sysctl.d"):
        if os.path.isdir(path):
            run("mount", "-t", "tmpfs", "tmpfs", path)
    lo_up()
    journald = start_journald(die, death=signal.SIGKILL)
    policy = os.path.join(out, "policy.toml")
    write(policy, f"""[poll]
interval = "500ms"
[thresholds]
hold = "0s"
[metrics]
file = "{out}/metrics.prom"
""")
    err = open(os.path.join(out, "daemon.err"), "w")
    daemon = subprocess.Popen([portd, "--config", policy, "run", "--log-target", "journal"],
                              stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                              preexec_fn=pdeathsig)
    for _ in range(200):
        if os.path.exists("/run/portd/live.json"):
            break
        time.sleep(0.025)
    else:
        die("portd wrote no live view")

    reader, report = os.pipe()
    rng = random.Random(20)
    critical_slot = int(CRITICAL_AT / CHURN * NAMESPACES)
    pids = {}
    t0 = time.monotonic()
    for i in range(NAMESPACES):
        time.sleep(max(0.0, t0 + i * CHURN / NAMESPACES - time.monotonic()))
        if critical_slot <= i < critical_slot + CRITICAL:
            pids[spawn(15, CRITICAL_FOR, report)] = "critical"
        else:
            pids[spawn(2, rng.uniform(0.1, 1.2), report)] = "quiet"
    failed = 0
    while pids:
        pid, status = os.wait()
        if pids.pop(pid, None) is not None and status != 0:
            failed += 1
    os.close(report)
    if failed:
        die(f"{failed} churn children failed")
    with os.fdopen(reader) as f:
        lines = f.read().splitlines()
    # A few polls after the last namespace went: the daemon has seen it go
    # (the closing entries come within a poll or two; the live view drops
    # the quiet ones at the next look, paced while no alert is raised).
    time.sleep(2.0)
    for _ in range(100):
        with open("/run/portd/live.json") as f:
            if not json.load(f).get("namespaces"):
                break
        time.sleep(0.1)

    # By pid: its net:[INODE] (inodes are reused once a namespace is
    # gone), its connections, when they held and when it went (seconds of
    # CLOCK_MONOTONIC, the journal's __MONOTONIC_TIMESTAMP).
    spans = {}
    for line in lines:
        pid, link, connections, when, *gone = line.split()
        span = spans.setdefault(pid, {"netns": link, "connections": int(connections)})
        span["gone" if gone else "ready"] = float(when)
    write(os.path.join(out, "namespaces.json"), json.dumps(spans))
    write(os.path.join(out, "daemon.alive"), "yes\n" if daemon.poll() is None else "no\n")
    shutil.copy("/run/portd/live.json", os.path.join(out, "live.json"))
    shutil.copy(os.path.join(out, "metrics.prom"), os.path.join(out, "metrics.txt"))
    daemon.terminate()  # our own child, by pid
    write(os.path.join(out, "daemon.rc"), f"{daemon.wait(10)}\n")
    with open(os.path.join(out, "journal.json"), "w") as f:
        subprocess.run(["journalctl", "-o", "json", "--no-pager"], stdout=f, check=True)
    journald.terminate()
    journald.wait(5)


main()
