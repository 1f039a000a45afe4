#!/usr/bin/env python3
"""Opens real sockets inside a private network namespace for portd's tests.

Run only as `unshare -n python3 netns_sockets.py SCENARIO OUTER_NETNS [ARGS]`:
OUTER_NETNS is the `net:[...]` link of the test process, and the script
refuses to write any sysctl unless its own namespace differs from it.

Protocol on stdout/stdin, one JSON object per line:
  - once the sockets are open: {"ready": true, ...scenario facts...}
  - then each line read from stdin is a request answered with one line;
  - end of stdin (the test closes it, or dies) closes every socket and exits.
Errors are reported as {"error": "..."} and exit 1. An alarm ends the
helper after DEADLINE seconds whatever happens, so a stuck test cannot
keep a namespace alive.
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
import traceback

DEADLINE = 120
NOBODY = 65534
PR_SET_NAME = 15

held = []  # every socket the scenario keeps open


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(message):
    reply({"error": message})
    sys.exit(1)


def set_comm(name):
    """Names the process (its `comm`) so the test can recognise it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def check_private_netns(outer):
    own = os.readlink("/proc/self/ns/net")
    if own == outer:
        fail(f"refusing to run: network namespace {own} is the test's own (not under unshare -n)")
    init = os.readlink("/proc/1/ns/net") if os.access("/proc/1/ns/net", os.R_OK) else None
    if own == init:
        fail(f"refusing to run: network namespace {own} is PID 1's")


def sysctl(key, value):
    # Only ever called after check_private_netns: this is the private namespace.
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def listen(family, addr, port, dual_stack=False):
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    s.bind((addr, port))
    s.listen(512)
    held.append(s)
    return s


def connect(family, addr, port, listener=None, bind=None):
    """A client connection; its accepted peer is held too (if listener)."""
    c = socket.socket(family, socket.SOCK_STREAM)
    if bind is not None:
        c.bind((bind, 0))
    c.connect((addr, port))
    held.append(c)
    a = None
    if listener is not None:
        a, _ = listener.accept()
        held.append(a)
    return c, a


def wait_eof(s):
    s.settimeout(5)
    while s.recv(1):
        pass


def client_time_wait(family, addr, port, listener, bind=None):
    """The client closes first, then the server: the client's port ends in TIME_WAIT."""
    c, a = connect(family, addr, port, listener, bind)
    held.remove(c)
    held.remove(a)
    c.close()
    wait_eof(a)
    a.close()


def client_fin_wait2(family, addr, port, listener):
    """The client half-closes and the server does not: client FIN_WAIT2 (with an inode)."""
    c, a = connect(family, addr, port, listener)
    c.shutdown(socket.SHUT_WR)
    wait_eof(a)


def orphaned_fin_wait2(family, addr, port, listener):
    """The client closes and the server never does: an orphaned FIN_WAIT2 (inode 0)."""
    c, a = connect(family, addr, port, listener)
    held.remove(c)
    c.close()
    wait_eof(a)


def client_close_wait(family, addr, port, listener):
    """The server closes first: the client's port sits in CLOSE_WAIT."""
    c, a = connect(family, addr, port, listener)
    held.remove(a)
    a.close()
    wait_eof(c)


