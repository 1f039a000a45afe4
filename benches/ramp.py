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
  hold-P  P % of the range opened at once and held to the end (80 s): a
          deploy that opens its connection pool in a burst and keeps it
  churn-P a pool of P % opened at the step, 100 connections a second replaced
          (reset, oldest first) to the end: constant size, connect()s go on
  swell-P TIME_WAIT for 54 s at the rate that reaches P % then (it would level
          off a tenth higher), then drains (80 s)

The forecast against the truth: a second table gives, for each cell, portd's
time to exhaustion in the journal entry of its first alert against the time
that was really left (the first failed connect() of the run without portd,
minus the time of that alert; in advise mode also the run's own first
failure), and for each mode the least time to exhaustion its live view showed
(read every half second). A load that runs out wants the ratio within 0.5-2;
a quiet load wants the least never under 300 s.

Usage (as root, from the repository):
  cargo build --release --locked
  benches/ramp.py [--portd target/release/portd] [--cells tw-300,conc-30000]
                  [--json results.json] [--duration-tw 70] [--duration-conc 55]
                  [--modes none,auto,advise]
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
QUIET = ["burst-45", "flat-30", "many-8", "hold-35", "churn-30", "swell-35"]
MODES = ["none", "auto", "advise"]
CHURN_RATE = 100
SWELL_FOR = 54
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
    elif kind == "hold":
        spec.update(load="burst", plateau=n * CAPACITY // 100, hold_for=80, duration=80)
    elif kind == "churn":
        spec.update(load="churn", plateau=n * CAPACITY // 100, rate=CHURN_RATE, duration=80)
    elif kind == "swell":
        spec.update(load="time_wait", rate=n / 100 * CAPACITY / SWELL_FOR, workers=2,
                    stop_at=SWELL_FOR, duration=80)
    elif kind == "many":
        spec.update(load="time_wait", rate=n * 0.30 * CAPACITY / 60, destinations=n,
                    workers=2, duration=80)
    else:
        sys.exit(f"{cell}: unknown load (tw-R, conc-N, burst-P, flat-P, many-N, hold-P, "
                 "churn-P, swell-P)")
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
    none, auto, advise = (r or {} for r in (none, auto, advise))
    if not (none and auto and advise):
        return f"| {cell} | (the three modes are needed for this table) |"
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


def failure_at(run):
    """The first failed connect() of a run, in seconds from the step."""
    if not run:
        return None
    exact = run.get("first_failure_exact")
    return exact if exact is not None else run.get("first_failure")


def seconds(x):
    return "-" if x is None else ("none" if x == "none" else f"{x:.0f} s")


def forecast_row(cell, none, auto, advise):
    """portd's time to exhaustion against the truth (see the docstring)."""
    truth = failure_at(none)
    cols = [cell, seconds(truth)]
    for run in (auto, advise):
        alert = (run or {}).get("first_alert")
        if not run:
            cols += ["-"] * 4
            continue
        if not alert:
            cols += ["never", "-", "-", seconds(run.get("forecast_min"))]
            continue
        said = alert.get("time_to_exhaustion")
        said = None if said is None else float(said)
        left = None if truth is None else truth - alert["t"]
        ratio = "-" if said is None or not left or left <= 0 else f"{said / left:.2f}"
        cols += [f"{alert['t']:.1f} s", "none" if said is None else f"{said:.0f} s",
                 ratio if left is not None else "(no failure)", seconds(run.get("forecast_min"))]
    cols.append(over_the_run(advise, truth))
    own = failure_at(advise)
    if advise and advise.get("first_alert") and own is not None:
        said = advise["first_alert"].get("time_to_exhaustion")
        left = own - advise["first_alert"]["t"]
        cols.append(f"{own:.1f} s: {float(said) / left:.2f}" if said and left > 0 else f"{own:.1f} s")
    else:
        cols.append(seconds(own) if own is not None else "never")
    return "| " + " | ".join(cols) + " |"


def over_the_run(run, truth):
    """The live view's forecast against the truth each second from the
    first alert to 5 s before the failure: min / median / max of the ratio
    of the time it said was left (its value when written, less the time
    since) to the time that was left."""
    alert = (run or {}).get("first_alert")
    if not alert or truth is None:
        return "-"
    ratios = []
    said = [(t, v) for t, v in run.get("forecast", [])]
    s = alert["t"]
    while s < truth - 5:
        last = [(t, v) for t, v in said if t <= s]
        if last and last[-1][1] != "none":
            t0, v = last[-1]
            ratios.append(max(0.0, t0 + v - s) / (truth - s))
        elif last:
            ratios.append(float("inf"))
        s += 1
    if not ratios:
        return "-"
    ratios.sort()
    return " / ".join(f"{x:.2f}" for x in (ratios[0], ratios[len(ratios) // 2], ratios[-1]))


FORECAST_HEADER = """| cell | truth: first failure without portd | auto: first alert | auto: time to exhaustion then (journal) | auto: ratio to the truth | auto: least time to exhaustion (live view) | advise: first alert | advise: time to exhaustion then | advise: ratio to the truth | advise: least time to exhaustion | advise: ratio each second until 5 s before the truth, min / median / max | advise: its own first failure: ratio |
|---|---|---|---|---|---|---|---|---|---|---|---|"""


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
    p.add_argument("--modes", default=",".join(MODES),
                   help="which of none,auto,advise to run (the first table wants all three)")
    p.add_argument("--table-from", metavar="JSON",
                   help="print the table of an earlier run's --json file and exit")
    args = p.parse_args()
    if args.table_from:
        with open(args.table_from) as f:
            saved = json.load(f)
        print(f"commit {saved['commit']}, range {saved['range']}")
        tables(saved["results"])
        return
    if os.geteuid() != 0:
        sys.exit("benches/ramp.py needs root (private namespaces)")
    if not os.access(args.portd, os.X_OK):
        sys.exit(f"{args.portd}: no portd binary (cargo build --release --locked)")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"portd commit {commit}, range {RANGE}, policy {POLICY} (only mode set)",
          file=sys.stderr)
    results = []
    started = time.monotonic()
    cells = args.cells.replace("QUIET", ",".join(QUIET)).split(",")
    for cell in cells:
        runs = {}
        for mode in args.modes.split(","):
            if mode not in MODES:
                sys.exit(f"--modes: {mode}: not one of {','.join(MODES)}")
            t0 = time.monotonic()
            runs[mode] = run_cell(cell, None if mode == "none" else args.portd,
                                  None if mode == "none" else mode, args)
            print(f"{cell} {mode}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
        results.append({"cell": cell, **runs})
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"commit": commit, "range": RANGE, "results": results}, f)
    print(f"commit {commit}; {time.monotonic() - started:.0f} s in all")
    tables(results)


def tables(results):
    print(HEADER)
    for r in results:
        print(row(r["cell"], r.get("none"), r.get("auto"), r.get("advise")))
    print()
    print(FORECAST_HEADER)
    for r in results:
        print(forecast_row(r["cell"], r.get("none"), r.get("auto"), r.get("advise")))


if __name__ == "__main__":
    main()
