"""Worker servicing, the launcher's side: replace a partition's worker process while its VPs
are paused — asked for (``ctl RUN service PARTITION``), or because the worker died and the
partition's topology says ``on_worker_exit = "restart"``.

0. start the new ``python -m worker`` exactly as the first (same spec, same confinement,
   same uid, its token down a pipe) with ``--restore --go-fd``: it builds its devices,
   connects and is confined, says READY and waits — before the pause, so its start-up
   is not in the blackout;
1. pause the partition (PartitionControl: its VPs are held at their next exit);
2. service: the hypervisor holds new device accesses and the worker saves its devices into
   its checkpoint file and freezes (``service_request save``); a restart skips this: the dead
   worker's last record (saved at its last completed exit, ``--each-exit``) is what there is;
3. ``expect_worker``, then "go" to the new worker: it restores the devices from the
   checkpoint file, says hello and claims its predecessor's ranges;
4. ``commit`` (repeated until the new worker has started): the held accesses go to it, and
   the partition resumes.  The old worker is ended after that, outside the blackout.

The blackout is measured from the pause request to the commit's acknowledgement, in stages.
A ``ctl service`` asks by dropping ``service-PARTITION.request`` (a nonce) in the run
directory; the outcome goes into the manifest's ``services`` under that nonce.
"""

from __future__ import annotations

import os
import select
import time
from datetime import datetime, timezone
from time import perf_counter_ns

from proto import messages as m
from proto.errors import HvstackError, Refused
from proto.status import QUERY_ERROR
from root.procs import describe_exit, stop_procs

HANDOVER_TIMEOUT_S = 15.0
REQUEST_SUFFIX = ".request"
MAX_RESTARTS = 5  # per partition and run: a worker that keeps dying ends the run after that


def request_path(run_dir, partition: str):
    return run_dir / f"service-{partition}{REQUEST_SUFFIX}"


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def replace_worker(run, name: str, *, restart: bool) -> dict:
    """Hand partition ``name`` of ``run`` (a :class:`root.run.Run`) to a new worker; the
    figures (ms).  HvstackError if it could not be done (a service whose new worker did not
    start is aborted: the old worker is thawed and keeps the partition, which resumes)."""
    pid = run.partition_ids[name]
    pc = next(p for p in run.topology.partitions if p.name == name)
    old = next((p for p in run.procs if p.role == "worker" and p.name == name), None)
    dealer = run.root.dealer
    go_read, go = os.pipe()
    t_spawn = perf_counter_ns()
    new = run.spawn_worker(pc, restore=True, go_fd=go_read)
    try:
        # The successor starts, connects and is confined before the pause: not in the blackout.
        _expect_line(new, b"READY", HANDOVER_TIMEOUT_S)
        t0 = perf_counter_ns()
        run.root.control(pid, "pause")
        saved = {}
        if not restart:
            try:
                reply = dealer.request(m.ServiceRequest(pid, "save"), 10_000)
            except Refused as e:
                raise HvstackError(f"partition {name}: its worker did not save: {e.reason}") from None
            if not isinstance(reply, m.WorkerQueryReply) or QUERY_ERROR in reply.result:
                raise HvstackError(f"partition {name}: its worker did not save: {getattr(reply, 'result', reply)}")
            saved = reply.result
        t_saved = perf_counter_ns()
        dealer.request(m.ServiceRequest(pid, "expect_worker"))
        os.write(go, b"g")
        deadline = time.monotonic() + HANDOVER_TIMEOUT_S
        while True:
            try:
                dealer.request(m.ServiceRequest(pid, "commit"))
                break
            except Refused as e:
                if e.code != "OUT_OF_TURN":
                    raise
            if new.popen.poll() is not None or time.monotonic() > deadline:
                raise HvstackError(f"partition {name}: the new worker "
                                   f"{describe_exit(new.popen.poll()) if new.popen.poll() is not None else 'did not start'}"
                                   f" (see {new.log_path})")
            time.sleep(0.001)
    except HvstackError:
        stop_procs([new])
        if not restart and old is not None:
            _abort(run, pid)
        raise
    finally:
        os.close(go)
    t_resumed = perf_counter_ns()
    restore_us = _restored_line(new)
    if old is not None:
        run.procs.remove(old)
    run.procs.append(new)
    if old is not None and not restart:
        stop_procs([old])  # frozen since its save; after the resume, so not in the blackout
    spawn_ms = _ms(t_resumed - t_saved)
    figures = {
        "partition": name, "kind": "restart" if restart else "service",
        "at": datetime.now(timezone.utc).isoformat(),
        "blackout_ms": _ms(t_resumed - t0),
        "spawn_ready_ms": _ms(t0 - t_spawn),  # the successor's start-up, before the pause
        "pause_save_ms": _ms(t_saved - t0),
        "restore_hello_commit_ms": spawn_ms,
        "restore_ms": round(restore_us / 1000, 2) if restore_us is not None else None,
        "saved_bytes": saved.get("bytes"), "record": saved.get("sequence"),
        "old_worker_pid": old.pid if old else None, "new_worker_pid": new.pid,
    }
    return figures


def describe(f: dict) -> str:
    restore = f"{f['restore_ms']:.2f}" if f.get("restore_ms") is not None else "?"
    save = f"pause+save {f['pause_save_ms']:.1f} ms ({f['saved_bytes']} bytes), " if f["kind"] == "service" else ""
    return (f"partition {f['partition']}: worker {'serviced' if f['kind'] == 'service' else 'restarted'} "
            f"(pid {f['old_worker_pid']} → {f['new_worker_pid']}): blackout {f['blackout_ms']:.1f} ms = "
            f"{save}restore+hello+commit {f['restore_hello_commit_ms']:.1f} ms (restore {restore} ms); "
            f"the new worker's start-up before the pause: {f['spawn_ready_ms']:.0f} ms"
            + (" (after a death the partition waits through it too)" if f["kind"] == "restart" else ""))


def _abort(run, pid: int) -> None:
    """The old worker keeps the partition (thawed, given what was held), which goes on."""
    try:
        run.root.dealer.request(m.ServiceRequest(pid, "abort"))
        run.root.control(pid, "resume")
    except HvstackError:
        pass


def _expect_line(proc, word: bytes, timeout_s: float) -> bytes:
    """The new worker's next stdout line, which must start with ``word``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([proc.popen.stdout], [], [], 0.05)[0]:
            line = proc.popen.stdout.readline()
            if line.startswith(word):
                return line
            raise HvstackError(f"the new worker said {line[:80]!r}, not {word.decode()} (see {proc.log_path})")
        if proc.popen.poll() is not None:
            raise HvstackError(f"the new worker {describe_exit(proc.popen.returncode)} (see {proc.log_path})")
    raise HvstackError(f"the new worker said no {word.decode()} in {timeout_s} s (see {proc.log_path})")


def _restored_line(proc) -> int | None:
    """The µs the new worker says its restore took (its ``RESTORED`` line), if it said so."""
    try:
        return int(_expect_line(proc, b"RESTORED", 1.0).split()[1])
    except (HvstackError, ValueError, IndexError):
        return None
    finally:
        proc.popen.stdout.close()
        proc.popen.stdout = None

