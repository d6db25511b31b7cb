"""A migration's lease: how the source run itself finishes a ``migrate`` command that died.

``migrate`` (root/migration.py) is a process of its own, and may be SIGKILLed (an OOM kill,
a ``kill -9``, a lost terminal) — in the stop-and-copy too, when it has paused the partition
and frozen its worker, and nobody else would thaw them.  So for as long as it works on a
partition it holds a lease in the source run's directory (``migrate-PARTITION.lease``,
JSON, written whole each time): its pid and start time, the destination's endpoint and
CURVE key, and its **phase**:

- ``precopy``: the partition runs here; nothing to undo but an auto-converge throttle (the
  lease's ``restore_cap``: the CPU cap it had, root/migration_throttle.py);
- ``paused``: the stop-and-copy may have paused the partition and frozen its worker; no go
  has been sent (the destination may be committed, never told to run);
- ``go``: the go may have been sent — the phase is written before it is — naming the
  handover by ``paused_at_ns`` (the go's own).

The command releases (removes) its lease once it is done either way: the partition stopped
here after the destination said it runs, or resumed here after a failure before the go.

The source run's launcher watches every lease's holder through a pidfd (a pid with its start
time, so never a later process given the same pid).  When a holder has gone and left its
lease, the launcher decides as Hyper-V and QEMU do — exactly one side runs the VM:

- ``precopy`` / ``paused``: no go was sent, so the destination cannot run it: the worker is
  thawed, the cap put back and the partition resumed here; the destination is told to abandon (a
  ``migrate_abandon``; best effort — it abandons a silent source by itself anyway);
- ``go``: the destination is asked (``migrate_abandon`` with the handover's
  ``paused_at_ns``) and answers atomically: *it runs it* (``migrate_running``) → the
  source's copy is stopped, as the command would have; *it never got the go* → it abandons
  (a committed partition there is stopped, never run) and only then is it resumed here.
  A destination where nothing listens any more (its host refuses the connection) has lost
  its launcher, and its processes with it (PR_SET_PDEATHSIG): it runs nothing, and the
  partition is resumed here.  A destination that does not answer at all (unreachable) may
  run it: the partition stays paused here and the launcher asks again every
  :data:`RETRY_S` — never resumed on a guess.
"""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

import psutil

from proto import messages as m
from proto import migration_messages as mm
from proto.errors import HvstackError, TransportError
from proto.transport import Dealer, nobody_listens
from root import follow, migration_throttle, partition_save
from root.rundir import write_json

SUFFIX = ".lease"
PHASES = ("precopy", "paused", "go")
ASK_TIMEOUT_S = 2.0  # for the destination's answer to a migrate_abandon
RETRY_S = 5.0  # a destination that did not answer is asked again after this
STALL_ENV = "HVSTACK_MIGRATE_STALL"  # tests: hold the command at a phase (see Lease.stall)
STALL_MAX_S = 60.0


def lease_path(run_dir, partition: str) -> Path:
    return Path(run_dir) / f"migrate-{partition}{SUFFIX}"


def _read(path: Path) -> dict | None:
    try:
        lease = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(lease, dict) and isinstance(lease.get("pid"), int) and lease.get("phase") in PHASES \
        and isinstance(lease.get("create_time"), (int, float)) and isinstance(lease.get("partition"), str) \
        and isinstance(lease.get("endpoint"), str) and isinstance(lease.get("server_key"), str) \
        and isinstance(lease.get("paused_at_ns"), int) and 0 <= lease["paused_at_ns"] < 1 << 64 \
        and (lease.get("restore_cap") is None or isinstance(lease["restore_cap"], int) and 0 <= lease["restore_cap"]) \
        and isinstance(lease.get("handover"), str) and len(lease["handover"]) == 2 * mm.HANDOVER_BYTES \
        and all(c in "0123456789abcdef" for c in lease["handover"])
    return lease if ok else None


def _holder_alive(lease: dict) -> bool:
    try:
        p = psutil.Process(lease["pid"])
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - lease["create_time"]) < 0.01
    except psutil.Error:
        return False


class Lease:
    """The ``migrate`` command's side: taken before the begin, moved through the phases,
    released when the command has finished either way."""

    def __init__(self, run_dir, partition: str, endpoint: str, server_key: str) -> None:
        self.path = lease_path(run_dir, partition)
        held = _read(self.path)
        if held is not None and _holder_alive(held):
            raise HvstackError(f"partition {partition} is being migrated already (migrate, pid {held['pid']})")
        if held is not None:
            raise HvstackError(f"partition {partition}: the source run has not yet settled an earlier migrate that "
                               f"died ({self.path.name}); try again in a few seconds")
        self.data = {"pid": os.getpid(), "create_time": psutil.Process().create_time(), "partition": partition,
                     "endpoint": endpoint, "server_key": server_key, "phase": "precopy", "paused_at_ns": 0,
                     # The begin's handover token: only who holds it (this command, the source
                     # run through this file) may have the destination abandon the handover.
                     "handover": os.urandom(mm.HANDOVER_BYTES).hex()}
        write_json(self.path, self.data)

    @property
    def handover(self) -> bytes:
        return bytes.fromhex(self.data["handover"])

    def phase(self, phase: str, paused_at_ns: int = 0) -> None:
        self.data.update(phase=phase, paused_at_ns=paused_at_ns)
        write_json(self.path, self.data)

    def restore_cap(self, cap: int) -> None:
        """The partition's CPU cap before auto-converge throttled it (root/migration_throttle.py):
        put back by whoever resumes it here."""
        self.data["restore_cap"] = cap
        write_json(self.path, self.data)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def stall(self, point: str) -> None:
        """Fault injection for the tests: with ``HVSTACK_MIGRATE_STALL=point``, the command
        marks its lease ``stalled`` and waits here (to be SIGKILLed, or let go by the lease's
        ``stalled`` being removed), at most STALL_MAX_S."""
        if os.environ.get(STALL_ENV) != point:
            return
        write_json(self.path, {**self.data, "stalled": point})
        deadline = time.monotonic() + STALL_MAX_S
        while time.monotonic() < deadline and (_read(self.path) or {}).get("stalled") == point:
            time.sleep(0.02)
        write_json(self.path, self.data)


