"""``python launch.py bench``: each path beside its floor, measured in one run.

The floor (benchmarks/floor.py) is a pure-pyzmq relay with the same socket types, payload
sizes and hop counts — 4 hops for emulated port I/O, 2 for the CPUID intercept and the
hypercall, 2 one-way hops (worker → hv → VP) for the interrupt path — so a ratio is what
the stack's own work costs.  Disk throughput is held against the throughput the floor would
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
import subprocess
import sys
import tempfile
import time

from benchmarks.floor import FloorClient, IrqFloorClient
from proto.errors import HvstackError
from proto.stats import Histogram, PathStats
from proto.status import HypervisorStatus, PartitionStatus
from root import REPO
from root.procs import die_with_parent
from root.commands.common import complain
from root.report import Output, table
from root.run import execute
from root.topology import load_topology

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

EXPERIMENT = """\
[run]
name = "{name}"
duration_s = 3.0
logical_processors = 2

[[partition]]
name = "bench"
vps = {vps}
memory_mb = 4
chipset = "minimal"
enlightenments = {enlightenments}
spin_retry = {spin_retry}
workloads = ["{workload}"]
"""
ALL_ENLIGHTENMENTS = '["hypercall", "vp_index", "reference_counter", "apic"]'

# Two partitions on one LP: a reader going round its mapped pages, and a flusher switching
# address spaces and flushing — by hypercall (only its own TLB entries) or by MOV CR3 and
# INVLPG (the whole LP's, the reader's included).
TLB = """\
[run]
name = "{name}"
duration_s = 3.0
logical_processors = 1

[[partition]]
name = "reader"
vps = 1
memory_mb = 4
chipset = "minimal"
workloads = ["tlb_reader"]

[[partition]]
name = "flusher"
vps = 1
memory_mb = 4
chipset = "minimal"
enlightenments = {enlightenments}
recommendations = {recommendations}
workloads = ["tlb_flusher"]
"""
TLB_MODES = {"hypercall": ('["hypercall"]', '["address_space_switch_hypercall", "local_flush_hypercall"]'),
             "mov_cr3": ("[]", "[]")}


def tlb_experiment(mode: str, duration_s: float) -> dict:
    """The reader's TLB misses and loads with the flusher in ``mode`` (hypercall / mov_cr3)."""
    enl, rec = TLB_MODES[mode]
    status = measure_run(TLB.format(name=f"bench-tlb-{mode}", enlightenments=enl, recommendations=rec),
                         duration_s)
    reader, flusher = status.partitions[0].guest, status.partitions[1].guest
    reads = max(1, reader.get("tlb_reads", 0))
    return {"reads": reader.get("tlb_reads", 0),
            "misses_per_1000": round(1000 * reader.get("tlb_misses", 0) / reads, 2),
            "reads_per_s": round(reader.get("tlb_reads", 0) / duration_s, 1),
            "reader_misses": reader.get("tlb_misses", 0),
            "flusher_switches": flusher.get("tlb_switches", 0),
            "flushes": status.tlb.lps[0].flushes,
            "flusher_p50_us": _p50s(status.partitions[1].paths)}


def _p50s(paths: dict[str, PathStats]) -> dict[str, float]:
    """Each path's round-trip p50 in µs."""
    return {name: round(st.total.percentile(50) / 1000, 1) for name, st in paths.items()}


def experiment(name: str, workload: str, duration_s: float, vps: int = 1, enlightenments: str = "[]",
               spin_retry: str = "0xFFFFFFFF") -> PartitionStatus:
    text = EXPERIMENT.format(name=name, vps=vps, enlightenments=enlightenments, spin_retry=spin_retry,
                             workload=workload)
    return measure_stack(text, duration_s)


