"""The partition reference TSC page (TLFS "Partition Reference TSC Mechanism").

HV_X64_MSR_REFERENCE_TSC (0x40000021), partition-wide: bit 0 enable, 63:12 the GPFN of the
page; it resets to 0 and reads back as written.  Access needs AccessPartitionReferenceTsc
(CPUID 0x40000003 EAX bit 9), else #GP.  While enabled, the hypervisor keeps in the page
``TscSequence`` u32 @0, reserved u32 @4, ``TscScale`` u64 @8, ``TscOffset`` i64 @16, so
that the guest computes the reference time (100 ns units since the partition was created)
without an exit:

    ReferenceTime = ((RDTSC() * TscScale) >> 64) + TscOffset

reading the sequence before and after and retrying on a change; sequence 0 means "invalid:
use HV_X64_MSR_TIME_REF_COUNT".

hvstack's guest has no hardware TSC: its RDTSC (``partitions.vp.Vp.rdtsc``) reads the
host's CLOCK_MONOTONIC in nanoseconds (``time.perf_counter_ns``: a 1 GHz invariant TSC,
the same on every VP).  So the scale is 2**64 / 100 and the offset the partition's
creation in that clock, in 100 ns units.  The hypervisor publishes the page when the guest
enables it (and again after a reset re-enables it): the clock never changes rate, so it is
never updated while enabled.  Disabling leaves the page as it is (TLFS).
"""

from __future__ import annotations

import time

from proto.codes import HvMsr, HvPrivilege, X86Exception
from proto.synic_messages import HV_REFERENCE_TSC_PAGE

GP = int(X86Exception.GP)
OK = int(X86Exception.NONE)
REFERENCE_TSC_ENABLE = 1 << 0
REFERENCE_TSC_WRITABLE = 0xFFFFFFFFFFFFF001
# ((tsc_ns * SCALE) >> 64) == tsc_ns // 100, to within one unit.
TSC_SCALE = (1 << 64) // 100
# The page's sequence as published; 0 (invalid) and 0xFFFFFFFF are never used (KVM).
TSC_SEQUENCE_FIRST = 1


def handles(msr: int) -> bool:
    return msr == HvMsr.HV_X64_MSR_REFERENCE_TSC


def rdmsr(part, vp, msr: int) -> tuple[int, int]:
    if not part.privileges & HvPrivilege.AccessPartitionReferenceTsc:
        return GP, 0
    return OK, part.reference_tsc


def wrmsr(part, vp, msr: int, value: int) -> int:
    if not part.privileges & HvPrivilege.AccessPartitionReferenceTsc:
        return GP
    part.reference_tsc = value & REFERENCE_TSC_WRITABLE
    if value & REFERENCE_TSC_ENABLE:
        vp.synic.actions.add("tsc_page")
    return OK


def page_values(part) -> tuple[int, int]:
    """(TscScale, TscOffset) for the guest's perf_counter_ns TSC: the reference time is
    (CLOCK_MONOTONIC ns − the partition's creation) / 100."""
    return TSC_SCALE, (_clock_skew_ns() - part.created_ns) // 100


def _clock_skew_ns() -> int:
    """monotonic_ns() − perf_counter_ns(): the partition's creation is in the one clock,
    the guest's TSC in the other.  Both are CLOCK_MONOTONIC on Linux, but measure rather
    than assume: a monotonic read between two perf_counter reads, the tightest of five
    (a preemption between two reads would otherwise skew the page for good)."""
    best = None
    for _ in range(5):
        a = time.perf_counter_ns()
        mono = time.monotonic_ns()
        b = time.perf_counter_ns()
        if best is None or b - a < best[0]:
            best = (b - a, mono - (a + b) // 2)
    return best[1]


def publish(ram, off: int, part) -> None:
    """Write the page at ``off`` of the partition's RAM view: sequence 0 first (a guest
    reading now falls back to the MSR), then scale and offset, then the new sequence."""
    scale, offset = page_values(part)
    part.tsc_sequence = part.tsc_sequence % 0xFFFFFFFE + 1 if part.tsc_sequence else TSC_SEQUENCE_FIRST
    ram[off:off + 4] = bytes(4)
    ram[off + 8:off + 24] = HV_REFERENCE_TSC_PAGE.pack(0, 0, scale, offset)[8:]
    ram[off:off + 4] = part.tsc_sequence.to_bytes(4, "little")

