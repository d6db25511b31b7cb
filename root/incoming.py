"""The destination of a live migration: a run started with ``--incoming PARTITION``
(QEMU's ``-incoming``; Hyper-V's destination VMMS) creates that partition as usual — its
memory, its SLAT, its VPs suspended — but starts none of its processes, and its launcher
listens for the source on a CURVE tcp endpoint of its own (a key pair made here; the
endpoint and the public key go into the manifest's ``incoming``; a client without the key
gets no connection, counted as the hypervisor's are).

A migration (proto/migration_messages.py, spoken by root/migration.py):

1. ``migrate_begin``: the shape and GPA map must be this partition's; once it is answered,
   its worker and partition process are started (forked from the run's zygotes, each with a
   ``--go-fd``), beside the pre-copy; ``migrate_switchover`` is answered once they say READY,
   so their start-up is not in the downtime;
2. ``migrate_pages`` (rounds; every page number checked against this partition's map, every
   size against its count) written into its RAM; ``migrate_probe`` only counted (with or
   without a session: the source measures the link before its begin);
3. ``migrate_state`` chunks, then ``migrate_commit``: the record is checked as a saved
   state is (version, SHA-256, every field, shape, disks), every mapped page must have
   come; then the hypervisor's state, the disks and the devices are restored and the worker
   goes (it restores, says hello and claims its ranges): *ready*;
4. ``migrate_go``: the partition process goes and the VPs are started (TLFS host flow).

Before the commit's restore, a failure (a refused message, a source that goes silent for
:data:`SESSION_IDLE_S`) abandons the session: the processes started for it end, and the
partition waits for another begin.  After it, the partition has a worker of the record's
and its hypervisor state: a failure there ends the run (the source, never told to go,
resumes the partition).  After the go the partition is this run's.

``migrate_abandon`` comes from the source's *run* when its ``migrate`` command died
(root/migration_lease.py): it is answered ``migrate_running`` if that handover's go came,
and otherwise the handover is abandoned — a committed partition stopped, never run.
"""

from __future__ import annotations

import array
import json
import os
import select
import subprocess
import sys
import time
from datetime import datetime, timezone
from time import perf_counter_ns

import msgpack

from proto import auth, messages as m, partition_state as ps, saved_state
from proto import migration_messages as mm
from proto.errors import HvstackError, ProtocolError
from proto.sha256 import compare_digest
from proto.memory import PAGE_SHIFT, GuestMemory, memory_path, slat_path
from proto.status import HypervisorStatus
from proto.transport import Router, curve_keypair
from root import content_dirty, partition_save, vmbus_save
from root.procs import describe_exit, spawn, stop_procs

PROBE_GAP_S = 0.1  # a sessionless probe's chunks are served back to back while they come this often
SESSION_IDLE_S = 10.0  # a source silent this long is gone: the session is abandoned
READY_TIMEOUT_S = 20.0  # for the processes started ahead to say READY, and the worker to claim its ranges
MAX_RECORD_BYTES = 256 << 20
MAX_IDLE_SERVED = 64  # messages served per supervision turn with no session under way
PAGE = 1 << PAGE_SHIFT
ZERO_PAGE = bytes(PAGE)
# The record a migration carries: a whole partition's but its memory (its pages came before).
RECORD_SECTIONS = (saved_state.PARTITION_SECTIONS | {"worker"}) - {"memory"}


class Refusal(HvstackError):
    """A migration message refused: ``code`` (proto/messages.ERROR_CODES) and why."""

    def __init__(self, code: str, why: str) -> None:
        super().__init__(why)
        self.code = code


class Session:
    """One source's migration of one partition, from its begin."""

    def __init__(self, identity: bytes, pc, pid: int, gpa_pages: int, runs: list, handover: bytes) -> None:
        self.identity, self.pc, self.pid = identity, pc, pid
        self.handover = handover  # the begin's token, which a migrate_abandon of it must carry
        self.gpa_pages = gpa_pages
        self.mapped = bytearray(gpa_pages)
        for first, count in runs:
            self.mapped[first:first + count] = b"\x01" * count
        self.received = bytearray(gpa_pages)
        self.procs: list = []
        self.mem = None  # the partition's RAM, written as pages come
        self.took: dict = {}  # the commit's steps, ms
        self.go: dict = {}  # role → the write end of its --go-fd
        self.cpu_state: list | None = None  # a real CPU's register files, from the record (given with the go)
        self.record = bytearray()
        self.record_total: int | None = None
        self.bytes_in = 0
        self.pages_in = 0
        self.rounds: set[int] = set()
        self.ready = False
        self.processes_ready = False  # the processes started at the begin said READY
        self.failed: str | None = None  # they could not be started
        self.started = perf_counter_ns()
        self.last = time.monotonic()


