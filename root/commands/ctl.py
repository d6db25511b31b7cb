"""``ctl RUN pause|resume|reset|stop PARTITION``: PartitionControl on one partition of a live
run.  pause holds its VPs at their next exit; resume lets them go on; reset sends every VP to
its reset vector and the devices to power-on; stop ends the partition's VPs and worker and
waits (--timeout) until the launcher has — when it was the last partition, the run ends."""

from __future__ import annotations

import argparse
import time

from proto.errors import HvstackError, Refused
from proto.status import HypervisorStatus
from root.client import RootClient
from root.commands.common import complain
from root.rundir import live_run, partition_of

NAME = "ctl"
HELP = "pause, resume, reset or stop a partition of a live run"
ACTIONS = ("pause", "resume", "reset", "stop")
CTL_DONE = {"pause": "paused", "resume": "resumed", "reset": "reset", "stop": "stopped"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("partition")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for stop to take effect")


def run(args) -> int:
    """pause, resume, reset or stop one partition of a live run (PartitionControl)."""
    run, man = live_run(args.run)
    pid = partition_of(run, man, args.partition)
    name = args.partition
    if name in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {name} of run {run.name} is stopped")
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        try:
            root.control(pid, args.action)
        except Refused as e:
            raise HvstackError(f"cannot {args.action} partition {name}: {e.reason}") from None
        if args.action != "stop":
            part = HypervisorStatus.from_wire(root.status()).partition(pid)
            extra = f" (reset #{part.resets}: its VPs start over at the reset vector)" \
                if args.action == "reset" and part is not None else ""
            print(f"partition {name} {CTL_DONE[args.action]}{extra}")
            return 0
    # stop: the launcher ends the partition's processes when it sees the state "finalized".
    deadline = time.monotonic() + args.timeout
    stopped = False
    while time.monotonic() < deadline:
        man = run.manifest()
        if not stopped and name in man.get("stopped_partitions", []):
            stopped = True
            print(f"partition {name} stopped: its VPs and worker have exited", flush=True)
            if set(man.get("stopped_partitions", [])) < set(man.get("partitions", {})):
                return 0
        if man.get("state") == "ended":
            if not stopped:
                print(f"partition {name} stopped")
            print(f"run {run.name} ended: {man.get('ended', {}).get('reason', '?')}")
            return 0
        if not run.is_live():
            break
        time.sleep(0.1)
    if stopped:
        return 0
    complain(NAME, f"partition {name} was told to stop, but its processes were not ended within {args.timeout} s")
    return 1
