"""The guest's SynIC driver (as Linux's drivers/hv/hv.c ``hv_synic_enable_regs`` and
``vmbus_isr`` do it): per VP, a SIM page and a SIEF page, SINT vectors, SCONTROL; one
interrupt handler per SINT that takes the message out of its slot, frees the slot, writes
EOM when another message is pending, and ends the interrupt.

Other drivers register what they want of a SINT: ``on_message(sint, fn)`` —
``fn(vp, message_type, payload)`` for each message — and ``on_events(sint, fn)`` —
``fn(vp, sint)`` when the SINT fires, to scan that SINT's event flags (``take_events``).
The VMBus driver uses SINT 2 (VMBUS_MESSAGE_SINT); the synthetic timers' messages come on
:data:`STIMER_SINT`.

Guest memory (each VP its own pages, below the VP assist and hypercall pages):
SIMP at ``SYNIC_AREA + 0x2000 * vp``, SIEFP one page above; the reference TSC page, one per
partition, at :data:`TSC_PAGE_GPA`.  SINT n's vector is ``SINT_VECTOR_BASE + n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto.codes import HvMsr, HvPrivilege
from proto.synic_messages import (
    HV_MESSAGE_FLAG_PENDING,
    HV_MESSAGE_HEADER,
    HV_REFERENCE_TSC_PAGE,
    reference_time,
)

from partitions.vp import Vp

SYNIC_AREA = 0x80000  # 0x80000–0x99FFF: SIMP and SIEFP pages of up to 13 VPs
MAX_SYNIC_VPS = 13
TSC_PAGE_GPA = 0x9B000
SINT_VECTOR_BASE = 0xD0  # SINT n → vector 0xD0 + n (above the PIC's, below the APIC timers')
SINT0 = HvMsr.HV_X64_MSR_SINT0
STIMER_SINT = 3  # the synthetic timers' messages (VMBus has SINT 2)
VMBUS_MESSAGE_SINT = 2
APIC_BASE, APIC_EOI, APIC_SVR = 0xFEE00000, 0xB0, 0xF0


@dataclass
class SynicState:
    """One partition's SynIC driver state: which VPs are set up (for which boot), and the
    handlers other drivers registered."""

    generation: int = -1  # the boot they were set up in (a reset sets everything up again)
    vps: set = field(default_factory=set)
    message_handlers: dict = field(default_factory=dict)  # sint → fn(vp, type, payload)
    event_handlers: dict = field(default_factory=dict)  # sint → fn(vp, sint)
    tsc_page: bool = False
    stimer: dict | bool | None = None  # the stimer workload's state (synic_workloads.py)


def state(sys) -> SynicState:
    st = sys.synic
    if st.generation != sys.booted_generation:
        sys.synic = st = SynicState(generation=sys.booted_generation,
                                    message_handlers=st.message_handlers, event_handlers=st.event_handlers)
    return st


def offered(sys) -> bool:
    return bool(sys.hv.privileges & HvPrivilege.AccessSynicMsrs)


def simp_gpa(vp: Vp) -> int:
    return SYNIC_AREA + 0x2000 * vp.index


def siefp_gpa(vp: Vp) -> int:
    return simp_gpa(vp) + 0x1000


def on_message(sys, sint: int, fn) -> None:
    state(sys).message_handlers[sint] = fn


def on_events(sys, sint: int, fn) -> None:
    state(sys).event_handlers[sint] = fn


def setup(vp: Vp, sys, sints: tuple[int, ...] = (VMBUS_MESSAGE_SINT, STIMER_SINT)) -> bool:
    """Enable this VP's SynIC (once per boot): SIMP, SIEFP, the SINTs' vectors unmasked,
    then SCONTROL — in Linux's order.  False where the SynIC is not offered."""
    st = state(sys)
    if vp.index in st.vps:
        return True
    if not offered(sys) or vp.index >= MAX_SYNIC_VPS:
        return False
    vp.write(APIC_BASE + APIC_SVR, 4, 0x1FF)  # the local APIC software-enabled
    vp.wrmsr(HvMsr.HV_X64_MSR_SIMP, simp_gpa(vp) | 1)
    vp.wrmsr(HvMsr.HV_X64_MSR_SIEFP, siefp_gpa(vp) | 1)
    for sint in sints:
        _install(vp, sys, sint)
        vp.wrmsr(SINT0 + sint, SINT_VECTOR_BASE + sint)  # unmasked; no AutoEOI, no polling
    vp.wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 1)
    st.vps.add(vp.index)
    return True


def _install(vp: Vp, sys, sint: int) -> None:
    """SINT ``sint``'s entry in the VP's IDT: :func:`_isr`."""
    vp.set_handler(SINT_VECTOR_BASE + sint, lambda v, vec, sys=sys: _isr(v, vec, sys))


