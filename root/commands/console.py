"""``console RUN PARTITION [--no-input] [--linger S]``: a partition's serial console (its first
UART), as `virsh console`: what the guest transmits is printed, what you type goes into the
UART's receive FIFO.  On a terminal it is raw and ``^]`` leaves; from a pipe or a file it
sends what it reads line by line and exits --linger seconds after the end of input."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import termios
import time
import tty

from proto.errors import HvstackError
from root import follow
from root.client import ConsoleWatcher, RootClient
from root.commands.common import complain
from root.rundir import partition_of
from root.topology import CHIPSETS

NAME = "console"
HELP = "attach to a live partition's serial console (like virsh console; ^] exits)"

CONSOLE_ESCAPE = 0x1D  # Ctrl-], as virsh console and telnet
CONSOLE_CHUNK = 4096  # bytes per input_request (one page)
CONSOLE_WINDOW = 16 << 10  # bytes sent but not yet in the UART (the worker queues up to 64 KiB)
CONSOLE_STALL_S = 5.0  # piped input the guest does not read for this long is dropped


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("partition")
    p.add_argument("--no-input", action="store_true", help="only watch: send nothing to the guest")
    p.add_argument("--linger", type=float, default=1.0,
                   help="seconds to keep printing after piped input ends (default 1)")


def console_uart(man: dict, partition: str) -> str:
    """The name of a partition's console: its first UART, as the worker picks it."""
    for pc in man.get("config", {}).get("partitions", []):
        if pc.get("name") == partition:
            for d in [*CHIPSETS.get(pc.get("chipset", "gen1"), []), *pc.get("devices", [])]:
                if d.get("type") == "uart16550":
                    return d.get("name", "com1")
    return "com1"


def run(args) -> int:
    """An interactive serial console, as `virsh console`: guest output to stdout, stdin to
    the console UART's receive FIFO."""
    run, man = follow.live_partition(args.run, args.partition)
    pid = partition_of(run, man, args.partition)
    if args.partition in man.get("stopped_partitions", []):
        raise HvstackError(f"partition {args.partition} of run {run.name} was stopped")
    uart = console_uart(man, args.partition)
    try:
        stdin_fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        stdin_fd = None
    reading = not args.no_input and stdin_fd is not None
    interactive = reading and os.isatty(stdin_fd)
    out = sys.stdout.buffer
    note = sys.stdout if interactive else sys.stderr
    pending = bytearray()  # read, not yet sent
    line_buf = bytearray()  # piped, not yet a whole line
    eof = not reading
    linger_until = None
    rx_start, sent, taken = None, 0, 0  # the UART's rx_bytes when we began; bytes sent; bytes it took
    next_send, progress_at = 0.0, time.monotonic()
    old_tty = None
    exit_code, why = 0, ""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    watcher = ConsoleWatcher(man["endpoint"], run.secret(), [pid], server_key=man.get("server_key"))
    root = RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key"))
    try:
        print(f"Connected to partition {args.partition} of run {run.name} ({uart})", file=note)
        if interactive:
            print("Escape character is ^]", file=note)
        note.flush()
        if interactive:
            old_tty = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd, termios.TCSANOW)
        next_check = time.monotonic() + 1.0
        while True:
            # Guest output: whatever arrived, straight through.
            for _, data in watcher.poll(0 if reading and not eof else 20 if pending else 50):
                out.write(data)
                out.flush()
            now = time.monotonic()
            # Input: raw keystrokes (tty) or whole lines (pipe, file).
            if reading and not eof:
                ready, _, _ = select.select([stdin_fd], [], [], 0.02)
                if ready:
                    data = os.read(stdin_fd, 4096)
                    if interactive:
                        if CONSOLE_ESCAPE in data:
                            pending += data[:data.index(CONSOLE_ESCAPE)]
                            if pending:  # what was typed before ^]
                                root.send_input(pid, "console", bytes(pending[:CONSOLE_CHUNK]))
                            break
                        pending += data
                    elif data:
                        line_buf += data
                        cut = line_buf.rfind(b"\n") + 1
                        pending += line_buf[:cut]
                        del line_buf[:cut]
                    else:
                        eof = True
                        pending += line_buf
                        line_buf.clear()
            # The worker queues input until the UART's FIFO has room (the guest reads it on
            # IRQ4); keep at most a window of it in flight, so a long pipe cannot overflow that.
            if pending and now >= next_send:
                chunk = bytes(pending[:CONSOLE_CHUNK])
                if rx_start is None:
                    rx_start = root.uart_rx_bytes(pid, uart)
                if sent - taken + len(chunk) > CONSOLE_WINDOW:
                    rx = root.uart_rx_bytes(pid, uart)
                    now_taken = rx - rx_start if rx is not None and rx_start is not None else sent
                    if now_taken > taken:
                        taken, progress_at = now_taken, now
                if sent - taken + len(chunk) <= CONSOLE_WINDOW:
                    root.send_input(pid, "console", chunk)
                    sent += len(chunk)
                    del pending[:len(chunk)]
                    progress_at = now
                else:
                    next_send = now + 0.02
                    if eof and now - progress_at > CONSOLE_STALL_S:
                        complain(NAME, f"the guest has not read its UART for {CONSOLE_STALL_S:.0f} s; "
                                       f"{len(pending)} byte(s) of input dropped")
                        pending.clear()
            if eof and reading and not pending:
                if linger_until is None:
                    linger_until = now + args.linger
                elif now >= linger_until:
                    for _, data in watcher.poll(0):
                        out.write(data)
                    out.flush()
                    break
            if now >= next_check:
                next_check = now + 1.0
                if not run.is_live():
                    exit_code, why = 1, f"run {run.name} ended while attached ({run.ended_reason()})"
                    break
                if args.partition in run.manifest().get("stopped_partitions", []):
                    exit_code, why = 1, f"partition {args.partition} was stopped"
                    break
    except KeyboardInterrupt:
        pass
    finally:
        if old_tty is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, old_tty)
        signal.signal(signal.SIGTERM, old_term)
        watcher.close()
        root.close()
    if interactive:
        print(file=note)
    if why:
        complain(NAME, why)
    return exit_code