class Receiver:
    """The destination side of :mod:`root.migration`, inside a run's launcher."""

    def __init__(self, run, names: list[str], host: str = "127.0.0.1") -> None:
        self.run = run
        self.waiting = {pc.name: pc for pc in run.topology.partitions if pc.name in names}
        self.server_key, secret = curve_keypair()
        self.router = Router(f"tcp://{host}:0", secret)
        self.endpoint = self.router.endpoint
        self.session: Session | None = None
        self.done: list[dict] = []
        self.done_handovers: dict[tuple[str, int], bytes] = {}  # (partition, paused_at_ns) → its begin's token
        self.failures: list[str] = []
        self._refused_seen = 0
        self._probing_until = 0.0  # a probe without a session: its next chunk is served at once
        self._after_reply = None  # work that waits until the message's answer has gone

    def manifest(self) -> dict:
        return {"endpoint": self.endpoint, "server_key": self.server_key, "partitions": sorted(self.waiting),
                "receiving": self.session.pc.name if self.session else None,
                "handshakes_refused": self.router.counters.get("handshakes_refused", 0),
                "failures": self.failures[-10:], "migrations": self.done}

    def close(self) -> None:
        self._abandon(None)
        self.router.close()

    # -- the loop ------------------------------------------------------------------------

    def poll(self) -> None:
        """Serve what has come; while a session is under way, serve it to its end (the
        supervision loop waits meanwhile: a migration's messages come back to back)."""
        served = 0
        while True:
            busy = self.session is not None or time.monotonic() < self._probing_until
            if self.router.wait(100 if busy else 0) and (busy or served < MAX_IDLE_SERVED):
                self._serve_one()
                served += 1
            elif not busy:
                break
            else:
                self.run._check_procs()  # (a run process that died ends the run even now)
            if self.session is not None and time.monotonic() - self.session.last > SESSION_IDLE_S:
                self._abandon(f"the source of {self.session.pc.name} was silent for {SESSION_IDLE_S:.0f} s")
        refused = self.router.counters.get("handshakes_refused", 0)
        if refused != self._refused_seen:  # (the gatekeeper's thread counts them)
            self._refused_seen = refused
            self.run._manifest_update(incoming=self.manifest())

    def _serve_one(self) -> None:
        frames = self.router.recv()
        identity, frame = frames[0], frames[-1]
        try:
            msg = m.decode(frame)
            reply = self._handle(identity, msg, len(frame))
        except ProtocolError as e:
            reply = m.ErrorReply(0, getattr(e, "code", "MALFORMED"), str(e)[:500])
        except Refusal as e:
            reply = m.ErrorReply(getattr(msg, "TYPE", 0), e.code, str(e)[:500])
            if self.session is not None and self.session.identity == identity:
                self._abandon(str(e))
        self.router.send(identity, m.encode(reply))
        then, self._after_reply = self._after_reply, None
        if then is not None:
            then()

    def _handle(self, identity: bytes, msg, size: int) -> m.Message:
        if isinstance(msg, mm.MigrateBegin):
            return self._begin(identity, msg)
        if isinstance(msg, mm.MigrateAbandon):  # (from the source's run, not its migrate command)
            return self._abandon_asked(msg)
        if isinstance(msg, mm.MigrateProbe) and (self.session is None or self.session.identity != identity):
            self._probing_until = time.monotonic() + PROBE_GAP_S  # a link measured before a begin
            return m.Ack(msg.TYPE)
        s = self.session
        if s is None or s.identity != identity:
            raise Refusal("OUT_OF_TURN", f"{msg.NAME} without a migrate_begin on this connection")
        if s.failed:
            raise Refusal("INTERNAL", s.failed)
        s.last = time.monotonic()
        s.bytes_in += size
        if isinstance(msg, mm.MigratePages):
            self._pages(s, msg)
        elif isinstance(msg, mm.MigrateProbe):
            pass
        elif isinstance(msg, mm.MigrateSwitchover):
            self._await_ready(s)
        elif isinstance(msg, mm.MigrateState):
            self._state(s, msg)
        elif isinstance(msg, mm.MigrateCommit):
            self._commit(s, msg)
        elif isinstance(msg, mm.MigrateGo):
            return self._go(s, msg)
        else:
            raise Refusal("NOT_PERMITTED", f"{msg.NAME} is not a migration message")
        return m.Ack(msg.TYPE)

    # -- the steps -----------------------------------------------------------------------

    def _begin(self, identity: bytes, msg: mm.MigrateBegin) -> m.Message:
        if self.session is not None:
            if self.session.ready:
                raise Refusal("CONFLICT", f"partition {self.session.pc.name} is being handed over")
            self._abandon("a new migrate_begin")
        pc = self.waiting.get(msg.name)
        if pc is None:  # a host of a run of hosts makes it now, if it may (root/arrivals.py)
            from root.arrivals import arrive
            pc = arrive(self.run, msg.name)
            if pc is not None:
                self.waiting[pc.name] = pc
        if pc is None:
            raise Refusal("UNKNOWN_PARTITION", f"this run waits for no partition {msg.name!r} "
                                               f"(it waits for {', '.join(sorted(self.waiting)) or 'none'})")
        pid = self.run.partition_ids[pc.name]
        try:
            saved_shape = ps.check_shape(msgpack.unpackb(msg.shape, raw=False, strict_map_key=True))
            runs = msgpack.unpackb(msg.runs, raw=False)
        except (ValueError, msgpack.UnpackException, saved_state.SavedStateError) as e:
            raise Refusal("INVALID_FIELD", f"migrate_begin: {e}") from None
        devices = pc.worker_devices(self.run.run.path, self.run.topology.base_dir or self.run.run.path)
        try:
            ps.compare_shape(saved_shape, partition_save.shape(pc, devices))
        except ps.WrongShape as e:
            raise Refusal("INVALID_FIELD", f"partition {pc.name}: {e}") from None
        mem = GuestMemory(memory_path(self.run.run.path, pid), slat_path(self.run.run.path, pid))
        try:
            ours = [[gpa >> PAGE_SHIFT, length >> PAGE_SHIFT] for gpa, length in mem.mapped_runs()]
            gpa_pages = mem.pages
        finally:
            mem.close()
        if msg.gpa_pages != gpa_pages or [list(r) for r in runs] != ours:
            raise Refusal("INVALID_FIELD", f"partition {pc.name}: the source's GPA map ({msg.gpa_pages} pages, "
                                           f"runs {runs}) is not this one's ({gpa_pages} pages, runs {ours})")
        if len(msg.handover) != mm.HANDOVER_BYTES:
            raise Refusal("INVALID_FIELD", f"handover is {len(msg.handover)} bytes, not {mm.HANDOVER_BYTES}")
        self.router.bind(identity)  # a connection that began a migration is no longer idle
        self.session = s = Session(identity, pc, pid, gpa_pages, ours, msg.handover)
        s.mem = GuestMemory(memory_path(self.run.run.path, pid), slat_path(self.run.run.path, pid))
        self._after_reply = lambda: self._begun(s)  # the source's first pages come meanwhile
        return m.Ack(msg.TYPE)

    def _begun(self, s: Session) -> None:
        """After the begin's answer: the partition's processes started (a failure refuses
        the session's next message)."""
        try:
            self._start_ahead(s)
        except HvstackError as e:
            s.failed = f"partition {s.pc.name}: {e}"
        self.run.out.print(f"partition {s.pc.name}: incoming migration begun")
        self.run._manifest_update(incoming=self.manifest())

    def _start_ahead(self, s: Session) -> None:
        """The worker and the partition process, started (forked from the run's zygotes where
        it has them: their start-up runs beside the pre-copy, and may outlast it) and confined;
        each waits on its --go-fd after saying READY.  (A servicing's successor worker starts
        fresh for a race of its handover, root/run.py; an incoming worker has no predecessor.)"""
        run, pc = self.run, s.pc
        for role in ("worker", "partition"):
            go_read, s.go[role] = os.pipe()
            if role == "worker":
                proc = run.spawn_worker(pc, restore=True, go_fd=go_read, forked=True)
            else:
                args, fds = run._confinement("partition", s.pid, tlbs=True)
                proc = spawn("partition", pc.name, "partitions",
                             ["--spec", str(run.run.path / f"partition-{pc.name}.json"), *args,
                              "--go-fd", str(go_read)],
                             run.run.path / "logs", secret=auth.peer_token(run.secret, "vp", s.pid),
                             fds=(*fds, go_read), stdout=subprocess.PIPE, zygote=run.zygotes.get("partitions"))
            s.procs.append(proc)

    def _await_ready(self, s: Session) -> None:
        """The processes started at the begin said READY (at the switch-over, or at the
        commit for a source that does not ask for one)."""
        if s.processes_ready:
            return
        t0 = perf_counter_ns()
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            for proc in s.procs:
                _line(proc, b"READY", deadline)
        except HvstackError as e:
            raise Refusal("INTERNAL", f"partition {s.pc.name}: {e}") from None
        s.processes_ready = True
        s.took["waited_for_processes_ms"] = _ms(perf_counter_ns() - t0)

    def _pages(self, s: Session, msg: mm.MigratePages) -> None:
        if s.ready:
            raise Refusal("OUT_OF_TURN", "pages after the commit")
        zero, pages = _page_numbers(msg.zero, "zero"), _page_numbers(msg.pages, "pages")
        if len(msg.data) != len(pages) * PAGE:
            raise Refusal("INVALID_FIELD", f"migrate_pages: {len(msg.data)} bytes of data for {len(pages)} pages")
        for p in (*zero, *pages):
            if p >= s.gpa_pages or not s.mapped[p]:
                raise Refusal("INVALID_FIELD", f"migrate_pages: page {p:#x} is not mapped in partition {s.pc.name}")
        ram = s.mem.ram
        for p in zero:
            ram[p << PAGE_SHIFT:(p + 1) << PAGE_SHIFT] = ZERO_PAGE
            s.received[p] = 1
        data = memoryview(msg.data)
        for i, p in enumerate(pages):
            ram[p << PAGE_SHIFT:(p + 1) << PAGE_SHIFT] = data[i * PAGE:(i + 1) * PAGE]
            s.received[p] = 1
        data.release()
        s.pages_in += len(zero) + len(pages)
        s.rounds.add(msg.round)

    def _state(self, s: Session, msg: mm.MigrateState) -> None:
        if s.ready:
            raise Refusal("OUT_OF_TURN", "state after the commit")
        if not 0 < msg.total <= MAX_RECORD_BYTES or (s.record_total not in (None, msg.total)):
            raise Refusal("INVALID_FIELD", f"migrate_state: a record of {msg.total} bytes "
                                           f"(at most {MAX_RECORD_BYTES}, and as first said)")
        if msg.offset != len(s.record) or msg.offset + len(msg.data) > msg.total:
            raise Refusal("INVALID_FIELD", f"migrate_state: {len(msg.data)} bytes at {msg.offset}, expected them at "
                                           f"{len(s.record)} of {msg.total}")
        s.record_total = msg.total
        s.record += msg.data

    def _commit(self, s: Session, msg: mm.MigrateCommit) -> None:
        if s.ready:
            raise Refusal("OUT_OF_TURN", "a second commit")
        # (0/1 bytes: the mapped pages never received, counted without a Python loop over the
        # GPA space — this is in the downtime)
        missing = (int.from_bytes(s.mapped, "little") & ~int.from_bytes(s.received, "little")).bit_count()
        if missing:
            raise Refusal("INVALID_FIELD", f"migrate_commit: {missing} mapped pages never came")
        if msg.total != len(s.record) or s.record_total != msg.total:
            raise Refusal("INVALID_FIELD", f"migrate_commit: {len(s.record)} bytes of the record came, "
                                           f"{msg.total} were sent")
        self._await_ready(s)
        run, pc = self.run, s.pc
        devices = json_devices(run, pc)
        try:
            record = saved_state.decode(bytes(s.record))
            extra = sorted(set(record["sections"]) - RECORD_SECTIONS - {"cpu", "vmbus"})
            if extra:
                raise partition_save.RestoreRefused(f"sections {extra} in a migration's record")
            if record["partition"]["name"] != pc.name:
                raise partition_save.RestoreRefused(f"a record of partition {record['partition']['name']!r}")
            partition_save.check_record(pc, record, devices, f"migration of {pc.name}", frozenset(RECORD_SECTIONS))
            if pc.backend != "python" and pc.backend not in content_dirty.BACKENDS:
                raise partition_save.RestoreRefused(f"cpu = {pc.backend!r}: migrating its registers is not built")
            s.cpu_state = partition_save.cpu_state(record)  # (checked by check_record: one per VP)
            if pc.vmbus is not None:  # its bus to the VSP here (which changes nothing if it refuses)
                vmbus_save.restore(run.root, run.run.path, pc, s.pid, record)
        except (saved_state.SavedStateError, partition_save.RestoreRefused) as e:
            raise Refusal("INVALID_FIELD", f"the migrated state: {e}") from None
        # From here the partition takes the record's state: a failure ends the run.
        s.ready = True
        t0 = perf_counter_ns()
        try:
            partition_save.restore_hypervisor(run.root, s.pid, record)
            t_hv = perf_counter_ns()
            partition_save.restore_devices(run.run.path, s.pid, pc, devices, record)
            t_devices = perf_counter_ns()
            os.write(s.go["worker"], b"g")
            deadline = time.monotonic() + READY_TIMEOUT_S
            restored = _line(s.procs[0], b"RESTORED", deadline)  # (no status asked meanwhile: it costs the hypervisor)
            while True:
                part = HypervisorStatus.from_wire(run.root.status(brief=True)).partition(s.pid)
                if part is not None and part.worker and part.ranges:
                    break
                if s.procs[0].popen.poll() is not None or time.monotonic() > deadline:
                    raise HvstackError(f"its worker did not restore and claim its ranges (see {s.procs[0].log_path})")
                time.sleep(0.002)  # (a status is the whole hypervisor's: not too often)
        except HvstackError as e:
            from root.run import RunEnded
            raise RunEnded(f"incoming migration of {pc.name} failed after its state was restored: {e}", 1) from None
        run.procs.extend(s.procs)
        s.took |= {"hypervisor_ms": _ms(t_hv - t0), "disks_devices_ms": _ms(t_devices - t_hv),
                  "worker_ms": _ms(perf_counter_ns() - t_devices), "of_which_worker_restore_ms": _restore_ms(restored)}

    def _go(self, s: Session, msg: mm.MigrateGo) -> m.Message:
        if not s.ready:
            raise Refusal("OUT_OF_TURN", "migrate_go before a commit")
        run, pc = self.run, s.pc
        # A real CPU's registers go with the go (the partition process was started before
        # they came): msgpack after the "g", up to the pipe's end (partitions/__main__.py).
        os.write(s.go["partition"], b"g" + (msgpack.packb(s.cpu_state, use_bin_type=True) if s.cpu_state else b""))
        run.root.start_vps(s.pid, pc.vps)
        started = time.time_ns()
        for fd in s.go.values():
            os.close(fd)
        for proc in s.procs:
            proc.popen.stdout.close()
        run._limit_cpu(pc, s.procs[1].pid)
        del self.waiting[pc.name]
        s.mem.close()
        figures = {"partition": pc.name, "at": datetime.now(timezone.utc).isoformat(),
                   "downtime_ms": round((started - msg.paused_at_ns) / 1e6, 2),
                   "received_bytes": s.bytes_in, "pages": s.pages_in, "rounds": len(s.rounds),
                   "total_ms": round((perf_counter_ns() - s.started) / 1e6, 1), "commit": s.took,
                   "paused_at_ns": msg.paused_at_ns, "started_at_ns": started}
        self.done.append(figures)
        # Kept apart from the figures, which the manifest shows: a token is not a figure.
        self.done_handovers[(pc.name, msg.paused_at_ns)] = s.handover
        self.session = None
        run.out.print(f"partition {pc.name}: migrated in, running here ({figures['downtime_ms']:.1f} ms after the "
                      f"source paused it; {s.pages_in} pages in {len(s.rounds)} rounds, {s.bytes_in} bytes; its "
                      f"commit: hypervisor {s.took['hypervisor_ms']} ms, disks and devices "
                      f"{s.took['disks_devices_ms']} ms, worker restored and ready {s.took['worker_ms']} ms)")
        run._manifest_update(incoming=self.manifest())
        return mm.MigrateRunning(started)

    def _abandon_asked(self, msg: mm.MigrateAbandon) -> m.Message:
        """The source's run says the migrate command of ``msg.name`` died: if its go came
        (the handover ``paused_at_ns`` names), the partition runs here and the source must
        not run it; otherwise nothing of that handover may run here, ever.  Only for the
        handover the message names by its begin's token: the destination's key lets anyone
        who has it connect, and must not let them end another's migration."""
        refused = Refusal("NOT_PERMITTED", f"migrate_abandon of partition {msg.name} without its handover's token")
        done = self.done_handovers.get((msg.name, msg.paused_at_ns)) if msg.paused_at_ns else None
        if done is not None:
            if not compare_digest(done, msg.handover):
                raise refused
            for f in self.done:
                if f["partition"] == msg.name and f["paused_at_ns"] == msg.paused_at_ns:
                    return mm.MigrateRunning(f["started_at_ns"])
        s = self.session
        if s is not None and s.pc.name == msg.name:
            if not compare_digest(s.handover, msg.handover):
                raise refused  # and the migration goes on
            why = "its source's migrate command died (its run said so)"
            if s.ready:
                self._drop_committed(s, why)
            else:
                self._abandon(why)
        return m.Ack(msg.TYPE)

    def _drop_committed(self, s: Session, why: str) -> None:
        """A committed partition never told to go: its state is restored into this run's
        hypervisor and worker, so it cannot wait for another begin — it is stopped (as
        ``ctl stop`` stops one), never run."""
        self.session = None
        try:
            self.run.root.control(s.pid, "stop")
        except HvstackError:
            pass  # (its processes end below all the same)
        for proc in s.procs:
            if proc in self.run.procs:
                self.run.procs.remove(proc)
        for fd in s.go.values():
            os.close(fd)  # the partition process, waiting on its go, sees EOF and leaves
        stop_procs(s.procs)
        s.mem.close()
        del self.waiting[s.pc.name]
        self.failures.append(f"{s.pc.name}: {why}; committed but never told to go: stopped")
        self.run.out.print(f"partition {s.pc.name}: incoming migration dropped after its commit ({why}); "
                           "it never ran here and is stopped")
        self.run._manifest_update(incoming=self.manifest())

    def _abandon(self, why: str | None) -> None:
        s, self.session = self.session, None
        if s is None:
            return
        for fd in s.go.values():
            os.close(fd)  # a process waiting on its go sees EOF and leaves
        stop_procs(s.procs)
        if s.mem is not None:
            s.mem.close()
        if why:
            self.failures.append(f"{s.pc.name}: {why}")
            self.run.out.print(f"partition {s.pc.name}: incoming migration abandoned: {why}")
            self.run._manifest_update(incoming=self.manifest())


