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


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


def positive_seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {value!r}") from None
    if not 0 < s <= 3600:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{s} must be more than 0 and at most 3600 seconds")
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=positive_seconds, default=6.0, help="seconds of guest workloads per path kind")
    p.add_argument("--samples", type=positive_int, default=6000, help="round trips per floor")
    p.add_argument("--rounds", type=positive_int, default=3, help="floor and stack alternate this many times")
    p.add_argument("--no-experiments", dest="experiments", action="store_false",
                   help="skip the enlightenment experiments (spinlock, EOI, TLB)")
    p.add_argument("--vmbus", action="store_true",
                   help="also the synthetic disk against the emulated one and the host (benchmarks/vmbus.py)")
    p.add_argument("--plot", metavar="FILE.png", type=plot_file,
                   help="draw latency histograms and CDFs (needs the [plot] extra)")
    p.add_argument("--real-guests", action="store_true",
                   help="then real x86 guests (benchmarks/real_guest.py): port I/O on unicorn and KVM beside the "
                        "Python guest, the floor and the in-process limit; SeaBIOS to the boot sector")


def run(args) -> int:
    if args.samples < args.rounds:
        complain(NAME, f"--samples {args.samples} is fewer than --rounds {args.rounds}: "
                       f"each round needs at least one round trip of each floor")
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
