"""Every VP exit handler, in-process: what the VP, the worker and the counters see.

Partition 1 is enlightened (2 VPs), partition 2 is not (1 VP); both have a worker claiming
COM1 (0x3F8-0x3FF), port 0x60 and VGA memory, and RAM at GPA 0 (see conftest.py).
"""

from __future__ import annotations

import logging
import time

from proto import messages as m
from proto.codes import HvMsr, HvStatus, HypercallCode as C, X86Exception, control_value
from proto.exits import NO_PATH, Exit
from proto.hvcall import HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE, HV_INPUT_NOTIFY_LONG_SPIN_WAIT
from hypervisor.scheduler import VpState
from tests.unit.hypervisor.fake_stack import COM1, REGS, ROOT, VGA, stamps, vp_id, worker_id

V10, V11, V20 = vp_id(1, 0), vp_id(1, 1), vp_id(2, 0)
W1, W2 = worker_id(1), worker_id(2)


def resume_of(sent, vp=V10) -> m.VpResume:
    return sent.one(vp, m.VpResume)


def counted(stack, kind: Exit, pid: int = 1, index: int = 0) -> int:
    return stack.vp(pid, index).exits[kind]


# -- port I/O ---------------------------------------------------------------------------------


def test_a_claimed_port_goes_to_its_worker_and_its_completion_resumes_the_vp(two):
    out = two.exit(V10, m.IoPortIntercept(7, COM1, 1, True, 0x41, stamps(), REGS))
    notify = out.one(W1, m.PortNotify)
    assert (notify.vp, notify.port, notify.size, notify.write, notify.value) == (0, COM1, 1, True, 0x41)
    assert len(notify.stamps) == 3  # guest exit, hv in, hv notify out
    assert not out.to(V10) and two.vp(1).state is VpState.INTERCEPT
    r = resume_of(two.send(W1, m.AccessComplete(notify.ref, 0, notify.stamps + stamps(2))))
    assert (r.seq, r.rax, r.fault, r.path) == (7, 0, 0, Exit.IO_PORT.code)
    assert len(r.stamps) == 7  # + worker in, worker done, hv complete in, hv resume out
    assert counted(two, Exit.IO_PORT) == 1 and two.vp(1).state is VpState.RUNNING
    assert two.hv.forwarding.pending == {}


