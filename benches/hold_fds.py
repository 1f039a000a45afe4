#!/usr/bin/env python3
"""Holds N open fds of /dev/null until killed (benches/attribution.sh).

Usage: benches/hold_fds.py N     (N < 20,000: the per-process hard limit)
Prints "ready N" once they are open.
"""
import os
import resource
import signal
import sys

n = int(sys.argv[1])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
print(f"ready {len(fds)}", flush=True)
signal.pause()