def run_experiments(duration_s: float) -> dict:
    """Each enlightenment on and off, side by side (issue: the microkernel's experiments)."""
    out = {}
    spin = {}
    for label, enl, retry in (("on", ALL_ENLIGHTENMENTS, "0x400"), ("off", "[]", "0xFFFFFFFF")):
        p = experiment(f"bench-spin-{label}", "spinlock", duration_s, 4, enl, retry)
        g = p.guest
        run_s = sum(vp.sched.run_s for vp in p.vps)
        spin[label] = {"acquisitions_per_s": round(g.get("acquisitions", 0) / duration_s, 1),
                       "spin_s": round(g.get("spin_ns", 0) / 1e9, 3), "lp_s": round(run_s, 3),
                       "notifications": g.get("spin_notifies", 0)}
    out["spinlock"] = spin
    eoi = {}
    for mode in ("mmio", "msr", "assist"):
        p = experiment(f"bench-eoi-{mode}", f"eoi_{mode}", duration_s, 1, ALL_ENLIGHTENMENTS)
        vp = p.vps[0]
        ticks = max(1, p.guest.get("apic_ticks", 0))
        handler_exits = p.guest.get("vector_0xef_exits", 0)
        timer = p.paths["apic_timer"].total if "apic_timer" in p.paths else None
        eoi_path = {"mmio": "apic", "msr": "msr"}.get(mode)
        eoi_rt = p.paths[eoi_path].total if eoi_path in p.paths else None
        eoi[mode] = {"p50_us": _p50s(p.paths), "interrupts": ticks,
                     "exits_per_interrupt": round((handler_exits + vp.exits["halt"]) / ticks, 2),
                     "eoi_exits_per_interrupt": round(handler_exits / ticks, 2),
                     "eoi_round_trip_p50_us": round(eoi_rt.percentile(50) / 1000, 1) if eoi_rt else 0.0,
                     "timer_to_handler_p50_us": round(timer.percentile(50) / 1000, 1) if timer else None}
    out["eoi"] = eoi
    out["tlb"] = {mode: tlb_experiment(mode, duration_s) for mode in ("hypercall", "mov_cr3")}
    # The round trip of each enlightened operation beside the emulated one it replaces.
    hc, cr3 = out["tlb"]["hypercall"]["flusher_p50_us"], out["tlb"]["mov_cr3"]["flusher_p50_us"]
    out["per_operation"] = {
        "EOI": {"enlightened": ("HV_X64_MSR_EOI", eoi["msr"]["p50_us"].get("msr")),
                "emulated": ("APIC page MMIO write", eoi["mmio"]["p50_us"].get("apic"))},
        "EOI (assist page)": {"enlightened": ("no exit", 0.0),
                              "emulated": ("APIC page MMIO write", eoi["mmio"]["p50_us"].get("apic"))},
        "address-space switch + flush": {"enlightened": ("HvCallSwitchVirtualAddressSpace / Flush*", hc.get("hypercall")),
                                         "emulated": ("MOV CR3 intercept", cr3.get("cr3"))},
        "flush one page": {"enlightened": ("HvCallFlushVirtualAddressList", hc.get("hypercall")),
                           "emulated": ("INVLPG intercept", cr3.get("invlpg"))},
    }
    return out


# Which floor each path is held against.
PATHS = (("io_port", 4, "emulated port I/O"), ("cpuid", 2, "CPUID intercept"), ("hypercall", 2, "hypercall"),
         ("interrupt", "irq", "interrupt: line → handler"))
GOAL_IO_RATIO_P50 = 1.5


def _hist(samples: list[int]) -> Histogram:
    h = Histogram()
    for s in samples:
        h.record(s)
    return h


class BenchInterrupted(Exception):
    """Ctrl-C or SIGTERM: stop measuring, report what is complete."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise BenchInterrupted(signum)


def measure_floor(samples: int, irq_samples: int) -> dict:
    """Histograms of the 4-hop and 2-hop round trips and the one-way interrupt hops."""
    with tempfile.TemporaryDirectory(prefix="hvfloor") as d:
        endpoint = f"ipc://{d}/floor.sock"
        cmd = [sys.executable, "-m", "benchmarks.floor"]
        # In sessions of their own, as the run's processes are: a terminal's Ctrl-C reaches
        # the bench alone, which ends them (no traceback from a relay).
        relay = subprocess.Popen([*cmd, "relay", endpoint], cwd=REPO, stdout=subprocess.PIPE,
                                 preexec_fn=die_with_parent, start_new_session=True)
        echoes = []
        try:
            if relay.stdout.readline().strip() != b"READY":
                raise RuntimeError("the floor relay did not start")
            echoes = [subprocess.Popen([*cmd, role, endpoint], cwd=REPO, preexec_fn=die_with_parent,
                                       start_new_session=True)
                      for role in ("echo", "irqecho")]
            time.sleep(0.3)  # let the echo peers register before the first request
            out = {}
            for key, client, n in ((4, FloorClient(endpoint, 4), samples), (2, FloorClient(endpoint, 2), samples),
                                   ("irq", IrqFloorClient(endpoint), irq_samples)):
                try:
                    out[key] = _hist(client.measure(n))
                finally:
                    client.close()
            return out
        finally:
            for p in (*echoes, relay):
                p.kill()
                p.wait()


def measure_run(topology_text: str, duration_s: float) -> HypervisorStatus:
    """The hypervisor's final status of a bench topology's run."""
    topology = load_topology(topology_text, "<bench>")
    with open("/dev/null", "w") as devnull:
        run, reason, code = execute(topology, Output(devnull), duration_s)
    # execute() took SIGINT and SIGTERM for the run's life and ended the run on one.
    for sig in (signal.SIGINT, signal.SIGTERM):
        if reason.startswith(sig.name):
            raise BenchInterrupted(sig)
    if code != 0 or not run.final_status:
        raise HvstackError(f"the bench run {topology.name} failed: {reason}")
    return run.final_status


def measure_stack(topology_text: str, duration_s: float) -> PartitionStatus:
    """The final status of the one partition of a bench topology."""
    return measure_run(topology_text, duration_s).partitions[0]


def measure_round(samples: int, slice_s: float) -> tuple[dict, dict, dict]:
    """One round: the floors, then the stack's round trips, interrupts and disk."""
    floor = measure_floor(samples, max(1, int(slice_s * 100)))
    paths: dict[str, PathStats] = {}
    for got in (measure_stack(ROUND_TRIPS, slice_s).paths, measure_stack(INTERRUPTS, slice_s).paths):
        for name, st in got.items():
            paths.setdefault(name, PathStats()).merge(st)
    with tempfile.TemporaryDirectory(prefix="hvdisk") as d:
        guest = measure_stack(DISK.format(image=f"{d}/bench.img"), slice_s).guest
    return floor, paths, {k: guest.get(k, 0) for k in ("disk_bytes", "disk_exits", "disk_ns", "disk_errors")}


