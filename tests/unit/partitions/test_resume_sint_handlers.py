"""A resumed kernel's SINT handlers (issue 13: the restored netvsc's lost GPADL_TORNDOWN).

The restored SynIC's SINTs are unmasked from the start, so a SINT 2 interrupt (the restored
VSP signalling a channel, a frame from another partition) can reach the resumed VP as soon
as its kernel enables interrupts, before the VMBus driver has resumed.  Taken without a
handler it was never ended: 0xD2 stayed in service in the local APIC, every later SINT 2
interrupt waited in the IRR behind it, and the GPADL_TORNDOWN the resumed netvsc waited for
sat in its slot.  Driven here step by step against the hypervisor's own local APIC model:
the VP is resumed, the hypervisor injects 0xD2 (IRR → ISR, as ``next_interrupt`` does),
the kernel enables interrupts, then the VMBus driver resumes and waits for its message."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from proto import vmbus as vb
from proto.codes import HvMsr, HvPrivilege
from proto.memory import UnmappedGpa
from proto.synic_messages import HV_MESSAGE_HEADER, HV_TIMER_MESSAGE_PAYLOAD
from proto.vmbus import ChannelMessage as Msg
from hypervisor.apic import Apic
from partitions import resume, synic_workloads, vmbus_resume
from partitions.drivers import synic
from partitions.drivers.vmbus import NEEDED, Vmbus
from partitions.kernel import HvInfo
from partitions import vp as vpmod
from partitions.vp import Vp

SINT2_VECTOR = synic.SINT_VECTOR_BASE + vb.VMBUS_MESSAGE_SINT
RAM_BYTES = 0x100000


class Ram:
    """The first MiB of guest RAM; anything above is not RAM (the APIC: an MMIO exit)."""

    def __init__(self) -> None:
        self.bytes = bytearray(RAM_BYTES)

    def is_mapped(self, gpa: int, size: int = 1) -> bool:
        return gpa + size <= RAM_BYTES

    def read(self, gpa: int, size: int) -> bytes:
        if not self.is_mapped(gpa, size):
            raise UnmappedGpa(gpa)
        return bytes(self.bytes[gpa:gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa:gpa + len(data)] = data

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.read(gpa, size), "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.write(gpa, value.to_bytes(size, "little"))

    def fetch_and_u8(self, gpa: int, mask: int) -> int:
        old = self.bytes[gpa]
        self.bytes[gpa] = old & mask
        return old


class ResumedVp(Vp):
    """The partition process's VP, its exits answered in-process: APIC MMIO and
    HV_X64_MSR_EOI by the hypervisor's local APIC, other MSRs kept."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(send=None, recv_ready=None, wait=lambda ms: False), 0, Ram(),
                         threading.Event())
        self._quantum_end = self._next_check = vpmod.NEVER
        self.apic = Apic(0, svr=0x1FF)
        self.msrs: dict[int, int] = {}

    def _mmio_read(self, gpa: int, size: int) -> int:
        return self.apic.read(gpa - synic.APIC_BASE, 0)

    def _mmio_write(self, gpa: int, size: int, value: int) -> None:
        self.apic.write(gpa - synic.APIC_BASE, value, 0)

    def wrmsr(self, msr: int, value: int) -> None:
        if msr == HvMsr.HV_X64_MSR_EOI:
            self.apic.msr_eoi()
        self.msrs[msr] = value

    def rdmsr(self, msr: int) -> int:
        return self.msrs.get(msr, 0)

    def inject(self) -> int | None:
        """The hypervisor's next resume: the APIC's deliverable vector goes in service and
        to the VP, which takes it once IF is set (hypervisor/interrupts.py next_interrupt)."""
        vector = self.apic.deliverable()
        if vector is not None:
            self.apic.inject(vector)
            self._pending.append((vector, ()))
        return vector


