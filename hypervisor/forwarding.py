"""Forwarding to workers: the intercept table they install, the accesses and questions sent
to them, their answers, and what happens when an answer does not come.

A port or MMIO access a worker claims is the emulated path, four hops: the VP's exit is
suspended here (its :class:`~hypervisor.intercepts.ExitContext` waits in :attr:`pending`
under a reference), the worker gets a ``port_notify`` / ``mmio_notify``, and its
``access_complete`` resumes the VP.

Never made-up data: an access only its worker can complete is completed by nobody else.
A worker that has not answered an access within :data:`WORKER_TIMEOUT_NS` — or a health
check (a ``ping`` query, sent every :data:`PING_INTERVAL_NS`, so an idle worker's stall
shows too) — is *unresponsive*: the timeout is counted and logged, the partition is paused
(its other VPs are not dispatched again after their current exit), and status and the run's
manifest say so.  The VP stays suspended in its intercept: its access is still pending, and
if the worker comes back its completion is applied then, exactly once (the reference is
taken out of :attr:`Forwarding.pending` by the one completion that counts; a second is
STALE).  The partition stays paused until the root resumes it (``ctl resume``).  A worker
that is gone when an access is sent is unresponsive at once, the same way.  (Before, the VP
got all-ones at the timeout while the worker carried the access out later: a disk's PIO
buffer advanced under a guest that had been told nothing happened.)

A root's access on a VP's behalf (``io``) is not the guest's: at the timeout the root gets
a STALE error saying the access may still be carried out, and a late completion is
counted as stale.  A root's question for a worker (``worker_query_request``) waits alike,
and times out with a STALE error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from time import perf_counter_ns

from proto import messages as m
from proto.codes import HvPartitionState
from proto.exits import Exit

from hypervisor.intercepts import ALL_ONES, NO_FAULT, ExitContext
from hypervisor.partitions import Partition

log = logging.getLogger("hypervisor")

WORKER_TIMEOUT_NS = 2_000_000_000
PING_INTERVAL_NS = 1_000_000_000  # a health check of each worker this often
LATE = 1 << 62  # an access's deadline once its lateness has been counted
# What every emulated exit uses, as module constants (a global each, not attribute chains).
_pack_port_notify, _pack_mmio_notify, _IO_PORT = m.PortNotify.pack, m.MmioNotify.pack, Exit.IO_PORT
_IO_STRING = Exit.IO_STRING


@dataclass(slots=True)
class PendingQuery:
    """A root's question forwarded to a worker."""

    origin: bytes
    partition: Partition
    deadline_ns: int


