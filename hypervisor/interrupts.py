"""Virtual interrupt delivery: what waits for a VP until it can take it, and how it gets there.

The chipset's interrupt controller lives in the worker (the PIC, as in a Hyper-V generation
1 VM) and delivers a vector as ExtINT; the hypervisor queues it here for the target VP and
injects it at the VP's next resume — at once if the VP is halted (HLT ends), else when its
current exit completes.  Higher vectors go first, as the APIC prioritises them.  The local
APIC (``apic.py``) adds its timer and IPIs, which wait in its IRR; the two compete at
injection by priority.

A VP that is executing guest code on an LP (RUNNING) does not wait for its next exit: the
interrupt is *posted* to it (:meth:`Interrupts.kick`), as Intel's posted interrupts do for a
running vCPU — the hypervisor takes the vector as a resume would and sends it in an
``interrupt_notify`` on the VP's own connection, which the VP reads at its next preemption
point (or while it waits for the resume of an exit it made meanwhile: the connection keeps
order, so nothing is lost or taken twice).  A VP that said it reads its posted-interrupt
descriptor (``posted.py``, :mod:`proto.posted`) gets the vector there instead — its PIR bit
and ON, as Intel's notifier sets them — and finds it at its next preemption point with a
memory load, no message and no ZeroMQ I/O thread in between; the vector is taken here in
the same way either way, so this APIC state stays the one source of truth and the EOI comes
back as an exit.  At most :data:`POSTED_MAX` are posted per dispatch (Intel's
outstanding-notification bit, made a small count); more wait for the next resume.  A
partition's interrupts only ever reach its own VPs' connections and descriptors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter_ns

from proto import messages as m
from proto.exits import Exit
from proto.messages import INTERRUPT_NO_EOI

from hypervisor.deadlines import after_move
from hypervisor.scheduler import VpState

log = logging.getLogger("hypervisor")

# Posted-interrupt notifications sent to one VP per dispatch: a VP that does not read its
# connection (a hostile guest) has at most this many waiting there per resume.
POSTED_MAX = 4


ICR_INIT, ICR_STARTUP = 5, 6  # ICR delivery modes
ICR_LEVEL_ASSERT = 1 << 14


@dataclass
class InterruptQueue:
    pending: list[tuple[int, tuple]] = field(default_factory=list)  # (vector, stamps)
    asserted: int = 0
    injected: int = 0
    by_vector: dict[int, int] = field(default_factory=dict)
    posted: int = 0  # interrupts posted to the VP (by message or descriptor), in all
    posted_dispatch: int = -1  # the dispatch (VpSched.dispatches) the last ones were sent in
    posted_in_dispatch: int = 0  # how many in that dispatch

    def __bool__(self) -> bool:
        return bool(self.pending)

    def post(self, vector: int, stamps: tuple) -> None:
        self.asserted += 1
        self.pending.append((vector, stamps))

    def take(self) -> tuple[int, tuple]:
        """The highest pending vector and the stamps it came with."""
        best = max(range(len(self.pending)), key=lambda i: self.pending[i][0])
        vector, stamps = self.pending.pop(best)
        self.injected += 1
        self.by_vector[vector] = self.by_vector.get(vector, 0) + 1
        return vector, stamps

    def clear(self) -> None:
        self.pending.clear()


def next_interrupt(vp) -> tuple[int, tuple]:
    """What to inject into ``vp`` now, and its path's stamps: the local APIC's highest
    deliverable vector if it outranks what the PIC has queued (ExtINT), else the PIC's;
    (0, ()) for nothing."""
    vector = vp.apic.deliverable()
    if vector is not None and not (vp.interrupts and max(v for v, _ in vp.interrupts.pending) > vector):
        no_eoi = vp.apic.inject(vector)
        fired = vp.apic.fired_ns.pop(vector, None)
        irq_stamps = (fired, perf_counter_ns()) if fired else ()
        vp.delivered.record(vector)  # for `io irqs_apic` (irq_log.py): with a resume or posted
        return vector | (INTERRUPT_NO_EOI if no_eoi else 0), irq_stamps
    if vp.interrupts:
        vector, irq_stamps = vp.interrupts.take()
        vp.delivered.record(vector)
        return vector, irq_stamps + (perf_counter_ns(),)
    return 0, ()


def irq_path(irq_stamps: tuple) -> Exit:
    """The measured path an injected interrupt took, by its stamps as the guest files it:
    four from the PIC in the worker (Exit.INTERRUPT), two from the local APIC's timer
    (Exit.APIC_TIMER); an IPI has none (traced as an interrupt, with no stages)."""
    return Exit.APIC_TIMER if len(irq_stamps) == 2 else Exit.INTERRUPT


def posted_this_run(vp) -> bool:
    """Interrupts were posted to ``vp`` during the run its current exit ended: a HLT then
    completes at once, since the VP may not have read them before it halted (it takes
    them while it waits for the resume).  Hardware's HLT likewise ends for a vector in the
    posted-interrupt descriptor."""
    q = vp.interrupts
    return q.posted_dispatch == vp.sched.dispatches and q.posted_in_dispatch > 0


class Interrupts:
    """Virtual interrupt delivery: the PIC's vectors from the worker, the local APICs'
    timers and IPIs.  An interrupt waits (in the VP's queue or its APIC's IRR) until the VP
    is next dispatched (:func:`next_interrupt`); a VP halted in HLT is woken for it."""

    def __init__(self, table, counters: dict, wake, send=None, tracer=None, posted=None) -> None:
        self._table = table
        self._counters = counters
        self._wake = wake  # Dispatcher.wake: end a VP's HLT
        self._send = send  # Router.send(identity, frame) -> bool: posted interrupts (None: none)
        self._tracer = tracer
        # hypervisor.posted.PostedDescriptors: for a VP that reads its descriptor, a posted
        # interrupt is a write there instead of a message (None: messages only).
        self._posted = posted
        self.next_timer_ns: int | None = None  # the earliest local APIC timer deadline

    # -- getting a pending interrupt to its VP ---------------------------------------------------

    def kick(self, vp) -> None:
        """Something is pending for ``vp``: a VP halted in HLT wakes for an interrupt it can
        take; a VP executing guest code on an LP has it posted; any other (in an exit,
        waiting for an LP) takes it with its next resume."""
        state = vp.state
        if state is VpState.HALTED:
            if vp.interrupts or vp.apic.deliverable() is not None:
                self._wake(vp)
        elif state is VpState.RUNNING:
            self.notify(vp)

    def notify(self, vp) -> None:
        """Post what ``vp`` can take now (at most POSTED_MAX per dispatch): through its
        descriptor if it reads one, else in ``interrupt_notify`` messages; it must be RUNNING."""
        q = vp.interrupts
        if self._send is None or vp.peer is None or vp.reset_pending:
            return
        if vp.sched.controls.paused or vp.sched.suspended:
            return  # paused or suspended: it takes it when it is dispatched again
        if q.posted_dispatch != vp.sched.dispatches:
            q.posted_dispatch, q.posted_in_dispatch = vp.sched.dispatches, 0
        while q.posted_in_dispatch < POSTED_MAX and (q or vp.apic.irr):
            interrupt, irq_stamps = next_interrupt(vp)
            if not interrupt:
                return
            q.posted_in_dispatch += 1
            q.posted += 1
            self._counters["posted_interrupts"] += 1
            if self._tracer is not None and self._tracer.tracers:
                self._tracer.trace(vp.partition, vp, irq_path(irq_stamps), False, interrupt & 0xFF, 0, irq_stamps)
            if self._posted is not None and self._posted.post(vp, interrupt, irq_stamps):
                continue
            if not self._send(vp.peer, m.InterruptNotify(interrupt, irq_stamps).encode()):
                # Its connection is gone or not read (a full queue): the VP is the only one
                # to lose by it.
                self._counters["unroutable_replies"] += 1
                return

    def on_assert_interrupt(self, identity: bytes, peer, msg: m.AssertInterrupt, t_in: int) -> None:
        part = peer.partition
        if not part.vps:
            return
        seq = msg.seq
        if seq:  # numbered: a restarted worker's resend is taken once (proto: AssertInterrupt)
            if not part.new_event(seq) and msg.resent:
                self._counters["interrupts_resent_dropped"] += 1
                return
            if msg.resent:
                self._counters["interrupts_resent"] += 1
                log.info("partition %d: interrupt %#x (seq %d), taken by its dead worker and never "
                         "delivered, resent by its successor", part.id, msg.vector, seq)
        # ExtINT from the PIC goes to the boot processor (virtual-wire mode, LINT0).
        vp = part.vps[0]
        part.pic_output.record(msg.vector)  # for `io irqs_pic` (irq_log.py)
        vp.interrupts.post(msg.vector, msg.stamps + (t_in,))
        self.kick(vp)

    # -- the local APIC timers ----------------------------------------------------------------

    def timer_moved(self, old: int | None, new: int | None) -> None:
        """One VP's timer deadline went from ``old`` to ``new`` (an APIC write, every EOI
        among them): the loop's next wake-up without a walk over every VP of every
        partition — only when the deadline that moved may have been the earliest.
        (hypervisor/deadlines.py)."""
        walk, self.next_timer_ns = after_move(self.next_timer_ns, old, new)
        if walk:
            self.timers_changed()

    def timers_changed(self) -> None:
        """A timer was programmed: when the loop must next wake for one."""
        deadlines = [vp.apic.timer_deadline_ns for part in self._table for vp in part.vps
                     if vp.apic.timer_deadline_ns is not None]
        self.next_timer_ns = min(deadlines) if deadlines else None

    def fire_timers(self, now: int) -> None:
        """APIC timers whose deadline passed: the interrupt waits in the IRR, a halted VP
        wakes for it."""
        for part in self._table:
            for vp in part.vps:
                if vp.apic.poll(now):
                    vp.apic.fired_ns[vp.apic.lvt_timer & 0xFF] = now
                    # HLT ends for an interrupt the VP can take, not for one its APIC holds
                    # back (disabled, or below what is in service).
                    self.kick(vp)
        self.timers_changed()

    # -- synthetic interrupt sources (SynIC SINTs, synthetic timers in direct mode) -----------

    def assert_vector(self, vp, vector: int, t: int | None = None) -> None:
        """A fixed interrupt for ``vp``'s local APIC (its IRR), from a source inside the
        hypervisor; a VP halted in HLT wakes if it can take it, one executing guest code has it posted
        (:meth:`kick`).  ``t``: when the source
        fired (perf_counter_ns), for the interrupt path's stamps."""
        vp.apic.accept(vector)
        if t is not None:
            vp.apic.fired_ns[vector] = t
        self.kick(vp)  # a halted VP wakes if it can take it; a running one has it posted

    # -- IPIs ---------------------------------------------------------------------------------

    def send_ipi(self, part, source) -> None:
        """After an ICR write (APIC page or HV_X64_MSR_ICR): deliver the fixed-mode IPI to
        its destination VPs' local APICs (the APIC ID is the VP index), waking them if they
        sleep in HLT."""
        ipi = source.apic.take_ipi()
        if ipi is None:
            return
        low, high = ipi
        vector, mode, shorthand = low & 0xFF, (low >> 8) & 7, (low >> 18) & 3
        if shorthand == 0:  # no shorthand: the APIC ID in ICR bits 63:56
            dest = high >> 24
            targets = [vp for vp in part.vps if vp.index == dest]
        elif shorthand == 1:  # self
            targets = [source]
        elif shorthand == 2:  # all including self
            targets = list(part.vps)
        else:  # all excluding self
            targets = [vp for vp in part.vps if vp is not source]
        if mode in (ICR_INIT, ICR_STARTUP) and low & ICR_LEVEL_ASSERT:
            return self._init_or_startup(part, mode, vector, targets)
        if mode != 0 or vector < 16:
            self._counters["ipis_ignored"] += 1  # INIT de-assert, NMI/SMI, or an illegal vector
            return
        for vp in targets:
            vp.apic.accept(vector)
            if vp.state is VpState.HALTED:
                self._wake(vp)  # (an IPI ends HLT even for a vector the APIC holds back)
            else:
                self.kick(vp)  # posted to a VP executing guest code

    def _init_or_startup(self, part, mode: int, vector: int, targets) -> None:
        """INIT resets each target (its local APIC with it) and leaves it waiting for a
        startup IPI; a startup IPI starts a VP that waits for one in real mode at vector ×
        4 KiB, and is ignored by any other (Intel SDM vol. 3, 10.6.1, 8.4.4).  The VP hears of
        both as a reset at its next resume (``FAULT_RESET``, RBX: 0x100 | vector), a halted
        one at once; what it does then is its CPU's business (partitions/cpu/run.py)."""
        for vp in targets:
            if mode == ICR_INIT:
                vp.init()
                vp.awaiting_sipi, vp.sipi = True, 0
            elif vp.awaiting_sipi:
                vp.awaiting_sipi, vp.sipi = False, 0x100 | vector
            else:
                self._counters["ipis_ignored"] += 1
                continue
            self._counters["init_sipi"] += 1
            vp.reset_pending = vp.peer is not None
            if vp.state is VpState.HALTED:
                self._wake(vp)
