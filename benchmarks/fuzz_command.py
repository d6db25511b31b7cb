"""``fuzz RUN [--messages N] [--seed S] [--duration S] [--json]``: send a live run every
message type — well-formed, malformed and out of turn, from unauthenticated peers, from a
partition's own worker and VP connections, and as the root — and report whether it
survived: messages sent by type and kind, errors received by code, crashes, hangs, the run's
guest exits per second before and after, the hypervisor's RSS before and after
and the guards' log lines — handler errors, bugs of ours (``benchmarks/fuzz.py``).  Exit
status 0 when the run survived with its guests progressing and no handler raised."""

from __future__ import annotations

import argparse
import json

from root.commands.common import complain
from root.rundir import live_run, partition_names
from root.testrun import handler_errors_in_logs

NAME = "fuzz"
HELP = "fuzz a live run's hypervisor with hostile messages and check that it survives"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--messages", type=int, default=100_000, help="how many messages at most (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="the same seed sends the same messages (default 1)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds at most (default 600)")
    p.add_argument("--status-timeout", type=float, default=5.0,
                   help="a status request not answered within this many seconds is a hang (default 5)")
    p.add_argument("--devices", action="store_true",
                   help="fuzz the run's own workers too, as their guests could (port and VGA accesses through "
                        "io, console and keyboard input): their guests' data may suffer")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from benchmarks.fuzz import Fuzzer, format_report  # pyzmq and psutil: only for this command

    if args.messages < 1 or args.duration <= 0 or args.status_timeout <= 0:
        complain(NAME, "--messages, --duration and --status-timeout must be positive")
        return 2
    run, man = live_run(args.run)
    procs = man.get("processes", {})
    hv = [p["pid"] for k, p in procs.items() if k.startswith("hypervisor")]
    if not hv:
        complain(NAME, f"run {run.name} names no hypervisor process")
        return 1
    fuzzer = Fuzzer(man["endpoint"], run.secret(), server_key=man.get("server_key"), seed=args.seed, run_partitions=list(partition_names(man)),
                    hv_pid=hv[0], watched_pids=[p["pid"] for p in procs.values()],
                    status_timeout_s=args.status_timeout, devices=args.devices)
    report = fuzzer.run(args.messages, args.duration)
    report.handler_error_lines = handler_errors_in_logs(run.path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
