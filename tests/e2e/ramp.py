#!/usr/bin/env python3
"""Exhaustion ramp for the systemd end-to-end test: a listener on loopback
and COUNT connections to it from ephemeral ports, held open for HOLD seconds.

Run it only inside the test's own network namespace (tests/e2e/systemd.sh
does, through nsenter), where the range is tiny: the connections then use a
large share of the ports towards one destination (127.0.0.1 -> 127.0.0.1:PORT).
Bounded in count and time; loopback only.

Usage: ramp.py PORT COUNT HOLD_SECONDS
Prints "connected N" once all connections are up, or fails with the errno.
"""

import socket
import sys
import threading
import time


def main():
    port, count, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    if not 0 < count <= 1000 or not 0 < hold <= 300:
        sys.exit("ramp.py: COUNT must be 1..1000 and HOLD 1..300 seconds")

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(count + 16)
    accepted = []

    def accept():
        while len(accepted) < count:
            conn, _ = listener.accept()
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()

    clients = []
    for _ in range(count):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.connect(("127.0.0.1", port))  # an ephemeral port from the range
        clients.append(c)
    print(f"connected {len(clients)}", flush=True)
    time.sleep(hold)


if __name__ == "__main__":
    main()
