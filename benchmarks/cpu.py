"""CPU per round trip: the CPU time (psutil, user + system) every process of a run spent,
divided by the round trips it made, beside the same figure for the floor's processes.

CPU time is far less noisy than latency on a shared machine — a process waiting for a core
is not charged for it — so this is the figure that holds regressions.  Both are measured
over a window of steady state: the stack's after its guests are going (a partition's boot,
the Python imports of every process, is no round trip), the floor's over its measured round
trips; each process's CPU is read at the start and end of each of :data:`SLICES` slices of
the window, and the cheapest slice is the figure (contention only ever adds CPU time).

The stack runs as ``launch.py run`` (``root.testrun``), so that its processes are found by
the run's manifest and its round trips counted from the hypervisor's status: one topology per
path, its workload making only that path's exits.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.floor import FloorClient, start_floor, stop_floor

# One workload per path, on an idle one-VP topology without a timer (the PIC tick would add
# exits of its own).
PATH_WORKLOADS = {"io_port": ("portio", 4), "cpuid": ("cpuid", 2), "hypercall": ("hypercall", 2)}
TOPOLOGY = """\
[run]
name = "bench-cpu-{workload}"
duration_s = 0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
chipset = "minimal"
workloads = ["{workload}"]
"""
WARMUP_EXITS = 200  # exits of the path seen before the window starts: the guest is going
# The window is cut into this many slices and the cheapest slice is the figure: other load
# on the host only ever adds CPU time (caches, frequency, steal), so the minimum is the
# steadiest estimate of what a round trip costs.
SLICES = 4


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Each live process's user + system CPU seconds so far, by name (a gone one: absent)."""
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            pass
    return out


def process_kind(name: str) -> str:
    """``hypervisor:hv`` → hypervisor, ``worker:bench`` → worker, ``launcher`` → launcher."""
    return name.split(":", 1)[0]


def _path_exits(status: dict, path: str) -> int:
    return sum(vp["exits"].get(path, 0) for p in status["partitions"] for vp in p["vps"])


def run_pids(run) -> dict[str, int]:
    """The run's processes by manifest name, the launcher's and the zygotes' included."""
    man = run.manifest()
    return {"launcher": man["launcher_pid"], **{k: v["pid"] for k, v in man.get("processes", {}).items()},
            **{f"zygote:{k}": v["pid"] for k, v in man.get("zygotes", {}).items()}}


@contextlib.contextmanager
def profiled(stats_file: str | None):
    """Runs started inside run their hypervisor loop under cProfile, its statistics written
    to ``stats_file`` when the hypervisor ends (``HVSTACK_PROFILE_HV``, which root passes to
    the hypervisor alone)."""
    if not stats_file:
        yield
        return
    old = os.environ.get("HVSTACK_PROFILE_HV")
    os.environ["HVSTACK_PROFILE_HV"] = os.path.abspath(stats_file)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HVSTACK_PROFILE_HV", None)
        else:
            os.environ["HVSTACK_PROFILE_HV"] = old


def print_profile(stats_file: str, top: int = 20, stream=None) -> None:
    """The functions the hypervisor's loop spent most time in (their own time)."""
    out = stream or sys.stdout
    print(f"\nthe hypervisor's loop under load, cProfile ({stats_file}; `python -m pstats {stats_file}`):", file=out)
    st = pstats.Stats(stats_file, stream=out)
    st.strip_dirs().sort_stats("tottime").print_stats(top)


