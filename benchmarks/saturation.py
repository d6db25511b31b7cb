"""What saturates first: per-thread CPU, run-queue wait and context switches over a window,
and the host's busy cores beside them (Linux /proc; elsewhere the figures are absent).

For every thread of every process of a run (or of a floor), two snapshots a window apart of

* ``/proc/PID/task/TID/schedstat``: ns on a CPU, ns waiting on a run queue for one (ready
  but not running: what a full host costs a thread), timeslices;
* ``/proc/PID/task/TID/status``: voluntary (it blocked: waited for a message) and
  involuntary (the scheduler took the core from it) context switches;
* ``/proc/stat``'s first line: the whole host's busy and idle time, every process's — the
  other users of a shared machine included.

From these: each process kind's CPU and run-queue wait in seconds per second of wall
(1.0 = one core's worth), its switches per round trip, and the busiest single thread's
utilisation — the hypervisor's loop thread at 1.0 would mean the one loop is the limit,
whatever the cores have left.
"""

from __future__ import annotations

import os
from pathlib import Path


def _thread(pid: int, tid: str) -> tuple[int, int, int, int, str] | None:
    """(on-CPU ns, run-queue ns, voluntary, involuntary switches, name) of one thread."""
    base = Path(f"/proc/{pid}/task/{tid}")
    try:
        run_ns, wait_ns, _ = (int(x) for x in (base / "schedstat").read_text().split())
        comm = (base / "comm").read_text().strip()
        vol = invol = 0
        for line in (base / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                invol = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return run_ns, wait_ns, vol, invol, comm


def snapshot(pids: dict[str, int]) -> dict:
    """Every thread of every named process, and the host's CPU time."""
    threads: dict[tuple[str, str], tuple[int, int, int, int, str]] = {}
    for name, pid in pids.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            t = _thread(pid, tid)
            if t is not None:
                threads[(name, tid)] = t
    return {"threads": threads, "host": _host()}


def _host() -> tuple[int, int] | None:
    """The host's (busy, total) CPU ticks since boot, all cores."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def compare(before: dict, after: dict, window_s: float, round_trips: int, kind) -> dict:
    """Per process kind (``kind(name)``): CPU and run-queue wait in cores (s per s), voluntary
    and involuntary switches per round trip, its busiest thread's cores; and the host's busy
    cores (all processes', of all its cores)."""
    by_kind: dict[str, list] = {}
    for key, (run1, wait1, vol1, invol1, comm) in after["threads"].items():
        run0, wait0, vol0, invol0, _ = before["threads"].get(key, (0, 0, 0, 0, ""))
        k = by_kind.setdefault(kind(key[0]), [0.0, 0.0, 0, 0, 0.0, ""])
        k[0] += (run1 - run0) / 1e9
        k[1] += (wait1 - wait0) / 1e9
        k[2] += vol1 - vol0
        k[3] += invol1 - invol0
        if (run1 - run0) / 1e9 > k[4]:
            k[4], k[5] = (run1 - run0) / 1e9, comm
    n = max(1, round_trips)
    out = {"by_kind": {k: {"cpu_cores": round(v[0] / window_s, 3), "runq_cores": round(v[1] / window_s, 3),
                           "vol_per_rt": round(v[2] / n, 2), "invol_per_rt": round(v[3] / n, 2),
                           "busiest_thread_cores": round(v[4] / window_s, 3), "busiest_thread": v[5]}
                       for k, v in sorted(by_kind.items())}}
    h0, h1 = before.get("host"), after.get("host")
    if h0 and h1 and h1[1] > h0[1]:
        out["host_busy"] = round((h1[0] - h0[0]) / (h1[1] - h0[1]) * os.cpu_count(), 2)
    return out


__all__ = ["snapshot", "compare"]
