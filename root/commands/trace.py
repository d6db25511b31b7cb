"""``trace RUN [--partition P] [--reason R]… [--duration S] [--csv | --json]``: every exit of a
live run as the hypervisor sees it (as xentrace and `perf kvm stat live` show them), then a
per-reason summary like `perf kvm stat report`.  Output is flushed per batch, so
``trace RUN --json | jq`` works live.

Where the run has a VSP process, its VMBus events are shown among the exits as reason
``vmbus`` (read from the ``vsp-events.jsonl`` it appends to, root/vsp/events.py); the
partition filter applies to them (the root's own, partition 0, such as ``dropped``, pass it),
and ``--reason vmbus`` selects them."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time

from proto.exits import Exit
from root import follow
from root.client import RootClient
from root.commands.common import complain
from root.rundir import partition_names, partition_of
from root.trace_format import (CSV_FIELDS, TEXT_HEADER, VMBUS_REASON, TraceSummary, csv_row, event_record, text_line,
                                vmbus_csv_row, vmbus_record, vmbus_text_line)
from root.vsp.events import EVENTS_FILE, EventFollower

NAME = "trace"
HELP = "every exit of a live run as it happens, then a summary by reason"
POLL_S = 0.2  # longest wait for a batch of events
CHECK_S = 1.0  # how often the run's liveness is checked, and a silent subscription renewed


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--partition", help="only this partition's exits")
    p.add_argument("--reason", action="append", choices=[*(str(e) for e in Exit), VMBUS_REASON],
                   help="only exits of this reason, or `vmbus` for VMBus events (may be given several times)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV rows, then the summary as CSV after a blank line")
    fmt.add_argument("--json", action="store_true", help="one JSON object per event, then a summary object")


def run(args) -> int:
    run, man = (follow.live_partition(args.run, args.partition) if args.partition
                else follow.live_run_following(args.run))
    names = partition_names(man)
    only = partition_of(run, man, args.partition) if args.partition else 0
    wanted = set(args.reason or ())
    if args.duration is not None and args.duration <= 0:
        complain(NAME, "--duration must be > 0")
        return 2
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.csv else None
    summary = TraceSummary()
    ended = None
    stop: list[int] = []  # Ctrl-C and SIGTERM end the trace between two batches of events

    old_handlers = {s: signal.signal(s, lambda signum, frame: stop.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter_ns()
    started = time.monotonic()
    vmbus = None  # the VSP's events file, followed (None: --reason left VMBus out)
    try:
        with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as tracer:
            t0 = time.perf_counter_ns()
            # `--reason vmbus` alone asks the hypervisor for nothing (its tracing costs every exit).
            exits = not wanted or bool(wanted - {VMBUS_REASON})
            if exits:
                tracer.trace_subscribe(only)
            vmbus = EventFollower(run.path / EVENTS_FILE) if not wanted or VMBUS_REASON in wanted else None
            started = time.monotonic()
            deadline = started + args.duration if args.duration else None
            if writer:
                writer.writerow(CSV_FIELDS)
            elif not args.json:
                out.write(TEXT_HEADER + "\n")
            out.flush()
            next_check = last_event = started
            while not stop:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait_s = min(next_check - now, deadline - now if deadline is not None else CHECK_S, POLL_S)
                events = tracer.trace_poll(max(0, int(wait_s * 1000)))  # (unsubscribed: a wait)
                now = time.monotonic()
                if events:
                    last_event = now
                for ev in events:
                    if (only and ev.partition != only) or (wanted and ev.reason not in wanted):
                        continue
                    rec = event_record(ev, names, t0)
                    summary.add(rec["reason"], rec["total_ns"])
                    if writer:
                        writer.writerow(csv_row(rec))
                    elif args.json:
                        out.write(json.dumps({k: v for k, v in rec.items() if k != "total_ns"},
                                             ensure_ascii=False) + "\n")
                    else:
                        out.write(text_line(rec) + "\n")
                for ev in vmbus.poll() if vmbus is not None else ():
                    if only and ev["partition"] not in (only, 0):  # (0: the root's own, e.g. `dropped`)
                        continue
                    rec = vmbus_record(ev, names, t0)
                    summary.add_vmbus(rec["event"])
                    if writer:
                        writer.writerow(vmbus_csv_row(rec))
                    elif args.json:
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    else:
                        out.write(vmbus_text_line(rec) + "\n")
                out.flush()
                if now >= next_check:
                    next_check = now + CHECK_S
                    if not run.is_live():
                        ended = run.ended_reason()
                        break
                    if exits and now - last_event >= CHECK_S:
                        tracer.trace_renew(only)  # no event for a second: make sure we are still subscribed
        elapsed = round(time.monotonic() - started, 3)
        if args.json:
            out.write(json.dumps({"summary": summary.to_json(run=run.name, duration_s=elapsed,
                                                             partition=args.partition, reasons_filter=sorted(wanted))},
                                 ensure_ascii=False) + "\n")
        elif writer:
            out.write("\n")
            writer.writerow(TraceSummary.CSV_FIELDS)
            writer.writerows(summary.csv_rows())
        else:
            scope = f"partition {args.partition}" if args.partition else "all partitions"
            out.write(f"\nAnalyze events for {scope}, all VPs of run {run.name} ({elapsed:.1f} s):\n\n")
            out.write(summary.text() + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (`trace --json | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if vmbus is not None:
            vmbus.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if ended is not None:
        complain(NAME, f"run {run.name} ended while tracing ({ended})")
        return 1
    return 0
