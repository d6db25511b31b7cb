"""Getting a VP back into guest mode: an exit's resume, its dispatch on an LP, HLT and wake-up, INIT.

An exit ends in one of three ways.  Most are completed at once (:meth:`Dispatcher.resume`):
the resume is kept on the VP and the VP made ready; when the scheduler dispatches it on a
logical processor (:meth:`Dispatcher.dispatched`) the resume is built and sent, with
whatever is pending by then — a reset, or an interrupt (``interrupts.next_interrupt``) —
and the end of its quantum.  A forwarded access waits for its worker first.  HLT waits for
a wake-up (:meth:`Dispatcher.wake`).  A root peer executing an instruction on a VP's
behalf gets its resume at once, outside the scheduler.

The run state itself is the scheduler's (``scheduler.VpState``, held once, in the VP's
``VpSched``); this module only drives it.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns

from proto import messages as m
from proto.exits import NO_PATH

from hypervisor.interrupts import irq_path, next_interrupt
from hypervisor.intercepts import NO_FAULT
from hypervisor.scheduler import Scheduler, VpSched, VpState

log = logging.getLogger("hypervisor")

# Module constants for the resume sent on every round trip (a global each, not a module's
# attribute lookup).
_pack_resume, FAULT_RESET = m.VpResume.pack, m.FAULT_RESET


class Dispatcher:
    def __init__(self, *, lps: int, router, outbox, counters: dict, tracer) -> None:
        self.sched = Scheduler(lps, self.dispatched)
        self._router = router
        self._outbox = outbox
        self._counters = counters
        self._tracers = tracer.tracers
        self._trace = tracer.trace

    def left_guest(self, vp, msg: m.Message, t_in: int) -> None:
        """Any exit, before its handler: save the VP's register block (the hypervisor's
        copy is the one that counts while the VP is off its LP) and give its logical
        processor back.  (The loop writes out its usual case, a register block without
        root writes: keep the two alike.)"""
        if msg.regs:
            vp.rflags, vp.cr3 = msg.regs
            if vp.regs_written:
                # The root wrote registers while the VP ran: they win over what it saved.
                for attr, value in vp.regs_written.items():
                    setattr(vp, attr, value)
                vp.regs_written.clear()
        # Run time ends when the guest exited (its first stamp), not when the exit arrived:
        # the transport is not guest execution.  The stamp is the guest's word: no later
        # than the arrival (exited() keeps it no earlier than the dispatch), so that a
        # made-up one cannot inflate an LP's busy time.
        self.sched.exited(vp.sched, min(msg.stamps[0], t_in) if msg.stamps else t_in,
                          msg.__class__ is m.QuantumExit)  # (preempted; positional: see exited)

    def resume(self, ctx, rax: int, rbx: int = 0, rcx: int = 0, rdx: int = 0, fault: int = NO_FAULT,
               output: bytes = b"", to_back: bool = False, path: int = NO_PATH) -> None:
        """Complete an exit.  ``ctx.stamps`` end with the hypervisor's arrival stamp; the
        departure stamp is added when the resume is actually sent.  A VP's own thread gets
        its resume when the scheduler dispatches it on a logical processor (that is also
        when a pending reset or interrupt is delivered); a root peer acting for the VP
        (`io`) gets it at once."""
        vp = ctx.vp
        if vp.peer != ctx.origin:
            if fault:
                vp.faults += 1
            self._outbox.send(ctx.origin, m.VpResume(ctx.seq, fault, rax, rbx, rcx, rdx, output,
                                                     ctx.stamps + (perf_counter_ns(),), 0, (), 0, 0, path))
            return
        vp.next_resume = (ctx.seq, ctx.stamps, rax, rbx, rcx, rdx, fault, output, path)
        self.sched.make_ready(vp.sched, perf_counter_ns(), to_back)  # (positional: ~250 instructions less)

    def dispatched(self, s: VpSched, lp: int, quantum_ns: int) -> None:
        """The scheduler put the VP on an LP: send what it is waiting for."""
        vp = s.owner
        if vp.next_frame is not None:  # its hello reply: the VP starts executing
            frame, vp.next_frame = vp.next_frame, None
            self._router.send(vp.peer, frame)
            return
        seq, stamps, rax, rbx, rcx, rdx, fault, output, path = vp.next_resume
        vp.next_resume = None
        interrupt, irq_stamps = 0, ()
        if vp.reset_pending:
            vp.reset_pending = False
            # RAX: which reset this is; RBX: 0x100 | the SIPI vector an AP starts at, or 0.
            fault, rax, rbx, vp.sipi = m.FAULT_RESET, vp.partition.resets, vp.sipi, 0
        elif not fault and (vp.interrupts.pending or vp.apic.irr):  # (the list: no __bool__ call)
            interrupt, irq_stamps = next_interrupt(vp)  # (which logs it for `io irqs_apic`)
            if interrupt and self._tracers:
                self._trace(vp.partition, vp, irq_path(irq_stamps), False, interrupt & 0xFF, 0, irq_stamps)
        if fault and fault != FAULT_RESET:
            vp.faults += 1
        now = perf_counter_ns()
        # The quantum is counted from the dispatch, so the VP's run ends on time however
        # long the resume takes to reach it (one host, one CLOCK_MONOTONIC).
        frame = _pack_resume(seq, fault, rax, rbx, rcx, rdx, output, stamps + (now,),
                             interrupt, irq_stamps, now + quantum_ns, lp, path, (vp.rflags, vp.cr3))
        if not self._router.send(vp.peer, frame):
            self._counters["unroutable_replies"] += 1
            self.sched.exited(s, perf_counter_ns())
            self.sched.remove(s)

    # -- HLT ----------------------------------------------------------------------------------

    def halt(self, vp, seq: int, t_in: int) -> None:
        """The VP sleeps in HLT; ``seq`` is the exit a wake-up completes."""
        vp.halt_seq = seq
        self.sched.halted(vp.sched, t_in)

    def wake(self, vp) -> None:
        """End a HLT: the VP resumes, taking what is pending (an interrupt, a reset)."""
        if vp.state is VpState.HALTED and vp.peer is not None:
            seq, vp.halt_seq = vp.halt_seq, None
            vp.next_resume = (seq, (), 0, 0, 0, 0, NO_FAULT, b"", NO_PATH)
            self.sched.make_ready(vp.sched, perf_counter_ns())

    # -- INIT ---------------------------------------------------------------------------------

    def on_reset_request(self, identity: bytes, peer, msg: m.ResetRequest, t_in: int) -> None:
        part, seq = peer.partition, msg.seq
        if seq:  # numbered: a restarted worker's resend, or its redone access's, is done once
            if not part.new_event(seq):
                self._counters["resets_dropped"] += 1
                log.info("partition %d: reset request (seq %d) from a restarted worker dropped: it "
                         "had arrived", part.id, seq)
                return
            if msg.resent:
                self._counters["resets_resent"] += 1
        log.info("partition %d: reset requested by its chipset (%s)%s", part.id, msg.reason,
                 ", resent by a restarted worker" if msg.resent else "")
        self.reset(part)

    def reset(self, part) -> None:
        """A partition reset: every VP starts over at its reset vector (the next time it is
        resumed, or at once if halted), the partition-wide MSRs return to their reset
        values, and the worker puts its devices back to power-on."""
        part.reset()
        for vp in part.vps:
            vp.init()
            vp.reset_pending = vp.peer is not None
            self.wake(vp)
        if part.worker is not None:
            self._outbox.send(part.worker, m.DeviceReset(part.resets))
