"""The exits of real guest code, as the hypervisor sees the Python guest's.

A real-CPU backend (unicorn, KVM) runs guest code until an instruction it cannot complete,
then calls one of the methods here, which send exactly the intercept message
:class:`partitions.vp.Vp` sends for the same instruction and wait for its resume — so
counters, traces, the VP's histograms and the scheduler see no difference.  This class *is*
a ``Vp`` (the round trip, its stamps and statistics are Vp's); it changes two things:

* the register block an exit carries is the emulated CPU's RFLAGS and CR3 (``regs``, a
  callable the backend gives), not the Python guest's ``if_flag``;
* an interrupt a resume brings is not run as a Python handler: it stays pending until the
  backend finds the guest's IF set and takes it (:meth:`take_interrupt`), then vectors
  through the guest's own IDT/IVT.

The backend calls these from the VP thread only; a method returns what the instruction
yields, or raises :class:`partitions.vp.GuestFault` (the exception to inject),
``VpStopped`` or ``VpReset``.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import Callable

from proto.codes import HYPERCALL_PAGE_PORT, HvMsr
from proto.memory import PAGE_SIZE, UnmappedGpa

from partitions.vp import Vp

# The hypercall page's exit: the page the hypervisor writes is ``out HYPERCALL_PORT, eax;
# ret`` (hypervisor/hypercall_page.py says why).  An OUT to this port is a hypercall,
# wherever it comes from.
HYPERCALL_PORT = HYPERCALL_PAGE_PORT
FAST_INPUT_BYTES = 16  # a fast call's input: RDX and R8 (EBX:ECX and EDI:ESI in 32-bit mode)
CONTROL_FAST = 1 << 16
# How long a save's wish for an instruction boundary lasts (the root pauses again after
# 2 ms: see root/partition_save.py _cpu_state).
BOUNDARY_WISH_NS = 50_000_000
MAX_PORT_COUNTERS = 96  # VpStats carries at most 256 counters
COM1_THR = 0x3F8
MAX_PENDING = 64  # interrupts queued while the guest keeps IF clear (more are dropped, counted)


class GuestCrash(Exception):
    """The guest did what would triple-fault a real CPU (or what the backend cannot
    vector or emulate); the VP stops and the partition ends with the reason."""


class ExitPort(Vp):
    """A VP whose guest is real x86 code.  ``regs()`` returns (RFLAGS, CR3) of the CPU."""

    def __init__(self, *args, regs: Callable[[], tuple[int, int]], **kwargs) -> None:
        self._cpu_regs = regs
        # The backend's whole register file for a save (``cpu_state``): set by a backend
        # that can give it; None: saving this backend is not built.
        self.cpu_state_of: Callable[[], tuple[bool, bytes]] | None = None
        # Until when a save wants an instruction boundary (perf_counter ns): see cpu_state.
        self._boundary_until = 0
        super().__init__(*args, **kwargs)
        self.counters.update(interrupts_dropped=0, halts=0)
        self._ports_named = 0
        self._started_ns = perf_counter_ns()

    # -- Vp's two seams ------------------------------------------------------------------------

    def _regs(self) -> tuple[int, int]:
        return self._cpu_regs()

    def _deliver(self) -> None:
        """Interrupts wait in ``_pending`` for the backend (see :meth:`take_interrupt`)."""
        if len(self._pending) > MAX_PENDING:
            self.counters["interrupts_dropped"] += len(self._pending) - MAX_PENDING
            del self._pending[MAX_PENDING:]

    def cpu_state(self) -> tuple[bool, bytes]:
        if self.cpu_state_of is None:
            return False, b""  # never a boundary: the root's save says it is not built
        at, state = self.cpu_state_of()
        # Asked while the VP waits at an exit inside an instruction (an IN, an MMIO read):
        # for a moment, every instruction boundary the backend sees after an exit is an
        # exit too (quantum_exit), so the root's next pause finds one — a guest doing port
        # I/O after port I/O otherwise offers none until its quantum ends or it halts.
        # Bounded in time, so that a save given up leaves no cost behind.
        self._boundary_until = 0 if at else perf_counter_ns() + BOUNDARY_WISH_NS
        return at, state

    # -- interrupts ---------------------------------------------------------------------------

    def pending_vectors(self) -> list[int]:
        """The interrupts waiting for the guest's IF (a save takes them with the registers)."""
        return [vector for vector, _ in self._pending]

    def set_pending(self, vectors: list[int]) -> None:
        """A restored VP's waiting interrupts."""
        self._pending = [(v, ()) for v in vectors]

    @property
    def interrupt_pending(self) -> bool:
        return bool(self._pending)

    def take_interrupt(self) -> int:
        """The next pending vector, recorded as taken now (the guest's IF is set and the
        backend is about to vector through its IDT)."""
        vector = self._accept()
        key = f"vector_{vector:#04x}"
        self.counters[key] = self.counters.get(key, 0) + 1
        return vector

    @property
    def quantum_left_ns(self) -> int:
        return self._quantum_end - perf_counter_ns()

    @property
    def boundary_wanted(self) -> bool:
        """(Asked after every exit in a hook: no clock read unless a save asked.)"""
        return self._boundary_until != 0 and perf_counter_ns() < self._boundary_until

    @property
    def exit_wanted(self) -> bool:
        """The backend's loop exits at this instruction boundary: the quantum is over, or a
        save waits for a boundary."""
        return perf_counter_ns() >= self._quantum_end or self.boundary_wanted

    def quantum_exit(self) -> None:
        self._quantum_over()

    # -- the exits -------------------------------------------------------------------------------

    def _count_port(self, port: int) -> None:
        """Port exits by port, in the guest counters (``pio_0x3f8``…), and when COM1 was
        first written (ms since the VP started): what the bench reports of a firmware
        boot.  At most MAX_PORT_COUNTERS ports are named (the counters are bounded)."""
        key = f"pio_{port:#x}"
        c = self.counters
        if key in c:
            c[key] += 1
        elif self._ports_named < MAX_PORT_COUNTERS:
            self._ports_named += 1
            c[key] = 1
        if port == COM1_THR and "first_com1_ms" not in c:
            c["first_com1_ms"] = (perf_counter_ns() - self._started_ns) // 1_000_000

    def port_in(self, port: int, size: int) -> int:
        self._count_port(port)
        return self._in(port, size)

    def port_out(self, port: int, size: int, value: int) -> None:
        self._count_port(port)
        self._out(port, size, value & ((1 << (8 * size)) - 1))

    def port_out_string(self, port: int, size: int, data: bytes) -> None:
        """REP OUTS: every element of ``data`` in one exit (``Vp.outs``)."""
        self._count_port(port)
        self.outs(port, size, data)

    def port_in_string(self, port: int, size: int, count: int) -> bytes:
        """REP INS: ``count`` elements in one exit (``Vp.ins``)."""
        self._count_port(port)
        return self.ins(port, size, count)

    def mmio_read(self, gpa: int, size: int) -> int:
        return self._mmio_read(gpa, size)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self._mmio_write(gpa, size, value)

    def msr_read(self, msr: int) -> int:
        return self.rdmsr(msr)

    def msr_write(self, msr: int, value: int) -> None:
        self.wrmsr(msr, value)
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE and self.assist_gpa is not None \
                and not self.mem.is_mapped(self.assist_gpa, PAGE_SIZE):
            self.assist_gpa = None  # not RAM: nothing to overlay

    def hypercall_from_page(self, control: int, input_gpa: int, output_gpa: int) -> int:
        """The hypercall page's exit: RCX/RDX/R8 (EDX:EAX, EBX:ECX, EDI:ESI in 32-bit mode).
        A memory call's input block is the rest of the page at ``input_gpa`` (TLFS: it may
        not cross a page); its output goes to ``output_gpa``.  Returns the result value."""
        if control & CONTROL_FAST:
            data = input_gpa.to_bytes(8, "little") + output_gpa.to_bytes(8, "little")
        else:
            try:
                data = self.mem.read(input_gpa, PAGE_SIZE - (input_gpa & (PAGE_SIZE - 1))) if input_gpa else b""
            except UnmappedGpa:
                data = b""  # the hypervisor finds the input too short
        rax, output = self.hypercall_raw(control, data)
        if output and not control & CONTROL_FAST:
            try:
                self.mem.write(output_gpa, output)
            except UnmappedGpa:
                pass
        return rax

    def halt(self, interrupts_enabled: bool) -> bool:
        """HLT.  With IF clear and nothing pending the guest has stopped for good (a test
        kernel's end): say so once (``workloads_done``, so the run can end) and sleep
        until a reset.  Returns whether an interrupt is pending."""
        self.counters["halts"] += 1
        if not interrupts_enabled and not self._pending and not self.counters.get("workloads_done"):
            self.counters["workloads_done"] = 1
        self.hlt()
        if not interrupts_enabled:
            self._pending.clear()  # nobody will take them: IF stays clear
        return bool(self._pending)
