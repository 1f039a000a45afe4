"""The holders of the attribution tests (tests/suite/attribution_netns.rs):
connections to 127.0.0.1:PORT held by a process of user nobody named COMM.

Run inside the test's sandbox, as `python3 -c "$(cat nobody_holder.py)" MODE COMM PORT COUNT`
(through -c: nobody may not be able to read the checkout):
  exec  run under `setpriv --reuid=65534 ...`: an ordinary process of another user after exec;
  fork  run as root: forks a child that drops to nobody without exec, as daemon workers do
        (nginx, sshd); it is not dumpable, so /proc/PID belongs to root.
The holder prints {"pid", "uid", "ports"} once its connections are open, and holds them until
its stdin closes.
"""
import ctypes, json, os, socket, sys

NOBODY = 65534
mode, comm, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def hold():
    ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
    if mode == "fork":
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    # No create_connection(): its getaddrinfo() would import the idna codec,
    # which may live where nobody cannot read (pyenv under /root).
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.connect(("127.0.0.1", port))
    print(json.dumps({"pid": os.getpid(), "uid": os.geteuid(),
                      "ports": [s.getsockname()[1] for s in socks]}), flush=True)
    sys.stdin.read()


if mode == "fork":
    child = os.fork()
    if child == 0:
        try:
            hold()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
else:
    hold()
