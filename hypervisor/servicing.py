"""Worker servicing: handing a partition's device role from one worker process to another
while its VPs are paused (``ctl RUN service PARTITION``, or a restart after its worker died).

The root drives it with ``service_request``s (:data:`proto.service_messages.SERVICE_ACTIONS`):

1. ``save`` (the partition paused): from now on the partition's new device accesses wait
   in ``Partition.held`` instead of going to a worker, and the worker gets a
   ``device_save``.  A worker answers its messages in order, so every access forwarded
   before it is completed (and applied to the VP) before the worker saves: the saved state
   includes exactly those accesses, and the held ones are not in it.
2. ``expect_worker``: the next worker hello for this partition replaces the current worker
   (:meth:`hypervisor.peers.Peers.on_hello_proof`); the old connection is retired — nothing
   it sends is taken from then on — and the new worker may claim the same ranges again.
3. ``commit``, once the new worker has started (hello, ranges, memory): the held accesses
   go to it, and so do any the old worker was sent and never completed (a worker that died:
   its state is the last checkpoint, from before those accesses, so they are carried out
   once, on that state); then the partition resumes.

So a guest's access at the moment of the pause is done exactly once: by the old worker
before its save (and in the saved state), or by the new worker after its restore.
"""

from __future__ import annotations

import logging

from proto import messages as m
from proto.codes import HvPartitionState
from proto.exits import Exit

log = logging.getLogger("hypervisor")


class Servicing:
    def __init__(self, *, table, outbox, forwarding, sched, peers) -> None:
        self._peers = peers
        self._table = table
        self._outbox = outbox
        self._forwarding = forwarding
        self._sched = sched

    def on_service_request(self, identity: bytes, peer, msg: m.ServiceRequest, t_in: int) -> None:
        part = self._table.get(msg.partition)
        if part is None:
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {msg.partition}")
        if part.state in (HvPartitionState.FINALIZED, HvPartitionState.DELETED):
            return self._outbox.error(identity, msg.TYPE, "CONFLICT", f"partition {part.id} is stopped")
        action = msg.action
        if action == "save":
            if not part.cpu.paused:
                return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN", f"pause partition {part.id} first")
            if part.worker is None or not part.worker_started:
                return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION",
                                          f"partition {part.id} has no started worker")
            if not self._forwarding.query(identity, part, part.worker,
                                          message=lambda ref: m.DeviceSave(ref, "save")):
                return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION",
                                          f"partition {part.id}'s worker is gone")
            part.servicing = True  # accesses from now on are held: they are not in the save
            return  # the worker's worker_query_reply answers
        if action == "expect_worker":
            part.servicing = True
            part.replacement_expected = True
            log.info("partition %d: the root expects a replacement worker", part.id)
        elif action == "commit":
            if part.replacement_expected or part.reinstall or not part.worker_started:
                return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN",
                                          f"partition {part.id}'s new worker has not started yet")
            self._release(part)
            part.previous_worker = None  # the handover is done: no way back
            part.unresponsive = False  # a new worker: the old one's stall is over
            self._sched.pause(part.cpu, False)
            log.info("partition %d: worker handover #%d committed; resumed", part.id, part.worker_handovers)
        else:  # abort, thaw
            part.replacement_expected = part.reinstall = False
            if part.previous_worker is not None:
                self._roll_back(part)
            if part.worker is not None:  # its answer goes nowhere: the root gets the ack below
                self._forwarding.query(b"", part, part.worker, message=lambda ref: m.DeviceSave(ref, "thaw"))
            self._release(part)
            if action == "abort":
                log.warning("partition %d: worker handover aborted; the worker keeps it (still paused)", part.id)
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def _roll_back(self, part) -> None:
        """An abort after the new worker's hello: the partition goes back to the worker
        the handover retired (frozen since its save, which the thaw ends), with its ranges;
        the new worker's connection is retired in its turn, so nothing it sends is taken."""
        peers = self._peers.by_identity
        new, old = part.worker, part.previous_worker
        if new is not None and new in peers:
            peers[new].role, peers[new].name = "retired", f"retired-worker:{part.id}"
        if old in peers:
            peers[old].role, peers[old].name = "worker", f"worker:{part.id}"
        part.worker, part.previous_worker, part.worker_started = old, None, old in peers
        part.port_owner = dict.fromkeys(part.port_owner, old)
        part.mmio = [(b, e, old) for b, e, _ in part.mmio]
        part.worker_rollbacks += 1
        log.warning("partition %d: handover rolled back; its previous worker has it again", part.id)

    def _release(self, part) -> None:
        """Accesses waiting for this partition's worker go to its (new) worker: first the
        ones sent to the old worker and never completed, then the held ones, in order, with
        the partition's reset count (``device_reset``, which a worker whose devices were put
        through that reset lets pass) in its place among them."""
        part.servicing = False
        # An access whose exit came before the partition's last reset was sent to the old
        # worker before its device_reset: it goes first, then the reset count (a successor
        # restored to before that reset catches up on it), then the rest.
        resent = self._forwarding.resend(part, before_reset=True)
        if part.resets:
            self._outbox.send(part.worker, m.DeviceReset(part.resets))
        resent += self._forwarding.resend(part, before_reset=False)
        held, part.held = part.held, []
        for ctx, kind in held:
            owner = part.port_owner.get(ctx.addr) if kind is Exit.IO_PORT else part.mmio_owner(ctx.addr)
            self._forwarding.forward(ctx, owner or part.worker, kind)
        if resent or held:
            log.info("partition %d: %d uncompleted and %d held device accesses sent to its worker",
                     part.id, resent, len(held))