def run_bench(args) -> int:
    """Measure, report; on Ctrl-C or SIGTERM report the complete rounds (status 130 / 143)."""
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_bench(args)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_bench(args) -> int:
    # Floor and stack alternate in rounds, so that a machine whose speed drifts (other
    # load, frequency changes) drifts under both alike.
    rounds = max(1, args.rounds)
    floor: dict = {}
    paths: dict[str, PathStats] = {}
    disk: dict[str, int] = {}
    slice_s = args.duration / rounds
    done, interrupted = 0, None
    try:
        for _ in range(rounds):
            round_floor, round_paths, round_disk = measure_round(max(1, args.samples // rounds), slice_s)
            # A round counts whole or not at all, so floor and stack stay alike.
            for key, h in round_floor.items():
                floor.setdefault(key, Histogram()).merge(h)
            for name, st in round_paths.items():
                paths.setdefault(name, PathStats()).merge(st)
            for k, v in round_disk.items():
                disk[k] = disk.get(k, 0) + v
            done += 1
        if args.experiments:
            experiments = run_experiments(min(3.0, args.duration / 2))
    except BenchInterrupted as e:
        interrupted = e
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the report is written whole
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not done:
            complain("bench", f"stopped by {e}: no round was complete, nothing to report")
            return 128 + e.signum
    result = {"unit": "us", "floor_samples": args.samples, "rounds": done, "paths": {}}
    if interrupted is not None:
        result["partial"] = f"stopped by {interrupted} after {done} of {rounds} round(s)"
    rows = []
    for name, hops, label in PATHS:
        if name not in paths:
            continue
        h = paths[name].total
        f = floor[hops]
        entry = {
            "label": label, "hops": 2 if hops == "irq" else hops, "one_way": hops == "irq", "samples": h.n,
            "p50_us": h.percentile(50) / 1000, "p99_us": h.percentile(99) / 1000,
            "floor_p50_us": f.percentile(50) / 1000, "floor_p99_us": f.percentile(99) / 1000,
        }
        entry["ratio_p50"] = round(entry["p50_us"] / entry["floor_p50_us"], 3)
        entry["ratio_p99"] = round(entry["p99_us"] / entry["floor_p99_us"], 3)
        result["paths"][name] = entry
        rows.append([label, f"{entry['hops']}{' (one way)' if entry['one_way'] else ''}", str(h.n),
                     f"{entry['p50_us']:.1f}", f"{entry['p99_us']:.1f}", f"{entry['floor_p50_us']:.1f}",
                     f"{entry['floor_p99_us']:.1f}", f"{entry['ratio_p50']:.2f}×", f"{entry['ratio_p99']:.2f}×"])
    if disk.get("disk_bytes"):
        per_4k = disk["disk_exits"] / (disk["disk_bytes"] / 4096)
        mb_s = disk["disk_bytes"] / (disk["disk_ns"] / 1e9) / 1e6
        # The floor's throughput for the same number of emulated round trips per 4 KiB.
        floor_mb_s = 4096 / (per_4k * floor[4].percentile(50) / 1e9) / 1e6
        result["disk"] = {"bytes": disk["disk_bytes"], "mb_per_s": round(mb_s, 4), "exits_per_4k": round(per_4k, 1),
                          "floor_mb_per_s": round(floor_mb_s, 4), "ratio": round(floor_mb_s / mb_s, 3),
                          "errors": disk.get("disk_errors", 0)}
    if args.experiments and interrupted is None:
        result["experiments"] = experiments
    if getattr(args, "vmbus", False) and interrupted is None:
        from benchmarks import vmbus  # issue 10: the synthetic disk, benchmarks/vmbus.py
        result["vmbus"] = vmbus.measure_or_error(max(1, args.samples // rounds))
    io = result["paths"].get("io_port")
    result["goal"] = {"io_port_ratio_p50_at_most": GOAL_IO_RATIO_P50,
                      "met": bool(io and io["ratio_p50"] <= GOAL_IO_RATIO_P50)}
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print_result(result, rows)
        if "vmbus" in result:
            from benchmarks import vmbus

            print("\n" + vmbus.report(result["vmbus"]))
    code = 0 if interrupted is None else 128 + interrupted.signum
    if interrupted is not None:
        complain("bench", result["partial"] + (": the results above are of those" if done else ""))
    elif getattr(args, "plot", None):
        from benchmarks.plot import plot

        try:
            plot(args.plot, {k: v.to_wire() for k, v in paths.items()}, floor)
        except (OSError, ValueError, RuntimeError) as e:
            complain("bench", f"--plot {args.plot}: not drawn: {e}")
            return 1
    return code


def print_result(result: dict, rows: list[list[str]]) -> None:
    """The tables of a bench's result."""
    io = result["paths"].get("io_port")
    print(table(["path", "hops", "samples", "p50 µs", "p99 µs", "floor p50", "floor p99",
                        "p50 ratio", "p99 ratio"], rows, "llrrrrrrr"))
    if "disk" in result:
        dk = result["disk"]
        print(f"\nemulated ATA disk (PIO, 32-bit data port): {dk['mb_per_s'] * 1000:.1f} KB/s, "
              f"{dk['exits_per_4k']:.0f} exits per 4 KiB; the floor for as many round trips: "
              f"{dk['floor_mb_per_s'] * 1000:.1f} KB/s ({dk['ratio']:.2f}×)")
    if "experiments" in result:
        ex = result["experiments"]
        print("\nspinlock, 4 VPs on 2 LPs (long-spin-wait notifications on / off):")
        print(table(["", "acquisitions/s", "s spinning", "s on LPs", "notifications"],
                           [[k, f"{v['acquisitions_per_s']:.0f}", f"{v['spin_s']:.2f}", f"{v['lp_s']:.2f}",
                             str(v["notifications"])] for k, v in ex["spinlock"].items()]))
        print("\nEOI of a 1 kHz local APIC timer (MMIO to the APIC page / HV_X64_MSR_EOI / VP assist page):")
        print(table(["", "interrupts", "exits per interrupt", "EOI exits", "EOI round trip p50 µs",
                            "timer → handler p50 µs"],
                           [[k, str(v["interrupts"]), f"{v['exits_per_interrupt']:.2f}", f"{v['eoi_exits_per_interrupt']:.2f}",
                             f"{v['eoi_round_trip_p50_us']:.1f}", f"{v['timer_to_handler_p50_us']}"]
                            for k, v in ex["eoi"].items()]))
        print("\nTLB, a reader and a flusher sharing one LP (flushes by hypercall / by MOV CR3 and INVLPG):")
        print(table(["flusher", "reader misses per 1000 loads", "reader loads/s", "flusher switches"],
                           [[k, f"{v['misses_per_1000']:.2f}", f"{v['reads_per_s']:.0f}", str(v["flusher_switches"])]
                            for k, v in ex["tlb"].items()]))
    if "experiments" in result and "per_operation" in result["experiments"]:
        print("\nround trip per operation, enlightened against emulated (p50 µs):")
        rows = [[op, f"{e[0]}", f"{e[1]}", f"{m_[0]}", f"{m_[1]}"]
                for op, v in result["experiments"]["per_operation"].items()
                for e, m_ in [(v["enlightened"], v["emulated"])]]
        print(table(["operation", "enlightened", "µs", "emulated", "µs"], rows, "llrlr"))
    if io:
        print(f"\nemulated I/O p50 is {io['ratio_p50']:.2f}× its floor "
              f"(goal ≤ {GOAL_IO_RATIO_P50}×: {'met' if result['goal']['met'] else 'NOT met'})")
    sys.stdout.flush()
