"""``stop RUN [--timeout S]``: end a live run cleanly (SIGTERM to its launcher, which ends
every process of the run) and wait until its manifest says it has ended."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from root.commands.common import PROG
from root.rundir import find_run

NAME = "stop"
HELP = "end a live run cleanly"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--timeout", type=float, default=15.0)


def run(args) -> int:
    run = find_run(args.run)
    man = run.manifest()
    if not run.is_live():
        print(f"run {run.name} is not running ({man.get('ended', {}).get('reason', 'launcher gone')})")
        return 1
    (run.path / "stop-requested").write_text(f"{PROG} stop (pid {os.getpid()})")
    os.kill(man["launcher_pid"], signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        man = run.manifest()
        if man.get("state") == "ended":
            print(f"run {run.name} ended: {man['ended']['reason']}")
            return 0
        time.sleep(0.1)
    print(f"run {run.name} did not end within {args.timeout} s", file=sys.stderr)
    return 1
