"""``python launch.py bench``: each path beside its floor, measured in one run.

The floor (benchmarks/floor.py) is a pure-pyzmq relay with the same socket types, payload
sizes and hop counts — 4 hops for emulated port I/O, 2 for the CPUID intercept and the
hypercall, 2 one-way hops (worker → hv → VP) for the interrupt paths (to a VP halted in
HLT, and to a VP busy executing guest code, which gets it posted), 1 one-way hop after a
timer's wait for the local APIC timer — so a ratio is what the stack's own work costs.
Beside latency, the CPU time per round trip of the stack's processes and of the floor's
(``benchmarks/cpu.py``), which a shared machine disturbs far less.  Disk throughput is held against the throughput the floor would
give for the same number of emulated round trips per 4 KiB.  Each stack path is measured on
a one-partition, one-VP topology so nothing else competes for the two cores.

Ctrl-C or SIGTERM stops the bench between two measurements (a run that is going on ends as
a run does, every process of it gone): the rounds already complete are reported, marked
partial, or one line says that none was.  The results are printed (or the JSON written)
before anything optional — the plot — so that a plot that fails loses nothing.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time

from benchmarks.cpu import PATH_WORKLOADS, measure_cpu
# (ALL_ENLIGHTENMENTS, experiment and tlb_experiment are imported from here by tests and synic_bench.)
from benchmarks.experiments import ALL_ENLIGHTENMENTS, experiment, run_experiments, tlb_experiment  # noqa: F401
from benchmarks.floor import FloorClient, IrqFloorClient, TimerFloorClient, start_floor, stop_floor
from benchmarks.progress import Progress
from benchmarks.report import print_result
from benchmarks.runs import BenchInterrupted, _interrupt, measure_stack
from benchmarks.window import measure_stack_window
from proto.stats import Histogram, PathStats, merge_paths
from root.commands.common import complain

ROUND_TRIPS = """\
[run]
name = "bench"
duration_s = 4.0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
# COM1 alone: no timer interrupts in the middle of the round trips being measured.
chipset = "minimal"
workloads = ["portio", "cpuid", "hypercall"]
"""

INTERRUPTS = """\
[run]
name = "bench-irq"
duration_s = 3.0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
workloads = ["timer"]
"""

# A VP that is busy executing guest code (RAM reads: preemption points, no exits) while the
# PIC's 100 Hz tick interrupts it: the interrupt is posted to it, not held until it exits.
BUSY_INTERRUPTS = """\
[run]
name = "bench-irq-busy"
duration_s = 3.0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
workloads = ["compute", "timer"]  # a busy VP; "timer": its tick is the PIT's, through the worker
"""

# The local APIC timer at 1 kHz, ended by the VP assist page's "no EOI required": each
# interrupt is the timer firing in the hypervisor's loop → the VP's handler, one hop.
APIC_TIMER = """\
[run]
name = "bench-apic-timer"
duration_s = 3.0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
chipset = "minimal"
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic"]
workloads = ["eoi_assist"]
"""
APIC_TIMER_PERIOD_US = 1000

DISK = """\
[run]
name = "bench-disk"
duration_s = 3.0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
disk = {{ image = "{image}", size_mb = 4 }}
workloads = ["diskbench"]
"""

# Which floor each path is held against.
PATHS = (("io_port", 4, "emulated port I/O"), ("cpuid", 2, "CPUID intercept"), ("hypercall", 2, "hypercall"),
         ("interrupt", "irq", "interrupt: line → handler"),
         ("interrupt_busy", "irqbusy", "interrupt → busy VP (posted)"),
         ("apic_timer", "timer", "APIC timer → handler"))
PATH_NAMES = tuple(name for name, _, _ in PATHS)
HOPS = {4: 4, 2: 2, "irq": 2, "irqbusy": 2, "timer": 1}  # a floor key's hops (the last three one way)
GOAL_IO_RATIO_P50 = 1.5
# Issue 12's goals for the interrupt path (line → handler) against its floor.
GOAL_IRQ_RATIO_P50, GOAL_IRQ_RATIO_P99 = 1.3, 3.0
GOAL_CPU_RATIO = 1.3


def _hist(samples: list[int]) -> Histogram:
    h = Histogram()
    for s in samples:
        h.record(s)
    return h


def measure_floor(samples: int, irq_samples: int, timer_samples: int = 0, keys=(4, 2, "irq", "irqbusy")) -> dict:
    """Histograms of the 4-hop and 2-hop round trips, the one-way interrupt hops to an idle
    and to a computing client and (with ``timer_samples``) the timer's one hop; ``keys``:
    which of the first four."""
    relay, echoes, endpoint, d = start_floor(["echo", "irqecho"])
    try:
        out = {}
        for key, client, n in ((4, lambda: FloorClient(endpoint, 4), samples),
                               (2, lambda: FloorClient(endpoint, 2), samples),
                               ("irq", lambda: IrqFloorClient(endpoint), irq_samples),
                               ("irqbusy", lambda: IrqFloorClient(endpoint, busy=True), irq_samples)):
            if key not in keys:
                continue
            client = client()
            try:
                out[key] = _hist(client.measure(n))
            finally:
                client.close()
    finally:
        stop_floor(relay, echoes, d)
    if timer_samples:
        server, _, endpoint, d = start_floor([], ("timer", str(APIC_TIMER_PERIOD_US)))
        try:
            client = TimerFloorClient(endpoint)
            try:
                out["timer"] = _hist(client.measure(timer_samples))
            finally:
                client.close()
        finally:
            stop_floor(server, [], d)
    return out


def measure_round(samples: int, slice_s: float, only: frozenset = frozenset(PATH_NAMES)) -> tuple[dict, dict, dict]:
    """One round: the floors, then the stack's round trips, interrupts and disk (``only``:
    those paths and their floors; the disk goes with emulated port I/O)."""
    # The timer floor's samples take a period each: a quarter of the slice, at most 1 s.
    timer_samples = max(1, min(1000, int(slice_s * 1e6 / APIC_TIMER_PERIOD_US / 4))) if "apic_timer" in only else 0
    keys = {hops for name, hops, _ in PATHS if name in only}
    floor = measure_floor(samples, max(1, int(slice_s * 100)), timer_samples, keys)
    paths: dict[str, PathStats] = {}
    if only & {"io_port", "cpuid", "hypercall"}:
        merge_paths(paths, {k: v for k, v in measure_stack(ROUND_TRIPS, slice_s).paths.items() if k in only})
    # The interrupt paths over a window of steady state, as their floor (benchmarks/window.py).
    if "interrupt" in only:
        paths["interrupt"] = measure_stack_window(INTERRUPTS, slice_s, "interrupt")["interrupt"]
    if "interrupt_busy" in only:
        paths["interrupt_busy"] = measure_stack_window(BUSY_INTERRUPTS, slice_s, "interrupt")["interrupt"]
    if "apic_timer" in only:
        paths["apic_timer"] = measure_stack_window(APIC_TIMER, slice_s, "apic_timer")["apic_timer"]
    disk = {}
    if "io_port" in only:
        with tempfile.TemporaryDirectory(prefix="hvdisk") as d:
            guest = measure_stack(DISK.format(image=f"{d}/bench.img"), slice_s).guest
        disk = {k: guest.get(k, 0) for k in ("disk_bytes", "disk_exits", "disk_ns", "disk_errors")}
    return floor, paths, disk


def run_bench(args) -> int:
    """Measure, report; on Ctrl-C or SIGTERM report the complete rounds (status 130 / 143)."""
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_bench(args)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _plan(args, rounds: int, slice_s: float) -> list[tuple[str, float]]:
    """The bench's steps and about how long each measures, for the progress line."""
    per_round = 5 * slice_s + 6.0  # five stack runs (and their start-up), the floors
    plan = [(f"round {i + 1}/{rounds}: floors, round trips, interrupts, disk", per_round) for i in range(rounds)]
    if args.cpu:
        plan += [(f"CPU per round trip: {path}", 4 * args.cpu_window + 9.0) for path in PATH_WORKLOADS]
    if args.experiments:
        plan.append(("experiments: spinlock, EOI, TLB", 7 * (min(3.0, args.duration / 2) + 1.5)))
    return plan