def test_a_claimed_port_read_returns_the_workers_value_cut_to_the_access_size(two):
    notify = two.exit(V10, m.IoPortIntercept(8, COM1 + 5, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    r = resume_of(two.send(W1, m.AccessComplete(notify.ref, 0x1FF60, stamps(4))))
    assert r.rax == 0x60


def test_an_unclaimed_port_reads_all_ones_and_swallows_writes_in_two_hops(two):
    r = resume_of(two.exit(V10, m.IoPortIntercept(9, 0x80, 2, False, 0, stamps(), REGS)))
    assert (r.rax, r.path, len(r.stamps)) == (0xFFFF, Exit.IO_UNCLAIMED.code, 3)
    r = resume_of(two.exit(V10, m.IoPortIntercept(10, 0x80, 1, True, 0x12, stamps(), REGS)))
    assert (r.rax, r.path) == (0, Exit.IO_UNCLAIMED.code)
    part = two.part(1)
    assert (part.unclaimed_reads, part.unclaimed_writes) == (1, 1)
    assert counted(two, Exit.IO_UNCLAIMED) == 2 and counted(two, Exit.IO_PORT) == 0


# -- MMIO -------------------------------------------------------------------------------------


def test_claimed_mmio_goes_to_its_worker_and_a_read_is_cut_to_its_size(two):
    notify = two.exit(V10, m.MmioIntercept(11, VGA + 2, 2, False, 0, stamps(), REGS)).one(W1, m.MmioNotify)
    assert (notify.gpa, notify.size, notify.write) == (VGA + 2, 2, False)
    r = resume_of(two.send(W1, m.AccessComplete(notify.ref, 0x12345, stamps(4))))
    assert (r.rax, r.path) == (0x2345, Exit.MMIO.code)
    assert counted(two, Exit.MMIO) == 1


def test_an_unmapped_gpa_is_a_gp_fault_and_counted(two):
    r = resume_of(two.exit(V10, m.MmioIntercept(12, 0xD000_0000, 4, False, 0, stamps(), REGS)))
    assert (r.fault, r.path) == (X86Exception.GP, Exit.UNMAPPED_GPA.code)
    assert two.part(1).unmapped_gpa == 1 and counted(two, Exit.UNMAPPED_GPA) == 1
    assert two.vp(1).faults == 1  # counted when the resume was dispatched


def test_the_local_apic_page_is_the_hypervisors_two_hops_no_worker(two):
    out = two.exit(V11, m.MmioIntercept(13, 0xFEE00020, 4, False, 0, stamps(), REGS))  # the APIC ID
    assert not out.to(W1)
    r = resume_of(out, V11)
    assert (r.rax, r.path, len(r.stamps)) == (1 << 24, Exit.APIC.code, 3)
    resume_of(two.exit(V11, m.MmioIntercept(14, 0xFEE000F0, 4, True, 0x1FF, stamps(), REGS)), V11)  # SVR
    assert resume_of(two.exit(V11, m.MmioIntercept(15, 0xFEE000F0, 4, False, 0, stamps(), REGS)), V11).rax == 0x1FF
    assert counted(two, Exit.APIC, 1, 1) == 3


# -- CPUID and MSRs -----------------------------------------------------------------------------


def test_cpuid_is_answered_by_the_hypervisor(two):
    r = resume_of(two.exit(V10, m.CpuidIntercept(16, 0x40000000, 0, stamps(), REGS)))
    text = b"".join(x.to_bytes(4, "little") for x in (r.rbx, r.rcx, r.rdx))
    assert (text, r.path) == (b"Microsoft Hv", Exit.CPUID.code)
    assert counted(two, Exit.CPUID) == 1


def test_msrs_read_and_write_with_the_partitions_privileges(two):
    r = resume_of(two.exit(V11, m.MsrIntercept(17, HvMsr.HV_X64_MSR_VP_INDEX, False, 0, stamps(), REGS)), V11)
    assert (r.rax, r.rdx, r.fault, r.path) == (1, 0, 0, Exit.MSR.code)
    resume_of(two.exit(V10, m.MsrIntercept(18, HvMsr.HV_X64_MSR_GUEST_OS_ID, True, 0x8100_0000_0000_0001,
                                           stamps(), REGS)))
    r = resume_of(two.exit(V10, m.MsrIntercept(19, HvMsr.HV_X64_MSR_GUEST_OS_ID, False, 0, stamps(), REGS)))
    assert (r.rdx << 32 | r.rax) == 0x8100_0000_0000_0001
    # A partition without the privilege takes a #GP.
    r = resume_of(two.exit(V20, m.MsrIntercept(20, HvMsr.HV_X64_MSR_VP_INDEX, False, 0, stamps(), REGS)), V20)
    assert (r.fault, r.path) == (X86Exception.GP, Exit.MSR.code)


# -- hypercalls ---------------------------------------------------------------------------------


def spin_wait(seq: int) -> m.HypercallIntercept:
    return m.HypercallIntercept(seq, control_value(C.HvCallNotifyLongSpinWait, fast=True),
                                HV_INPUT_NOTIFY_LONG_SPIN_WAIT.pack(1), stamps(), REGS)


def test_a_hypercall_without_the_hypercall_page_is_an_undefined_instruction(two):
    r = resume_of(two.exit(V20, spin_wait(21)), V20)
    assert (r.fault, r.path) == (X86Exception.UD, Exit.HYPERCALL.code)
    assert counted(two, Exit.HYPERCALL, 2) == 1 and two.vp(2).faults == 1


def test_a_hypercall_with_the_page_on_runs_and_a_long_spin_wait_yields(two):
    two.enable_hypercalls(V10)
    assert two.part(1).hypercalls_enabled
    r = resume_of(two.exit(V10, spin_wait(22)))
    assert (r.rax & 0xFFFF, r.fault, r.path) == (HvStatus.HV_STATUS_SUCCESS, 0, Exit.HYPERCALL.code)
    assert two.vp(1).sched.yields == 1
    # A root-only call from a child: denied, not yielded.
    r = resume_of(two.exit(V10, m.HypercallIntercept(23, control_value(C.HvCallCreatePartition), b"", stamps(), REGS)))
    assert r.rax & 0xFFFF == HvStatus.HV_STATUS_ACCESS_DENIED and two.vp(1).sched.yields == 1
    # A flush of its own address space goes through the one hypercall table to the TLBs.
    data = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.pack(0x1000, 0, 1)
    r = resume_of(two.exit(V10, m.HypercallIntercept(24, control_value(C.HvCallFlushVirtualAddressSpace), data,
                                                     stamps(), REGS)))
    assert r.rax & 0xFFFF == HvStatus.HV_STATUS_SUCCESS
    assert all(f["address_space"] == 1 for f in two.hv.tlb.flushes)


def test_the_roots_hypercalls_are_answered_at_once_and_count_as_no_vps_exit(two):
    r = two.hypercall(C.HvCallGetPartitionId)
    assert (r.rax & 0xFFFF, r.output, r.path) == (0, bytes(8), NO_PATH)  # the root is partition 0
    assert len(r.stamps) == 3
    assert all(sum(vp.exits.values()) == 0 for p in (1, 2) for vp in two.part(p).vps)
    assert two.hv.hypercalls.counts[C.HvCallGetPartitionId] == 1


# -- HLT ----------------------------------------------------------------------------------------


def test_hlt_sleeps_until_an_interrupt_wakes_it(two):
    assert not two.exit(V10, m.HaltIntercept(25, stamps(), REGS))  # no resume: the VP sleeps
    assert two.vp(1).state is VpState.HALTED and counted(two, Exit.HALT) == 1
    r = resume_of(two.send(W1, m.AssertInterrupt(0x20, stamps(2))))
    assert (r.seq, r.interrupt, r.path) == (25, 0x20, NO_PATH)
    assert len(r.irq_stamps) == 4  # device raise, worker send, hv in, hv inject
    assert two.vp(1).state is VpState.RUNNING and two.vp(1).interrupts.injected == 1


def test_hlt_with_an_interrupt_already_waiting_completes_at_once(two):
    notify = two.exit(V10, m.IoPortIntercept(27, COM1, 1, True, 0x41, stamps(), REGS)).one(W1, m.PortNotify)
    assert not two.send(W1, m.AssertInterrupt(0x21, stamps(2)))  # the VP is in an exit: the vector waits
    r = resume_of(two.send(W1, m.AccessComplete(notify.ref, 0, stamps(5))))
    assert r.interrupt == 0x21  # … for the exit's resume
    assert not two.send(W1, m.AccessComplete(notify.ref, 0, stamps(5))).to(V10)
    two.vp(1).interrupts.post(0x22, stamps(3))  # (queued, as if the VP had not been running)
    r = resume_of(two.exit(V10, m.HaltIntercept(28, stamps(), REGS)))
    assert (r.seq, r.interrupt) == (28, 0x22) and two.vp(1).state is VpState.RUNNING


def test_a_self_ipi_is_taken_with_the_resume_of_the_icr_write(two):
    resume_of(two.exit(V10, m.MmioIntercept(26, 0xFEE000F0, 4, True, 0x1FF, stamps(), REGS)))  # APIC on
    r = resume_of(two.exit(V10, m.MsrIntercept(27, HvMsr.HV_X64_MSR_ICR, True, 1 << 18 | 0x51, stamps(), REGS)))
    assert r.interrupt == 0x51 and r.path == Exit.MSR.code


def test_an_ipi_wakes_a_halted_vp(two):
    resume_of(two.exit(V11, m.MmioIntercept(30, 0xFEE000F0, 4, True, 0x1FF, stamps(), REGS)), V11)  # APIC on
    assert not two.exit(V11, m.HaltIntercept(29, stamps(), REGS))
    out = two.exit(V10, m.MsrIntercept(31, HvMsr.HV_X64_MSR_ICR, True, (1 << 56) | 0x52, stamps(), REGS))
    assert resume_of(out).seq == 31
    woken = resume_of(out, V11)
    assert (woken.seq, woken.interrupt) == (29, 0x52)
    assert two.vp(1, 0).apic.counters["ipis_sent"] == 1


def test_init_then_startup_ipi_resets_an_ap_and_starts_it_at_the_vector(two):
    """SeaBIOS's smp_scan: INIT, then SIPI, to all but itself (ICR 0x000C4500, 0x000C4610)."""
    resume_of(two.exit(V11, m.MmioIntercept(30, 0xFEE000F0, 4, True, 0x1FF, stamps(), REGS)), V11)
    assert not two.exit(V11, m.HaltIntercept(29, stamps(), REGS))  # the AP waits, IF clear
    out = two.exit(V10, m.MmioIntercept(31, 0xFEE00300, 4, True, 0x000C4500, stamps(), REGS))
    assert resume_of(out).fault == 0  # the BSP goes on
    init = resume_of(out, V11)  # the halted AP hears of its INIT at once
    assert (init.seq, init.fault, init.rbx) == (29, m.FAULT_RESET, 0)
    assert two.vp(1, 1).apic.read(0x0F0, 0) & 0x100 == 0  # INIT put its local APIC back to power-on
    assert not two.exit(V11, m.HaltIntercept(32, stamps(), REGS))  # waiting for its SIPI
    out = two.exit(V10, m.MmioIntercept(33, 0xFEE00300, 4, True, 0x000C4610, stamps(), REGS))
    sipi = resume_of(out, V11)
    assert (sipi.seq, sipi.fault, sipi.rbx) == (32, m.FAULT_RESET, 0x110)
    # A second SIPI finds no VP waiting for one: ignored, as a started AP ignores it.
    out = two.exit(V10, m.MmioIntercept(34, 0xFEE00300, 4, True, 0x000C4610, stamps(), REGS))
    assert not out.to(V11) and two.hv.counters["init_sipi"] == 2


def test_an_apic_timer_wakes_a_halted_vp(two):
    sent = [two.exit(V10, m.MmioIntercept(seq, 0xFEE00000 + reg, 4, True, value, stamps(), REGS))
            for seq, (reg, value) in enumerate(((0x0F0, 0x1FF), (0x320, 0xEF), (0x3E0, 0b1011), (0x380, 1)), 40)]
    time.sleep(0.001)  # the one-shot timer (1 tick) is due
    sent.append(two.exit(V10, m.HaltIntercept(44, stamps(), REGS)))
    assert resume_of(sent[-1]).seq == 44  # the timer was due by then: HLT completes at once or is woken at once
    # Taken once: with the HLT's resume — or, when the tick was already due while the VP ran
    # after the initial-count write (CI, under load), posted to it, or with that write's resume.
    taken = [x.interrupt & 0xFF for out in sent[-2:] for x in out.to(V10)
             if isinstance(x, (m.VpResume, m.InterruptNotify)) and x.interrupt]
    assert taken == [0xEF], taken
    assert two.vp(1).apic.counters["timer_fires"] == 1


# -- the scheduler's exit, and paging -----------------------------------------------------------


def test_the_end_of_a_quantum_gives_the_lp_back_and_is_counted_as_a_preemption(two):
    r = resume_of(two.exit(V10, m.QuantumExit(45, stamps(), REGS)))
    assert r.path == Exit.QUANTUM.code and r.deadline_ns > 0
    assert counted(two, Exit.QUANTUM) == 1 and two.vp(1).sched.preemptions == 1


def test_mov_cr3_loads_cr3_and_flushes_the_lps_tlb(two):
    lp = two.vp(1).sched.lp
    r = resume_of(two.exit(V10, m.Cr3Intercept(46, 0x5000, stamps(), REGS)))
    assert (r.path, r.regs) == (Exit.CR3.code, (REGS[0], 0x5000))
    assert two.hv.tlb.flushes[lp]["mov_cr3"] == 1 and counted(two, Exit.CR3) == 1


def test_invlpg_flushes_the_lps_tlb(two):
    lp = two.vp(1).sched.lp
    r = resume_of(two.exit(V10, m.InvlpgIntercept(47, 0x400000, stamps(), REGS)))
    assert r.path == Exit.INVLPG.code and r.regs == REGS
    assert two.hv.tlb.flushes[lp]["invlpg"] == 1 and counted(two, Exit.INVLPG) == 1


def test_the_register_block_a_vp_exits_with_is_the_one_it_resumes_with(two):
    r = resume_of(two.exit(V10, m.CpuidIntercept(48, 0, 0, stamps(), (0x202, 0x7000))))
    assert r.regs == (0x202, 0x7000) and two.vp(1).cr3 == 0x7000


# -- completions ----------------------------------------------------------------------------------


def test_a_completion_for_nothing_pending_is_stale(two):
    out = two.send(W1, m.AccessComplete(999, 0, stamps()))
    assert out.one(W1, m.ErrorReply).code == "STALE"
    assert two.hv.counters["stale_completions"] == 1


def test_another_partitions_worker_cannot_complete_an_access(two):
    notify = two.exit(V10, m.IoPortIntercept(49, COM1, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    out = two.send(W2, m.AccessComplete(notify.ref, 0x66, stamps()))
    assert out.one(W2, m.ErrorReply).code == "STALE" and not out.to(V10)
    assert two.hv.counters["stale_completions"] == 1
    assert resume_of(two.send(W1, m.AccessComplete(notify.ref, 0x55, stamps()))).rax == 0x55  # still its own


def test_a_worker_that_does_not_answer_in_time_completes_nothing_and_pauses_its_partition(two, caplog):
    """Issue 9: the VP used to get all-ones at the timeout while the worker carried the
    access out later.  Now nobody but the worker completes it: the VP stays in its
    intercept, the partition is unresponsive and paused, and the worker's late completion
    is applied once, at the next dispatch after `ctl resume`."""
    two.exit(V10, m.IoPortIntercept(50, COM1, 2, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    for ctx in two.hv.forwarding.pending.values():
        ctx.deadline_ns = 0
    with caplog.at_level(logging.WARNING, logger="hypervisor"):
        two.hv._housekeeping()
    assert not two.run().to(V10)  # no made-up all-ones
    assert two.part(1).worker_timeouts == 1 and len(two.hv.forwarding.pending) == 1
    st = two.hv.status().partition(1)
    assert st.unresponsive and st.state == "paused" and st.health_pauses == 1
    assert "worker did not complete intercept" in caplog.text and "unresponsive" in caplog.text
    two.hv._housekeeping()
    assert two.part(1).worker_timeouts == 1  # counted once, however long it stays late
    (ref,) = two.hv.forwarding.pending
    assert not two.send(W1, m.AccessComplete(ref, 0x1234, stamps())).to(V10)  # paused: it waits
    assert not two.hv.status().partition(1).unresponsive and two.vp(1).state is VpState.READY
    out = two.send(W1, m.AccessComplete(ref, 0x1234, stamps()))  # a second completion is stale
    assert out.one(W1, m.ErrorReply).code == "STALE" and two.hv.counters["stale_completions"] == 1
    out = two.send(ROOT, m.PartitionControl(1, "resume"))
    assert (resume_of(out).seq, resume_of(out).rax) == (50, 0x1234)  # the worker's value, once


def test_a_worker_that_is_gone_completes_nothing_either(two):
    two.router.gone.add(W1)
    assert not two.exit(V10, m.IoPortIntercept(51, COM1, 1, False, 0, stamps(), REGS)).to(V10)
    assert two.part(1).worker_timeouts == 1 and two.hv.status().partition(1).unresponsive
    assert two.part(1).cpu.paused and len(two.hv.forwarding.pending) == 1


def test_the_roots_io_through_a_stalled_worker_gets_an_error_not_data(two):
    two.send(ROOT, m.ExecuteRequest(77, 1, 0, "inb", COM1, 0, b"")).one(W1, m.PortNotify)
    for ctx in two.hv.forwarding.pending.values():
        ctx.deadline_ns = 0
    two.hv._housekeeping()
    err = two.run().one(ROOT, m.ErrorReply)
    assert err.code == "STALE" and "may still carry it out" in err.message and not two.hv.forwarding.pending
    two.router.gone.add(W2)
    out = two.send(ROOT, m.ExecuteRequest(78, 2, 0, "inb", COM1, 0, b""))
    assert out.one(ROOT, m.ErrorReply).code == "UNKNOWN_PARTITION"


def test_a_health_check_finds_a_stalled_idle_worker(two):
    fwd = two.hv.forwarding
    fwd.pings.clear(), fwd._last_ping.clear()
    two.hv._housekeeping()
    assert not two.run().to(W1)  # a worker still starting (no memory mapped yet) is not pinged
    two.send(W1, m.MemoryRequest(1)).one(W1, m.MemoryReply)
    two.send(W2, m.MemoryRequest(2)).one(W2, m.MemoryReply)
    fwd.pings.clear(), fwd._last_ping.clear()
    two.hv._housekeeping()
    pings = [q for q in two.run().to(W1) if isinstance(q, m.WorkerQuery)]
    assert len(pings) == 1 and pings[0].query == "ping"
    two.hv._housekeeping()
    assert [q.partition.id for q in fwd.pings.values()] == [1, 2]  # one per worker at a time
    for ping in two.hv.forwarding.pings.values():
        ping.deadline_ns = 0
    two.hv._housekeeping()
    assert two.hv.status().partition(1).unresponsive and two.part(1).cpu.paused
    assert not two.send(W1, m.WorkerQueryReply(pings[0].ref, {})).to(ROOT)
    assert not two.hv.status().partition(1).unresponsive  # it answers again
    assert two.part(1).cpu.paused  # until the root resumes it


# -- tracing ------------------------------------------------------------------------------------


def test_a_traced_exit_is_reported_to_subscribers_of_its_partition(two):
    two.hello(b"tracer", "root")
    two.hello(b"other", "root")
    assert two.send(b"tracer", m.TraceSubscribe(1)).one(b"tracer", m.Ack)
    assert two.send(b"other", m.TraceSubscribe(2)).one(b"other", m.Ack)
    out = two.exit(V10, m.CpuidIntercept(52, 0x40000001, 0, stamps(), REGS))
    ev = out.one(b"tracer", m.TraceEvent)
    assert (ev.partition, ev.vp, ev.reason, ev.a, len(ev.stamps)) == (1, 0, "cpuid", 0x40000001, 2)
    assert not out.to(b"other")
    two.router.full.add(b"tracer")
    assert not two.exit(V10, m.QuantumExit(53, stamps(), REGS)).to(b"tracer")  # quantum ends are not traced
    two.exit(V10, m.CpuidIntercept(54, 0, 0, stamps(), REGS))
    assert two.hv.counters["trace_dropped"] == 1 and b"tracer" in two.hv.tracer.tracers


def test_one_stall_is_one_health_pause_however_the_late_answers_interleave(two):
    two.exit(V10, m.IoPortIntercept(60, COM1, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    two.exit(V11, m.IoPortIntercept(61, COM1, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    first, second = two.hv.forwarding.pending
    two.hv.forwarding.pending[first].deadline_ns = 0  # only the first is overdue yet
    two.hv.forwarding.pending[second].deadline_ns = time.monotonic_ns() + 20_000_000
    two.hv._housekeeping()
    time.sleep(0.03)  # the second is overdue too now
    two.send(W1, m.AccessComplete(first, 1, stamps()))  # the worker answers again…
    two.hv._housekeeping()  # …before its second answer arrives
    assert two.part(1).health_pauses == 1 and not two.part(1).unresponsive
    assert two.part(1).worker_timeouts == 1


def test_a_fast_call_with_xmm_input_not_offered_is_an_undefined_instruction(two):
    """TLFS "Hypercall Interface" › "XMM Fast Hypercall Input": any use of XMM input where
    CPUID 0x40000003 EDX bit 4 does not offer it is a #UD — a fault, before any status."""
    two.enable_hypercalls(V10)
    control = control_value(C.HvCallFlushVirtualAddressSpace, fast=True)
    r = resume_of(two.exit(V10, m.HypercallIntercept(25, control, bytes(24), stamps(), REGS)))
    assert (r.fault, r.rax) == (X86Exception.UD, 0)
    # Even a call the partition may not make: #UD comes before ACCESS_DENIED.
    r = resume_of(two.exit(V10, m.HypercallIntercept(26, control_value(C.HvCallCreatePartition, fast=True),
                                                     bytes(32), stamps(), REGS)))
    assert r.fault == X86Exception.UD
    # 16 bytes fit RDX:R8: a status, no fault.
    r = resume_of(two.exit(V10, spin_wait(27)))
    assert r.fault == 0 and r.rax & 0xFFFF == HvStatus.HV_STATUS_SUCCESS