def measure_stack_cpu(path: str, window_s: float, timeout_s: float = 60.0, profile: str | None = None) -> dict:
    """CPU per round trip of ``path`` (io_port, cpuid, hypercall) on the stack, by process
    kind; with ``profile``, the hypervisor's loop profiled into that file."""
    from root.testrun import start_run

    workload, _ = PATH_WORKLOADS[path]
    with tempfile.TemporaryDirectory(prefix="hvcpu") as d:
        config = Path(d) / "cpu.toml"
        config.write_text(TOPOLOGY.format(workload=workload))
        run_root = Path(d) / "runs"
        run_root.mkdir(mode=0o700)
        with profiled(profile):
            run = start_run(config, run_root, 0, timeout_s)
        try:
            deadline = time.monotonic() + timeout_s
            while _path_exits(run.stats(), path) < WARMUP_EXITS:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: fewer than {WARMUP_EXITS} exits within {timeout_s:g} s")
                time.sleep(0.05)
            pids = run_pids(run)
            slices = []
            for _ in range(SLICES):
                before, exits0 = cpu_seconds(pids), _path_exits(run.stats(), path)
                time.sleep(window_s / SLICES)
                exits1, after = _path_exits(run.stats(), path), cpu_seconds(pids)
                slices.append(per_round_trip(before, after, exits1 - exits0, window_s / SLICES))
        finally:
            run.stop()
    return cheapest(slices)


def cheapest(slices: list[dict]) -> dict:
    """The slice with the least CPU per round trip (of those that made round trips)."""
    made = [s for s in slices if s["round_trips"] > 0] or slices
    return dict(min(made, key=lambda s: s["cpu_us"]), slices=[s["cpu_us"] for s in slices])


def per_round_trip(before: dict[str, float], after: dict[str, float], round_trips: int, window_s: float) -> dict:
    """µs of CPU per round trip, in all and by process kind; round trips per second."""
    by_kind: dict[str, float] = {}
    for name in after:
        if name in before:
            kind = process_kind(name)
            by_kind[kind] = by_kind.get(kind, 0.0) + after[name] - before[name]
    n = max(1, round_trips)
    return {"round_trips": round_trips, "per_s": round(round_trips / window_s, 1),
            "cpu_us": round(sum(by_kind.values()) / n * 1e6, 1),
            "by_process_us": {k: round(v / n * 1e6, 1) for k, v in sorted(by_kind.items())}}


def measure_floor_cpu(hops: int, round_trips: int) -> dict:
    """CPU per round trip of the floor with ``hops`` hops: relay, echo and client."""
    relay, echoes, endpoint, d = start_floor(["echo"])
    try:
        client = FloorClient(endpoint, hops)
        try:
            client.measure(200, warmup=0)  # every peer connected and warm
            pids = {"relay": relay.pid, "echo": echoes[0].pid}
            slices = []
            n = max(1, round_trips // SLICES)
            for _ in range(SLICES):
                before, c0, t0 = cpu_seconds(pids), time.thread_time(), time.monotonic()
                client.measure(n, warmup=0)
                c1, t1, after = time.thread_time(), time.monotonic(), cpu_seconds(pids)
                before["client"], after["client"] = c0, c1
                slices.append(per_round_trip(before, after, n, t1 - t0))
        finally:
            client.close()
    finally:
        stop_floor(relay, echoes, d)
    return cheapest(slices)


def measure_cpu(window_s: float, floor_round_trips: int, progress=None, profile: str | None = None) -> dict:
    """Every intercept path's CPU per round trip beside its floor's; ``profile``: the
    hypervisor's loop of the emulated port I/O run, profiled into that file."""
    out = {}
    for i, (path, (_, hops)) in enumerate(PATH_WORKLOADS.items()):
        if progress:
            progress(f"CPU per round trip: {path}", i, len(PATH_WORKLOADS))
        stack = measure_stack_cpu(path, window_s, profile=profile if path == "io_port" else None)
        floor = measure_floor_cpu(hops, floor_round_trips)
        out[path] = {"stack": stack, "floor": floor,
                     "ratio": round(stack["cpu_us"] / floor["cpu_us"], 3) if floor["cpu_us"] else None}
    return out


__all__ = ["measure_cpu", "measure_stack_cpu", "measure_floor_cpu", "per_round_trip", "cpu_seconds", "run_pids",
           "PATH_WORKLOADS"]