def _run_bench(args) -> int:
    # Floor and stack alternate in rounds, so that a machine whose speed drifts (other
    # load, frequency changes) drifts under both alike.
    rounds = max(1, args.rounds)
    floor: dict = {}
    paths: dict[str, PathStats] = {}
    disk: dict[str, int] = {}
    slice_s = args.duration / rounds
    done, interrupted, cpu = 0, None, None
    progress = Progress(_plan(args, rounds, slice_s), enabled=getattr(args, "progress", True))
    started = time.time()
    try:
        for _ in range(rounds):
            progress.step()
            only = getattr(args, "paths", None)
            round_floor, round_paths, round_disk = measure_round(max(1, args.samples // rounds), slice_s,
                                                                 **({"only": frozenset(only)} if only else {}))
            # A round counts whole or not at all, so floor and stack stay alike.
            for key, h in round_floor.items():
                floor.setdefault(key, Histogram()).merge(h)
            merge_paths(paths, round_paths)
            for k, v in round_disk.items():
                disk[k] = disk.get(k, 0) + v
            done += 1
        if args.cpu:
            cpu = measure_cpu(args.cpu_window, lambda *_: progress.step(),
                              **({"profile": args.profile} if getattr(args, "profile", None) else {}),
                              **({"layers": True} if getattr(args, "cpu_layers", False) else {}))
        if args.experiments:
            progress.step()
            experiments = run_experiments(min(3.0, args.duration / 2))
    except BenchInterrupted as e:
        interrupted = e
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the report is written whole
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not done:
            progress.close()
            complain("bench", f"stopped by {e}: no round was complete, nothing to report")
            return 128 + e.signum
    finally:
        progress.close()
    result = {"unit": "us", "floor_samples": args.samples, "rounds": done, "paths": {},
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
              "command": command_line()}
    if interrupted is not None:
        result["partial"] = f"stopped by {interrupted} after {done} of {rounds} round(s)"
    for name, hops, label in PATHS:
        if name not in paths or hops not in floor:
            continue
        h = paths[name].total
        f = floor[hops]
        entry = {
            "label": label, "hops": HOPS[hops], "one_way": hops in ("irq", "irqbusy", "timer"), "samples": h.n,
            "p50_us": h.percentile(50) / 1000, "p99_us": h.percentile(99) / 1000,
            "floor_p50_us": f.percentile(50) / 1000, "floor_p99_us": f.percentile(99) / 1000,
        }
        entry["ratio_p50"] = round(entry["p50_us"] / entry["floor_p50_us"], 3)
        entry["ratio_p99"] = round(entry["p99_us"] / entry["floor_p99_us"], 3)
        result["paths"][name] = entry
    if disk.get("disk_bytes"):
        per_4k = disk["disk_exits"] / (disk["disk_bytes"] / 4096)
        mb_s = disk["disk_bytes"] / (disk["disk_ns"] / 1e9) / 1e6
        # The floor's throughput for the same number of emulated round trips per 4 KiB.
        floor_mb_s = 4096 / (per_4k * floor[4].percentile(50) / 1e9) / 1e6
        result["disk"] = {"bytes": disk["disk_bytes"], "mb_per_s": round(mb_s, 4), "exits_per_4k": round(per_4k, 1),
                          "floor_mb_per_s": round(floor_mb_s, 4), "ratio": round(floor_mb_s / mb_s, 3),
                          "errors": disk.get("disk_errors", 0)}
    if cpu is not None:
        result["cpu"] = cpu
    if args.experiments and interrupted is None:
        result["experiments"] = experiments
    if getattr(args, "vmbus", False) and interrupted is None:
        from benchmarks import vmbus  # issue 10: the synthetic disk, benchmarks/vmbus.py
        result["vmbus"] = vmbus.measure_or_error(max(1, args.samples // rounds))
    result["goal"] = goals(result)
    compared = None
    if getattr(args, "compare", None):
        from benchmarks.baseline import compare

        compared = compare(result, args.compare)
        result["compared"] = compared
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print_result(result)
        if "vmbus" in result:
            from benchmarks import vmbus

            print("\n" + vmbus.report(result["vmbus"]))
    code = 0 if interrupted is None else 128 + interrupted.signum
    if interrupted is not None:
        complain("bench", result["partial"] + (": the results above are of those" if done else ""))
        return code
    if getattr(args, "cpu_layers", False) and cpu is not None and not args.json:
        from benchmarks.cpu_layers import print_layers

        print_layers(cpu)
    if getattr(args, "profile", None) and cpu is not None and not args.json:
        from benchmarks.cpu import print_profile

        try:
            print_profile(args.profile)
        except (OSError, TypeError, ValueError) as e:
            complain("bench", f"--profile {args.profile}: no statistics: {e}")
    if getattr(args, "save", None):
        from benchmarks.baseline import save

        try:
            save(result, args.save)
        except OSError as e:
            complain("bench", f"--save {args.save}: not written: {e}")
            return 1
    if getattr(args, "plot", None):
        from benchmarks.plot import plot

        try:
            plot(args.plot, {k: v.to_wire() for k, v in paths.items()}, floor)
        except (OSError, ValueError, RuntimeError) as e:
            complain("bench", f"--plot {args.plot}: not drawn: {e}")
            return 1
    if compared and compared.get("moved"):
        return 3  # a ratio moved beyond the noise: a regression (or an improvement) to look at
    return code


def command_line() -> str:
    """How this bench was started, for the record (as typed, when it came from launch.py)."""
    if sys.argv and sys.argv[0].endswith("launch.py"):
        return " ".join(["python", "launch.py", *sys.argv[1:]])
    return "python launch.py bench (in-process)"


def goals(result: dict) -> dict:
    """Each goal of the bench with the figure it is held by and whether it is met."""
    out = {}
    io = result["paths"].get("io_port")
    out["io_port_ratio_p50_at_most"] = GOAL_IO_RATIO_P50
    out["met"] = bool(io and io["ratio_p50"] <= GOAL_IO_RATIO_P50)
    irq = result["paths"].get("interrupt")
    if irq:
        out["interrupt"] = {"p50_at_most": GOAL_IRQ_RATIO_P50, "p99_at_most": GOAL_IRQ_RATIO_P99,
                            "met": irq["ratio_p50"] <= GOAL_IRQ_RATIO_P50 and irq["ratio_p99"] <= GOAL_IRQ_RATIO_P99}
    if result.get("cpu"):
        out["cpu"] = {"ratio_at_most": GOAL_CPU_RATIO,
                      "met": all(v["ratio"] is not None and v["ratio"] <= GOAL_CPU_RATIO for v in result["cpu"].values())}
    return out

