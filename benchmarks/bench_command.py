"""``bench [--json] [--plot FILE.png] …``: each path's round trip beside a pure-pyzmq floor
with the same socket types, frame sizes and hops, and the enlightenment experiments.

A command of the benchmarks package, which builds on root (never the reverse): root's CLI
finds it through the ``hvstack.commands`` entry point.  benchmarks.bench (and benchmarks.plot,
to check --plot) are imported only when it runs, so ``--help`` stays quick."""

from __future__ import annotations

import argparse
from pathlib import Path

from root.commands.common import complain

NAME = "bench"
HELP = "round trips of each path against a pure-pyzmq floor"


def plot_file(value: str) -> str:
    """``bench --plot FILE``: checked when the arguments are parsed, so that a missing
    matplotlib (an optional extra) or directory fails before the bench runs, not after."""
    from benchmarks.plot import PlotUnavailable, require_matplotlib

    try:
        require_matplotlib()
    except PlotUnavailable as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not Path(value).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    from benchmarks.plot import plot_formats

    suffix = Path(value).suffix.lstrip(".").lower()
    if suffix not in plot_formats():
        raise argparse.ArgumentTypeError(f"{value}: cannot draw a {'.' + suffix if suffix else 'file without a'} "
                                         f"file type (one of: {', '.join('.' + f for f in plot_formats())})")
    return value


def bounded(kind: type, low: float, high: float | None = None, *, low_open: bool = False):
    """An argparse type: a ``kind`` (int or float) at least ``low`` (more than it, with
    ``low_open``) and at most ``high``; NaN fails every bound."""

    def check(value: str):
        try:
            n = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {value!r}") from None
        ok = (n > low if low_open else n >= low) and (high is None or n <= high)
        if not ok:
            if high is None:
                raise argparse.ArgumentTypeError(f"{n} must be at least {low}")
            raise argparse.ArgumentTypeError(f"{n} must be {'more than' if low_open else 'at least'} {low:g} "
                                             f"and at most {high:g} seconds")
        return n

    return check


positive_int = bounded(int, 1)
positive_seconds = bounded(float, 0, 3600, low_open=True)


