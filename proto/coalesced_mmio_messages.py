"""Coalesced MMIO (ids 80–83; issue 12): stores to a device region whose writes need no
immediate answer travel in batches instead of one exit each, as KVM's coalesced MMIO ring
(KVM_REGISTER_COALESCED_MMIO) does.  Imported at the end of ``proto/messages.py`` so that
these are among its messages.

The worker registers the regions (``coalesced_mmio_register``); a VP asks for them once
(``coalesced_mmio_query`` → ``coalesced_mmio_zones``) and then appends its stores there to
its partition's ring, which goes to the hypervisor as one ``coalesced_mmio_batch`` before
the partition's next exit; the hypervisor checks every write against the registered
regions and forwards the batch to the worker (``hypervisor/coalesced_mmio.py``).
"""


from proto.fields import U16, U32, gpa_ranges, mmio_writes
from proto.messages import MMIO_SIZES, Message, message

# At most this many writes in one batch: KVM's ring on x86 (KVM_COALESCED_MMIO_MAX, a 4 KiB
# page of 24-byte entries after its 8-byte header: (4096 - 8) // 24).
COALESCED_MMIO_MAX = 170


def in_zones(zones, gpa: int, size: int) -> bool:
    """Whether the store's bytes lie wholly inside one of ``zones`` ((start, end) pairs) —
    the VP's test before it coalesces a store and the hypervisor's on every batched one."""
    end = gpa + size
    for start, limit in zones:
        if start <= gpa and end <= limit:
            return True
    return False


@message(80, "coalesced_mmio_register")
class CoalescedMmioRegister(Message):
    """Worker → hypervisor: these parts of its MMIO ranges take coalesced writes (the
    KVM_REGISTER_COALESCED_MMIO idea).  Each must lie inside one MMIO range the worker
    claimed; answered with an ack."""

    zones: gpa_ranges


@message(81, "coalesced_mmio_query")
class CoalescedMmioQuery(Message):
    """VP → hypervisor: which regions of its partition take coalesced writes?"""

    seq: U32


@message(82, "coalesced_mmio_zones")
class CoalescedMmioZones(Message):
    """Hypervisor → VP: the answer to ``coalesced_mmio_query`` ``seq`` (may be empty)."""

    seq: U32
    zones: gpa_ranges


@message(83, "coalesced_mmio_batch")
class CoalescedMmioBatch(Message):
    """VP → hypervisor (``vp`` its own index), then hypervisor → worker: stores the VPs of
    one partition made to its coalesced regions, in the order they made them.  The
    hypervisor refuses the whole batch if any write is outside those regions; the worker
    applies them in order, answering nothing."""

    vp: U16
    writes: mmio_writes(COALESCED_MMIO_MAX, MMIO_SIZES)


__all__ = ["COALESCED_MMIO_MAX", "CoalescedMmioBatch", "CoalescedMmioQuery", "CoalescedMmioRegister",
           "CoalescedMmioZones"]
