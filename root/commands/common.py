"""What several commands share: the program's name in messages, and reading a live run's status."""

from __future__ import annotations

import sys

from proto.errors import HvstackError
from root.client import RootClient
from root.rundir import RunDir

PROG = "launch.py"


def complain(command: str, text: str) -> None:
    """``launch.py COMMAND: text`` on stderr."""
    print(f"{PROG} {command}: {text}", file=sys.stderr)


def status_while_live(root: RootClient, run: RunDir) -> dict:
    """A status reply; if the run has ended meanwhile, an error that says so."""
    def gone() -> HvstackError:
        try:
            how = run.ended_reason()
        except HvstackError:
            how = "its run directory is gone"
        return HvstackError(f"run {run.name} is not running ({how})")

    if not run.is_live():
        raise gone()
    try:
        return root.status()
    except (HvstackError, OSError):
        if not run.is_live():
            raise gone() from None
        raise
