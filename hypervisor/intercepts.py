"""VP exits: one handler per exit kind (:class:`proto.exits.Exit`), each taking the exit's context.

As Firecracker's vCPU loop has one arm per exit reason, each handler here counts its exit
in ``vp.exits[Exit.X]``, traces it as ``Exit.X`` when someone listens, and completes it
with a resume whose ``path`` is ``Exit.X.code`` — so the counter, the trace and the guest's
histogram all carry the one name.  (Two exceptions, as before the split: the end of a
quantum is not traced, and HLT's resume names no path — how long a VP slept is not a
round trip.)  Exits the hypervisor handles itself (CPUID, synthetic
MSRs, the local APIC, hypercalls, unclaimed ports, unmapped GPAs, CR3 and INVLPG, HLT, the
end of a quantum) take two hops; a port or MMIO access a worker claims is forwarded
(``forwarding.py``) and takes four.

The loop builds an :class:`ExitContext` for every exit message it routes here, after the
VP's register block was saved and its LP given back (``Dispatcher.left_guest``).  A root
executing an instruction on a VP's behalf (``io``) enters the same handlers with a context
whose ``origin`` is the root, which then gets the resume itself.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns

from proto import messages as m
from proto.codes import FAST_BIT, HV_ROOT_PRIVILEGES, HvMsr, HypercallCode, X86Exception
from proto.exits import NO_PATH, Exit
from proto.memory import PAGE_SHIFT

from hypervisor import cpuid, hypercall_page, msrs
from hypervisor.apic import APIC_BASE, APIC_PAGE
from hypervisor.hypercalls import Caller, VpCaller
from hypervisor.interrupts import posted_this_run
from hypervisor.partitions import Partition, VirtualProcessor

log = logging.getLogger("hypervisor")

# What a read of nothing returns, by access size: all ones (a floating bus).
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
NO_FAULT = int(X86Exception.NONE)
_UD = int(X86Exception.UD)
ROOT_CALLER = Caller(None, None, HV_ROOT_PRIVILEGES)  # the root partition making its own hypercalls
_SPIN_WAIT = int(HypercallCode.HvCallNotifyLongSpinWait)
# The hot exits' names and path codes as module constants: an enum member's attribute is
# two loads (the class, then the member) and a third for its code, on every exit.
_IO_PORT, _CPUID, _HYPERCALL = Exit.IO_PORT, Exit.CPUID, Exit.HYPERCALL
_CPUID_CODE, _HYPERCALL_CODE = Exit.CPUID.code, Exit.HYPERCALL.code


class ExitContext:
    """One exit while the hypervisor completes it.

    An access (a port or an MMIO exit) also carries what it accesses; one forwarded to a
    worker waits in the pending table as this same object, with ``kind`` and
    ``deadline_ns`` set, until the worker completes it.

    One is built for every exit: the access fields are class-level defaults that an
    access's handler overrides, so that building one stores six fields, not twelve (a
    slotted dataclass took 2.97k instructions a build, this 2.5k; cachegrind)."""

    addr = 0  # an access: the port or GPA,
    size = 0  # its size,
    write = False  # its direction
    value = 0  # and the value a write stores
    count = 0  # a string access (REP INS/OUTS): its elements,
    data = b""  # and a write's bytes
    kind: Exit | None = None  # forwarded: Exit.IO_PORT, Exit.IO_STRING or Exit.MMIO
    deadline_ns = 0  # forwarded: when the worker is presumed hung (time.monotonic_ns)

    def __init__(self, origin: bytes, partition: Partition | None, vp: VirtualProcessor | None, seq: int,
                 stamps: tuple, t_in: int) -> None:
        self.origin = origin  # who gets the vp_resume: the VP's thread, or a root peer acting for it (`io`)
        self.partition = partition  # None: the root's own hypercall
        self.vp = vp
        self.seq = seq
        self.stamps = stamps  # the hops so far, ending with the hypervisor's arrival stamp
        self.t_in = t_in  # when the hypervisor read the exit's frame

    def __repr__(self) -> str:
        return f"ExitContext({self.origin!r}, seq={self.seq}, kind={self.kind}, addr={self.addr:#x})"


class Intercepts:
    def __init__(self, *, dispatcher, forwarding, interrupts, tracer, outbox, hypercalls, memory, tlb,
                 synic=None) -> None:
        self._resume = dispatcher.resume
        self._halt = dispatcher.halt
        self._forward = forwarding.forward
        self._interrupts = interrupts
        self._tracers = tracer.tracers  # tested before tracing: empty while nobody listens
        self._trace = tracer.trace
        self._outbox = outbox
        self._hypercalls = hypercalls
        self._memory = memory
        self._tlb = tlb
        self._synic = synic  # hypervisor.synic.Synic: what a SynIC MSR write sets in motion

    # -- port I/O: IN/OUT (HvMessageTypeX64IoPortIntercept) -----------------------------------

    def io_port_intercept(self, ctx: ExitContext, msg: m.IoPortIntercept) -> None:
        port = msg.port
        ctx.addr, ctx.size, ctx.write, ctx.value = port, msg.size, msg.write, msg.value
        # What io_port() does, written out: a call less on every emulated exit (~500
        # instructions).  Keep the two alike.
        owner = ctx.partition.port_owner.get(port)
        if owner is None:
            return self.io_unclaimed(ctx)
        ctx.vp.exits[_IO_PORT] += 1
        self._forward(ctx, owner, _IO_PORT)  # completed in Forwarding.on_access_complete

    def io_port(self, ctx: ExitContext) -> None:
        """Exit.IO_PORT: forwarded to the worker that claims the port, or unclaimed.
        (io_port_intercept writes this out for the VP's own exits.)"""
        owner = ctx.partition.port_owner.get(ctx.addr)
        if owner is None:
            return self.io_unclaimed(ctx)
        ctx.vp.exits[Exit.IO_PORT] += 1
        self._forward(ctx, owner, Exit.IO_PORT)  # completed in Forwarding.on_access_complete

    def io_unclaimed(self, ctx: ExitContext, count: int = 0) -> None:
        """Exit.IO_UNCLAIMED: nothing claims the port.  Reads float high, writes go nowhere
        (Xen's null_handler, and what an ISA bus does) — each of a string access's ``count``
        elements alike (its read's bytes in the resume's output; traced with its count)."""
        part, vp, write = ctx.partition, ctx.vp, ctx.write
        vp.exits[Exit.IO_UNCLAIMED] += 1
        if write:
            part.unclaimed_writes += count or 1
        else:
            part.unclaimed_reads += count or 1
        result = 0 if write or count else ALL_ONES[ctx.size]
        output = b"" if write or not count else b"\xff" * (count * ctx.size)
        if self._tracers:
            traced = count or (ctx.value if write else result)
            self._trace(part, vp, Exit.IO_UNCLAIMED, write, ctx.addr, traced, ctx.stamps)
        self._resume(ctx, result, output=output, path=Exit.IO_UNCLAIMED.code)

    # -- string port I/O: REP INS/OUTS (the IoPortIntercept message with StringOp and RepPrefix)

    def io_string_intercept(self, ctx: ExitContext, msg: m.IoStringIntercept) -> None:
        """Exit.IO_STRING: ``count`` elements of one port in one exit, forwarded to the
        worker that claims the port (completed in Forwarding.on_string_access_complete), or
        unclaimed: every element of a read floats high, a write's go nowhere.  An exit
        whose ``data`` is not its ``count`` elements (a write's) or is not empty (a read's),
        or that moves nothing, no CPU could make: #GP, and nothing reaches the device."""
        size, count, write, data = msg.size, msg.count, msg.write, msg.data
        part, vp = ctx.partition, ctx.vp
        ctx.addr, ctx.size, ctx.write, ctx.count, ctx.data = msg.port, size, write, count, data
        if count == 0 or count * size > m.HV_PAGE_SIZE or len(data) != (count * size if write else 0):
            vp.exits[Exit.IO_STRING] += 1  # (and the fault, in the VP's ``faults``; no log line a guest could flood)
            return self._resume(ctx, 0, fault=int(X86Exception.GP), path=Exit.IO_STRING.code)
        owner = part.port_owner.get(msg.port)
        if owner is None:
            return self.io_unclaimed(ctx, count)
        vp.exits[Exit.IO_STRING] += 1
        self._forward(ctx, owner, Exit.IO_STRING)

    # -- MMIO: a load or store that is not RAM (GpaIntercept / UnmappedGpa) ---------------------

    def mmio_intercept(self, ctx: ExitContext, msg: m.MmioIntercept) -> None:
        ctx.addr, ctx.size, ctx.write, ctx.value = msg.gpa, msg.size, msg.write, msg.value
        self.mmio(ctx)

    def mmio(self, ctx: ExitContext) -> None:
        """The local APIC's page, then a worker's MMIO range, then (for the root's `io`
        only) guest RAM, then nothing: Exit.APIC, Exit.MMIO or Exit.UNMAPPED_GPA."""
        gpa = ctx.addr
        if APIC_BASE <= gpa < APIC_BASE + APIC_PAGE:
            return self.apic(ctx)
        owner = ctx.partition.mmio_owner(gpa)
        if owner is None:
            if ctx.origin != ctx.vp.peer and self._root_ram_access(ctx):
                return
            return self.unmapped_gpa(ctx)
        ctx.vp.exits[Exit.MMIO] += 1
        self._forward(ctx, owner, Exit.MMIO)  # completed in Forwarding.on_access_complete

    def apic(self, ctx: ExitContext) -> None:
        """Exit.APIC: the local APIC is the hypervisor's: two hops, no worker."""
        part, vp, gpa, write = ctx.partition, ctx.vp, ctx.addr, ctx.write
        vp.exits[Exit.APIC] += 1
        now = perf_counter_ns()
        if write:
            deadline = vp.apic.timer_deadline_ns
            vp.apic.write(gpa - APIC_BASE, ctx.value, now)
            if vp.apic.ended is not None and self._synic is not None:
                self._synic.after_eoi(part, vp)
            self._interrupts.timer_moved(deadline, vp.apic.timer_deadline_ns)
            self._interrupts.send_ipi(part, vp)
            result = 0
        else:
            result = vp.apic.read(gpa - APIC_BASE, now) & ALL_ONES[ctx.size]
        if self._tracers:
            self._trace(part, vp, Exit.APIC, write, gpa, ctx.value if write else result, ctx.stamps)
        self._resume(ctx, result, path=Exit.APIC.code)

    def unmapped_gpa(self, ctx: ExitContext) -> None:
        """Exit.UNMAPPED_GPA (HvMessageTypeUnmappedGpa): no RAM and no device claims the
        address.  The guest takes a #GP, and it is counted."""
        part, vp = ctx.partition, ctx.vp
        vp.exits[Exit.UNMAPPED_GPA] += 1
        part.unmapped_gpa += 1
        if self._tracers:
            self._trace(part, vp, Exit.UNMAPPED_GPA, ctx.write, ctx.addr, ctx.value, ctx.stamps)
        self._resume(ctx, 0, fault=int(X86Exception.GP), path=Exit.UNMAPPED_GPA.code)

    def _root_ram_access(self, ctx: ExitContext) -> bool:
        """`io readX/writeX` on guest RAM: the root reads and writes it through the
        partition's SLAT, as a VMM's debugger would.  False when the GPA is not RAM."""
        gpa, size = ctx.addr, ctx.size
        off = self._memory.ram_offset(ctx.partition.id, gpa)
        if off is None or ((gpa + size - 1) >> PAGE_SHIFT) != (gpa >> PAGE_SHIFT):
            return False
        if ctx.write:
            self._memory.write_ram(ctx.partition.id, off, ctx.value.to_bytes(size, "little"))
            result = 0
        else:
            result = int.from_bytes(self._memory.read_ram(ctx.partition.id, off, size), "little")
        self._resume(ctx, result)
        return True

    # -- CPUID and MSRs -------------------------------------------------------------------------

    def cpuid(self, ctx: ExitContext, msg: m.CpuidIntercept) -> None:
        """Exit.CPUID (HvMessageTypeX64CpuidIntercept)."""
        part, vp = ctx.partition, ctx.vp
        vp.exits[_CPUID] += 1
        eax, ebx, ecx, edx = cpuid.cpuid(part, vp.index, msg.leaf, msg.subleaf)
        if self._tracers:
            self._trace(part, vp, Exit.CPUID, False, msg.leaf, msg.subleaf, ctx.stamps)
        # (positional: keywords cost a call ~250 instructions more)
        self._resume(ctx, eax, ebx, ecx, edx, NO_FAULT, b"", False, _CPUID_CODE)

    def msr(self, ctx: ExitContext, msg: m.MsrIntercept) -> None:
        """Exit.MSR (HvMessageTypeX64MsrIntercept): RDMSR returns EDX:EAX."""
        part, vp = ctx.partition, ctx.vp
        vp.exits[Exit.MSR] += 1
        fault, value = self.rdwrmsr(part, vp, msg.msr, msg.write, msg.value)
        if self._tracers:
            self._trace(part, vp, Exit.MSR, msg.write, msg.msr, msg.value if msg.write else value, ctx.stamps)
        self._resume(ctx, value & 0xFFFFFFFF, 0, 0, value >> 32, fault, path=Exit.MSR.code)

    def rdwrmsr(self, part: Partition, vp: VirtualProcessor, msr: int, write: bool, value: int) -> tuple[int, int]:
        """(fault, value read); a write to HV_X64_MSR_ICR sends its IPI."""
        if write:
            fault = msrs.wrmsr(part, vp, msr, value)
            self._interrupts.send_ipi(part, vp)
            if msr == HvMsr.HV_X64_MSR_HYPERCALL and part.hypercalls_enabled:
                hypercall_page.write(self._memory, part.id, part.hypercall_msr)
            if self._synic is not None and (vp.synic.actions or vp.apic.ended is not None):
                self._synic.after_wrmsr(part, vp)
            return fault, 0
        return msrs.rdmsr(part, vp, msr)

    # -- hypercalls -----------------------------------------------------------------------------

    def hypercall(self, ctx: ExitContext, msg: m.HypercallIntercept) -> None:
        """Exit.HYPERCALL; the root's own hypercalls (building partitions) come here too."""
        vp = ctx.vp
        if vp is None:  # the root: its privileges, no VP, answered at once
            result, output = self._hypercalls.dispatch(ROOT_CALLER, msg.control, msg.input)
            self._outbox.send(ctx.origin, m.VpResume(msg.seq, NO_FAULT, result, 0, 0, 0, output,
                                                     ctx.stamps + (perf_counter_ns(),), 0, (), 0, 0, NO_PATH))
            return
        part = ctx.partition
        vp.exits[_HYPERCALL] += 1
        control = msg.control
        result, output, fault = self.run_hypercall(part, vp, control, msg.input)
        if self._tracers:
            self._trace(part, vp, Exit.HYPERCALL, False, control, result, ctx.stamps)
        # HvCallNotifyLongSpinWait: the VP yields its LP to the others (the lock holder
        # among them, if it was preempted).
        spin_wait = (control & 0xFFFF) == _SPIN_WAIT and (result & 0xFFFF) == 0
        if spin_wait:
            vp.sched.yields += 1
        self._resume(ctx, result, 0, 0, 0, fault, output, spin_wait, _HYPERCALL_CODE)  # (positional: see cpuid)

    def run_hypercall(self, part: Partition, vp: VirtualProcessor, control: int, data: bytes) -> tuple[int, bytes, int]:
        """(result value, output block, fault), with the partition's privileges."""
        if not part.hypercall_msr & 1:  # (Partition.hypercalls_enabled, without the property's call)
            # No hypercall page: the VMCALL is an undefined instruction to the guest.
            return 0, b"", _UD
        # XMM input not offered: #UD (Hypercalls.fault), asked only of a fast call: the
        # common one is not, and a call less is ~500 instructions.
        if control & FAST_BIT:
            fault = self._hypercalls.fault(control, data)
            if fault:
                return 0, b"", fault
        caller = vp.caller
        if caller is None:
            caller = vp.caller = VpCaller(part, vp)
        result, output = self._hypercalls.dispatch(caller, control, data)
        return result, output, NO_FAULT

    # -- HLT, the end of a quantum, paging --------------------------------------------------------

    def halt(self, ctx: ExitContext, msg: m.HaltIntercept) -> None:
        """Exit.HALT (HvMessageTypeX64Halt): the VP sleeps until an interrupt or a reset
        wakes it (``Dispatcher.wake``); if one is already waiting, HLT completes at once."""
        part, vp = ctx.partition, ctx.vp
        vp.exits[Exit.HALT] += 1
        if self._tracers:
            self._trace(part, vp, Exit.HALT, False, 0, 0, ctx.stamps)
        if (vp.interrupts or vp.reset_pending or vp.apic.deliverable() is not None
                or posted_this_run(vp)):
            self._resume(ctx, 0)
            return
        self._halt(vp, ctx.seq, ctx.t_in)

    def quantum(self, ctx: ExitContext, msg: m.QuantumExit) -> None:
        """Exit.QUANTUM: the VP gave its LP back at the end of its quantum; it runs again
        when the scheduler picks it (``Dispatcher.left_guest`` counted the preemption)."""
        ctx.vp.exits[Exit.QUANTUM] += 1
        self._resume(ctx, 0, path=Exit.QUANTUM.code)

    def cr3(self, ctx: ExitContext, msg: m.Cr3Intercept) -> None:
        """Exit.CR3: MOV CR3 flushes the TLB of the LP the VP ran on, whoever's entries it
        holds.  (Before the resume: no other VP has been given that LP yet.)"""
        part, vp = ctx.partition, ctx.vp
        vp.exits[Exit.CR3] += 1
        vp.cr3 = msg.value
        lp = vp.sched.lp
        self._tlb.flush_lp(lp, "mov_cr3")
        if self._tracers:
            self._trace(part, vp, Exit.CR3, True, msg.value, lp, ctx.stamps)
        self._resume(ctx, 0, path=Exit.CR3.code)

    def invlpg(self, ctx: ExitContext, msg: m.InvlpgIntercept) -> None:
        """Exit.INVLPG: flushes the whole TLB of the VP's LP, as MOV CR3 does."""
        part, vp = ctx.partition, ctx.vp
        vp.exits[Exit.INVLPG] += 1
        lp = vp.sched.lp
        self._tlb.flush_lp(lp, "invlpg")
        if self._tracers:
            self._trace(part, vp, Exit.INVLPG, False, msg.gva, lp, ctx.stamps)
        self._resume(ctx, 0, path=Exit.INVLPG.code)
