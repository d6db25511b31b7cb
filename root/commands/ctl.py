"""``ctl RUN pause|resume|reset|stop PARTITION``: PartitionControl on one partition of a live
run.  pause holds its VPs at their next exit; resume lets them go on; reset sends every VP to
its reset vector and the devices to power-on; stop ends the partition's VPs and worker and
waits (--timeout) until the launcher has — when it was the last partition, the run ends;
service hands the partition's devices to a new worker process while its VPs are paused
(root/servicing.py) and prints the blackout; ``save PARTITION FILE [--paused]`` writes the
whole partition into FILE (root/partition_save.py)."""

from __future__ import annotations

import argparse
import os
import time

from proto.errors import HvstackError, Refused
from proto.status import HypervisorStatus
from root import follow, partition_save, servicing
from root.client import RootClient
from root.commands.common import complain
from root.rundir import partition_of, write_private

NAME = "ctl"
HELP = "pause, resume, reset, stop or service a partition of a live run"
ACTIONS = ("pause", "resume", "reset", "stop", "service", "save")
CTL_DONE = {"pause": "paused", "resume": "resumed", "reset": "reset", "stop": "stopped"}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("partition")
    p.add_argument("file", nargs="?", help="save: the file the partition's record is written to")
    p.add_argument("--paused", action="store_true", help="save: leave the partition paused after the save")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for stop to take effect")


def run(args) -> int:
    """pause, resume, reset or stop one partition of a live run (PartitionControl)."""
    if (args.action == "save") != (args.file is not None):
        complain(NAME, "save takes a FILE; no other action does")
        return 2
    run, man = follow.live_partition(args.run, args.partition)
    pid = partition_of(run, man, args.partition)
    name = args.partition
    if name in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {name} of run {run.name} is stopped")
    if args.action == "service":
        return _service(run, name, args.timeout)
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        if args.action == "save":
            print(partition_save.describe(partition_save.save(run.path, man, root, name, args.file,
                                                              keep_running=not args.paused)))
            return 0
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


def _service(run, name: str, timeout: float) -> int:
    """The launcher owns the run's processes: ask it (a request file in the run directory)
    and wait for its figures in the manifest."""
    nonce = os.urandom(8).hex()
    request = servicing.request_path(run.path, name)
    write_private(request.with_suffix(".tmp"), nonce)
    os.replace(request.with_suffix(".tmp"), request)  # the launcher never sees it half written
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        man = run.manifest()
        for figures in man.get("services", []):
            if figures.get("nonce") == nonce:
                if "error" in figures:
                    complain(NAME, f"cannot service partition {name}: {figures['error']}")
                    return 1
                print(servicing.describe(figures))
                return 0
        if man.get("state") == "ended" or not run.is_live():
            break
        time.sleep(0.05)
    request.unlink(missing_ok=True)
    complain(NAME, f"partition {name} was not serviced within {timeout} s")
    return 1
