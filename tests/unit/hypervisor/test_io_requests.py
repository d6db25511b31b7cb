"""io's qtest-style operations in-process: guest memory in bulk, VP registers, a hypercall
with GPA input and output pages, the interrupt logs, and clock_step."""

from __future__ import annotations

import struct

from proto import messages as m
from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HvMsr,
    HvPrivilege,
    HvRegisterName as R,
    HvStatus,
    HypercallCode as C,
    X86Exception,
    control_value,
)
from proto.hvcall import HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE
from tests.unit.hypervisor.fake_stack import REGS, ROOT, RAM_PAGES, stamps, vp_id, worker_id

V10, V11, W1 = vp_id(1, 0), vp_id(1, 1), worker_id(1)
PAGE = 4096


def io(stack, op, a=0, b=0, c=0, data=b"", partition=1, vp=0):
    return stack.send(ROOT, m.IoRequest(55, partition, vp, op, a, b, c, data))


def reply(stack, *args, **kw) -> m.IoReply:
    return io(stack, *args, **kw).one(ROOT, m.IoReply)


def refusal(stack, *args, **kw) -> str:
    return io(stack, *args, **kw).one(ROOT, m.ErrorReply).code


def test_bulk_write_and_read_span_pages_through_the_partitions_own_map(two):
    data = bytes(range(256)) * 40  # 10240 bytes: three pages
    assert reply(two, "write", 0x1F00, data=data).seq == 55
    assert reply(two, "read", 0x1F00, len(data)).data == data
    assert reply(two, "read", 0x1F00, 16, partition=2).data == bytes(16)  # partition 2's RAM is its own


def test_memory_outside_the_map_is_an_error_not_a_crash(two):
    end = RAM_PAGES * PAGE
    assert refusal(two, "read", end - 8, 16) == "UNMAPPED_GPA"
    assert refusal(two, "write", end, data=b"x") == "UNMAPPED_GPA"
    assert refusal(two, "read", (1 << 52) - 1, 16) == "UNMAPPED_GPA"
    assert refusal(two, "read", 0, 1 << 20) == "INVALID_FIELD"
    assert reply(two, "read", end - 8, 8).data == bytes(8)  # nothing written past the end


def test_registers_read_and_write_by_tlfs_name(two):
    assert reply(two, "set_reg", R.HvX64RegisterCr3, 0x5000).seq == 55
    assert reply(two, "get_reg", R.HvX64RegisterCr3).value == 0x5000
    assert reply(two, "get_reg", R.HvX64RegisterInitialApicId, vp=1).value == 1
    assert refusal(two, "set_reg", R.HvX64RegisterInitialApicId, 3) == "INVALID_FIELD"
    assert refusal(two, "get_reg", 0x7777) == "INVALID_FIELD"
    assert refusal(two, "get_reg", 0, vp=5) == "UNKNOWN_VP"
    assert refusal(two, "get_reg", 0, partition=9) == "UNKNOWN_PARTITION"


def test_a_hypercall_reads_its_input_page_and_writes_its_output_page(stack):
    """TLFS "Hypercall Interface": RDX and R8 hold the input and output parameter GPAs."""
    pid = stack.partition(vps=1, privileges=int(HV_CHILD_ENLIGHTENED_PRIVILEGES | HvPrivilege.AccessPartitionId))
    stack.enable_hypercalls(vp_id(pid))
    reply(stack, "write", 0x3000, data=b"\xAA" * 8, partition=pid)
    r = reply(stack, "hypercall_gpa", control_value(C.HvCallGetPartitionId), 0x2000, 0x3000, partition=pid)
    assert (r.value & 0xFFFF, r.fault) == (HvStatus.HV_STATUS_SUCCESS, 0)
    assert reply(stack, "read", 0x3000, 8, partition=pid).data == struct.pack("<Q", pid)
    # The input comes from guest memory: a flush with bad flags there is refused by value.
    reply(stack, "write", 0x2000, data=HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.pack(0, 1 << 40, 0), partition=pid)
    r = reply(stack, "hypercall_gpa", control_value(C.HvCallFlushVirtualAddressSpace), 0x2000, 0x3000, partition=pid)
    assert r.value & 0xFFFF == HvStatus.HV_STATUS_INVALID_PARAMETER
    # Misaligned parameter pages: INVALID_ALIGNMENT; unmapped ones: an io error.
    r = reply(stack, "hypercall_gpa", control_value(C.HvCallGetPartitionId), 0x2004, 0x3000, partition=pid)
    assert r.value & 0xFFFF == HvStatus.HV_STATUS_INVALID_ALIGNMENT
    assert refusal(stack, "hypercall_gpa", control_value(C.HvCallGetPartitionId), 0x2000, 0x7FFF_0000,
                   partition=pid) == "UNMAPPED_GPA"


