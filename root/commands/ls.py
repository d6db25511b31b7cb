"""``ls [--all] [--prune]``: the live runs in the runs directory (and, with --all, the ended
ones).  A run whose launcher died without ending it (SIGKILL, a crash) shows as "launcher
died" (it is listed without --all: something of it is left); ``--prune`` removes what such a
run left — processes still running (only those whose command line names the run's
directory and that started after it: a pid alone may have been reused), its cgroups, its
guest memory files — and records in its manifest how it ended."""

from __future__ import annotations

import argparse

from proto.errors import HvstackError
from root import cgroups
from root.procs import kill_leftovers
from root.report import table
from root.rundir import RunDir, checked_runs_root, runs_root

NAME = "ls"
HELP = "list live runs (--prune: clean up runs whose launcher died)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include ended runs")
    p.add_argument("--prune", action="store_true",
                   help="clean up runs whose launcher died: remove their guest memory, mark them ended")


def run(args) -> int:
    root = checked_runs_root()
    runs = sorted((d for d in root.glob("*") if (d / "manifest.json").exists()), key=lambda d: d.stat().st_mtime) \
        if root is not None else []
    rows, pruned = [], []
    for d in runs:
        rd = RunDir(d)
        if args.prune:
            pruned += prune(rd)
        state = rd.state()
        if state not in ("running", "launcher died") and not args.all:
            continue
        man = rd.manifest()
        # (a run of hosts has no partitions of its own: its topology's)
        parts = man.get("partitions") or {p.get("name"): p for p in man.get("config", {}).get("partitions", [])}
        rows.append([rd.name, state, str(man.get("launcher_pid", "")), ", ".join(map(str, parts))])
    for line in pruned:
        print(line)
    if not rows:
        print(f"no {'runs' if args.all else 'live runs'} in {root or runs_root()}")
        return 0
    print(table(["run", "state", "launcher", "partitions"], rows, "llrl"))
    return 0


def prune(rd: RunDir) -> list[str]:
    """Clean up ``rd`` if its launcher died: the lines that say what was done."""
    try:
        man = rd.manifest()
        if not rd.launcher_died(man):
            return []
    except HvstackError:
        return []
    killed = kill_leftovers(rd.path, man)
    groups = cgroups.remove_run(rd.name)
    rd.prune()
    done = ["guest memory removed"]
    if killed:
        done.append(f"{len(killed)} leftover process(es) killed (pid {', '.join(map(str, killed))})")
    if groups:
        done.append(f"{len(groups)} cgroup(s) removed")
    return [f"pruned {rd.name}: its launcher had died; {', '.join(done)}, manifest marked ended"]