def _line(proc, word: bytes, deadline: float) -> bytes:
    """Wait for ``proc`` to say ``word`` on its stdout, and return that line (HvstackError
    if it dies or is late)."""
    while True:
        if proc.popen.poll() is not None:
            raise HvstackError(f"its {proc.role} {describe_exit(proc.popen.returncode)} (see {proc.log_path})")
        if time.monotonic() > deadline:
            raise HvstackError(f"its {proc.role} did not say {word.decode()} within {READY_TIMEOUT_S:.0f} s")
        if select.select([proc.popen.stdout], [], [], 0.1)[0]:
            line = proc.popen.stdout.readline()
            if line.startswith(word):
                return line


def _restore_ms(line: bytes) -> float | None:
    """The worker's ``RESTORED <µs>``, in ms."""
    try:
        return round(int(line.split()[1]) / 1000, 2)
    except (ValueError, IndexError):
        return None


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def json_devices(run, pc) -> list[dict]:
    """The partition's devices as its worker has them (the spec the run wrote)."""
    return json.loads((run.run.path / f"worker-{pc.name}.json").read_text())["devices"]


def _page_numbers(blob: bytes, what: str) -> array.array:
    if len(blob) % 4:
        raise Refusal("INVALID_FIELD", f"migrate_pages: {what} is {len(blob)} bytes, not u32s")
    out = array.array("I")
    out.frombytes(blob)
    if out.itemsize != 4:
        raise HvstackError("array 'I' is not 32 bits here")
    if sys.byteorder != "little":
        out.byteswap()
    return out
