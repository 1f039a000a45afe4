"""hold.py RANGE_LOW RANGE_HIGH CONNECTIONS READY_FILE [hostile-name]: sets
the port range of the network namespace it runs in (run it only in one a test
created: `unshare -n`, `ip netns exec`), listens on 127.0.0.1:9000 and keeps
CONNECTIONS connections to it open until killed (or 90 s). Writes READY_FILE
once they are open. With `hostile-name`, first names itself
"x|y=1\\nOK - ESC[2J", as any user may (prctl PR_SET_NAME does the same).
Used by several_netns.sh and hostile_status.sh.
"""
import socket, subprocess, sys, time
low, high, n, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write(f"{low} {high}\n")
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9000)); srv.listen(128)
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", 9000)); a, _ = srv.accept(); held += [c, a]
if sys.argv[5:] == ["hostile-name"]:
    with open("/proc/self/comm", "wb") as f:
        f.write(b"x|y=1\nOK - \x1b[2J")
open(ready, "w").write("ready\n")
time.sleep(90)