class Forwarding:
    def __init__(self, *, router, outbox, counters: dict, resume, tracer, pause) -> None:
        self._router = router
        self._outbox = outbox
        self._counters = counters
        self._resume = resume  # Dispatcher.resume
        self._pause = pause  # Scheduler.pause
        self._tracers = tracer.tracers
        self._trace = tracer.trace
        self.pending: dict[int, ExitContext] = {}  # accesses sent to workers, by reference
        self.queries: dict[int, PendingQuery] = {}
        self.pings: dict[int, PendingQuery] = {}  # health checks outstanding (origin: none)
        self._last_ping: dict[int, int] = {}  # partition id → when its worker was last pinged
        self._next_ref = 1

    def _next(self) -> int:
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        return ref

    # -- the intercept table (the HvCallInstallIntercept idea) ---------------------------------

    def on_install_intercept(self, identity: bytes, peer, msg: m.InstallIntercept, t_in: int) -> None:
        part = peer.partition
        if part.reinstall and part.worker == identity:
            return self._reinstall(identity, part, msg)
        if part.intercepts_installed:
            # The worker claims its ranges once, at start: a second claim would move accesses
            # already forwarded under the first one.
            return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN", "intercepts are installed already")
        claimed = {}
        for base, count in msg.ranges:
            for port in range(base, base + count):
                if port in claimed:
                    return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"port {port:#x} claimed twice")
                claimed[port] = identity
        mmio = sorted((gpa, gpa + length, identity) for gpa, length in msg.mmio)
        for (_, end, _), (start, _, _) in zip(mmio, mmio[1:]):
            if start < end:
                return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"MMIO range at {start:#x} overlaps")
        part.port_owner = claimed
        part.intercepts_installed = True
        part.ranges = list(msg.ranges)
        part.mmio = mmio
        log.info("partition %d: worker claims ports %s; MMIO %s", part.id,
                 ", ".join(f"{b:#x}+{c}" for b, c in msg.ranges) or "none",
                 ", ".join(f"{g:#x}+{n:#x}" for g, n in msg.mmio) or "none")
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def _reinstall(self, identity: bytes, part: Partition, msg: m.InstallIntercept) -> None:
        """A replacement worker (servicing.py) claims its predecessor's ranges: exactly
        the same ones (it restored the same devices), which become its own."""
        if list(map(list, msg.ranges)) != list(map(list, part.ranges)) or \
                sorted(map(list, msg.mmio)) != sorted([b, e - b] for b, e, _ in part.mmio):
            return self._outbox.error(identity, msg.TYPE, "CONFLICT",
                                      "the new worker's devices claim other ranges than its predecessor's")
        part.port_owner = dict.fromkeys(part.port_owner, identity)
        part.mmio = [(b, e, identity) for b, e, _ in part.mmio]
        part.reinstall = False
        log.info("partition %d: the new worker took over its predecessor's ranges", part.id)
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def _notify(self, ref: int, ctx: ExitContext, kind: Exit) -> bytes:
        """The worker's notification of an access, packed without building the message
        (every emulated exit sends one: the round trip this project measures).  (Written
        out in :meth:`forward`: keep the two alike.)"""
        if kind is _IO_STRING:
            return m.PortStringNotify.pack(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.count, ctx.data,
                                           ctx.stamps + (perf_counter_ns(),))
        cls = m.PortNotify if kind is Exit.IO_PORT else m.MmioNotify
        return cls.pack(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.value, ctx.stamps + (perf_counter_ns(),))

    def resend(self, part: Partition, before_reset: bool) -> int:
        """After a worker handover: the accesses sent to the old worker that it never
        completed (it died) go to the new one under the same references — those whose exit
        came before the partition's last reset, or (``before_reset`` False) the others."""
        count = 0
        reset_ns = part.reset_ns
        for ref, ctx in [(r, c) for r, c in self.pending.items()
                         if c.partition is part and (c.t_in < reset_ns) == before_reset]:
            ctx.deadline_ns = time.monotonic_ns() + WORKER_TIMEOUT_NS
            self._router.send(part.worker, self._notify(ref, ctx, ctx.kind))
            count += 1
        for ref in [r for r, q in self.pings.items() if q.partition is part]:
            del self.pings[ref]  # asked of the old worker: the new one is pinged afresh
        return count

    # -- accesses: the emulated path -----------------------------------------------------------

    def forward(self, ctx: ExitContext, owner: bytes, kind: Exit) -> None:
        """Suspend the exit and notify the worker that owns ``ctx.addr`` (a port or a GPA);
        ``kind`` is Exit.IO_PORT, Exit.IO_STRING or Exit.MMIO.  While the partition's worker is being
        replaced (servicing.py) the access waits in ``Partition.held``."""
        if ctx.partition.servicing:
            ctx.kind = kind
            ctx.partition.held.append((ctx, kind))
            return
        # _next() and _notify(), inline: two calls less on every emulated exit (~1k
        # instructions).
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        ctx.kind = kind
        # One clock read for the departure stamp and the deadline (a read less, ~470
        # instructions): perf_counter_ns is CLOCK_MONOTONIC on Linux, the clock of
        # time.monotonic_ns, which expire_accesses compares with.
        now = perf_counter_ns()
        ctx.deadline_ns = now + WORKER_TIMEOUT_NS
        self.pending[ref] = ctx
        if kind is _IO_PORT:  # (tested first: the port I/O round trip is the one measured)
            frame = _pack_port_notify(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.value, ctx.stamps + (now,))
        elif kind is _IO_STRING:
            frame = self._notify(ref, ctx, kind)
        else:
            frame = _pack_mmio_notify(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.value, ctx.stamps + (now,))
        if not self._router.send(owner, frame):
            # The worker is gone.  Nobody else may complete the access: the VP waits in its
            # intercept and the partition is paused (the root ends a run whose worker died).
            ctx.partition.worker_timeouts += 1
            ctx.deadline_ns = LATE
            if ctx.origin != ctx.vp.peer:
                self.pending.pop(ref)
                self._outbox.error(ctx.origin, m.ExecuteRequest.TYPE, "UNKNOWN_PARTITION",
                                   f"partition {ctx.partition.id}'s worker is gone")
            self.unresponsive(ctx.partition, "is gone")

    def on_access_complete(self, identity: bytes, peer, msg: m.AccessComplete, t_in: int) -> None:
        ctx = self.pending.pop(msg.ref, None)
        if ctx is None or ctx.partition is not peer.partition or ctx.kind is _IO_STRING:
            if ctx is not None:  # another partition's request, or a string access: not completed by this
                self.pending[msg.ref] = ctx
            self._counters["stale_completions"] += 1
            return self._outbox.error(identity, msg.TYPE, "STALE", f"no pending intercept {msg.ref}")
        if ctx.partition.unresponsive:  # (tested here: a call per completion otherwise)
            self.answered(ctx.partition)
        value = 0 if ctx.write else msg.value & ALL_ONES[ctx.size]
        if ctx.deadline_ns == LATE:
            log.warning("partition %d: worker completed intercept %d late; applied now", ctx.partition.id, msg.ref)
        ctx.stamps = msg.stamps + (t_in,)
        if self._tracers:
            self._trace(ctx.partition, ctx.vp, ctx.kind, ctx.write, ctx.addr, ctx.value if ctx.write else value,
                        ctx.stamps)
        self._resume(ctx, value, 0, 0, 0, NO_FAULT, b"", False, ctx.kind.code)  # (positional: ~250 instructions less)

    def on_string_access_complete(self, identity: bytes, peer, msg: m.StringAccessComplete, t_in: int) -> None:
        """A string access done: a read's elements go back in the resume's output.  An
        answer that is not the access's ``count`` elements (a read's) or not empty (a
        write's) is refused, and the access stays pending: the worker's to complete, as any.
        (on_access_complete's checks, for the other kind.)"""
        ctx = self.pending.get(msg.ref)
        if ctx is None or ctx.partition is not peer.partition or ctx.kind is not _IO_STRING:
            self._counters["stale_completions"] += 1
            return self._outbox.error(identity, msg.TYPE, "STALE", f"no pending string access {msg.ref}")
        want = 0 if ctx.write else ctx.count * ctx.size
        if len(msg.data) != want:
            return self._outbox.error(identity, msg.TYPE, "INVALID_FIELD",
                                      f"data: {len(msg.data)} bytes for access {msg.ref}, not {want}")
        del self.pending[msg.ref]
        if ctx.partition.unresponsive:
            self.answered(ctx.partition)
        if ctx.deadline_ns == LATE:
            log.warning("partition %d: worker completed intercept %d late; applied now", ctx.partition.id, msg.ref)
        ctx.stamps = msg.stamps + (t_in,)
        if self._tracers:
            self._trace(ctx.partition, ctx.vp, ctx.kind, ctx.write, ctx.addr, ctx.count, ctx.stamps)
        self._resume(ctx, 0, 0, 0, 0, NO_FAULT, msg.data, False, ctx.kind.code)

    def expire_accesses(self, now: int) -> None:
        """Accesses whose worker did not answer by their deadline (``time.monotonic_ns``):
        counted once each; the VP's stays pending (see the module's docstring), the root's
        gets a STALE error."""
        for ref, ctx in [(ref, ctx) for ref, ctx in self.pending.items() if ctx.deadline_ns <= now]:
            part = ctx.partition
            part.worker_timeouts += 1
            ctx.deadline_ns = LATE
            log.warning("partition %d: worker did not complete intercept %d (%s %#x) in %.0f s", part.id, ref,
                        ctx.kind.value if ctx.kind else "access", ctx.addr, WORKER_TIMEOUT_NS / 1e9)
            if ctx.origin != ctx.vp.peer:
                del self.pending[ref]
                self._outbox.error(ctx.origin, m.ExecuteRequest.TYPE, "STALE",
                                   "the worker did not complete the access in time; it may still carry it out")
            self.unresponsive(part, f"did not complete intercept {ref} in time")

    # -- the workers' health -------------------------------------------------------------------

    def check_workers(self, parts, now: int) -> None:
        """Housekeeping: ping each live partition's worker every PING_INTERVAL_NS (one
        ping outstanding at a time); a ping unanswered for WORKER_TIMEOUT_NS makes the
        partition unresponsive.  ``now`` is ``time.monotonic_ns()``."""
        for ref, ping in self.pings.items():
            if ping.deadline_ns <= now:
                ping.deadline_ns = LATE
                self.unresponsive(ping.partition, "did not answer its health check in time")
        waiting = {ping.partition.id for ping in self.pings.values()}
        for part in parts:
            # A worker still starting up takes the next message for the answer to its own
            # request: it is pinged only once it serves.
            if not part.worker_started or part.id in waiting or part.state is HvPartitionState.FINALIZED:
                continue
            if now - self._last_ping.get(part.id, 0) < PING_INTERVAL_NS:
                continue
            self._last_ping[part.id] = now
            ref = self._next()
            if self._router.send(part.worker, m.WorkerQuery(ref, "ping").encode()):
                self.pings[ref] = PendingQuery(b"", part, now + WORKER_TIMEOUT_NS)
            else:
                self.unresponsive(part, "is gone")

    def unresponsive(self, part: Partition, why: str) -> None:
        """The partition's worker stopped answering: mark the partition and pause it (once
        per stall)."""
        if part.unresponsive or part.state is HvPartitionState.FINALIZED:
            return  # (a stopped partition's worker is gone on purpose)
        part.unresponsive = True
        part.health_pauses += 1
        # Everything already waiting for this worker belongs to this stall: none of it
        # starts another once the worker answers (it answers in order, but not all at once).
        for ctx in self.pending.values():
            if ctx.partition is part:
                ctx.deadline_ns = LATE
        for ping in self.pings.values():
            if ping.partition is part:
                ping.deadline_ns = LATE
        log.error("partition %d: its worker %s: partition unresponsive, paused; its VPs' device accesses "
                  "wait for the worker (none is completed in its place)", part.id, why)
        self._pause(part.cpu, True)

    def answered(self, part: Partition) -> None:
        """The worker answered: it is responsive again (the partition stays paused until
        the root resumes it)."""
        if part.unresponsive:
            part.unresponsive = False
            log.warning("partition %d: its worker answers again; the partition stays paused until resumed",
                        part.id)

    def drop_partition(self, part: Partition) -> int:
        """``ctl stop``: forget every access and question sent to the partition's worker;
        a root waiting for one gets an error.  The number of accesses dropped."""
        dropped = 0
        for ref, ctx in [(r, c) for r, c in self.pending.items() if c.partition is part]:
            del self.pending[ref]
            dropped += 1
            if ctx.origin != ctx.vp.peer:
                self._outbox.error(ctx.origin, m.ExecuteRequest.TYPE, "CONFLICT", f"partition {part.id} was stopped")
        for ref, q in [(r, q) for r, q in self.queries.items() if q.partition is part]:
            del self.queries[ref]
            self._outbox.error(q.origin, m.WorkerQueryRequest.TYPE, "CONFLICT", f"partition {part.id} was stopped")
        for ref in [r for r, q in self.pings.items() if q.partition is part]:
            del self.pings[ref]
        self._last_ping.pop(part.id, None)
        return dropped

    # -- a root's questions ------------------------------------------------------------------

    def query(self, origin: bytes, part: Partition, worker: bytes, query: str = "", *, message=None) -> bool:
        """Ask ``part``'s worker for the root peer ``origin``; False if the worker is gone.
        ``message(ref)``: a request other than a ``worker_query`` (``io clock_step``'s),
        answered by a ``worker_query_reply`` all the same.  ``origin`` empty: nobody waits
        for the answer (servicing's thaw, whose root was already acknowledged)."""
        ref = self._next()
        self.queries[ref] = PendingQuery(origin, part, time.monotonic_ns() + WORKER_TIMEOUT_NS)
        msg = message(ref) if message is not None else m.WorkerQuery(ref, query)
        if not self._router.send(worker, msg.encode()):
            self.queries.pop(ref)
            return False
        return True

    def on_worker_query_reply(self, identity: bytes, peer, msg: m.WorkerQueryReply, t_in: int) -> None:
        ping = self.pings.get(msg.ref)
        if ping is not None and ping.partition is peer.partition:
            del self.pings[msg.ref]
            self.answered(ping.partition)
            return
        q = self.queries.pop(msg.ref, None)
        if q is None or q.partition is not peer.partition:
            if q is not None:
                self.queries[msg.ref] = q
            self._counters["stale_completions"] += 1
            return
        if q.origin:
            self._outbox.send(q.origin, msg)

    def expire_queries(self, now: int) -> None:
        for ref in [r for r, q in self.queries.items() if q.deadline_ns <= now]:
            q = self.queries.pop(ref)
            if q.origin:
                self._outbox.error(q.origin, m.WorkerQueryRequest.TYPE, "STALE", "the worker did not answer in time")
