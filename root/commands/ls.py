"""``ls [--all]``: the live runs in the runs directory (and, with --all, the ended ones)."""

from __future__ import annotations

import argparse

from root.report import table
from root.rundir import RunDir, runs_root

NAME = "ls"
HELP = "list live runs"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include ended runs")


def run(args) -> int:
    root = runs_root()
    runs = sorted((d for d in root.glob("*") if (d / "manifest.json").exists()), key=lambda d: d.stat().st_mtime) \
        if root.exists() else []
    rows = []
    for d in runs:
        rd = RunDir(d)
        live = rd.is_live()
        if not live and not args.all:
            continue
        man = rd.manifest()
        rows.append([rd.name, "running" if live else man.get("ended", {}).get("reason", man.get("state", "?")),
                     str(man.get("launcher_pid", "")), ", ".join(man.get("partitions", {}))])
    if not rows:
        print(f"no {'runs' if args.all else 'live runs'} in {root}")
        return 0
    print(table(["run", "state", "launcher", "partitions"], rows, "llrl"))
    return 0
