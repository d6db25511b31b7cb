"""``python -m worker --spec SPEC.json``; the partition token comes in HVSTACK_TOKEN.

SPEC.json (written by launch.py into the run directory) holds ``endpoint``,
``partition_id``, ``name``, ``console_path`` and ``devices``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from proto.transport import connect
from worker.backends import ConsoleLog
from worker.chipset import Chipset
from worker.service import Worker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s worker:{spec['name']} %(levelname)s %(message)s")
    token = os.environ.get("HVSTACK_TOKEN")
    if not token:
        print("python -m worker: HVSTACK_TOKEN is not set", file=sys.stderr)
        return 2
    console = ConsoleLog(spec["console_path"])
    chipset = Chipset(spec["devices"], console)
    # Connect and say hello as the partition's worker, then claim the ranges and map memory.
    dealer = connect(spec["endpoint"], "worker", spec["partition_id"], 0, token=token,
                     server_key=spec.get("server_key"))
    worker = Worker(dealer, chipset, console)
    worker.start(spec["partition_id"])

    def stop(signum, frame):
        worker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
