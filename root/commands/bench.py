"""``bench [--json] [--plot FILE.png] …``: each path's round trip beside a pure-pyzmq floor
with the same socket types, frame sizes and hops, and the enlightenment experiments.

The measuring lives in the benchmarks package, which imports root (never the reverse): this
command imports benchmarks.bench (and benchmarks.plot, to check --plot) only when it runs,
inside its functions, so root itself never depends on benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    return value


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of guest workloads per path kind")
    p.add_argument("--samples", type=int, default=6000, help="round trips per floor")
    p.add_argument("--rounds", type=int, default=3, help="floor and stack alternate this many times")
    p.add_argument("--no-experiments", dest="experiments", action="store_false",
                   help="skip the enlightenment experiments (spinlock, EOI, TLB)")
    p.add_argument("--plot", metavar="FILE.png", type=plot_file,
                   help="draw latency histograms and CDFs (needs the [plot] extra)")


def run(args) -> int:
    from benchmarks.bench import run_bench

    return run_bench(args)
