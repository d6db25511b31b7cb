"""``screen RUN PARTITION``: print a live partition's VGA text screen (its worker's view)."""

from __future__ import annotations

import argparse

from proto.errors import Refused

from root import follow
from root.client import RootClient
from root.commands.common import complain
from root.rundir import partition_of

NAME = "screen"
HELP = "print a live partition's VGA text screen"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")


def run(args) -> int:
    run, man = follow.live_partition(args.run, args.partition)
    pid = partition_of(run, man, args.partition)
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        try:
            screen = root.worker_query(pid, "screen")
        except Refused as e:
            if e.code != "NO_DEVICE":
                raise
            complain(NAME, e.reason)
            return 1
    print(screen.text)
    return 0