def syn_sent(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    rc = s.connect_ex((addr, port))
    if rc != errno.EINPROGRESS:
        fail(f"connect to {addr}:{port} should hang in SYN_SENT, got {errno.errorcode.get(rc, rc)}")
    held.append(s)


def udp(family, bind=None, peer=None):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if bind is not None:
        s.bind(bind)
    if peer is not None:
        s.connect(peer)
    held.append(s)
    return s


def black_hole():
    """10.9.9.0/24 routed into lo from 10.9.9.1 but not local: SYNs to it get no answer."""
    ip("addr", "add", "10.9.9.1/32", "dev", "lo")
    ip("route", "add", "10.9.9.0/24", "dev", "lo", "src", "10.9.9.1")


def scenario_mixed(tw_reuse):
    """Several destinations in every interesting state (see status_netns.rs)."""
    sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    sysctl("net.ipv4.ip_local_reserved_ports", "40007-40008,50000")
    sysctl("net.ipv4.tcp_tw_reuse", tw_reuse)
    sysctl("net.ipv4.tcp_timestamps", "1")
    black_hole()
    v4, v6 = socket.AF_INET, socket.AF_INET6
    # Listeners first, so that connect() never hands out their ports.
    l5001 = listen(v4, "127.0.0.1", 5001)
    l5002 = listen(v4, "127.0.0.2", 5002)
    l5003 = listen(v6, "::1", 5003)
    l5004 = listen(v6, "::", 5004, dual_stack=True)
    l5005 = listen(v4, "127.0.0.1", 5005)
    l5007 = listen(v4, "10.9.9.1", 5007)
    l5008 = listen(v4, "0.0.0.0", 5008)
    in_range = listen(v6, "::", 40050, dual_stack=True)  # inside the range
    reserved = listen(v4, "127.0.0.1", 40007)  # inside the range, and reserved
    udp(v4, bind=("127.0.0.1", 5353))

    for _ in range(30):
        connect(v4, "127.0.0.1", 5001, l5001)
    for _ in range(4):  # v4-mapped: the same destination, listed in tcp6
        connect(v6, "::ffff:127.0.0.1", 5001, l5001)
    for _ in range(5):
        connect(v4, "127.0.0.2", 5002, l5002)
    for _ in range(3):  # bind(addr, 0) first: another local address
        connect(v4, "127.0.0.2", 5002, l5002, bind="127.0.0.3")
    for _ in range(3):
        connect(v6, "::1", 5003, l5003)
    for _ in range(4):  # IPv4 clients of a dual-stack listener
        connect(v4, "127.0.0.1", 5004, l5004)
    for _ in range(3):  # accepted by the listener inside the range
        connect(v4, "127.0.0.1", 40050, in_range)
    for _ in range(2):
        connect(v6, "::1", 40050, in_range)
    for _ in range(2):
        connect(v4, "127.0.0.1", 40007, reserved)

    for _ in range(6):
        client_time_wait(v4, "127.0.0.1", 5005, l5005)
    for _ in range(2):
        client_time_wait(v6, "::1", 5003, l5003)
    for _ in range(2):
        client_time_wait(v6, "::ffff:127.0.0.1", 5005, l5005)
    for _ in range(3):  # not loopback: never reusable under tcp_tw_reuse=2
        client_time_wait(v4, "10.9.9.1", 5007, l5007)
    for _ in range(2):  # only the remote end is loopback: reusable under 2
        client_time_wait(v4, "127.0.0.1", 5008, l5008, bind="10.9.9.1")
    for _ in range(2):
        client_fin_wait2(v4, "127.0.0.1", 5005, l5005)
    orphaned_fin_wait2(v4, "127.0.0.1", 5005, l5005)
    for _ in range(2):
        client_close_wait(v4, "127.0.0.1", 5005, l5005)
    syn_sent(v4, "10.9.9.2", 80)
    syn_sent(v6, "::ffff:10.9.9.2", 80)

    # Fixed ports before automatic ones, which could take them.
    udp(v4, bind=("127.0.0.1", 40060))
    udp(v4, bind=("127.0.0.1", 40008))  # a reserved port, bound explicitly
    for _ in range(4):
        udp(v4, peer=("127.0.0.1", 5353))
    for _ in range(2):
        udp(v6, peer=("::1", 5353))
    udp(v4, bind=("0.0.0.0", 0))
    # Let the last FIN/ACKs land, so the census and ss see settled states.
    time.sleep(0.3)
    return {"tw_reuse": int(tw_reuse)}


def scenario_exhaust():
    """One destination, 10 ports: the 10th connect() succeeds, the 11th gets EADDRNOTAVAIL."""
    sysctl("net.ipv4.ip_local_port_range", "40000 40009")
    sysctl("net.ipv4.ip_local_reserved_ports", "")
    listener = listen(socket.AF_INET, "127.0.0.1", 5001)
    ports = []
    for _ in range(10):
        c, _ = connect(socket.AF_INET, "127.0.0.1", 5001, listener)
        ports.append(c.getsockname()[1])

    def connect_one():
        try:
            c, _ = connect(socket.AF_INET, "127.0.0.1", 5001, listener)
        except OSError as e:
            return {"errno": e.errno, "message": e.strerror}
        return {"port": c.getsockname()[1]}

    return {"ports": ports}, {"connect": connect_one}


HOLDER = r"""
import ctypes, json, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
held = [socket.create_connection(("127.0.0.1", int(sys.argv[2]))) for _ in range(int(sys.argv[3]))]
import os
print(json.dumps({"pid": os.getpid(), "uid": os.geteuid(), "ports": [s.getsockname()[1] for s in held]}), flush=True)
sys.stdin.read()
"""


def holder_exec(comm, port, count):
    """A holder that runs as nobody after exec (an ordinary process of another user)."""
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    p = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         python, "-c", HOLDER, comm, str(port), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        fail(f"the {comm} holder exited before reporting (exit status {p.wait()})")
    held.append(p)
    return json.loads(line)


def holder_fork(comm, port, count):
    """A holder that dropped to nobody without exec, as daemon workers do
    (nginx, sshd): it is not dumpable, so /proc/PID belongs to root."""
    r_ready, w_ready = os.pipe()
    r_hold, w_hold = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r_ready)
            os.close(w_hold)
            set_comm(comm)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            # No create_connection(): its getaddrinfo() would import the idna
            # codec, which may live where nobody cannot read (pyenv under /root).
            socks = [socket.socket() for _ in range(count)]
            for s in socks:
                s.connect(("127.0.0.1", port))
            os.write(w_ready, json.dumps({
                "pid": os.getpid(), "uid": os.geteuid(),
                "ports": [s.getsockname()[1] for s in socks]}).encode() + b"\n")
            os.close(w_ready)
            while os.read(r_hold, 1):
                pass
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(w_ready)
    os.close(r_hold)
    held.append(w_hold)  # closing it (at exit) ends the child
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(r_ready, 4096)
        if not chunk:
            fail(f"the {comm} holder exited before reporting")
        data += chunk
    os.close(r_ready)
    return json.loads(data)


