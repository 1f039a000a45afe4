#!/usr/bin/env python3
"""Provokes real failed ephemeral-port allocations and records what the
clients saw, for tests/suite/witness_counts.rs.

Runs as root inside a private network, mount and PID namespace (the Rust
test starts it with `unshare -n -m -p -f --mount-proc`), with tracefs
mounted there and net.ipv4.ip_local_port_range = 40000 40001 (2 ports).

  witness_clients.py driver WITNESS_CMD...
      starts WITNESS_CMD (a JSON-line witness, e.g. examples/witness_count),
      runs the clients one after the other, then prints one JSON object:
      {"netns", "path", "witness": <its reading>, "clients": [...],
       "noise": <failures provoked in another network namespace>}
  witness_clients.py clients PORT1 PORT2
      the same clients and noise without a witness (`portd run` is the
      witness), towards listeners on 127.0.0.1:PORT1 and PORT2; prints
      {"netns", "clients": [...], "noise": N}
  witness_clients.py client COMM ROUNDS PORT1 PORT2 [--own-netns]
      one client process (comm COMM): prints {"pid", "comm", "seen": [...]},
      each entry a key and the number of failures the client saw for it.
"""

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys

PR_SET_NAME = 15


def set_comm(name):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


class Seen:
    def __init__(self):
        self.counts = {}

    def add(self, kind, protocol, local, destination):
        key = (kind, protocol, local, destination)
        self.counts[key] = self.counts.get(key, 0) + 1

    def entries(self):
        return [
            {"kind": k, "protocol": p, "local": l, "destination": d, "count": n}
            for (k, p, l, d), n in sorted(self.counts.items(), key=str)
        ]


def expect_errno(want, fn):
    """Runs fn; returns True when it failed with errno `want`."""
    try:
        fn()
    except OSError as e:
        if e.errno == want:
            return True
        raise
    return False


def reset(sockets):
    """Closes with RST (SO_LINGER 0): no TIME_WAIT keeps a port of the
    2-port range for the next step."""
    for s in sockets:
        if s.type == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def tcp_connect_failures(seen, dest, rounds):
    held = []
    for _ in range(2):  # the 2-port range, to this destination
        s = socket.socket()
        s.connect(dest)
        held.append(s)
    for _ in range(rounds):
        s = socket.socket()
        if expect_errno(errno.EADDRNOTAVAIL, lambda: s.connect(dest)):
            seen.add("tcp_connect", "tcp", "0.0.0.0", "%s:%d" % dest)
        s.close()
    # Not exhaustion: a socket bound to an explicit port whose 4-tuple is
    # taken gets the same EADDRNOTAVAIL and must not be counted.
    a = socket.socket()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    a.bind(("127.0.0.1", 41000))
    a.connect(dest)
    b = socket.socket()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b.bind(("127.0.0.1", 41000))
    assert expect_errno(errno.EADDRNOTAVAIL, lambda: b.connect(dest))
    reset(held + [a, b])


def bind0_failures(seen, rounds):
    for kind, proto in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        held = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        for _ in range(rounds):
            s = socket.socket(socket.AF_INET, kind)
            if expect_errno(errno.EADDRINUSE, lambda: s.bind(("127.0.0.1", 0))):
                seen.add("bind0", proto, "127.0.0.1", None)
            s.close()
        # Not exhaustion: an explicit port that is taken.
        s = socket.socket(socket.AF_INET, kind)
        port = held[0].getsockname()[1]
        assert expect_errno(errno.EADDRINUSE, lambda: s.bind(("127.0.0.1", port)))
        s.close()
        reset(held)


def udp_autobind_failures(seen, rounds):
    held = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        held.append(s)
    for i in range(rounds):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if i % 2:
            op = lambda: s.sendto(b"x", ("127.0.0.1", 9))
        else:
            op = lambda: s.connect(("127.0.0.1", 9))
        if expect_errno(errno.EAGAIN, op):
            seen.add("udp_autobind", "udp", "0.0.0.0", None)
        s.close()
    for s in held:
        s.close()


def listen(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    return ls


def client(comm, rounds, ports, own_netns):
    set_comm(comm)
    listeners = []
    if own_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("40000 40001")
        listeners = [listen(p) for p in ports]
    seen = Seen()
    tcp_connect_failures(seen, ("127.0.0.1", ports[0]), rounds)
    tcp_connect_failures(seen, ("127.0.0.1", ports[1]), rounds + 3)
    bind0_failures(seen, rounds)
    udp_autobind_failures(seen, rounds)
    for ls in listeners:
        ls.close()
    print(json.dumps({"pid": os.getpid(), "comm": comm, "seen": seen.entries()}))


def run_client(args):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "client"] + args,
        check=True, stdout=subprocess.PIPE, text=True,
    )
    return json.loads(out.stdout)


def clients(ports):
    """Clients a and b here, then the noise in another network namespace."""
    listeners = [listen(p) for p in ports]
    p = [str(x) for x in ports]
    result = {
        "netns": os.stat("/proc/self/ns/net").st_ino,
        "clients": [run_client(["wclient-a", "15"] + p), run_client(["wclient-b", "10"] + p)],
    }
    noise = run_client_in_netns(["wnoise", "4"] + p)
    result["noise"] = sum(e["count"] for e in noise["seen"])
    for ls in listeners:
        ls.close()
    return result


def driver(witness_cmd):
    w = subprocess.Popen(witness_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started = json.loads(w.stdout.readline())
    result = {"started": started}
    if "path" in started:
        result.update(clients([5001, 5002]))
        w.stdin.write("\n")
        w.stdin.flush()
        result["witness"] = json.loads(w.stdout.readline())
    w.stdin.close()
    w.wait()
    print(json.dumps(result))


def run_client_in_netns(args):
    out = subprocess.run(
        ["unshare", "-n", sys.executable, os.path.abspath(__file__), "client"] + args + ["--own-netns"],
        check=True, stdout=subprocess.PIPE, text=True,
    )
    return json.loads(out.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "driver":
        driver(sys.argv[2:])
    elif sys.argv[1] == "clients":
        print(json.dumps(clients([int(sys.argv[2]), int(sys.argv[3])])))
    else:
        client(sys.argv[2], int(sys.argv[3]), [int(sys.argv[4]), int(sys.argv[5])],
               "--own-netns" in sys.argv[6:])
