"""``run [CONFIG] [--duration S]``: run a topology (default: configs/default.toml) until its
guests finish their workloads, Ctrl-C or `stop`; print the consoles, then the tables."""

from __future__ import annotations

import argparse
import sys

from proto.errors import ConfigError
from root.commands.common import PROG
from root.report import Output
from root.run import execute
from root.rundir import checked_runs_root
from root.topology import default_topology, read_topology

NAME = "run"
MAX_DURATION_S = 86400.0  # a topology's duration_s has the same bound
HELP = "run a topology file (default: configs/default.toml)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?")
    p.add_argument("--duration", type=float, help="seconds of workloads (0: until stopped)")


def run(args) -> int:
    d = args.duration
    if d is not None and not 0 <= d <= MAX_DURATION_S:  # NaN fails this too
        print(f"{PROG} run: --duration {d} must be 0 (until stopped) or 0 < S <= {MAX_DURATION_S:.0f} seconds",
              file=sys.stderr)
        return 2
    try:
        topology = read_topology(args.config) if args.config else default_topology()
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return ConfigError.exit_code
    checked_runs_root(create=True)  # a runs root that is not ours: one line and status 2, nothing started
    out = Output()
    the_run, reason, code = execute(topology, out, args.duration)
    out.report(the_run, the_run.final_status)
    out.print()
    out.print(f"run {the_run.run.name} ended: {reason}" if hasattr(the_run, "run") else f"run failed: {reason}")
    return code
