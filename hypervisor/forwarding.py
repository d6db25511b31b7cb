"""Forwarding to workers: the intercept table they install, the accesses and questions sent
to them, their answers, and what happens when an answer does not come.

A port or MMIO access a worker claims is the emulated path, four hops: the VP's exit is
suspended here (its :class:`~hypervisor.intercepts.ExitContext` waits in :attr:`pending`
under a reference), the worker gets a ``port_notify`` / ``mmio_notify``, and its
``access_complete`` resumes the VP.  A worker that has not answered within
:data:`WORKER_TIMEOUT_NS` is presumed hung or dead: the VP gets all-ones for a read, as
Xen's null handler gives, and the timeout is counted; a worker that is gone when the access
is sent is counted the same way, at once.  A root's question for a worker
(``worker_query_request``) waits alike, and times out with a STALE error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from time import perf_counter_ns

from proto import messages as m
from proto.exits import Exit

from hypervisor.intercepts import ALL_ONES, ExitContext
from hypervisor.partitions import Partition

log = logging.getLogger("hypervisor")

WORKER_TIMEOUT_NS = 2_000_000_000


@dataclass(slots=True)
class PendingQuery:
    """A root's question forwarded to a worker."""

    origin: bytes
    partition: Partition
    deadline_ns: int


class Forwarding:
    def __init__(self, *, router, outbox, counters: dict, resume, tracer) -> None:
        self._router = router
        self._outbox = outbox
        self._counters = counters
        self._resume = resume  # Dispatcher.resume
        self._tracers = tracer.tracers
        self._trace = tracer.trace
        self.pending: dict[int, ExitContext] = {}  # accesses sent to workers, by reference
        self.queries: dict[int, PendingQuery] = {}
        self._next_ref = 1

    def _next(self) -> int:
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        return ref

    # -- the intercept table (the HvCallInstallIntercept idea) ---------------------------------

    def on_install_intercept(self, identity: bytes, peer, msg: m.InstallIntercept, t_in: int) -> None:
        part = peer.partition
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

    # -- accesses: the emulated path -----------------------------------------------------------

    def forward(self, ctx: ExitContext, owner: bytes, kind: Exit) -> None:
        """Suspend the exit and notify the worker that owns ``ctx.addr`` (a port or a GPA);
        ``kind`` is Exit.IO_PORT or Exit.MMIO."""
        ref = self._next()
        ctx.kind = kind
        ctx.deadline_ns = time.monotonic_ns() + WORKER_TIMEOUT_NS
        self.pending[ref] = ctx
        if kind is Exit.IO_PORT:
            notify = m.PortNotify(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.value,
                                  ctx.stamps + (perf_counter_ns(),))
        else:
            notify = m.MmioNotify(ref, ctx.vp.index, ctx.addr, ctx.size, ctx.write, ctx.value,
                                  ctx.stamps + (perf_counter_ns(),))
        if not self._router.send(owner, notify.encode()):
            # The worker is gone: complete now rather than leave the VP waiting.
            self.pending.pop(ref)
            ctx.partition.worker_timeouts += 1
            ctx.stamps = ()
            self._resume(ctx, 0 if ctx.write else ALL_ONES[ctx.size])

    def on_access_complete(self, identity: bytes, peer, msg: m.AccessComplete, t_in: int) -> None:
        ctx = self.pending.pop(msg.ref, None)
        if ctx is None or ctx.partition is not peer.partition:
            if ctx is not None:  # another partition's request: not this worker's to complete
                self.pending[msg.ref] = ctx
            self._counters["stale_completions"] += 1
            return self._outbox.error(identity, msg.TYPE, "STALE", f"no pending intercept {msg.ref}")
        value = 0 if ctx.write else msg.value & ALL_ONES[ctx.size]
        ctx.stamps = msg.stamps + (t_in,)
        if self._tracers:
            self._trace(ctx.partition, ctx.vp, ctx.kind, ctx.write, ctx.addr, ctx.value if ctx.write else value,
                        ctx.stamps)
        self._resume(ctx, value, path=ctx.kind.code)

    def expire_accesses(self, now: int) -> None:
        """Accesses whose worker did not answer by their deadline (``time.monotonic_ns``)."""
        for ref in [ref for ref, ctx in self.pending.items() if ctx.deadline_ns <= now]:
            ctx = self.pending.pop(ref)
            ctx.partition.worker_timeouts += 1
            log.warning("partition %d: worker did not complete intercept %d in time", ctx.partition.id, ref)
            ctx.stamps = ()
            self._resume(ctx, 0 if ctx.write else ALL_ONES[ctx.size])

    # -- a root's questions ------------------------------------------------------------------

    def query(self, origin: bytes, part: Partition, worker: bytes, query: str) -> bool:
        """Ask ``part``'s worker for the root peer ``origin``; False if the worker is gone."""
        ref = self._next()
        self.queries[ref] = PendingQuery(origin, part, time.monotonic_ns() + WORKER_TIMEOUT_NS)
        if not self._router.send(worker, m.WorkerQuery(ref, query).encode()):
            self.queries.pop(ref)
            return False
        return True

    def on_worker_query_reply(self, identity: bytes, peer, msg: m.WorkerQueryReply, t_in: int) -> None:
        q = self.queries.pop(msg.ref, None)
        if q is None or q.partition is not peer.partition:
            if q is not None:
                self.queries[msg.ref] = q
            self._counters["stale_completions"] += 1
            return
        self._outbox.send(q.origin, msg)

    def expire_queries(self, now: int) -> None:
        for ref in [r for r, q in self.queries.items() if q.deadline_ns <= now]:
            q = self.queries.pop(ref)
            self._outbox.error(q.origin, m.WorkerQueryRequest.TYPE, "STALE", "the worker did not answer in time")
