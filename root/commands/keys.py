"""``keys RUN PARTITION TEXT… [--enter]``: type text on a live partition's keyboard (the
i8042, scancode set 1), eight keys at a time as a typist would.  A partition without a
keyboard (chipset "minimal") or one that was stopped is an error: nothing is typed."""

from __future__ import annotations

import argparse
import time

from proto.errors import HvstackError
from proto.scancodes import scancodes
from root import follow
from root.client import RootClient
from root.rundir import partition_of
from root.topology import CHIPSETS

NAME = "keys"
HELP = "type text on a live partition's keyboard (i8042, scancode set 1)"
KEYBOARD_BUFFER = 16  # bytes the keyboard buffers: 8 keys, make + break
KEY_GAP_S = 0.05


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("text", nargs="+")
    p.add_argument("--enter", action="store_true", help="press Enter after the text")


def has_keyboard(man: dict, partition: str) -> bool:
    """Whether a partition's devices (its chipset's and its own, as the manifest's topology
    has them) include the i8042."""
    for pc in man.get("config", {}).get("partitions", []):
        if pc.get("name") == partition:
            return any(d.get("type") == "i8042"
                       for d in [*CHIPSETS.get(pc.get("chipset", "gen1"), []), *pc.get("devices", [])])
    return False


def run(args) -> int:
    run, man = follow.live_partition(args.run, args.partition)
    pid = partition_of(run, man, args.partition)
    if args.partition in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {args.partition} of run {run.name} was stopped: nothing typed")
    if not has_keyboard(man, args.partition):
        raise HvstackError(f"partition {args.partition} of run {run.name} has no keyboard (no i8042 in its "
                           f"devices): nothing typed")
    text = " ".join(args.text).replace("\\n", "\n")
    if args.enter:
        text += "\n"
    data = scancodes(text)
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        # A keyboard buffers 16 bytes: send 8 keys (make + break) at a time, as typing would.
        for i in range(0, len(data), KEYBOARD_BUFFER):
            root.send_input(pid, "keyboard", data[i:i + KEYBOARD_BUFFER])
            time.sleep(KEY_GAP_S)
    print(f"typed {len(data) // 2} keys into {args.partition}")
    return 0
