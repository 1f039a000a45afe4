"""What the namespace helpers share: the guard that refuses the caller's
namespaces, small process and file verbs, and a systemd-journald of the
sandbox's own. Imported by the scripts in this folder (their folder is on
sys.path when run as `python3 tests/helpers/NAME.py`). The Rust tests' own
sandbox is tests/suite/sandbox.rs.
"""

import ctypes
import os
import signal
import subprocess
import time


def check_private(outer_net, outer_mnt, fail, whose="the caller's"):
    """Calls fail(message) unless the net and mnt namespaces of this process
    differ from the caller's (OUTER_NET, OUTER_MNT) and from PID 1's."""
    for kind, outer in (("net", outer_net), ("mnt", outer_mnt)):
        own = os.readlink(f"/proc/self/ns/{kind}")
        if own == outer:
            fail(f"refusing to run: {kind} namespace {own} is {whose}")
        try:
            if own == os.readlink(f"/proc/1/ns/{kind}"):
                fail(f"refusing to run: {kind} namespace {own} is PID 1's")
        except OSError:
            pass


def run(*args):
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def write(path, value):
    with open(path, "w") as f:
        f.write(value)


def read(path):
    with open(path) as f:
        return f.read()


def stop(p):
    """Stops child P (a Popen, or None), ours by pid: SIGTERM, then SIGKILL
    when it still runs 5 s later."""
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def deathsig(sig):
    """A preexec_fn: the child gets SIG when this process dies."""
    return lambda: ctypes.CDLL(None).prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG


def start_journald(fail, tries=200, death=signal.SIGTERM):
    """Starts systemd-journald (volatile storage, no forwarding, no rate
    limit; /run must be a tmpfs of the sandbox) and waits up to TRIES times
    25 ms for its socket. Returns its Popen; calls fail(message) when it
    exits or its socket does not come. DEATH: the signal it gets when this
    process dies, or None."""
    os.makedirs("/run/systemd/journal", exist_ok=True)
    os.makedirs("/run/systemd/journald.conf.d", exist_ok=True)
    write("/run/systemd/journald.conf.d/50-portd-test.conf",
          "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\n"
          "ForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n"
          "RateLimitIntervalSec=0\n")
    env = dict(os.environ, SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_LEVEL="warning")
    journald = subprocess.Popen(["/usr/lib/systemd/systemd-journald"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                preexec_fn=deathsig(death) if death else None)
    for _ in range(tries):
        if os.path.exists("/run/systemd/journal/socket"):
            return journald
        if journald.poll() is not None:
            fail(f"systemd-journald exited with {journald.returncode}")
        time.sleep(0.025)
    fail("systemd-journald did not create /run/systemd/journal/socket")