def test_a_hypercall_without_the_page_enabled_is_a_ud_as_for_the_guest(two):
    r = reply(two, "hypercall_gpa", control_value(C.HvCallFlushVirtualAddressSpace), 0x2000, 0x3000)
    assert r.fault == X86Exception.UD


def test_interrupts_are_logged_at_the_pic_output_and_at_delivery(two):
    assert reply(two, "irqs_pic").data == b"" and reply(two, "irqs_apic").data == b""
    assert not two.exit(V10, m.HaltIntercept(30, stamps(), REGS))
    two.send(W1, m.AssertInterrupt(0x20, stamps(2)))  # wakes VP 0, which takes it
    assert reply(two, "irqs_pic").data == b"\x20"
    assert reply(two, "irqs_apic").data == b"\x20"
    assert reply(two, "irqs_apic").data == b""  # since the last look
    assert reply(two, "irqs_apic", vp=1).data == b""


def test_an_interrupt_posted_to_a_running_vp_is_logged_at_delivery_too(two):
    """A VP executing guest code takes it from an interrupt_notify, not a resume: the
    delivery log is kept where any interrupt is taken (``next_interrupt``), for both."""
    from hypervisor.scheduler import VpState

    assert two.vp(1).state is VpState.RUNNING
    assert two.send(W1, m.AssertInterrupt(0x21, stamps(2))).one(V10, m.InterruptNotify).interrupt == 0x21
    assert reply(two, "irqs_pic").data == b"\x21"
    assert reply(two, "irqs_apic").data == b"\x21"
    # One that wakes the VP from HLT rides with its resume: logged once, as before.
    two.exit(V10, m.CpuidIntercept(31, 0, 0, stamps(), REGS)).one(V10, m.VpResume)  # a new dispatch
    assert not two.exit(V10, m.HaltIntercept(32, stamps(), REGS))
    assert two.send(W1, m.AssertInterrupt(0x22, stamps(2))).one(V10, m.VpResume).interrupt == 0x22
    assert reply(two, "irqs_apic").data == b"\x22"


def test_clock_step_needs_a_paused_partition_and_steps_its_clocks(two):
    assert refusal(two, "clock_step", 10_000_000) == "CONFLICT"
    assert two.send(ROOT, m.PartitionControl(1, "pause")).one(ROOT, m.Ack)
    before = two.part(1).reference_time_100ns()
    # A one-shot local APIC timer 10 s away on VP 1 (xAPIC page, through io's MMIO).
    for offset, value in ((0xF0, 0x1FF), (0x320, 0x40), (0x3E0, 0b1011), (0x380, 2_000_000_000)):
        two.send(ROOT, m.ExecuteRequest(1, 1, 1, "writel", 0xFEE00000 + offset, value, b""))
    assert two.vp(1, 1).apic.timer_deadline_ns is not None
    sent = io(two, "clock_step", 10_000_000_000)
    step = sent.one(W1, m.WorkerClockStep)
    assert step.ns == 10_000_000_000 and not sent.to(ROOT)  # the worker answers
    assert two.part(1).reference_time_100ns() - before >= 100_000_000
    assert two.vp(1, 1).apic.irr & (1 << 0x40)  # the timer fired
    out = two.send(W1, m.WorkerQueryReply(step.ref, {"clock_offset_ns": 10_000_000_000}))
    assert out.one(ROOT, m.WorkerQueryReply).result == {"clock_offset_ns": 10_000_000_000}
    assert refusal(two, "clock_step", 2 * 86_400 * 10**9) == "INVALID_FIELD"
    assert two.part(1).clock_offset_ns == 10_000_000_000
    # The reference counter MSR reads the stepped time.
    rd = two.send(ROOT, m.ExecuteRequest(2, 1, 0, "rdmsr", HvMsr.HV_X64_MSR_TIME_REF_COUNT, 0, b""))
    rd = rd.one(ROOT, m.VpResume)
    assert (rd.rdx << 32 | rd.rax) >= 100_000_000


def test_only_the_root_may_ask_a_guest_or_worker_is_not_permitted(two):
    """io reaches guest memory and clocks: a partition's own VP or worker asking is refused,
    whatever partition it names."""
    for who in (V10, W1):
        sent = two.send(who, m.IoRequest(1, 2, 0, "read", 0, 16, 0, b""))
        assert sent.one(who, m.ErrorReply).code == "NOT_PERMITTED" and not sent.to(ROOT)


def test_every_operation_on_the_wire_has_a_handler(two):
    from proto.io_messages import IO_OPS
    assert set(two.hv.io_requests._ops) == set(IO_OPS)
