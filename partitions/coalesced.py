"""The partition's coalesced MMIO ring (issue 12; KVM's coalesced MMIO, checked by the
hypervisor in ``hypervisor/coalesced_mmio.py``).

Stores to a region the worker registered as coalesced (the VGA text buffer) do not exit:
a VP appends them to its partition's ring, one ring for all its VPs as KVM has one per VM,
and the ring goes to the hypervisor as one ``coalesced_mmio_batch`` on the connection of
whichever VP exits next, just before that exit — so the device sees them before whatever that
VP does next (the device's port, a read of its memory, a HLT).  Across VPs the order is not
kept: a batch flushed by another VP travels on that VP's connection, and an exit of the VP
that made the stores may reach the hypervisor first (README, "Coalesced MMIO").  A full ring
is sent at once.  The regions are asked of the hypervisor once,
at the partition's first MMIO store.
"""

from __future__ import annotations

import threading

from proto import messages as m
from proto.coalesced_mmio_messages import COALESCED_MMIO_MAX
from proto.errors import PeerTimeout

ZONES_TIMEOUT_MS = 10_000  # the hypervisor answers at once; this only bounds a lost reply


class CoalescedRing:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.zones: list[tuple[int, int]] | None = None  # (start, end); None: not asked yet
        # Never rebound (cleared in place): a VP keeps a reference and tests it on each exit.
        self.writes: list[tuple[int, int, int]] = []
        self.sent_writes = 0
        self.sent_batches = 0

    def append(self, send, vp_index: int, gpa: int, size: int, value: int) -> None:
        with self.lock:
            self.writes.append((gpa, size, value))
            if len(self.writes) >= COALESCED_MMIO_MAX:
                self._flush(send, vp_index)

    def flush(self, send, vp_index: int) -> None:
        """Send what the ring holds on ``send`` (the connection of the VP about to exit)."""
        with self.lock:  # held while sending: batches leave in the order they were filled
            if self.writes:
                self._flush(send, vp_index)

    def _flush(self, send, vp_index: int) -> None:
        send(m.CoalescedMmioBatch.pack(vp_index, self.writes))
        self.sent_writes += len(self.writes)
        self.sent_batches += 1
        self.writes.clear()

    def clear(self) -> None:
        """A reset: stores not yet sent are lost with the rest of the machine's state."""
        with self.lock:
            self.writes.clear()


def query_zones(dealer, seq: int, pending: list, on_error) -> list[tuple[int, int]]:
    """Ask the hypervisor for the partition's coalesced zones, as (start, end).  A posted
    interrupt that comes meanwhile is kept in ``pending``, as an exit's wait keeps it; an
    error goes to ``on_error`` (the VP's one handling of them)."""
    dealer.send(m.CoalescedMmioQuery(seq).encode())
    waited = 0
    while waited < ZONES_TIMEOUT_MS:
        if not dealer.wait(100):
            waited += 100
            continue
        msg = m.decode(dealer.recv_ready())
        if msg.__class__ is m.CoalescedMmioZones and msg.seq == seq:
            return [(gpa, gpa + length) for gpa, length in msg.zones]
        if msg.__class__ is m.InterruptNotify:
            pending.append((msg.interrupt, msg.irq_stamps))
        elif msg.__class__ is m.ErrorReply:
            on_error(msg)
    raise PeerTimeout(f"no coalesced_mmio_zones within {ZONES_TIMEOUT_MS} ms")
