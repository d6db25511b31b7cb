"""``stop RUN [--timeout S]``: end a live run cleanly (SIGTERM to its launcher, which ends
every process of the run) and wait until its manifest says it has ended.  The signal goes
only to the process the manifest names as the launcher — same pid, start time and command
line — never to whatever now holds that pid."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import psutil

from proto.errors import HvstackError
from root.commands.common import PROG
from root.rundir import find_run, launcher_process, write_private

NAME = "stop"
HELP = "end a live run cleanly"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--timeout", type=float, default=15.0)


def run(args) -> int:
    run = find_run(args.run)
    man = run.manifest()
    if not run.is_live():
        print(f"run {run.name} is not running ({run.ended_reason()})")
        return 1
    launcher = launcher_process(man)
    if launcher is None and not isinstance(man.get("launcher"), dict):
        raise HvstackError(f"the manifest of run {run.name} does not identify its launcher (pid "
                           f"{man.get('launcher_pid')} could be any process): not signalled")
    if launcher is None:  # it died (or its pid went to another process) since is_live()
        raise HvstackError(f"pid {man.get('launcher_pid')} is not the launcher of run {run.name}: not signalled")
    write_private(run.path / "stop-requested", f"{PROG} stop (pid {os.getpid()})")
    try:
        launcher.send_signal(signal.SIGTERM)  # psutil checks it is still the same process
    except psutil.Error as e:
        raise HvstackError(f"run {run.name}: cannot signal its launcher: {e}") from None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            man = run.manifest()
        except HvstackError:  # being rewritten by a launcher that does not replace it whole
            time.sleep(0.05)
            continue
        if man.get("state") == "ended":
            print(f"run {run.name} ended: {man['ended']['reason']}")
            return 0
        time.sleep(0.1)
    print(f"run {run.name} did not end within {args.timeout} s", file=sys.stderr)
    return 1
