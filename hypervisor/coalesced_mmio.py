"""Coalesced MMIO (issue 12): stores to a worker's device memory that need no immediate
answer come in batches, not one four-hop exit each — KVM's coalesced MMIO
(KVM_REGISTER_COALESCED_MMIO), designed for hvstack's trust model.

* The **worker** names the regions (``coalesced_mmio_register``): each must lie inside an
  MMIO range it claimed (``install_intercept``), once; a replacement worker (servicing) may
  name the same ones again.  In KVM the VMM registers zones with the kernel alike.
* A **VP** asks for its partition's regions (``coalesced_mmio_query``), appends stores there
  to its partition's ring (``partitions/coalesced.py``) and sends the ring as one
  ``coalesced_mmio_batch`` just before the partition's next exit (any exit: an access to the
  device by port or by a non-coalesced MMIO access, a HLT, a quantum end), or when it is full.
  The VP's connection is ordered and so is the worker's, so the device sees the batch before
  anything the VP did after it.
* The **hypervisor** (here) trusts nothing in a batch: the message's field check bounds it
  (at most COALESCED_MMIO_MAX writes, each of an MMIO size, its value fitting it), the
  sender must be a VP of that partition naming its own index and executing guest code (not
  waiting in an exit or HLT), and every write must lie wholly inside one registered region.  Any failure refuses the whole batch with an
  error reply (NOT_PERMITTED / UNKNOWN_VP / OUT_OF_TURN), counted as ``refused``; nothing of
  it reaches the worker, and nothing else changes.  A good batch goes to the worker
  unchanged, counted (``writes``, ``batches``) in the partition's status.

Where it differs from KVM: KVM's ring is a page shared by the kernel and the VMM, written
on an exit to the kernel (the guest still exits to KVM; only the exit to user space is
saved).  Here the store never leaves the partition process until the batch does, so the
batch crosses a trust boundary and is checked here, as a whole; and the ring is flushed at
the partition's next exit rather than the VMM's next look.
"""

from __future__ import annotations

import logging

from proto import messages as m
from proto.coalesced_mmio_messages import in_zones
from proto.errors import Refused

from hypervisor.partitions import Partition

log = logging.getLogger("hypervisor")


class CoalescedMmioRefused(Refused):
    """A batch or a registration that is not allowed; ``code`` is an ERROR_CODES name."""


def check_zones(part: Partition, zones) -> list[tuple[int, int]]:
    """A worker's registration: every zone inside one of its claimed MMIO ranges, none
    overlapping another.  Returns them as (start, end), sorted."""
    if not part.intercepts_installed:
        raise CoalescedMmioRefused("OUT_OF_TURN", "claim the MMIO ranges (install_intercept) first")
    out = sorted((gpa, gpa + length) for gpa, length in zones)
    for start, end in out:
        if not any(base <= start and end <= limit for base, limit, _ in part.mmio):
            raise CoalescedMmioRefused("NOT_PERMITTED", f"{start:#x}-{end - 1:#x} is not inside a claimed MMIO range")
    for (_, end), (start, _) in zip(out, out[1:]):
        if start < end:
            raise CoalescedMmioRefused("CONFLICT", f"coalesced zone at {start:#x} overlaps another")
    return out


def check_batch(zones: list[tuple[int, int]], writes) -> None:
    """Every write wholly inside one registered zone (the field check did sizes and bounds)."""
    if writes and not zones:
        raise CoalescedMmioRefused("OUT_OF_TURN", "the partition has no coalesced MMIO zones")
    for gpa, size, _ in writes:
        if not in_zones(zones, gpa, size):
            raise CoalescedMmioRefused("NOT_PERMITTED", f"write at {gpa:#x}+{size} is outside the coalesced zones")


class CoalescedMmio:
    def __init__(self, *, outbox, router) -> None:
        self._outbox = outbox
        self._router = router

    def on_register(self, identity: bytes, peer, msg, t_in: int) -> None:
        """Worker: its coalesced zones (once; a successor worker may repeat them exactly)."""
        part = peer.partition
        try:
            zones = check_zones(part, msg.zones)
            if part.coalesced_zones and zones != part.coalesced_zones:
                raise CoalescedMmioRefused("CONFLICT", "coalesced zones are registered already")
        except CoalescedMmioRefused as e:
            return self._outbox.error(identity, msg.TYPE, e.code, str(e))
        part.coalesced_zones = zones
        log.info("partition %d: coalesced MMIO %s", part.id, ", ".join(f"{s:#x}-{e - 1:#x}" for s, e in zones))
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def on_query(self, identity: bytes, peer, msg, t_in: int) -> None:
        """VP: its partition's zones (empty until its worker registered some)."""
        zones = [(s, e - s) for s, e in peer.partition.coalesced_zones]
        self._outbox.send(identity, m.CoalescedMmioZones(msg.seq, zones))

    def on_batch(self, identity: bytes, peer, msg, t_in: int) -> None:
        """VP: a batch of stores, checked whole, then forwarded to the partition's worker."""
        part = peer.partition
        counts = part.coalesced_mmio
        try:
            if msg.vp != peer.vp.index:
                raise CoalescedMmioRefused("UNKNOWN_VP", f"the batch names VP {msg.vp}; its sender is VP {peer.vp.index}")
            if not peer.vp.state.executing:
                # Stores are made by guest code: a VP waiting in an exit or HLT has none to
                # send (nor may it keep its worker busy without an LP).
                raise CoalescedMmioRefused("OUT_OF_TURN", f"VP {peer.vp.index} is {peer.vp.state.value}, not executing")
            check_batch(part.coalesced_zones, msg.writes)
        except CoalescedMmioRefused as e:
            counts["refused"] += 1
            return self._outbox.error(identity, msg.TYPE, e.code, str(e))
        if not msg.writes:
            return
        if part.worker is None:
            # Between a worker's death and its successor's hello (on_worker_exit = "restart"):
            # the guest did nothing wrong, so no error goes back (a VP took one for its exit's
            # answer and died — CI); the stores are lost, as a batch in flight at a handover.
            counts["undelivered"] += 1
            return
        counts["batches"] += 1
        counts["writes"] += len(msg.writes)
        if not self._router.send(part.worker, msg.encode()):
            counts["undelivered"] += 1  # the worker is gone: its supervision says so
