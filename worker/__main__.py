"""``python -m worker --spec SPEC.json --secret-fd N [--memory-fd M --slat-fd S]
[--uid U --gid G | --namespaces] [--checkpoint FILE [--restore]]``.

SPEC.json (written by launch.py into the run directory) holds ``endpoint``,
``partition_id``, ``name``, ``console_path`` and ``devices``.  The partition's worker token
comes down the pipe on descriptor N; its partition's RAM and SLAT table are descriptors M
and S (else it asks the hypervisor where they are and opens them).

The worker emulates devices for a hostile guest: with ``--uid`` it opens everything it
will use (spec, disk images, NVRAM, console log), connects, and then drops to its own uid
with no capabilities and ``no_new_privs`` (:mod:`proto.confine`) before it serves a
single guest access.  After that it holds its own descriptors and nothing else.  With
``--namespaces`` (not root) it hides the runs root in namespaces of its own instead.
Either way a seccomp filter then keeps it off every other process
(:func:`proto.confine.start_confined`).

Worker servicing: with ``--checkpoint FILE`` the worker saves its devices there
(:class:`proto.saved_state.CheckpointFile`) when the hypervisor asks (``device_save``) and,
with ``--each-exit``, at every completed access and interrupt taken; with ``--restore`` as well it first restores its devices from the
newest record there — a successor of a serviced or dead worker — before its hello.  It opens
the file before it is confined, as everything else, and restores once confined; it prints
``RESTORED <µs>`` on stdout then, for the launcher's blackout figures.  With ``--go-fd N``
it is started ahead of the pause: it prints ``READY`` once its namespaces are made, and
connects, is confined and restores only when the launcher writes ``g`` on descriptor N
(after the old worker saved) — a connection held without a hello would be shut down by the
hypervisor past its deadline, and a migration's pre-copy may last minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from proto import confine
from proto.errors import HvstackError
from proto.memory import GuestMemory
from proto.saved_state import CheckpointFile, SavedStateError
from proto.transport import connect
from worker.backends import ConsoleLog
from worker.chipset import Chipset
from worker.service import Worker

log = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--secret-fd", type=int, required=True, help="a pipe holding the worker's token")
    ap.add_argument("--memory-fd", type=int, help="the partition's RAM, open read-write")
    ap.add_argument("--slat-fd", type=int, help="the partition's SLAT table, open read-only")
    ap.add_argument("--uid", type=int, help="drop to this uid once connected")
    ap.add_argument("--gid", type=int)
    ap.add_argument("--checkpoint", help="the checkpoint file its devices are saved into")
    ap.add_argument("--restore", action="store_true", help="restore the devices from --checkpoint first")
    ap.add_argument("--dirty-fd", type=int, help="the partition's dirty log, open read-write (live migration)")
    ap.add_argument("--go-fd", type=int, help="a successor started ahead: restore once the launcher writes 'g' here")
    ap.add_argument("--each-exit", action="store_true",
                    help="also save into --checkpoint at every completed access and interrupt taken")
    ap.add_argument("--namespaces", action="store_true",
                    help="not root: hide the runs root in namespaces of this process's own first")
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s worker:{spec['name']} %(levelname)s %(message)s")
    token = confine.read_secret(args.secret_fd)
    if not token:
        print("python -m worker: no token on --secret-fd", file=sys.stderr)
        return 2
    console = ConsoleLog(spec["console_path"])
    chipset = Chipset(spec["devices"], console)
    memory = GuestMemory(args.memory_fd, args.slat_fd, args.dirty_fd) if args.memory_fd is not None else None
    checkpoints, sequence, last_access, interrupts = None, 0, None, None
    if args.checkpoint:
        checkpoints = CheckpointFile(os.open(args.checkpoint, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    # Connected while the run's socket can still be reached; then confined; then hello.
    # Started ahead (of a servicing or a migration), it waits for its go before connecting:
    # everything up to there costs no blackout.
    dealers = confine.start_confined(args.spec, spec, 1, uid=args.uid, gid=args.gid, namespaces=args.namespaces,
                                     log=log, wait_go=None if args.go_fd is None else lambda: confine.ready_go(args.go_fd))
    if dealers is None:
        log.info("not needed after all: the launcher closed --go-fd")
        return 0
    [dealer] = dealers
    if args.restore:
        t0 = time.perf_counter_ns()
        try:
            sequence, last_access, interrupts = restore(chipset, checkpoints, spec["partition_id"])
        except SavedStateError as e:
            log.error("cannot restore the devices: %s", e)
            return 1
        print(f"RESTORED {(time.perf_counter_ns() - t0) // 1000}", flush=True)
    try:
        dealer = connect(spec["endpoint"], "worker", spec["partition_id"], 0, token=token, dealer=dealer)
    except HvstackError as e:  # refused, not answered, or an endpoint that is not our hypervisor
        log.error("hello: %s", e)
        return 1
    worker = Worker(dealer, chipset, console)
    if checkpoints is not None:
        worker.keep_checkpoints(checkpoints, spec["partition_id"], spec["name"], sequence,
                                each_exit=args.each_exit, last_access=last_access, interrupts=interrupts)
    worker.start(spec["partition_id"], memory)

    def stop(signum, frame):
        worker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()
    return 0


def restore(chipset: Chipset, checkpoints: CheckpointFile | None,
            partition_id: int) -> tuple[int, dict | None, dict | None]:
    """The devices from the newest record of the checkpoint file: (its sequence, the last
    access it holds, the interrupts taken last)."""
    record = checkpoints.latest() if checkpoints is not None else None
    if record is None or record["partition"]["id"] != partition_id or "worker" not in record["sections"]:
        raise SavedStateError("no saved state of this partition's devices to restore (--checkpoint)")
    try:
        chipset.restore(record["sections"]["worker"])
    except ValueError as e:
        raise SavedStateError(str(e)) from None
    log.info("devices restored from record %d of %s", record["sequence"], record["created_at"])
    return record["sequence"], record["sections"].get("worker_access"), record["sections"].get("worker_interrupts")


if __name__ == "__main__":
    sys.exit(main())
