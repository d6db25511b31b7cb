"""Posted interrupts to a busy VP, through its descriptor and by message, alternating.

``python -m benchmarks.posted_bench [--rounds 3] [--window 4]`` runs the bench's busy-VP
topology (``benchmarks.bench.BUSY_INTERRUPTS``: one VP computing, the PIC's 100 Hz tick
posted to it) with the posted-interrupt descriptor on and off
(``HVSTACK_POSTED_DESCRIPTOR``, hypervisor/posted.py), alternating so that a host whose
load drifts drifts under both.  For each run, over a window of steady state (after
:data:`benchmarks.window.WARMUP` interrupts, as ``bench`` reads the path): the interrupt
path's p50 and p99 (line → handler), and the CPU every process of the run spent per second
and per interrupt, by process kind (``benchmarks.cpu``).  The busy VP computes the whole
time, so its partition's CPU is ~a core either way; the hypervisor's CPU per interrupt is
where a message and a descriptor differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.bench import BUSY_INTERRUPTS
from benchmarks.cpu import cpu_seconds, process_kind, run_pids
from benchmarks.window import path_since, paths_of, warmed_up
from hypervisor.posted import ENV


def thread_sched(pid: int) -> dict[int, tuple[str, int, int, int]]:
    """Each thread of ``pid``: (its name, ns on a CPU, ns waiting in the run queue, times it
    was scheduled in) from /proc/PID/task/TID/schedstat; {} where /proc does not say."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, slices = (int(x) for x in f.read().split()[:3])
        except (OSError, ValueError):
            continue
        out[int(tid)] = (comm, run_ns, wait_ns, slices)
    return out


def threads_since(before: dict, after: dict, window_s: float) -> list[dict]:
    """Per thread over the window: ms on a CPU and ms in the run queue per second, and
    times scheduled in per second (its wake-ups, for a thread that sleeps)."""
    rows = []
    for tid, (comm, run, wait, slices) in sorted(after.items()):
        if tid in before:
            _, run0, wait0, slices0 = before[tid]
            rows.append({"thread": comm, "run_ms_per_s": round((run - run0) / 1e6 / window_s, 1),
                         "wait_ms_per_s": round((wait - wait0) / 1e6 / window_s, 1),
                         "scheduled_per_s": round((slices - slices0) / window_s, 1)})
    return rows


def measure(descriptor: bool, window_s: float, timeout_s: float = 60.0) -> dict:
    """One run of the busy-VP topology with the descriptor on or off."""
    old = os.environ.get(ENV)
    os.environ[ENV] = "1" if descriptor else "0"
    try:
        topology = BUSY_INTERRUPTS.replace("duration_s = 3.0", "duration_s = 0")
        with warmed_up(topology, "interrupt", timeout_s=timeout_s) as (run, before):
            pids = run_pids(run)
            partition = next(pid for name, pid in pids.items() if process_kind(name) == "partition")
            cpu0, sched0 = cpu_seconds(pids), thread_sched(partition)
            time.sleep(window_s)
            cpu1, sched1 = cpu_seconds(pids), thread_sched(partition)
            status = run.stats()
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
    path = path_since(before["interrupt"], paths_of(status)["interrupt"])
    h = path.total
    by_kind: dict[str, float] = {}
    for name, t in cpu1.items():
        if name in cpu0:
            by_kind[process_kind(name)] = by_kind.get(process_kind(name), 0.0) + t - cpu0[name]
    n = max(1, h.n)
    return {"descriptor": descriptor, "interrupts": h.n, "p50_us": round(h.percentile(50) / 1000, 1),
            "p99_us": round(h.percentile(99) / 1000, 1),
            # Between consecutive stamps: device raise → worker send → hv in → hv inject → handler.
            "stages_p50_us": [round(st.percentile(50) / 1000, 1) for st in path.stages],
            "cpu_ms_per_s": {k: round(v / window_s * 1000, 1) for k, v in sorted(by_kind.items())},
            "cpu_us_per_interrupt": {k: round(v / n * 1e6, 1) for k, v in sorted(by_kind.items())},
            "partition_threads": threads_since(sched0, sched1, window_s),
            "posted_descriptor": status["counters"].get("posted_descriptor", 0),
            "posted_interrupts": status["counters"].get("posted_interrupts", 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.posted_bench")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs (descriptor on, off), alternating")
    ap.add_argument("--window", type=float, default=4.0, help="seconds of steady state per run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    for i in range(args.rounds):
        # Which goes first alternates too.
        for descriptor in ((True, False) if i % 2 == 0 else (False, True)):
            r = measure(descriptor, args.window)
            r["utc"] = time.strftime("%H:%M:%S", time.gmtime())
            r["load"] = os.getloadavg()[0]
            results.append(r)
            if not args.json:
                print(f"{r['utc']} load {r['load']:.1f} descriptor {'on ' if descriptor else 'off'}: "
                      f"{r['interrupts']} interrupts, p50 {r['p50_us']:.0f} µs, p99 {r['p99_us']:.0f} µs; "
                      f"CPU ms/s {r['cpu_ms_per_s']}; µs per interrupt: hypervisor "
                      f"{r['cpu_us_per_interrupt'].get('hypervisor', 0):.0f}; stages p50 µs {r['stages_p50_us']}",
                      flush=True)
                for t in r["partition_threads"]:
                    print(f"    partition thread {t['thread']}: on a CPU {t['run_ms_per_s']} ms/s, waiting for one "
                          f"{t['wait_ms_per_s']} ms/s, scheduled in {t['scheduled_per_s']}/s", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
