#!/usr/bin/env python3
"""Holds a private network AND mount namespace for portd's actuation tests.

Run only as `unshare -nm python3 -u actuation_ns.py OUTER_NET OUTER_MNT SETUP`:
OUTER_NET and OUTER_MNT are the `net:[...]` and `mnt:[...]` links of the test
process. The script refuses to mount anything or write any sysctl unless
both of its own namespaces differ from them (and from PID 1's).

SETUP is JSON:
  {"mounts": [[PATH, OPTIONS], ...],   tmpfs mounted over PATH ("" = defaults)
   "sysctls": {"net.ipv4.KEY": "VALUE", ...}}
It makes every mount private first, mounts the tmpfs, brings `lo` up and
sets the sysctls. Processes the test starts with `nsenter -t PID -n -m` then
see the tmpfs instead of the machine's /etc/sysctl.d, /var/lib, ...

Protocol on stdout/stdin, one JSON object per line:
  - once set up: {"ready": true}
  - then each line read from stdin is a request answered with one line;
  - end of stdin (the test closes it, or dies) closes every socket and exits,
    and the namespaces go with the last process in them.
A request that fails answers {"error": "..."}. An alarm ends the helper after
DEADLINE seconds whatever happens, so a stuck test cannot keep it alive.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import traceback

DEADLINE = 300

listeners = {}  # port -> listening socket
clients = []  # (client, accepted peer) pairs
mounted = []  # tmpfs mount points of this helper


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def check_private(outer_net, outer_mnt):
    for kind, outer in (("net", outer_net), ("mnt", outer_mnt)):
        own = os.readlink(f"/proc/self/ns/{kind}")
        try:
            init = os.readlink(f"/proc/1/ns/{kind}")
        except OSError:  # PID 1 of a container may not be ours to inspect
            init = None
        if own == outer or own == init:
            reply({"error": f"refusing to run: {kind} namespace {own} is not private (unshare -nm?)"})
            sys.exit(1)


def mountinfo():
    """Mount point -> file system type, of this mount namespace."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mounts[fields[4]] = fields[sep + 1]
    return mounts


def under_own_tmpfs(path):
    path = os.path.realpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted)


def setup(spec):
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for path, options in spec.get("mounts", []):
        cmd = ["mount", "-t", "tmpfs"]
        if options:
            cmd += ["-o", options]
        subprocess.run(cmd + ["tmpfs", path], check=True)
        if mountinfo().get(path) != "tmpfs":
            raise RuntimeError(f"{path} is not a tmpfs after mounting one")
        mounted.append(path)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for key, value in spec.get("sysctls", {}).items():
        write_sysctl(key, value)


def write_sysctl(key, value):
    # Only reached after check_private: this is the private namespace.
    if not key.startswith("net."):
        raise RuntimeError(f"refusing to write {key}: not a per-namespace key")
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def read_sysctl(key):
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read()


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(4096)
    except OSError as e:
        s.close()
        return {"ok": False, "errno": errname(e)}
    listeners[port] = s
    return {"ok": True}


def connect(to, count):
    """Opens up to `count` connections to the listener on `to`, stopping at
    the first failure; each accepted peer is held too."""
    listener = listeners[to]
    ports = []
    for _ in range(count):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            c.connect(("127.0.0.1", to))
        except OSError as e:
            c.close()
            return {"connected": len(ports), "errno": errname(e), "ports": ports}
        a, _ = listener.accept()
        clients.append((c, a))
        ports.append(c.getsockname()[1])
    return {"connected": len(ports), "errno": None, "ports": ports}


def write_file(path, text, mode):
    if not under_own_tmpfs(path):
        raise RuntimeError(f"refusing to write {path}: not under a tmpfs of this helper")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return {"ok": True}


def handle(req):
    op = req["op"]
    if op == "listen":
        return listen(req["port"])
    if op == "unlisten":
        listeners.pop(req["port"]).close()
        return {"ok": True}
    if op == "connect":
        return connect(req["to"], req["count"])
    if op == "sysctl":
        if "value" in req:
            try:
                write_sysctl(req["key"], req["value"])
            except OSError as e:
                return {"ok": False, "errno": errname(e)}
        return {"ok": True, "value": read_sysctl(req["key"])}
    if op == "write_file":
        return write_file(req["path"], req["text"], req.get("mode", 0o644))
    if op == "sh":
        # A shell command in both namespaces (mounts, chown, ...).
        r = subprocess.run(["sh", "-c", req["cmd"]], capture_output=True, text=True)
        return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    raise RuntimeError(f"unknown op {op!r}")


def main():
    signal.alarm(DEADLINE)
    outer_net, outer_mnt, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    check_private(outer_net, outer_mnt)
    try:
        setup(spec)
    except Exception as e:
        reply({"error": f"setup failed: {e}"})
        sys.exit(1)
    reply({"ready": True})
    for line in sys.stdin:
        try:
            reply(handle(json.loads(line)))
        except Exception:
            reply({"error": traceback.format_exc()})


if __name__ == "__main__":
    main()
