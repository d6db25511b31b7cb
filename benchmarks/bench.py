"""``python launch.py bench``: each path's round trip beside its floor, measured in one run.

The floor (benchmarks/floor.py) is a pure-pyzmq relay with the same socket types, payload
sizes and hop counts — 4 hops for emulated port I/O, 2 for the CPUID intercept and the
hypercall — so the ratio is what the stack's own work costs.  The stack is measured on a
one-partition, one-VP topology so nothing else competes for the two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proto.stats import Histogram

import launch
from benchmarks.floor import FloorClient

BENCH_TOPOLOGY = """\
[run]
name = "bench"
duration_s = 4.0
logical_processors = 2

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
# COM1 alone: no timer interrupts in the middle of the round trips being measured.
chipset = "minimal"
workloads = ["portio", "cpuid", "hypercall"]
"""

# Which floor each path is held against.
PATHS = (("io_port", 4, "emulated port I/O"), ("cpuid", 2, "CPUID intercept"), ("hypercall", 2, "hypercall"))
GOAL_IO_RATIO_P50 = 1.5


def _hist(samples: list[int]) -> Histogram:
    h = Histogram()
    for s in samples:
        h.record(s)
    return h


def measure_floor(samples: int) -> dict[int, Histogram]:
    """Round-trip histograms of the 4-hop and the 2-hop floor."""
    with tempfile.TemporaryDirectory(prefix="hvfloor") as d:
        endpoint = f"ipc://{d}/floor.sock"
        env_py = [sys.executable, "-m", "benchmarks.floor"]
        relay = subprocess.Popen([*env_py, "relay", endpoint], cwd=launch.REPO, stdout=subprocess.PIPE,
                                 preexec_fn=launch._die_with_parent)
        echo = None
        try:
            if relay.stdout.readline().strip() != b"READY":
                raise RuntimeError("the floor relay did not start")
            echo = subprocess.Popen([*env_py, "echo", endpoint], cwd=launch.REPO,
                                    preexec_fn=launch._die_with_parent)
            time.sleep(0.2)  # let the echo peer register before the first 4-hop request
            out = {}
            for hops in (4, 2):
                client = FloorClient(endpoint, hops)
                try:
                    out[hops] = _hist(client.measure(samples))
                finally:
                    client.close()
            return out
        finally:
            for p in (echo, relay):
                if p is not None:
                    p.kill()
                    p.wait()


def measure_stack(duration_s: float) -> dict[str, Histogram]:
    topology = launch.load_topology(BENCH_TOPOLOGY, "<bench>")
    out = launch.Output(open("/dev/null", "w"))
    run, reason, code = launch.execute(topology, out, duration_s)
    if code != 0 or not run.final_status:
        raise RuntimeError(f"the bench run failed: {reason}")
    paths = run.final_status["partitions"][0]["paths"]
    return {name: launch.PathStats.from_wire(paths[name]).total for name in paths}


def run_bench(args) -> int:
    floor = measure_floor(args.samples)
    stack = measure_stack(args.duration)
    if getattr(args, "plot", None):
        from benchmarks.plot import plot

        plot(args.plot, stack, floor)
    result = {"unit": "us", "floor_samples": args.samples, "paths": {}}
    rows = []
    for name, hops, label in PATHS:
        h = stack.get(name)
        f = floor[hops]
        if h is None or h.n == 0:
            continue
        entry = {
            "label": label, "hops": hops, "samples": h.n,
            "p50_us": h.percentile(50) / 1000, "p99_us": h.percentile(99) / 1000,
            "floor_p50_us": f.percentile(50) / 1000, "floor_p99_us": f.percentile(99) / 1000,
        }
        entry["ratio_p50"] = round(entry["p50_us"] / entry["floor_p50_us"], 3)
        entry["ratio_p99"] = round(entry["p99_us"] / entry["floor_p99_us"], 3)
        result["paths"][name] = entry
        rows.append([label, str(hops), str(h.n), f"{entry['p50_us']:.1f}", f"{entry['p99_us']:.1f}",
                     f"{entry['floor_p50_us']:.1f}", f"{entry['floor_p99_us']:.1f}",
                     f"{entry['ratio_p50']:.2f}×", f"{entry['ratio_p99']:.2f}×"])
    io = result["paths"].get("io_port")
    result["goal"] = {"io_port_ratio_p50_at_most": GOAL_IO_RATIO_P50,
                      "met": bool(io and io["ratio_p50"] <= GOAL_IO_RATIO_P50)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(launch.table(["path", "hops", "samples", "p50 µs", "p99 µs", "floor p50", "floor p99",
                        "p50 ratio", "p99 ratio"], rows, "lrrrrrrrr"))
    if io:
        print(f"\nemulated I/O p50 is {io['ratio_p50']:.2f}× its floor "
              f"(goal ≤ {GOAL_IO_RATIO_P50}×: {'met' if result['goal']['met'] else 'NOT met'})")
    return 0
