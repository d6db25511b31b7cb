"""``run [CONFIG] [--duration S]``: run a topology (default: configs/default.toml) until its
guests finish their workloads, Ctrl-C or `stop`; print the consoles, then the tables."""

from __future__ import annotations

import argparse
import sys

from proto.errors import ConfigError, HvstackError
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
    p.add_argument("--restore", action="append", default=[], metavar="PARTITION=FILE",
                   help="start PARTITION from a record `ctl RUN save` wrote (repeatable)")
    p.add_argument("--incoming", action="append", default=[], metavar="PARTITION",
                   help="PARTITION comes by live migration (`migrate`): it is created, and started only once "
                        "its state has come to the endpoint in the manifest's incoming (repeatable)")
    p.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                   help="with --incoming: the address its CURVE endpoint listens on (default 127.0.0.1; "
                        "another host's side of a link, e.g. a veth between network namespaces)")
    p.add_argument("--host", metavar="NAME",
                   help="of a topology with [[host]] sections, run host NAME alone (what the run of the whole "
                        "starts in each host's network namespace; root/cluster.py)")


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
    arrivable, room_pages = {}, 0
    if topology.hosts or args.host:
        from root import cluster

        if args.restore or (args.incoming and not args.host):
            print(f"{PROG} run: --restore and --incoming are not for a topology with [[host]] sections "
                  "(migrate RUN PARTITION --to HOST moves a partition between its hosts)", file=sys.stderr)
            return 2
        if not args.host:  # the whole: one run per host, each in its network namespace
            checked_runs_root(create=True)
            whole, reason, code = cluster.execute(topology, Output(), args.duration)
            print(f"run {whole.run.name} ended: {reason}" if whole is not None else f"run failed: {reason}")
            return code
        if args.host not in {h["name"] for h in topology.hosts or ()}:
            print(f"{PROG} run: --host {args.host}: the topology has no such [[host]]", file=sys.stderr)
            return 2
        topology, arrivable, room_pages = cluster.host_topology(topology, args.host)
    try:
        restores = _restores(topology, args.restore)
    except HvstackError as e:  # a record that does not fit: refused before anything starts
        print(f"{PROG} run: {e}", file=sys.stderr)
        return 2
    names = {pc.name for pc in topology.partitions}
    for name in args.incoming:
        if name not in names or name in dict(s.partition("=")[::2] for s in args.restore):
            print(f"{PROG} run: --incoming {name}: the topology has no such partition, or it is restored",
                  file=sys.stderr)
            return 2
    checked_runs_root(create=True)  # a runs root that is not ours: one line and status 2, nothing started
    out = Output()
    the_run, reason, code = execute(topology, out, args.duration, restores, args.incoming, args.listen,
                                    arrivable, room_pages)
    out.report(the_run, the_run.final_status)
    out.print()
    out.print(f"run {the_run.run.name} ended: {reason}" if hasattr(the_run, "run") else f"run failed: {reason}")
    return code


def _restores(topology, specs: list[str]) -> dict:
    """``--restore PARTITION=FILE``s: each record read, checked whole and against the
    partition's shape in this topology (root/partition_save.py)."""
    from pathlib import Path

    from root.partition_save import read_for

    records = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        pc = next((p for p in topology.partitions if p.name == name), None)
        if not sep or not path:
            raise HvstackError(f"--restore {spec}: expected PARTITION=FILE")
        if pc is None:
            raise HvstackError(f"--restore {spec}: the topology has no partition {name!r}")
        base = topology.base_dir or Path.cwd()
        # The devices as the worker will have them (paths do not matter to the shape; a disk
        # image the topology names is compared with the saved one).
        records[name] = read_for(pc, path, pc.worker_devices(Path("/nonexistent-run"), base), base_dir=base)
    return records