class LeaseWatcher:
    """The source run's side, polled by its launcher's supervision loop (cheap: a directory
    scan and a zero-timeout poll of the pidfds it holds)."""

    def __init__(self, run) -> None:
        self.run = run
        self._pidfds: dict[str, int] = {}  # lease file name → its holder's pidfd
        self._next_try: dict[str, float] = {}  # a lease whose destination did not answer
        self.settled: list[dict] = []

    def close(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()

    def poll(self) -> None:
        present = set()
        for path in self.run.run.path.glob(f"migrate-*{SUFFIX}"):
            present.add(path.name)
            if path.name in self._pidfds:
                if not select.select([self._pidfds[path.name]], [], [], 0)[0]:
                    continue  # its holder lives
            elif time.monotonic() < self._next_try.get(path.name, 0.0):
                continue
            else:
                lease = _read(path)
                if lease is None:
                    continue  # (being written: os.replace makes that rare; next turn)
                fd = _pidfd(lease)
                if fd is not None:
                    self._pidfds[path.name] = fd
                    continue
            self._forget(path.name)
            lease = _read(path)
            if lease is not None and not _holder_alive(lease):
                self._settle(path, lease)
        for name in set(self._pidfds) - present:  # released by its holder
            self._forget(name)

    def _forget(self, name: str) -> None:
        fd = self._pidfds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def _settle(self, path: Path, lease: dict) -> None:
        run, name = self.run, lease["partition"]
        pid = run.partition_ids.get(name)
        say = run.out.print
        if pid is None:
            path.unlink(missing_ok=True)
            return
        holder = f"the migrate of partition {name} (pid {lease['pid']}) died in its {lease['phase']} phase"
        if lease["phase"] != "go":
            # No go was sent: the destination cannot run it.  Resume first, then tell it.
            _resume_here(run.root, pid, lease)
            outcome = "resumed here (no go was sent)"
            try:
                self._ask(lease)  # best effort: a destination abandons a silent source by itself
            except HvstackError:
                pass
        else:
            try:
                answer = self._ask(lease)
            except HvstackError as e:
                if not nobody_listens(lease["endpoint"]):
                    if path.name not in self._next_try:
                        say(f"partition {name}: {holder}, and its destination {lease['endpoint']} does not answer "
                            f"({e}); it stays paused here — asking again every {RETRY_S:.0f} s")
                    self._next_try[path.name] = time.monotonic() + RETRY_S
                    return
                answer = None  # its launcher is gone, and its processes with it
            if isinstance(answer, mm.MigrateRunning):
                try:  # (the command did not record the move: attach commands name the endpoint)
                    follow.record_move(run.run.path, name, None, lease["endpoint"])
                except OSError:
                    pass
                try:
                    run.root.control(pid, "stop")
                except HvstackError:
                    pass  # (stopped already: the command got that far)
                outcome = "it runs at the destination: stopped here"
            else:
                _resume_here(run.root, pid, lease)
                outcome = ("resumed here (its destination refuses connections: it is gone)" if answer is None
                           else "resumed here (the destination never got the go, and abandoned it)")
        self._next_try.pop(path.name, None)
        path.unlink(missing_ok=True)
        say(f"partition {name}: {holder}; {outcome}")
        self.settled.append({"partition": name, "phase": lease["phase"], "outcome": outcome,
                             "destination": lease["endpoint"]})
        run._manifest_update(migrations_settled=self.settled[-20:])

    @staticmethod
    def _ask(lease: dict):
        """``migrate_abandon`` to the lease's destination: its answer (HvstackError if none)."""
        try:
            dealer = Dealer(lease["endpoint"], lease["server_key"])
        except TransportError as e:
            raise HvstackError(str(e)) from None
        try:
            reply = dealer.request(mm.MigrateAbandon(lease["partition"][:64], lease["paused_at_ns"],
                                                     bytes.fromhex(lease["handover"])),
                                   int(ASK_TIMEOUT_S * 1000))
        finally:
            dealer.close()
        if not isinstance(reply, (mm.MigrateRunning, m.Ack)):
            raise HvstackError(f"the destination answered {reply.NAME}")
        return reply


def _resume_here(root, pid: int, lease: dict) -> None:
    """The partition runs on here: its CPU cap as it was before any auto-converge throttle,
    its worker thawed and its VPs resumed."""
    if lease.get("restore_cap") is not None:
        try:
            migration_throttle.set_cap(root, pid, lease["restore_cap"])
        except HvstackError:
            pass  # (a cap out of range: the hypervisor refuses it, and the throttle stays)
    partition_save.resume_after_failure(root, pid)


def _pidfd(lease: dict) -> int | None:
    """A pidfd of the lease's holder if it is alive (checked after opening it, so that it
    is the holder's and not a later process's with the same pid); None if it is gone."""
    try:
        fd = os.pidfd_open(lease["pid"])
    except OSError:
        return None
    if _holder_alive(lease):
        return fd
    os.close(fd)
    return None
