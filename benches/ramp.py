#!/usr/bin/env python3
"""Ramp benchmark: how portd with the SHIPPED policy (config/portd.toml, only
`mode` set) reacts to real load ramps towards one destination, against the
namespace's default range 32768-60999 (tcp_tw_reuse=0, as towards any
non-loopback upstream).

Each cell runs three times, each in a fresh private network + mount
namespace (tests/helpers/ramp_ns.py): without portd, with portd in auto mode,
with portd in advise mode, each from a cold start. The report gives, per
cell, ground truth from `ss` (peak usage without portd, whether it fits the
policy's ceiling), the time of the first failed connect() without portd, and
with portd the time (and ground-truth usage) of the first alert and of the
widening, and the failed connects.

Loads:
  tw-R    R new connections/s from the step on, each closed first by the
          client (a TIME_WAIT on its side for 60 s): needs about R x 60 ports
  conc-N  long-lived connections opened at 1000/s up to a plateau of N, held
Loads that must raise nothing (not in the default matrix; --cells QUIET):
  burst-P P % of the range opened at once, held 15 s (half the hold), reset
  flat-P  TIME_WAIT at the rate that levels off at P % of the range (80 s)
  many-N  N destinations at 30 % each (N x 141 connections/s in all, 80 s)

Usage (as root, from the repository):
  cargo build --release --locked
  benches/ramp.py [--portd target/release/portd] [--cells tw-300,conc-30000]
                  [--json results.json] [--duration-tw 70] [--duration-conc 55]
  benches/ramp.py --table-from results.json      # the table again, from the JSON
Runs about 30 minutes for the full matrix (one cell at a time: they must not
share the CPU). Prints a Markdown table on stdout.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests/helpers/ramp_ns.py")
POLICY = os.path.join(ROOT, "config/portd.toml")
RANGE = "32768 60999"
CELLS = ["tw-300", "tw-500", "tw-540", "tw-600", "tw-1000", "tw-2000",
         "conc-30000", "conc-34000"]
QUIET = ["burst-45", "flat-30", "many-8"]
CONC_RATE = 1000
CAPACITY = 60999 - 32768 + 1


def run_cell(cell, portd, mode, args):
    kind, n = cell.split("-")
    spec = {"portd": portd, "policy": POLICY, "mode": mode or "auto", "range": RANGE,
            "warmup": args.warmup}
    n = int(n)
    if kind == "tw":
        spec.update(load="time_wait", rate=n, workers=2, duration=args.duration_tw)
    elif kind == "conc":
        spec.update(load="concurrency", rate=CONC_RATE, plateau=n,
                    duration=args.duration_conc)
    elif kind == "burst":
        spec.update(load="burst", plateau=n * CAPACITY // 100, hold_for=15, duration=55)
    elif kind == "flat":
        spec.update(load="time_wait", rate=n / 100 * CAPACITY / 60, workers=2, duration=80)
    elif kind == "many":
        spec.update(load="time_wait", rate=n * 0.30 * CAPACITY / 60, destinations=n,
                    workers=2, duration=80)
    else:
        sys.exit(f"{cell}: unknown load (tw-R, conc-N, burst-P, flat-P, many-N)")
    with tempfile.TemporaryDirectory() as d:
        spec["dir"] = d
        ns = [os.readlink(f"/proc/self/ns/{k}") for k in ("net", "mnt")]
        r = subprocess.run(["unshare", "-n", "-m", sys.executable, "-u", HELPER, *ns,
                            json.dumps(spec)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{cell} ({mode or 'no portd'}): ramp_ns.py failed: {r.stderr}")
        return json.loads(r.stdout)


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def at(ev):
    if not ev:
        return "never"
    return f"{ev['t']:.0f} s ({pct(ev['ratio'])})"


def demand(run):
    """Ports the load asked for at its peak (ground truth): sockets in use
    (ss) plus the connects that failed and would hold a port now, those of
    the last 60 s (TIME_WAIT) or all so far (concurrency, held)."""
    tl = run["timeline"]
    window = 60 if run["spec"]["load"] == "time_wait" else len(tl) + 1
    peak = 0
    for i, s in enumerate(tl):
        failed = sum(x["eaddrnotavail"] for x in tl[max(0, i - window + 1):i + 1])
        peak = max(peak, (s["usage"] or 0) + failed)
    return max(peak, run["peak_usage"])


def row(cell, none, auto, advise):
    ff = none["first_failure"]
    need = demand(none)
    return "| " + " | ".join([
        cell,
        f"{none['attempts_per_second_mean']:.0f}",
        f"{none['peak_usage']} ({pct(none['peak_ratio'])})",
        f"{need} ({pct(need / none['capacity'])})",
        "yes" if need <= none["capacity_at_ceiling"] else "no",
        "never" if ff is None else f"{ff} s",
        str(none["failed_connects"]),
        at(auto["first_alert"]),
        at(auto["first_widening"]),
        auto["range_after"].replace(" ", "-"),
        str(auto["failed_connects"]),
        at(advise["first_alert"]),
        remedy(advise),
        str(advise["failed_connects"]),
    ]) + " |"


def remedy(run):
    """The first alert that named a remedy (PORTD_REMEDY): when, and which."""
    ev = run.get("first_remedy")
    if not ev:
        return "never"
    return f"{at(ev)}: {ev['remedy']}"


HEADER = """| cell | attempts/s (no portd, mean) | peak usage without portd (ss) | demand: peak + failed | fits ceiling | first failure without portd | failed connects without portd | auto: first alert (usage) | auto: widening (usage) | auto: range after | auto: failed connects | advise: first alert (usage) | advise: first remedy named (usage) | advise: failed connects |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--portd", default=os.path.join(ROOT, "target/release/portd"))
    p.add_argument("--cells", default=",".join(CELLS),
                   help=f"comma-separated; QUIET: {','.join(QUIET)}")
    p.add_argument("--json")
    p.add_argument("--duration-tw", type=int, default=70)
    p.add_argument("--duration-conc", type=int, default=55)
    p.add_argument("--warmup", type=float, default=3,
                   help="seconds portd runs before the step (the phase of its polls)")
    p.add_argument("--table-from", metavar="JSON",
                   help="print the table of an earlier run's --json file and exit")
    args = p.parse_args()
    if args.table_from:
        with open(args.table_from) as f:
            saved = json.load(f)
        print(f"commit {saved['commit']}, range {saved['range']}")
        print(HEADER)
        for r in saved["results"]:
            print(row(r["cell"], r["none"], r["auto"], r["advise"]))
        return
    if os.geteuid() != 0:
        sys.exit("benches/ramp.py needs root (private namespaces)")
    if not os.access(args.portd, os.X_OK):
        sys.exit(f"{args.portd}: no portd binary (cargo build --release --locked)")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"portd commit {commit}, range {RANGE}, policy {POLICY} (only mode set)",
          file=sys.stderr)
    results, rows = [], []
    started = time.monotonic()
    cells = args.cells.replace("QUIET", ",".join(QUIET)).split(",")
    for cell in cells:
        runs = {}
        for mode in (None, "auto", "advise"):
            t0 = time.monotonic()
            runs[mode or "none"] = run_cell(cell, None if mode is None else args.portd,
                                            mode, args)
            print(f"{cell} {mode or 'no portd'}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
        results.append({"cell": cell, **runs})
        rows.append(row(cell, runs["none"], runs["auto"], runs["advise"]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"commit": commit, "range": RANGE, "results": results}, f)
    print(f"commit {commit}; {time.monotonic() - started:.0f} s in all")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
