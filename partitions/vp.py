"""A virtual processor as guest code sees it: an instruction-level API.

Instructions that real hardware would intercept (IN/OUT, CPUID, RDMSR/WRMSR, the hypercall,
HLT) are a real message round trip to the hypervisor over this VP's own DEALER; RAM access
and PAUSE are not.  Each round trip is timed from the stamps the hops appended, and recorded
by path in histograms; those measured since the last are sent to the hypervisor now and
then (``vp_stats``) — never inside a measured round trip.

An exception the hypervisor injects (#GP for an MSR the partition may not touch, #UD for a
hypercall without the hypercall page) is raised in the guest as :class:`GuestFault`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from time import perf_counter_ns
from typing import Callable

from proto import messages as m
from proto.messages import FAULT_RESET, RFLAGS_FIXED, RFLAGS_IF, VpResume, decode
from proto.exits import BY_CODE, Exit
from proto.codes import HvMsr, HvStatus, HypercallCode, X86Exception, control_value
from proto.memory import UnmappedGpa
from proto.errors import Refused
from proto.hvcall import HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE
from proto.stats import PathStats, merge_paths
from proto.transport import Dealer
from proto.posted import LAYOUT as POSTED_LAYOUT, ON as POSTED_ON, ON_OFFSET as POSTED_ON_OFFSET
from proto.coalesced_mmio_messages import in_zones

from partitions.coalesced import CoalescedRing, query_zones

# An exit's resume is waited for in one go this long (the hot path: one poll), then in
# slices of HALT_SLICE_MS that check whether the partition is stopping.
EXIT_TIMEOUT_MS = 200
HALT_SLICE_MS = 200
STATS_INTERVAL_NS = 250_000_000
# Until the first resume says otherwise, a VP may run this long before it must exit.
DEFAULT_QUANTUM_NS = 10_000_000
# How often a VP executing guest code looks at its connection for a posted interrupt
# (``interrupt_notify``), at its preemption points.  A look is a zmq poll (a few µs of
# Python); guest code reaches a preemption point every µs or so, so looking at every one
# would double the cost of RAM access.  So it looks at most this often: an interrupt for a
# running VP waits this long at most past its arrival, plus the time to the next
# preemption point, instead of until the VP's next exit (up to a quantum).
NOTIFY_POLL_NS = 50_000
# How often a VP with a posted-interrupt descriptor (proto/posted.py) looks at it: a memory
# load of its ON bit (~0.1–0.25 µs), so far more often than the poll above, which it still makes
# every NOTIFY_POLL_NS (errors, and the interrupt_notify of a hypervisor that posts by
# message; pyzmq's poll also lets go of the GIL for the partition's other VPs).
POSTED_CHECK_NS = 10_000
NEVER = 1 << 62
RFLAGS_FIXED_IF = RFLAGS_FIXED | RFLAGS_IF
_HV_STATUS = HvStatus._value2member_map_
_SWITCH_VIRTUAL_ADDRESS_SPACE = HypercallCode.HvCallSwitchVirtualAddressSpace
# Round trips of one path kept unfiled at most (a few hundred KB): filed in bulk at each
# vp_stats (every STATS_INTERVAL_NS), or when this many wait — whichever comes first.
MAX_UNFILED = 8192

# x86-64 4-level paging: a table entry's present bit and the frame address in bits 51:12.
PTE_PRESENT = 1
PTE_FRAME = 0x000FFFFFFFFFF000



class GuestFault(Exception):
    """The instruction faulted; ``vector`` is the x86 exception the guest takes."""

    def __init__(self, vector: int, what: str) -> None:
        super().__init__(f"{X86Exception(vector).name} on {what}")
        self.vector = vector


class VpStopped(Exception):
    """The partition is stopping; guest code unwinds."""


class VpReset(Exception):
    """The partition is being reset: the VP starts over at its reset vector.
    ``generation`` counts the partition's resets.  An INIT IPI resets one VP the same way;
    a startup IPI after it says where an application processor starts: ``sipi`` is
    0x100 | its vector (0: no SIPI — an AP waits for one)."""

    def __init__(self, generation: int, sipi: int = 0) -> None:
        super().__init__(f"reset #{generation}" + (f", SIPI vector {sipi & 0xFF:#04x}" if sipi else ""))
        self.generation = generation
        self.sipi = sipi


Handler = Callable[["Vp", int], None]


class Vp:
    def __init__(self, dealer: Dealer, index: int, mem, stop: threading.Event,
                 bus_lock: threading.Lock | None = None, partition: int = 0, tlbs: list | None = None,
                 coalesced: CoalescedRing | None = None, posted=None) -> None:
        self.index = index
        self.mem = mem  # proto.memory.GuestMemory: guest RAM through the partition's SLAT
        self.partition = partition  # the TLB tag's partition part
        # Every LP's TLB (proto.tlb.LpTlb), by LP index; the VP uses the one of the LP its
        # last resume said it is dispatched on.  None: no TLB, every access walks.
        self._tlbs = tlbs or None
        self.lp = 0
        # The memory bus lock that makes locked instructions atomic across the partition's VPs.
        self.bus_lock = bus_lock or threading.Lock()
        # The partition's coalesced MMIO ring (partitions/coalesced.py), shared by its VPs;
        # what it holds goes out before this VP's next exit.
        self.coalesced = coalesced or CoalescedRing()
        self._coalesced_writes = self.coalesced.writes
        self.stop = stop
        self._dealer = dealer
        self._send = dealer.send
        # After wait() said a frame is there: one poll per resume, not two.
        self._recv_ready = dealer.recv_ready
        self._seq = 0
        self._paths: dict[str, PathStats] = {}  # every round trip sent in a vp_stats
        # Round trips filed (PathStats.record_many) but not yet sent: each vp_stats carries
        # these alone, and the hypervisor adds them to what it has — not every histogram
        # again, whose thousands of buckets the hypervisor checked and decoded 4 times a
        # second per VP (a third of its CPU with 16 partitions).
        self._unsent: dict[str, PathStats] = {}
        # Round trips measured since the histograms were last brought up to date: their
        # stamps, in a list per path indexed by its code (proto.exits.Exit.code; a resume's
        # ``path`` is checked to be one): appending is all a round trip costs; they are
        # filed in bulk when read — at every vp_stats.
        self._unfiled: list[list[tuple]] = [[] for _ in range(max(BY_CODE) + 1)]
        self.exits = 0
        self.counters = {"interrupts": 0, "handler_exits": 0, "unhandled_interrupts": 0, "resets": 0,
                         "tlb_hits": 0, "tlb_misses": 0, "tlb_walk_reads": 0, "tlb_evictions": 0}
        self._next_stats = perf_counter_ns() + STATS_INTERVAL_NS
        self._stats_exits = 0  # self.exits when vp_stats was last sent
        # Its posted-interrupt descriptor (proto.posted.VpDescriptor), or None: posted
        # interrupts come only as interrupt_notify messages.
        self._posted = posted
        self._posted_buf = posted.buf if posted is not None else None
        self._check_ns = POSTED_CHECK_NS if posted is not None else NOTIFY_POLL_NS
        self._quantum_end = perf_counter_ns() + DEFAULT_QUANTUM_NS
        # The next moment a preemption point has something to do: the quantum's end, or
        # the next look for a posted interrupt, whichever is first.
        self._next_check = min(self._quantum_end, perf_counter_ns() + self._check_ns)
        self._next_poll = 0  # the next look at the connection (a poll)
        self._poll_ready = dealer.wait
        self._stopping = stop.is_set
        self.power_on()
        if posted is not None:
            # Before any guest code: from now on the hypervisor may post here.
            self._send(m.PostedDescriptorReady(POSTED_LAYOUT).encode())

    def power_on(self) -> None:
        """The state after RESET/INIT: interrupts disabled, no handlers, nothing pending."""
        self.if_flag = False
        self.cr3 = 0
        self.assist_gpa: int | None = None
        self.handlers: dict[int, Handler] = {}
        self._pending: list[tuple[int, tuple]] = []
        self.irq_stamps: tuple = ()  # the interrupt being handled: its path's stamps, then when it was taken
        if self._posted is not None:
            self._posted.take()  # posted before the reset: gone with the rest of the APIC's state

    # -- the round trip -----------------------------------------------------------------

    def _regs(self) -> tuple[int, int]:
        """The register block saved with every exit (``proto.messages.REGS``)."""
        return (RFLAGS_FIXED_IF if self.if_flag else RFLAGS_FIXED, self.cr3)

    def _next_seq(self) -> int:
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        return seq

    def _exit(self, pack, *fields) -> m.VpResume:
        """The exit ``pack(seq, *fields, stamps, regs)`` (an intercept message's ``pack``):
        sent, and its resume waited for and taken."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF  # (_next_seq's line: one call less per exit)
        frame = pack(seq, *fields, (perf_counter_ns(),), self._regs())
        if self._stopping():
            raise VpStopped()
        if self._coalesced_writes:
            self.coalesced.flush(self._send, self.index)
        self._send(frame)
        while True:
            # Wait as long as it takes — a HLT, a paused partition, a VP waiting for an LP —
            # but notice a stopping partition.  (If the hypervisor dies the launcher ends
            # the run, which stops this partition.)
            if not self._poll_ready(EXIT_TIMEOUT_MS):
                # A long wait (a HLT, mostly): what was measured since the last vp_stats
                # reaches status now, not at the next exit, which may be far off.
                if self.exits != self._stats_exits:
                    self.flush_stats()
                while not self._poll_ready(HALT_SLICE_MS):
                    if self._stopping():
                        raise VpStopped()
            raw = self._recv_ready()
            t_resume = perf_counter_ns()
            msg = decode(raw)
            if msg.__class__ is VpResume and msg.seq == seq:
                break
            if msg.__class__ is m.InterruptNotify:
                # Posted while this VP ran, read only now: it is pending all the same (the
                # resume, sent after it, does not carry it again).
                self._pending.append((msg.interrupt, msg.irq_stamps))
                continue
            if msg.__class__ is m.ErrorReply:
                self._error(msg)
                continue
            if msg.__class__ is m.VpStateQuery:  # a save, while this VP waits here (issue 13)
                self._send(m.VpStateReply(*self.cpu_state()).encode())
                continue
            # Anything else is a late answer to an earlier exit; it cannot be ours.
        self.exits += 1
        # (Conditional expressions, not min() and bool(): builtin calls cost ~1,000
        # instructions each here.)
        self._quantum_end = quantum_end = msg.deadline_ns or NEVER
        check = t_resume + self._check_ns
        self._next_check = quantum_end if quantum_end < check else check
        if msg.regs:
            # The register block as the hypervisor restores it (the root may have changed it).
            rflags, self.cr3 = msg.regs
            self.if_flag = rflags & RFLAGS_IF != 0
        self.lp = msg.lp
        if msg.fault == FAULT_RESET:
            self.counters["resets"] += 1
            raise VpReset(msg.rax, msg.rbx)
        if msg.path and msg.stamps:  # (filed under the path the hypervisor counted the exit by)
            unfiled = self._unfiled[msg.path]
            unfiled.append(msg.stamps + (t_resume,))
            if len(unfiled) >= MAX_UNFILED:
                self._file()
        if self._posted_buf is not None and self._posted_buf[POSTED_ON_OFFSET] & POSTED_ON:
            # Posted before this exit and not yet seen (a HLT after a posted interrupt ends
            # at once for it: hypervisor/interrupts.py posted_this_run).
            self._pending += self._posted.take()
        if msg.interrupt:
            self._pending.append((msg.interrupt, msg.irq_stamps))
        if msg.fault:
            raise GuestFault(msg.fault, self._describe(frame))
        if self._pending and self.if_flag:
            self._deliver()
        # After the interrupt's handler, not before: filing and sending the round trips
        # since the last vp_stats takes a few hundred µs of Python, and before, one tick in
        # 25 (250 ms at 100 Hz) waited for it — a tail of the interrupt path of its own.
        if t_resume >= self._next_stats:
            self.flush_stats()
        return msg

    def cpu_state(self) -> tuple[bool, bytes]:
        """(at an instruction boundary, the CPU's registers) for a save: the Python guest's
        are its Python frames — nothing to send; its kernel's state is in its RAM
        (partitions/resume.py).  A real-CPU backend's ExitPort answers with its emulator's."""
        return True, b""

    @staticmethod
    def _describe(frame: bytes) -> str:
        return m.decode(frame).NAME

    def _measured(self, path: Exit, stamps: tuple) -> None:
        """One round trip of ``path``, filed into its histograms later (``paths``).  (An
        exit's resume appends to its path's list itself.)"""
        unfiled = self._unfiled[path.code]
        unfiled.append(stamps)
        if len(unfiled) >= MAX_UNFILED:
            self._file()

    def _file(self) -> None:
        for code, rounds in enumerate(self._unfiled):
            if rounds:
                path = BY_CODE[code]
                stats = self._unsent.get(path)
                if stats is None:
                    stats = self._unsent[path] = PathStats()
                stats.record_many(rounds)
                self._unfiled[code] = []

    @property
    def paths(self) -> dict[str, PathStats]:
        """This VP's latency histograms by path name, every round trip measured so far (a
        copy: sent and not yet sent, merged)."""
        self._file()
        return merge_paths(merge_paths({}, self._paths), self._unsent)

    def flush_stats(self) -> None:
        """``vp_stats``: the round trips measured since the last one, and the counters."""
        self._next_stats = perf_counter_ns() + STATS_INTERVAL_NS
        self._stats_exits = self.exits
        self._file()
        unsent, self._unsent = self._unsent, {}
        paths = {p: s.to_wire() for p, s in unsent.items()}
        self._send(m.VpStats(paths, dict(self.counters, exits=self.exits)).encode())
        merge_paths(self._paths, unsent)

    # -- interrupts -----------------------------------------------------------------------

    def sti(self) -> None:
        self.if_flag = True
        if self._pending:
            self._deliver()

    def cli(self) -> None:
        self.if_flag = False

    @contextmanager
    def interrupts_disabled(self):
        """``local_irq_save`` … ``local_irq_restore``."""
        was = self.if_flag
        self.if_flag = False
        try:
            yield
        finally:
            if was:
                self.sti()

    def set_handler(self, vector: int, handler: Handler) -> None:
        """The IDT entry for ``vector``: an interrupt gate (IF is clear while it runs)."""
        self.handlers[vector] = handler

    def _accept(self) -> int:
        """Take the next pending interrupt as delivered now: its latency recorded, the
        assist page's "no EOI required" set when asked, counted; its vector."""
        raw, irq_stamps = self._pending.pop(0)
        if irq_stamps:
            # Four stamps came from the PIC in the worker, two from the local APIC.
            path = Exit.INTERRUPT if len(irq_stamps) > 2 else Exit.APIC_TIMER
            irq_stamps += (perf_counter_ns(),)
            self._measured(path, irq_stamps)
        self.irq_stamps = irq_stamps  # (for the handler: netvsc notes them)
        if raw & m.INTERRUPT_NO_EOI and self.assist_gpa is not None:
            # The hypervisor's write to the VP assist page: "no EOI required".
            self.mem.write_int(self.assist_gpa, 1, self.mem.read_int(self.assist_gpa, 1) | 1)
        self.counters["interrupts"] += 1
        return raw & 0xFF

    def _deliver(self) -> None:
        while self._pending and self.if_flag:
            vector = self._accept()
            handler = self.handlers.get(vector)
            if handler is None:
                self.counters["unhandled_interrupts"] += 1
                continue
            exits_before = self.exits
            self.if_flag = False
            try:
                handler(self, vector)
            finally:
                spent = self.exits - exits_before
                self.counters["handler_exits"] += spent
                key = f"vector_{vector:#04x}"
                self.counters[key] = self.counters.get(key, 0) + 1
                self.counters[key + "_exits"] = self.counters.get(key + "_exits", 0) + spent
                self.if_flag = True  # IRET restores IF

    # -- port I/O -------------------------------------------------------------------------

    def _in(self, port: int, size: int) -> int:
        return self._exit(m.IoPortIntercept.pack, port, size, False, 0).rax

    def _out(self, port: int, size: int, value: int) -> None:
        self._exit(m.IoPortIntercept.pack, port, size, True, value)

    def inb(self, port: int) -> int:
        # _in's line, not a call to it: ~700 instructions less per exit (cachegrind), on
        # the bench's port I/O path (as outb).
        return self._exit(m.IoPortIntercept.pack, port, 1, False, 0).rax

    def inw(self, port: int) -> int:
        return self._in(port, 2)

    def inl(self, port: int) -> int:
        return self._in(port, 4)

    def outb(self, port: int, value: int) -> None:
        self._exit(m.IoPortIntercept.pack, port, 1, True, value & 0xFF)  # (_out's line, as inb)

    def outw(self, port: int, value: int) -> None:
        self._out(port, 2, value & 0xFFFF)

    def outl(self, port: int, value: int) -> None:
        self._out(port, 4, value & 0xFFFFFFFF)

    # -- string port I/O: REP OUTS / REP INS ------------------------------------------------

    def outs(self, port: int, size: int, data: bytes) -> None:
        """REP OUTSB/W/D: ``data``'s ``size``-byte elements written to ``port`` in order, in
        one exit per page of them (Hyper-V's one intercept for a whole REP, with the
        StringOp and RepPrefix bits; KVM's one exit to user space per pio_data page)."""
        if len(data) % size:
            raise ValueError(f"{len(data)} bytes are not whole {size}-byte elements")
        for i in range(0, len(data), m.HV_PAGE_SIZE):
            chunk = bytes(data[i:i + m.HV_PAGE_SIZE])
            self._exit(m.IoStringIntercept.pack, port, size, True, len(chunk) // size, chunk)

    def ins(self, port: int, size: int, count: int) -> bytes:
        """REP INSB/W/D: ``count`` elements read from ``port``, in one exit per page."""
        out = bytearray()
        per_exit = m.HV_PAGE_SIZE // size
        while count > 0:
            n = count if count < per_exit else per_exit
            out += self._exit(m.IoStringIntercept.pack, port, size, False, n, b"").output
            count -= n
        return bytes(out)

    # -- CPUID, MSRs, hypercalls ------------------------------------------------------------

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        r = self._exit(m.CpuidIntercept.pack, leaf, subleaf)
        return r.rax, r.rbx, r.rcx, r.rdx

    def rdmsr(self, msr: int) -> int:
        r = self._exit(m.MsrIntercept.pack, msr, False, 0)
        return (r.rdx << 32) | r.rax

    def wrmsr(self, msr: int, value: int) -> None:
        self._exit(m.MsrIntercept.pack, msr, True, value)
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE:
            # The hypervisor overlays the page at this GPA; it writes it on this VP's behalf.
            self.assist_gpa = (value & ~0xFFF) if value & 1 else None

    def hypercall_raw(self, control: int, data: bytes = b"") -> tuple[int, bytes]:
        """The hypercall instruction: RCX = ``control``; returns (RAX, output block)."""
        r = self._exit(m.HypercallIntercept.pack, control, data)
        return r.rax, r.output

    def hypercall(self, code: int, data: bytes = b"", fast: bool = False, rep_count: int = 0,
                  rep_start: int = 0) -> tuple[HvStatus, int, bytes]:
        """Returns (status, reps completed, output)."""
        rax, out = self.hypercall_raw(control_value(code, fast, rep_count, rep_start), data)
        # The member by a dict lookup, not HvStatus(...)'s Python-level EnumType.__call__
        # (~3,000 instructions a hypercall); a status it does not name raises as that does.
        status = _HV_STATUS.get(rax & 0xFFFF)
        if status is None:
            status = HvStatus(rax & 0xFFFF)
        if code == _SWITCH_VIRTUAL_ADDRESS_SPACE and status == HvStatus.HV_STATUS_SUCCESS:
            (self.cr3,) = HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE.unpack_from(data)  # the hypervisor loaded CR3
        return status, (rax >> 32) & 0xFFF, out

    # -- HLT, PAUSE, RAM --------------------------------------------------------------------

    def hlt(self) -> None:
        """Wait for an interrupt.  Returns once one has been taken (or at once if one was
        pending); a stopping partition raises VpStopped, a reset VpReset."""
        # No vp_stats here: every STATS_INTERVAL_NS at an exit's resume, and when a wait
        # (this one) lasts.  Sent before every HLT it was one message of every histogram
        # per timer tick — 1,000 a second with a 1 kHz APIC timer, 100 per partition with
        # the PIC's tick — each costing the hypervisor more than the tick's own exits.
        self._exit(m.HaltIntercept.pack)

    def pause(self) -> None:
        """PAUSE: a spin-loop hint, not intercepted (no pause-loop exiting here); like every
        instruction, it may find the VP's quantum over."""
        if perf_counter_ns() >= self._next_check:
            self.preemption_point()

    def preemption_point(self) -> None:
        """Where guest code notices what happened while it ran, as an instruction boundary
        does: its quantum over (it exits, and continues once dispatched again), or an
        interrupt posted to it (taken now if IF is set).  The instructions call it when
        ``_next_check`` has passed; a CPU backend that runs guest code some other way calls
        it at its own instruction boundaries (it returns quickly when nothing is due)."""
        now = perf_counter_ns()
        if now >= self._quantum_end:
            self._quantum_over()
            return
        if now < self._next_check:
            return
        self._next_check = min(self._quantum_end, now + self._check_ns)
        posted = False
        buf = self._posted_buf
        if buf is not None and buf[POSTED_ON_OFFSET] & POSTED_ON:
            self._pending += self._posted.take()
            posted = True
        if buf is None or now >= self._next_poll:
            self._next_poll = now + NOTIFY_POLL_NS
            while self._poll_ready(0):
                msg = m.decode(self._recv_ready())
                if msg.__class__ is m.InterruptNotify:
                    self._pending.append((msg.interrupt, msg.irq_stamps))
                    posted = True
                elif msg.__class__ is m.ErrorReply:
                    self._error(msg)
                # Nothing else is sent to a VP that is executing: a stray frame is dropped
                # as _exit drops late answers.
        if posted and self.if_flag:
            self._deliver()

    def rdtsc(self) -> int:
        """RDTSC, not intercepted: hvstack's TSC is the host's CLOCK_MONOTONIC in ns (a 1 GHz
        invariant TSC, the same on every VP), which the reference TSC page scales."""
        return perf_counter_ns()

    def _quantum_over(self) -> None:
        """The scheduler's timer fired: exit, and continue once dispatched again."""
        self._exit(m.QuantumExit.pack)

    def xchg(self, gpa: int, value: int) -> int:
        """``lock xchg`` on a 32-bit word of RAM: atomic against the partition's other VPs."""
        if perf_counter_ns() >= self._next_check:
            self.preemption_point()
        with self.bus_lock:
            old = self.mem.read_int(gpa, 4)
            self.mem.write_int(gpa, 4, value)
        return old

    def read(self, gpa: int, size: int) -> int:
        """A load of ``size`` bytes: RAM directly (one SLAT translation), anything the SLAT
        does not map an MMIO exit."""
        if perf_counter_ns() >= self._next_check:
            self.preemption_point()
        try:
            return self.mem.read_int(gpa, size)
        except UnmappedGpa:
            pass
        return self._mmio_read(gpa, size)

    def write(self, gpa: int, size: int, value: int) -> None:
        """A store of ``size`` bytes: RAM directly, anything else an MMIO exit."""
        if self.mem.is_mapped(gpa, size):
            if perf_counter_ns() >= self._next_check:
                self.preemption_point()
            self.mem.write_int(gpa, size, value)
            return
        self._mmio_write(gpa, size, value)

    def _error(self, msg: m.ErrorReply) -> None:
        """An error from the hypervisor, wherever the VP reads its connection (an exit's wait,
        a preemption point, the zones query). A refused coalesced batch is no answer to
        anything the VP waits for: its stores are lost and counted, and the VP goes on (it
        once died of one after a worker restart). Anything else is raised."""
        if msg.ref_type == m.CoalescedMmioBatch.TYPE:
            self.counters["coalesced_refused"] = self.counters.get("coalesced_refused", 0) + 1
            return
        raise Refused(msg.code, msg.message)

    def _mmio_read(self, gpa: int, size: int) -> int:
        """An MMIO exit for a load (what the SLAT does not map)."""
        return self._exit(m.MmioIntercept.pack, gpa, size, False, 0).rax

    def _mmio_write(self, gpa: int, size: int, value: int) -> None:
        """An MMIO exit for a store — or, in a coalesced region, none: the store joins the
        partition's ring, sent before its next exit."""
        ring = self.coalesced
        if ring.zones is None:
            ring.zones = query_zones(self._dealer, self._next_seq(), self._pending, self._error)
        if ring.zones and in_zones(ring.zones, gpa, size):
            ring.append(self._send, self.index, gpa, size, value)
            self.counters["coalesced_mmio_writes"] = self.counters.get("coalesced_mmio_writes", 0) + 1
            return
        self._exit(m.MmioIntercept.pack, gpa, size, True, value)

    def write_bytes(self, gpa: int, data: bytes) -> None:
        """``rep movs`` to ``gpa``: one store per 8 bytes where it is not RAM."""
        if self.mem.is_mapped(gpa, len(data)):
            self.mem.write(gpa, data)
            return
        for i in range(0, len(data), 8):
            chunk = data[i:i + 8]
            size = 8 if len(chunk) == 8 else (4 if len(chunk) >= 4 else (2 if len(chunk) >= 2 else 1))
            self.write(gpa + i, size, int.from_bytes(chunk[:size], "little"))
            if size < len(chunk):
                self.write_bytes(gpa + i + size, chunk[size:])

    def btr(self, gpa: int, bit: int) -> bool:
        """``btr [gpa], bit``: clear the bit, return what it was (RAM only)."""
        byte = gpa + bit // 8
        mask = 1 << (bit % 8)
        with self.bus_lock:
            value = self.mem.read_int(byte, 1)
            self.mem.write_int(byte, 1, value & ~mask & 0xFF)
        return bool(value & mask)

    # -- paging: CR3, INVLPG, loads and stores by guest virtual address ------------------------

    def mov_cr3(self, value: int) -> None:
        """MOV to CR3, intercepted: the hypervisor flushes this LP's whole TLB."""
        self._exit(m.Cr3Intercept.pack, value)
        self.cr3 = value

    def invlpg(self, gva: int) -> None:
        """INVLPG, intercepted: the hypervisor flushes this LP's whole TLB."""
        self._exit(m.InvlpgIntercept.pack, gva & 0xFFFFFFFFFFFFFFFF)

    def translate(self, gva: int) -> int:
        """Guest virtual → guest physical: the current LP's TLB, else a page walk that
        fills it.  A non-present entry is a #PF, a non-canonical address a #GP."""
        vpn = gva >> 12
        c = self.counters
        tlbs = self._tlbs
        if tlbs is not None:
            tlb = tlbs[self.lp]
            pfn = tlb.lookup(self.partition, self.cr3, vpn)
            if pfn is not None:
                c["tlb_hits"] += 1
                return (pfn << 12) | (gva & 0xFFF)
        c["tlb_misses"] += 1
        pfn = self._walk(gva)
        if tlbs is not None and tlb.fill(self.partition, self.cr3, vpn, pfn):
            c["tlb_evictions"] += 1
        return (pfn << 12) | (gva & 0xFFF)

    def _walk(self, gva: int) -> int:
        """The 4-level x86-64 walk in guest RAM (PML4 at CR3, 9 bits a level, 4 KiB pages)."""
        if gva >> 47 not in (0, 0x1FFFF):
            raise GuestFault(X86Exception.GP, f"non-canonical address {gva:#x}")
        table = self.cr3 & PTE_FRAME
        c = self.counters
        for shift in (39, 30, 21, 12):
            c["tlb_walk_reads"] += 1
            try:
                entry = self.mem.read_int(table | (((gva >> shift) & 0x1FF) << 3), 8)
            except UnmappedGpa:
                raise GuestFault(X86Exception.PF, f"page walk of {gva:#x}: table at {table:#x} is not RAM") from None
            if not entry & PTE_PRESENT:
                raise GuestFault(X86Exception.PF, f"page walk of {gva:#x}: not present")
            table = entry & PTE_FRAME
        return table >> 12

    def vread(self, gva: int, size: int) -> int:
        """A load by guest virtual address."""
        first = 0x1000 - (gva & 0xFFF)
        if size > first:  # across a page: two translations
            lo = self.read(self.translate(gva), first)
            return lo | self.vread(gva + first, size - first) << (8 * first)
        return self.read(self.translate(gva), size)

    def vwrite(self, gva: int, size: int, value: int) -> None:
        """A store by guest virtual address."""
        first = 0x1000 - (gva & 0xFFF)
        if size > first:
            self.write(self.translate(gva), first, value & ((1 << (8 * first)) - 1))
            self.vwrite(gva + first, size - first, value >> (8 * first))
            return
        self.write(self.translate(gva), size, value)

