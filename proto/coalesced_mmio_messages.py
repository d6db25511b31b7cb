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


from typing import Any

from proto.fields import U16, U32, FieldError, _spec, gpa_ranges
from proto.messages import MMIO_SIZES, Message, message

# At most this many writes in one batch: KVM's ring on x86 (KVM_COALESCED_MMIO_MAX, a 4 KiB
# page of 24-byte entries after its 8-byte header: (4096 - 8) // 24).
COALESCED_MMIO_MAX = 170
GPA_LIMIT = 1 << 52  # guest-physical addresses have at most 52 bits (as gpa_ranges)


def mmio_writes(max_items: int):
    """``[[gpa, size, value], …]``: at most ``max_items`` stores, each of an MMIO size, its
    value fitting that size, its bytes inside guest-physical space.  Whether they lie in a
    coalesced region is the hypervisor's check (it knows the regions)."""

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of [gpa, size, value], got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} writes, at most {max_items}")
        out = []
        for w in v:
            if type(w) not in (tuple, list) or len(w) != 3:
                raise FieldError(f"write {w!r} is not [gpa, size, value]")
            gpa, size, value = w
            if type(gpa) is not int or type(size) is not int or type(value) is not int:
                raise FieldError(f"write {w!r}: gpa, size and value are integers")
            if size not in MMIO_SIZES:
                raise FieldError(f"write of {size} bytes (sizes: {MMIO_SIZES})")
            if not 0 <= gpa <= GPA_LIMIT - size:
                raise FieldError(f"write at {gpa:#x}+{size} is outside guest-physical space")
            if not 0 <= value < 1 << (8 * size):
                raise FieldError(f"value {value:#x} does not fit {size} bytes")
            out.append((gpa, size, value))
        return tuple(out)

    check.__name__ = f"mmio_writes{max_items}"
    return _spec(check, "mmio_writes", max_items=max_items)


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
    writes: mmio_writes(COALESCED_MMIO_MAX)


__all__ = ["COALESCED_MMIO_MAX", "CoalescedMmioBatch", "CoalescedMmioQuery", "CoalescedMmioRegister",
           "CoalescedMmioZones"]
