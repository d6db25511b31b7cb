"""``keys RUN PARTITION TEXT… [--enter]``: type text on a live partition's keyboard (the
i8042, scancode set 1), eight keys at a time as a typist would."""

from __future__ import annotations

import argparse
import time

from proto.scancodes import scancodes
from root.client import RootClient
from root.rundir import live_run, partition_of

NAME = "keys"
HELP = "type text on a live partition's keyboard (i8042, scancode set 1)"
KEYBOARD_BUFFER = 16  # bytes the keyboard buffers: 8 keys, make + break
KEY_GAP_S = 0.05


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("text", nargs="+")
    p.add_argument("--enter", action="store_true", help="press Enter after the text")


def run(args) -> int:
    run, man = live_run(args.run)
    pid = partition_of(run, man, args.partition)
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
