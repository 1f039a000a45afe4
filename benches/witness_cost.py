#!/usr/bin/env python3
"""The failure witness's cost (docs/benchmarks.md): run by
benches/witness_cost.sh inside `unshare -n -m` (refuses to run elsewhere).

PAIRS times, interleaved: examples/connect_loop without the witness, then
with it (examples/witness_count --stats: the programs attached, run-time
statistics enabled through the fd-scoped BPF_ENABLE_STATS command, never the
kernel.bpf_stats_enabled sysctl). For the run with the witness, the
programs' run_time_ns and run_cnt are read before and after the loop.
Prints one JSON line per pair, then a summary line of medians.
"""

import json
import os
import statistics
import subprocess
import sys

EX = sys.argv[1]  # the examples directory (release)
PAIRS = int(sys.argv[2])
CONNECTS = int(sys.argv[3])
OUTER = {"net": sys.argv[4], "mnt": sys.argv[5]}  # the caller's namespaces


def private():
    for kind in ("net", "mnt"):
        if os.readlink(f"/proc/self/ns/{kind}") == OUTER[kind]:
            sys.exit(f"refusing to run: the {kind} namespace is not private (use benches/witness_cost.sh)")


def loop():
    out = subprocess.run([f"{EX}/connect_loop", str(CONNECTS)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def main():
    private()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not os.path.isdir("/sys/kernel/tracing/events/syscalls"):
        subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=True)
    rows = []
    for i in range(PAIRS):
        off = loop()
        w = subprocess.Popen([f"{EX}/witness_count", "--stats"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        started = json.loads(w.stdout.readline())
        if "path" not in started:
            sys.exit(f"witness: {started}")

        def stats():
            w.stdin.write("\n")
            w.stdin.flush()
            return json.loads(w.stdout.readline())

        before = stats()
        on = loop()
        after = stats()
        w.stdin.close()
        w.wait()
        runs = after["run_count"] - before["run_count"]
        ns = after["run_time_ns"] - before["run_time_ns"]
        row = {
            "pair": i + 1,
            "off_connect_median_ns": off["connect_median_ns"],
            "on_connect_median_ns": on["connect_median_ns"],
            "off_iteration_mean_ns": off["iteration_mean_ns"],
            "on_iteration_mean_ns": on["iteration_mean_ns"],
            "bpf_runs": runs,
            "bpf_ns_per_run": ns / runs if runs else None,
            "bpf_ns_per_connect": ns / CONNECTS,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = lambda k: statistics.median(r[k] for r in rows)
    summary = {k: med(k) for k in rows[0] if k != "pair"}
    summary["bpf_share_of_connect_median"] = summary["bpf_ns_per_connect"] / summary["off_connect_median_ns"]
    print(json.dumps({"summary": summary, "pairs": PAIRS, "connects": CONNECTS}))


main()