def resumed_kernel(vp: ResumedVp):
    """A kernel resumed from a checkpoint that holds a VMBus connection."""
    sys = SimpleNamespace(booted_generation=0, timers={}, synic=synic.SynicState(),
                          hv=HvInfo(privileges=int(NEEDED | HvPrivilege.AccessApicMsrs), hypercalls=True))
    bus = Vmbus()
    bus.version = vb.VERSION_WIN10_V5_2
    vmbus_resume.remember_bus(sys, bus)
    resume.resume_vp(vp, {"vps": [{"exits": 0, "counters": {}}]}, sys)
    sys.booted_generation = 1  # (bsp_resume)
    sys.timers["vmbus.generation"] = 1
    return sys


def post_to_slot(vp: ResumedVp, payload: bytes, sint: int = vb.VMBUS_MESSAGE_SINT,
                 message_type: int = vb.VMBUS_MESSAGE_TYPE) -> None:
    """The hypervisor's delivery of a message into the SINT's slot (hypervisor/synic.py scan)."""
    slot = synic.simp_gpa(vp) + 256 * sint
    vp.mem.write(slot, HV_MESSAGE_HEADER.pack(message_type, len(payload), 0, 0, 0) + payload)
    vp.apic.accept(synic.SINT_VECTOR_BASE + sint)


def test_a_sint_interrupt_taken_before_the_vmbus_driver_resumes_is_ended_and_its_message_kept():
    vp = ResumedVp()
    sys = resumed_kernel(vp)
    # The restored VSP signals a channel (or posts) before the VMBus driver resumes: 0xD2 is
    # injected, and taken as the kernel enables interrupts (kernel.start_interrupts).
    torn = vb.encode(Msg.CHANNELMSG_GPADL_TORNDOWN, vb.GPADL_TORNDOWN.pack(0xE1E10))
    post_to_slot(vp, torn)
    assert vp.inject() == SINT2_VECTOR and vp.apic.isr >> SINT2_VECTOR & 1
    vp.sti()
    assert vp.counters["unhandled_interrupts"] == 0
    assert vp.apic.isr == 0, "the SINT's vector was left in service: SINT 2 is blocked for good"
    # The message waits in its slot for the driver, which reads it as it resumes.
    bus = vmbus_resume.resume_bus(vp, sys)
    assert bus is not None and bus.wait_for(vp, Msg.CHANNELMSG_GPADL_TORNDOWN, timeout=0) == torn[8:]
    # ...and the next SINT 2 interrupt reaches the driver's handler.
    post_to_slot(vp, torn)
    assert vp.inject() == SINT2_VECTOR
    vp.sti()
    assert vp.apic.isr == 0 and bus.wait_for(vp, Msg.CHANNELMSG_GPADL_TORNDOWN, timeout=0) == torn[8:]


def test_without_a_driver_the_message_stays_in_its_slot():
    vp = ResumedVp()
    sys = resumed_kernel(vp)
    post_to_slot(vp, vb.encode(Msg.CHANNELMSG_GPADL_TORNDOWN, vb.GPADL_TORNDOWN.pack(1)))
    synic.take_message(vp, sys, vb.VMBUS_MESSAGE_SINT)
    assert vp.read(synic.simp_gpa(vp) + 256 * vb.VMBUS_MESSAGE_SINT, 4) == vb.VMBUS_MESSAGE_TYPE


def test_a_timer_message_taken_before_the_stimer_driver_is_back_reaches_it_when_it_registers():
    vp = ResumedVp()
    sys = resumed_kernel(vp)
    sys.hv.privileges |= HvPrivilege.AccessSyntheticTimerMsrs
    sys.name, sys.console = "alpha", lambda vp, line: None
    # The restored STIMER0 expires before the workload is back: its message, and 0xD3.
    post_to_slot(vp, HV_TIMER_MESSAGE_PAYLOAD.pack(0, 0, 5, 6), synic.STIMER_SINT, 0x80000010)
    vp.inject()
    vp.sti()
    assert vp.apic.isr == 0 and vp.counters["unhandled_interrupts"] == 0
    timer = synic_workloads._start_stimer(vp, sys, direct=False)
    assert timer["ticks"] == 1  # the waiting message, read as the driver registered
    assert vp.read(synic.simp_gpa(vp) + 256 * synic.STIMER_SINT, 4) == 0  # its slot free for the next
