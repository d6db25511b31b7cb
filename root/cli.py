"""hvstack's launcher: the root partition's management service, and the attach commands.

    python launch.py                       run the default topology (configs/default.toml)
    python launch.py run configs/X.toml    run a topology file
    python launch.py bench [--json]        round trips against a pure-pyzmq floor
    python launch.py ls                    live runs
    python launch.py status RUN            partitions, VPs, counters, processes
    python launch.py stop RUN              end a run cleanly
    python launch.py io RUN PARTITION OP…  execute instructions on a VP's behalf

and top, stats, trace, console, ctl, screen, keys and fuzz (``python launch.py --help``).  The
argument parser is assembled from the modules of root.commands; :func:`main` takes the
arguments and returns the exit status, so every command runs in-process as well.
"""

from __future__ import annotations

import argparse
import os
import sys

from proto.errors import HvstackError
from root.commands import console, ctl, io, keys, ls, migrate, run, screen, stats, status, stop, top, trace
from root.commands.common import PROG, complain

DESCRIPTION = __doc__.split("\n\n")[0]
# Every command, in the order `launch.py --help` lists them.
COMMANDS = (run, ls, status, stop, io, screen, keys, trace, console, ctl, top, stats, migrate)
# Packages that build on root add commands of their own (benchmarks: bench, fuzz) through
# this entry-point group; root never imports them by name (DESIGN.md, Layering).
COMMAND_PLUGINS = "hvstack.commands"
HELP_ORDER = ("run", "ls", "status", "stop", "io", "screen", "keys", "trace", "console", "ctl", "bench", "top",
              "stats", "fuzz", "migrate")


def commands(plugins: bool = True) -> tuple:
    """root's own commands, then (``plugins``) those installed packages add."""
    found = COMMANDS
    if plugins:
        from importlib.metadata import entry_points

        found += tuple(ep.load() for ep in entry_points(group=COMMAND_PLUGINS))
    return tuple(sorted(found, key=lambda c: HELP_ORDER.index(c.NAME) if c.NAME in HELP_ORDER else len(HELP_ORDER)))


def build_parser(name: str | None = None) -> argparse.ArgumentParser:
    """The launcher's parser; for one of root's own commands (``name``), without the
    plugins' (finding them costs importlib.metadata, their modules and their arguments:
    ~50M instructions, 7 % of a ``run``'s start-up before the hypervisor gets its
    arguments; issue 12)."""
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    sub = ap.add_subparsers(dest="cmd")
    for command in commands(plugins=name not in {c.NAME for c in COMMANDS}):
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.arguments(p)
        p.set_defaults(fn=command.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command (``run`` when none is named: ``python launch.py [--duration S]``
    runs the default topology); returns the exit status.  A usage error is status 2, as
    argparse gives it, and ``--help`` status 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: run the default topology
    try:
        args = build_parser(argv[0] if argv else None).parse_args(argv)
    except SystemExit as e:  # argparse: --help, or a usage error it has printed
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a pipe's reader that has gone shows here, not at exit
        return code
    except HvstackError as e:
        complain(args.cmd, str(e))
        return getattr(e, "exit_code", 1)
    except BrokenPipeError:
        # `ls --all | head`: the reader has gone, which is how such a pipe ends.  Later
        # writes (and the interpreter's flush at exit) go to /dev/null, as Python's
        # documentation of SIGPIPE advises, and the command ends quietly.
        quiet_stdout()
        return 1


def quiet_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a file descriptor (captured in-process): nothing will flush into a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