def baseline_file(value: str) -> str:
    """``bench --compare FILE``: read and checked before anything is measured."""
    from benchmarks.baseline import load

    try:
        load(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def save_file(value: str) -> str:
    if not Path(value).resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such directory")
    return value


def _ints(value: str, what: str, low: int, high: int, unit: str = "") -> list[int]:
    """A comma-separated list of ``what`` (``count``, ``size``) each ``low``..``high``."""
    try:
        values = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {what}s: {value!r}") from None
    if not values or any(not low <= n <= high for n in values):
        raise argparse.ArgumentTypeError(f"{value}: each {what} must be {low} to {high}{unit}")
    return sorted(set(values))


def scale_rounds(value: str) -> int:
    """``--scale-rounds K``: 1..10."""
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if not 1 <= k <= 10:
        raise argparse.ArgumentTypeError(f"{k} rounds: at least 1 and at most 10")
    return k


def scale_counts(value: str) -> list[int]:
    """``--scale-partitions 1,2,4``: partition counts, 1..32."""
    return _ints(value, "count", 1, 32)


def memory_sizes(value: str) -> list[int]:
    """``--migrate-sizes 16,64``: guest memory sizes in MiB, 4..1024."""
    return _ints(value, "size", 4, 1024, " MiB")


BENCH_PATHS = ("io_port", "cpuid", "hypercall", "interrupt", "interrupt_busy", "apic_timer")


def path_names(value: str) -> list[str]:
    """``--paths interrupt,apic_timer``: which paths a bench's rounds measure."""
    names = sorted({x.strip() for x in value.split(",") if x.strip()})
    unknown = [n for n in names if n not in BENCH_PATHS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{value}: each path must be one of {', '.join(BENCH_PATHS)}")
    return names


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=positive_seconds, default=6.0, help="seconds of guest workloads per path kind")
    p.add_argument("--samples", type=positive_int, default=6000, help="round trips per floor")
    p.add_argument("--rounds", type=positive_int, default=3, help="floor and stack alternate this many times")
    p.add_argument("--paths", type=path_names, metavar="PATH,PATH,…",
                   help="measure only these paths and their floors in the rounds (a focused bench; the disk goes "
                        f"with io_port): {', '.join(BENCH_PATHS)}")
    p.add_argument("--no-experiments", dest="experiments", action="store_false",
                   help="skip the enlightenment experiments (spinlock, EOI, TLB)")
    p.add_argument("--vmbus", action="store_true",
                   help="also the synthetic disk against the emulated one and the host (benchmarks/vmbus.py)")
    p.add_argument("--plot", metavar="FILE.png", type=plot_file,
                   help="draw latency histograms and CDFs (with --scale: exits/s against partitions; "
                        "needs the [plot] extra)")
    p.add_argument("--no-cpu", dest="cpu", action="store_false",
                   help="skip CPU per round trip (stack and floor, per process)")
    p.add_argument("--cpu-window", type=positive_seconds, default=3.0,
                   help="seconds of steady state each path's CPU is measured over, stack and floor alike")
    p.add_argument("--save", metavar="FILE.json", type=save_file, help="keep this run's ratios as a baseline")
    p.add_argument("--compare", metavar="FILE.json", type=baseline_file,
                   help="flag ratios that moved beyond the run-to-run noise since a baseline (exit status 3)")
    p.add_argument("--scale", action="store_true",
                   help="instead: aggregate exits/s, latency, CPU and memory at 1 to 16 partitions beside a floor")
    p.add_argument("--scale-partitions", type=scale_counts, default=[1, 2, 4, 8, 16], metavar="N,N,…",
                   help="the partition counts of --scale (default 1,2,4,8,16)")
    p.add_argument("--scale-rounds", type=scale_rounds, default=3, metavar="K",
                   help="--scale: pairs of windows (stack, floor, taking turns) at each N, 1..10 (default 3); "
                        "the pair of the median ratio is shown, with the range of all")
    p.add_argument("--migrate", action="store_true",
                   help="live migration between two runs (benchmarks/migrate_bench.py): total time, rounds, "
                        "downtime, bytes on the wire and the link's throughput, per guest size and write rate")
    p.add_argument("--migrate-sizes", type=memory_sizes, default=[16, 64, 256], metavar="MIB,MIB,…",
                   help="the guest memory sizes of --migrate in MiB (default 16,64,256)")
    p.add_argument("--service", action="store_true",
                   help="instead: ctl service's blackout over --service-rounds worker handovers "
                        "(benchmarks/service_bench.py): p50 and max of each stage")
    p.add_argument("--service-rounds", type=positive_int, default=10, metavar="N",
                   help="the handovers of --service (default 10)")
    p.add_argument("--startup", action="store_true",
                   help="instead: launch to first banner and RSS per process kind at 1, 4 and 16 partitions")
    p.add_argument("--startup-rounds", type=positive_int, default=1, metavar="K",
                   help="with --startup: K launches at each N (N taken in turn), each figure their median "
                        "and range — one launch's times move by a third with a shared host's load")
    p.add_argument("--instructions", action="store_true",
                   help="instead: instructions per round trip of each process's own code, driven in-process "
                        "under cachegrind — a figure the host's load does not move (needs valgrind; "
                        "benchmarks/instructions.py)")
    p.add_argument("--opcodes", action="store_true",
                   help="instead: bytecodes per round trip of each process's own code by Python function, "
                        "driven in-process as --instructions drives it — exact, whatever the host's load "
                        "(benchmarks/opcodes.py)")
    p.add_argument("--profile", metavar="FILE.prof", type=save_file,
                   help="cProfile the hypervisor's loop under load — the emulated port I/O CPU run, or with "
                        "--scale the largest N — into a pstats file, and print its top functions")
    p.add_argument("--cpu-layers", action="store_true",
                   help="with the CPU per round trip, where each process's goes: the Python interpreter, msgpack, "
                        "ZeroMQ, libc, the kernel (perf samples; benchmarks/cpu_layers.py)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="nothing on standard error while measuring")
    p.add_argument("--real-guests", action="store_true",
                   help="then real x86 guests (benchmarks/real_guest.py): port I/O on unicorn and KVM beside the "
                        "Python guest, the floor and the in-process limit; SeaBIOS to the boot sector")


def run(args) -> int:
    if args.migrate:
        from benchmarks.migrate_bench import run_migrate

        return run_migrate(args)
    if args.service:
        from benchmarks.service_bench import run_service

        return run_service(args)
    if getattr(args, "instructions", False):
        from benchmarks.instructions import run_instructions

        return run_instructions(args)
    if getattr(args, "opcodes", False):
        from benchmarks.opcodes import run_opcodes

        return run_opcodes(args)
    if args.scale or args.startup:
        from benchmarks.scale import run_scale, run_startup

        return run_scale(args) if args.scale else run_startup(args)
    if args.samples < args.rounds:
        complain(NAME, f"--samples {args.samples} is fewer than --rounds {args.rounds}: "
                       f"each round needs at least one round trip of each floor")
        return 2
    if getattr(args, "cpu_layers", False):
        from benchmarks.cpu_layers import missing

        if not args.cpu:
            complain(NAME, "--cpu-layers needs the CPU per round trip: drop --no-cpu")
            return 2
        if (why := missing()) is not None:
            complain(NAME, f"--cpu-layers: {why}")
            return 2
    from benchmarks.bench import run_bench

    code = run_bench(args)
    if code == 0 and args.real_guests:
        from benchmarks.real_guest import measure, print_result
        import json

        result = measure(min(args.duration, 3.0))
        print(json.dumps({"real_guests": result}, indent=2) if args.json else "", flush=True)
        if not args.json:
            print_result(result)
    return code