def scenario_attribution():
    """Sockets held by nobody (exec'd and forked), by root, and TIME_WAIT."""
    sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    sysctl("net.ipv4.ip_local_reserved_ports", "")
    sysctl("net.ipv4.tcp_tw_reuse", "0")
    set_comm("portd-nsroot")
    v4 = socket.AF_INET
    l5001 = listen(v4, "127.0.0.1", 5001)
    l5002 = listen(v4, "127.0.0.1", 5002)
    l5003 = listen(v4, "127.0.0.1", 5003)
    # Forked before root opens its client sockets, so it inherits none of them.
    forked = holder_fork("portd-fork-nb", 5002, 4)
    execd = holder_exec("portd-exec-nb", 5001, 7)
    # Accept what the holders opened first: accept() below must return
    # the peers of root's own connections.
    for listener, n in ((l5001, 7), (l5002, 4)):
        for _ in range(n):
            a, _ = listener.accept()
            held.append(a)
    for _ in range(2):
        connect(v4, "127.0.0.1", 5003, l5003)
    for _ in range(3):
        client_time_wait(v4, "127.0.0.1", 5001, l5001)
    time.sleep(0.2)
    return {"root_pid": os.getpid(), "exec_holder": execd, "fork_holder": forked}


def main():
    signal.alarm(DEADLINE)
    if len(sys.argv) < 3:
        fail("usage: netns_sockets.py SCENARIO OUTER_NETNS [ARGS]")
    scenario, outer, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    check_private_netns(outer)
    ip("link", "set", "lo", "up")
    requests = {}
    if scenario == "mixed":
        facts = scenario_mixed(*args)
    elif scenario == "exhaust":
        facts, requests = scenario_exhaust()
    elif scenario == "attribution":
        facts = scenario_attribution()
    else:
        fail(f"unknown scenario {scenario!r}")
    reply({"ready": True, "pid": os.getpid(), **facts})
    for line in sys.stdin:
        handler = requests.get(line.strip())
        reply(handler() if handler else {"error": f"unknown request {line.strip()!r}"})


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # report, so the test does not wait for a line
        where = traceback.extract_tb(e.__traceback__)[-1]
        fail(f"{type(e).__name__}: {e} (line {where.lineno}: {where.line})")