def resume_vp(vp: Vp, sys, sints: tuple[int, ...] = (VMBUS_MESSAGE_SINT, STIMER_SINT)) -> None:
    """A resumed kernel's SINT handlers, on every VP before it enables interrupts.

    The IDT is kernel code, restored with the kernel's image; the Python guest's handlers
    are Python functions, gone with the saved process, so a resumed kernel installs them
    again first.  The restored SynIC's SINTs are unmasked from the start: a SINT 2
    interrupt (the restored VSP signalling a channel, a frame from another partition, a
    vector pending at the save) reaches the VP as soon as it enables interrupts, long
    before the VMBus driver resumes.  Taken with no handler, it was never ended: its vector
    stayed in service in the local APIC, whose priority then held every later SINT 2
    interrupt in the IRR for good — the resumed netvsc's GPADL_TORNDOWN sat in its slot
    with nobody told, while the disk, which polls its ring on every timer tick, went on.
    Taken by :func:`_isr` before a driver registered, the interrupt is ended and a message
    stays in its slot for the driver (``vmbus_resume.resume_bus`` reads it)."""
    for sint in sints:
        _install(vp, sys, sint)


def _isr(vp: Vp, vector: int, sys) -> None:
    """The SINT's interrupt: its message first (copy out, free the slot, EOM if more are
    pending), then its event flags' handler, then the end of interrupt."""
    sint = vector - SINT_VECTOR_BASE
    take_message(vp, sys, sint)
    handler = state(sys).event_handlers.get(sint)
    if handler is not None:
        handler(vp, sint)
    eoi(vp, sys)


def take_message(vp: Vp, sys, sint: int) -> None:
    """The message in ``sint``'s slot, if any, to its handler: copied out, the slot freed,
    EOM if more are pending.  Also called by a resumed kernel (partitions/vmbus_resume.py):
    a message left in the slot at the save whose interrupt the restored kernel never took
    would hold every later message behind it for good."""
    handler = state(sys).message_handlers.get(sint)
    if handler is None:
        return  # no driver yet: the message waits in its slot for the one that registers
    slot = simp_gpa(vp) + 256 * sint
    message_type = vp.read(slot, 4)
    if not message_type:
        return
    header = vp.mem.read(slot, HV_MESSAGE_HEADER.size)
    _, size, flags, _, _ = HV_MESSAGE_HEADER.unpack(header)
    payload = vp.mem.read(slot + HV_MESSAGE_HEADER.size, min(size, 240))
    vp.write(slot, 4, 0)  # MessageType = HvMessageTypeNone: the slot is free
    if flags & HV_MESSAGE_FLAG_PENDING:
        vp.wrmsr(HvMsr.HV_X64_MSR_EOM, 0)  # another waits: have it delivered
    vp.counters["synic_messages"] = vp.counters.get("synic_messages", 0) + 1
    handler(vp, message_type, payload)


def eoi(vp: Vp, sys) -> None:
    if sys.hv.privileges & HvPrivilege.AccessApicMsrs:
        vp.wrmsr(HvMsr.HV_X64_MSR_EOI, 0)
    else:
        vp.write(APIC_BASE + APIC_EOI, 4, 0)


def take_events(vp: Vp, sint: int) -> list[int]:
    """The event flags of ``sint`` that are set, each cleared atomically (LOCK AND, against
    the hypervisor setting flags from its own process: :mod:`proto.atomic`), as a VMBus
    driver scans its channels' flags."""
    base = siefp_gpa(vp) + 256 * sint
    flags = []
    for i in range(0, 256, 8):
        word = vp.read(base + i, 8)
        while word:
            bit = word.bit_length() - 1
            word &= ~(1 << bit)
            flag = i * 8 + bit
            mask = 1 << (flag % 8)
            if vp.mem.fetch_and_u8(base + flag // 8, ~mask & 0xFF) & mask:
                flags.append(flag)
    return flags


# -- the reference TSC page ------------------------------------------------------------------


def enable_tsc_page(vp: Vp, sys) -> bool:
    """Turn the partition's reference TSC page on (once per boot); False if not offered."""
    st = state(sys)
    if st.tsc_page:
        return True
    if not sys.hv.privileges & HvPrivilege.AccessPartitionReferenceTsc:
        return False
    vp.wrmsr(HvMsr.HV_X64_MSR_REFERENCE_TSC, TSC_PAGE_GPA | 1)
    st.tsc_page = True
    return True


def read_reference_time(vp: Vp, sys) -> tuple[int, bool]:
    """(reference time in 100 ns units, whether it cost an exit): by the TSC page where it
    is on and valid (sequence, TSC, scale and offset, sequence again — TLFS), else by
    HV_X64_MSR_TIME_REF_COUNT."""
    if state(sys).tsc_page:
        for _ in range(4):
            page = vp.mem.read(TSC_PAGE_GPA, HV_REFERENCE_TSC_PAGE.size)
            t = reference_time(page, vp.rdtsc())
            if t is None:
                break  # sequence 0: fall back to the MSR
            if vp.read(TSC_PAGE_GPA, 4) == int.from_bytes(page[:4], "little"):
                return t, False
    return vp.rdmsr(HvMsr.HV_X64_MSR_TIME_REF_COUNT), True
