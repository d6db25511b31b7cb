"""Worker servicing, the launcher's side: replace a partition's worker process while its VPs
are paused — asked for (``ctl RUN service PARTITION``), or because the worker died and the
partition's topology says ``on_worker_exit = "restart"``.

1. pause the partition (PartitionControl: its VPs are held at their next exit);
2. service: the hypervisor holds new device accesses and the worker saves its devices into
   its checkpoint file and freezes (``service_request save``); a restart skips this: the dead
   worker's last periodic checkpoint is what there is;
3. ``expect_worker``, then a new ``python -m worker`` started exactly as the first (same
   spec, same confinement, same uid, its token down a pipe) with ``--restore``: it restores
   the devices from the checkpoint file before its hello, then claims its predecessor's
   ranges;
4. ``commit`` (repeated until the new worker has started): the held accesses go to it, and
   the partition resumes.  The old worker is ended after that, outside the blackout.

The blackout is measured from the pause request to the commit's acknowledgement, in stages.
A ``ctl service`` asks by dropping ``service-PARTITION.request`` (a nonce) in the run
directory; the outcome goes into the manifest's ``services`` under that nonce.
"""

from __future__ import annotations

import select
import time
from datetime import datetime, timezone
from time import perf_counter_ns

from proto import messages as m
from proto.errors import HvstackError, Refused
from proto.status import QUERY_ERROR
from root.procs import stop_procs

HANDOVER_TIMEOUT_S = 15.0
REQUEST_SUFFIX = ".request"
MAX_RESTARTS = 5  # per partition and run: a worker that keeps dying ends the run after that


def request_path(run_dir, partition: str):
    return run_dir / f"service-{partition}{REQUEST_SUFFIX}"


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def replace_worker(run, name: str, *, restart: bool) -> dict:
    """Hand partition ``name`` of ``run`` (a :class:`root.run.Run`) to a new worker; the
    figures (ms).  HvstackError if it could not be done (a service that failed before the
    handover is aborted: the old worker keeps the partition, which stays paused)."""
    pid = run.partition_ids[name]
    pc = next(p for p in run.topology.partitions if p.name == name)
    old = next((p for p in run.procs if p.role == "worker" and p.name == name), None)
    dealer = run.root.dealer
    t0 = perf_counter_ns()
    run.root.control(pid, "pause")
    saved = {}
    if not restart:
        try:
            reply = dealer.request(m.ServiceRequest(pid, "save"), 10_000)
        except Refused as e:
            run.root.control(pid, "resume")
            raise HvstackError(f"partition {name}: its worker did not save: {e.reason}") from None
        if not isinstance(reply, m.WorkerQueryReply) or QUERY_ERROR in reply.result:
            _abort(run, pid)
            raise HvstackError(f"partition {name}: its worker did not save: {getattr(reply, 'result', reply)}")
        saved = reply.result
    t_saved = perf_counter_ns()
    dealer.request(m.ServiceRequest(pid, "expect_worker"))
    new = run.spawn_worker(pc, restore=True)
    deadline = time.monotonic() + HANDOVER_TIMEOUT_S
    while True:
        try:
            dealer.request(m.ServiceRequest(pid, "commit"))
            break
        except Refused as e:
            if e.code != "OUT_OF_TURN":
                raise
        if new.popen.poll() is not None or time.monotonic() > deadline:
            why = f"exited with status {new.popen.returncode}" if new.popen.poll() is not None else \
                f"did not start in {HANDOVER_TIMEOUT_S} s"
            stop_procs([new])
            if not restart:
                _abort(run, pid)
            raise HvstackError(f"partition {name}: the new worker {why} (see {new.log_path})")
        time.sleep(0.002)
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
        "pause_save_ms": _ms(t_saved - t0),
        "spawn_hello_commit_ms": spawn_ms,
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
            f"{save}spawn+hello+restore+commit {f['spawn_hello_commit_ms']:.1f} ms (restore {restore} ms)")


def _abort(run, pid: int) -> None:
    try:
        run.root.dealer.request(m.ServiceRequest(pid, "abort"))
    except HvstackError:
        pass


def _restored_line(proc) -> int | None:
    """The µs the new worker says its restore took (its ``RESTORED`` line), if it said so."""
    out = proc.popen.stdout
    if out is None:
        return None
    try:
        if select.select([out], [], [], 1.0)[0]:
            line = out.readline()
            if line.startswith(b"RESTORED "):
                return int(line.split()[1])
        return None
    finally:
        out.close()
        proc.popen.stdout = None

