"""A VP that runs real x86 code in unicorn (QEMU's TCG as a library): the CI backend, and
the one for hosts without /dev/kvm.

Memory: every guest-physical range the partition's SLAT maps is the partition's own RAM file,
mapped into the emulator in place (``mem_map_ptr``: the worker's DMA and the hypervisor's
writes, such as the hypercall page, are seen at once); every other address below 4 GiB is
MMIO whose accesses are exits (the worker's VGA, the local APIC's page, or nothing: an
UnmappedGpa, as for the Python guest); firmware regions are the partition process's (one copy, every VP's).  A change of the
SLAT (HvCallMapGpaPages/UnmapGpaPages) is seen at the VP's next quantum end or HLT.

Exits, and how unicorn yields them:

* IN/OUT, string I/O included (each element is one hook): ``UC_HOOK_INSN``; an OUT to
  ``HYPERCALL_PORT`` is the hypercall page's exit;
* CPUID: ``UC_HOOK_INSN``, the native result skipped;
* RDMSR/WRMSR of the synthetic range (unicorn cannot hook them): every new basic block is
  scanned for 0F 32 / 0F 30 and a code hook is put on each, so the hook runs instead of
  the instruction; other MSRs run natively, as KVM runs them;
* HLT: unicorn stops after it; INT n, exceptions and external interrupts are vectored here
  through the guest's IVT or IDT (:mod:`partitions.cpu.vectoring`);
* the quantum: checked at the start of every basic block in RAM, and in firmware too when
  the partition has more than one VP (a BSP spinning in SeaBIOS's F-segment must give its
  LP back: a forced preemption would leave it running beside the VP that got the LP).

With more than one VP, one of them executes guest code at a time
(:mod:`partitions.cpu.guest_code`: held from ``emu_start`` to its return, given up while a
hook waits for an exit's answer): unicorn's ``lock`` is not atomic across instances.

Unicorn's ``emu_stop`` inside an instruction hook (or an MMIO callback) abandons that
instruction, which runs again at the next ``emu_start`` — a second IN from a device, a lost
word of ``rep insw`` — and its ``emu_start`` timeout stops from another thread at any point,
hooks included.  So neither is used there: a hook that wants the loop (an interrupt to
take) asks for a stop, and the block hook stops at the next block boundary, where nothing
is half done.  The price: a Python call per basic block, about 13 times the cost of the
emulation itself (measured: 8 M iterations of a 3-instruction loop, 1.0 s bare, 13.3 s with
a block hook).
"""

from __future__ import annotations

import ctypes
from contextlib import nullcontext
import logging
from time import perf_counter_ns

import msgpack
from unicorn import (UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID,
                     UC_HOOK_INTR, UC_MODE_32, UC_MODE_64, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, Uc,
                     UcError)
from unicorn import x86_const as X

from partitions.cpu.boot import (FOUR_GIB, GDT_ENTRIES, GDT_GPA, LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER,
                                  PML4_GPA, Boot, saved_regions)
from partitions.cpu.exitport import HYPERCALL_PORT, ExitPort, GuestCrash
from partitions.cpu.guest_code import GuestCode
from partitions.cpu.vectoring import CR0_PE, CannotVector, CpuState, vector
from partitions.vp import GuestFault

log = logging.getLogger("partition")

# The register file a save takes (issue 13), in the order a restore writes it: control
# registers and descriptor tables before the segments that are loaded through them.
SAVED_REGS_32 = ("CR0", "CR3", "CR4", "CR2", "GDTR", "IDTR", "CS", "DS", "ES", "FS", "GS", "SS",
                 "EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP", "EIP", "EFLAGS")
SAVED_REGS_64 = ("CR0", "CR3", "CR4", "CR2", "GDTR", "IDTR", "CS", "DS", "ES", "FS", "GS", "SS",
                 "FS_BASE", "GS_BASE", "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
                 "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15", "RIP", "RFLAGS")
UNTIL = 0xFFFFFFFFFFFFFFFF  # emu_start's end address: never reached
MAX_SLICE_NS = 100_000_000  # at most this long in the emulator without looking at the stop flag
MSR_SYNTHETIC = range(0x40000000, 0x40000100)
IA32_EFER = 0xC0000080
RDMSR, WRMSR = b"\x0f\x32", b"\x0f\x30"
UD = 6
HLT = 0xF4


def gaps(taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (start, size) ranges below 4 GiB that none of ``taken`` (start, end) covers."""
    out, at = [], 0
    for start, end in sorted(taken) + [(FOUR_GIB, FOUR_GIB)]:
        if start > at:
            out.append((at, start - at))
        at = max(at, end)
    return out


class UnicornCpu:
    def __init__(self, port_factory, mem, boot: Boot, saved: dict | None = None) -> None:
        """``port_factory(regs)`` makes the VP's :class:`ExitPort` given the register
        reader; ``mem`` is the partition's GuestMemory; ``saved``: a saved state to resume
        from (:meth:`cpu_state`'s, decoded) instead of the boot's entry, RAM as restored."""
        self.mem = mem
        self.boot = boot
        self.saved = saved
        self._boundary = False  # waiting at an exit between two instructions (cpu_state)
        # 32-bit mode even for real-mode firmware: unicorn's 16-bit mode takes emu_start's
        # address as CS × 16 + IP and cuts IP to 16 bits, which breaks every restart once
        # the firmware has switched to protected mode.  The CPU's mode is CR0's anyway.
        # A long-mode guest needs unicorn's 64-bit mode (in its 32-bit mode RIP, RSP and
        # R8-R15 read as 0).
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64 if boot.long_mode else UC_MODE_32)
        self._ip, self._sp, self._flags = ((X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS) if boot.long_mode
                                           else (X.UC_X86_REG_EIP, X.UC_X86_REG_ESP, X.UC_X86_REG_EFLAGS))
        self.port: ExitPort = port_factory(self.regs)
        self.port.cpu_state_of = self.cpu_state
        self._stop_requested = False
        self._stopped_by_hook = False
        self._slice_end = 0
        # One VP in guest code at a time (a partition of one VP has no use for it, and its
        # exits are 2 µs cheaper in-process without it).
        self._guest_code = (GuestCode(boot.guest_code_lock, self.port.stop, self._request_stop) if boot.vps > 1
                            else None)
        self._exit_wait = self._guest_code or nullcontext()
        self._firmware: list[tuple[int, int]] = []  # the boot's regions: (start, end)
        self._gpa_maps: list[tuple[int, int]] = []  # RAM runs and MMIO holes: (gpa, size)
        self._slat = b""
        self._scanned: set[int] = set()
        self._msr_hooks: set[int] = set()
        self._ram_view = None
        self.counters = self.port.counters
        self.counters.update(msr_sites=0, software_interrupts=0, slat_remaps=0)

    # -- set-up ----------------------------------------------------------------------------

    def _map(self) -> None:
        uc, mem = self.uc, self.mem
        # The emulator reads and writes the RAM file in place (a view, released at the end).
        self._ram_view = ctypes.c_char.from_buffer(mem.ram)
        for r in self.boot.regions:  # the partition's one copy, shared by its VPs
            prot = UC_PROT_ALL if r.writable else UC_PROT_READ | UC_PROT_EXEC
            uc.mem_map_ptr(r.gpa, r.size, prot, ctypes.addressof(ctypes.c_char.from_buffer(r.buffer())))
            self._firmware.append((r.gpa, r.gpa + r.size))
        self._map_gpa_space()
        if self.saved is None:  # a restored VP's RAM already holds what the boot loaded, and more
            for gpa, data in self.boot.load:
                mem.write(gpa, data)

    def _map_gpa_space(self) -> None:
        """RAM where the SLAT maps it now, MMIO everywhere else below 4 GiB (firmware
        regions apart): done at the start and again whenever the table has changed."""
        uc, mem = self.uc, self.mem
        for gpa, size in self._gpa_maps:
            uc.mem_unmap(gpa, size)
        self._gpa_maps = []
        self._slat = mem.slat_snapshot()
        base = ctypes.addressof(self._ram_view)
        ram = []
        for gpa, length in mem.mapped_runs():
            if gpa < FOUR_GIB:
                length = min(length, FOUR_GIB - gpa)
                uc.mem_map_ptr(gpa, length, UC_PROT_ALL, base + gpa)
                ram.append((gpa, gpa + length))
        holes = gaps(ram + self._firmware)
        for at, size in holes:
            uc.mmio_map(at, size, self._mmio_read, at, self._mmio_write, at)
        self._gpa_maps = [(a, b - a) for a, b in ram] + holes

    def _slat_changed(self) -> None:
        """HvCallMapGpaPages/UnmapGpaPages since the map was made: make it again (checked
        at quantum ends and HLT, where the VP is off its LP anyway)."""
        if self.mem.slat_snapshot() != self._slat:
            self._map_gpa_space()
            self.uc.ctl_flush_tb()
            self.counters["slat_remaps"] += 1

    def _hooks(self) -> None:
        uc = self.uc
        uc.hook_add(UC_HOOK_INSN, self._in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        # Code in RAM only when the VP is the partition's one: firmware ROM runs at the
        # emulator's speed (SeaBIOS zeroes memory a byte at a time; a Python call per block
        # there doubles its boot), and a stop waits for its next exit or HLT, or the
        # scheduler's forced preemption.  With more VPs every block: a VP spinning in
        # firmware must give back the guest-code lock (and its LP) at its quantum's end.
        if self.boot.vps > 1:
            uc.hook_add(UC_HOOK_BLOCK, self._scan_block)
        else:
            for at, size in gaps([(r.gpa, r.gpa + len(r.data)) for r in self.boot.regions]):
                uc.hook_add(UC_HOOK_BLOCK, self._scan_block, None, at, at + size - 1)
        uc.hook_add(UC_HOOK_INTR, self._interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._invalid)

    def _reset_state(self) -> None:
        uc = self.uc
        if self.boot.long_mode:
            uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_GPA, 8 * len(GDT_ENTRIES) - 1, 0))
            uc.reg_write(X.UC_X86_REG_CR3, PML4_GPA)
            uc.reg_write(X.UC_X86_REG_CR4, LONG_MODE_CR4)
            uc.msr_write(IA32_EFER, LONG_MODE_EFER)
            uc.reg_write(X.UC_X86_REG_CR0, LONG_MODE_CR0)
            uc.reg_write(X.UC_X86_REG_CS, 0x08)
            for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
                uc.reg_write(seg, 0x10)
            uc.reg_write(self._ip, self.boot.ip)
            uc.reg_write(X.UC_X86_REG_RSI, self.boot.rsi)
            uc.reg_write(self._flags, 0x2)
            return
        if self.boot.real_mode:
            uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) & ~CR0_PE)
            uc.reg_write(X.UC_X86_REG_CS, self.boot.cs)
            uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))
        else:
            uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_PE)
        uc.reg_write(X.UC_X86_REG_EIP, self.boot.ip)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)

    # -- registers -------------------------------------------------------------------------

    def regs(self) -> tuple[int, int]:
        """The register block every exit carries: RFLAGS and CR3."""
        return self.uc.reg_read(self._flags), self.uc.reg_read(X.UC_X86_REG_CR3)

    def _pc(self) -> int:
        """emu_start's address: EIP/RIP (unicorn's 32- and 64-bit modes set it to it)."""
        return self.uc.reg_read(self._ip)

    def _linear_pc(self) -> int:
        uc = self.uc
        eip = uc.reg_read(self._ip)
        if uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE:
            return eip  # flat code segments: what firmware and our kernels use
        return (uc.reg_read(X.UC_X86_REG_CS) << 4) + eip

    def _where(self) -> str:
        """CS:EIP, the linear PC and the bytes there: what a crash report needs."""
        pc = self._linear_pc()
        try:
            code = bytes(self.uc.mem_read(pc, 8)).hex(" ")
        except UcError:
            code = "(not readable)"
        return (f"{self.uc.reg_read(X.UC_X86_REG_CS):#x}:{self.uc.reg_read(self._ip):#x} "
                f"(linear {pc:#x}, CR0 {self.uc.reg_read(X.UC_X86_REG_CR0):#x}): {code}")

    def _state(self) -> CpuState:
        uc = self.uc
        _, base, limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        return CpuState(uc.reg_read(X.UC_X86_REG_CR0), uc.msr_read(IA32_EFER), uc.reg_read(self._flags),
                        uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(self._ip), uc.reg_read(self._sp),
                        uc.reg_read(X.UC_X86_REG_SS), base, limit)

    def _vector(self, number: int, error_code: int | None = None, rip: int | None = None) -> None:
        uc = self.uc
        s = self._state()
        if rip is not None:
            s.rip = rip
        try:
            n = vector(s, number, lambda a, n: bytes(uc.mem_read(a, n)), uc.mem_write, error_code)
        except (CannotVector, UcError) as e:
            raise GuestCrash(f"cannot take vector {number:#x} at {s.cs:#x}:{s.rip:#x}: {e}") from None
        uc.reg_write(self._flags, n.rflags)
        uc.reg_write(self._sp, n.rsp)
        uc.reg_write(X.UC_X86_REG_CS, n.cs)
        uc.reg_write(self._ip, n.rip)

    def _if(self) -> bool:
        return bool(self.uc.reg_read(self._flags) & 0x200)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run the guest until the partition stops or resets (VpStopped / VpReset from an
        exit) or the guest crashes (GuestCrash)."""
        self._map()
        self._hooks()
        self._reset_state()
        if self.saved is not None:
            self._restore(self.saved)
        port, uc = self.port, self.uc
        while True:
            if port.stop.is_set():
                port.quantum_exit()  # raises VpStopped
            if port.interrupt_pending and self._if():
                self._vector(port.take_interrupt())
            if port.exit_wanted:
                self._at_boundary(port.quantum_exit)
                self._slat_changed()
                continue
            self._stopped_by_hook = self._stop_requested = False
            if self._guest_code and not self._guest_code.take():
                continue  # the partition stops (the loop's top raises VpStopped)
            self._slice_end = perf_counter_ns() + min(port.quantum_left_ns, MAX_SLICE_NS)
            try:
                uc.emu_start(self._pc(), UNTIL)
            except UcError as e:
                raise GuestCrash(f"{e} at {self._where()}") from None
            finally:
                if self._guest_code:
                    self._guest_code.give()
            if self._stopped_by_hook:
                continue
            pc = self._linear_pc()
            if pc and bytes(uc.mem_read(pc - 1, 1))[0] == HLT:
                if not (port.interrupt_pending and self._if()):  # one already here wakes it at once
                    self._at_boundary(port.halt, self._if())
                    self._slat_changed()

    # -- save and restore (issue 13) ------------------------------------------------------------

    def _at_boundary(self, exit_, *args):
        """An exit from the run loop, between two instructions: a save may take the
        register file there (not inside a hook, in the middle of an IN or an MMIO access)."""
        self._boundary = True
        try:
            return exit_(*args)
        finally:
            self._boundary = False

    def _saved_regs(self) -> list:
        regs = SAVED_REGS_64 if self.boot.long_mode else SAVED_REGS_32
        return [(name, getattr(X, f"UC_X86_REG_{name}")) for name in regs]

    def _regions(self) -> dict:
        """VP 0 carries the partition's writable firmware regions (partitions/cpu/boot.py)."""
        return {"regions": saved_regions(self.boot)} if self.port.index == 0 and any(
            r.writable for r in self.boot.regions) else {}

    def cpu_state(self) -> tuple[bool, bytes]:
        """(at a boundary, the register file) — asked while the VP waits at an exit."""
        if not self._boundary:
            return False, b""
        uc = self.uc
        regs = {name: uc.reg_read(reg) for name, reg in self._saved_regs()}
        return True, msgpack.packb({"regs": {k: list(v) if isinstance(v, tuple) else v for k, v in regs.items()},
                                    "efer": uc.msr_read(IA32_EFER),
                                    "pending": self.port.pending_vectors(), **self._regions()})

    def _restore(self, saved: dict) -> None:
        """The register file of ``saved`` (checked: every register of this mode, each a
        number or a descriptor-table 4-tuple), control registers and tables first."""
        regs = saved.get("regs") if isinstance(saved, dict) else None
        names = [name for name, _ in self._saved_regs()]
        if not isinstance(regs, dict) or sorted(regs) != sorted(names):
            raise GuestCrash(f"saved CPU state: not this mode's registers ({sorted(regs or {})})")
        uc = self.uc
        uc.msr_write(IA32_EFER, int(saved.get("efer", 0)))
        for name, reg in self._saved_regs():
            v = regs[name]
            ok = (isinstance(v, int) and 0 <= v < 1 << 64) or (
                isinstance(v, list) and len(v) == 4 and all(isinstance(x, int) and 0 <= x < 1 << 64 for x in v))
            if not ok:
                raise GuestCrash(f"saved CPU state: {name} = {v!r}")
            value = tuple(v) if isinstance(v, list) else v
            if uc.reg_read(reg) == value:
                continue  # as the reset state has it (a segment selector is loaded only if it changes)
            try:
                uc.reg_write(reg, value)
            except UcError as e:
                raise GuestCrash(f"saved CPU state: cannot load {name} = {v!r}: {e}") from None
        pending = saved.get("pending", [])
        self.port.set_pending([v for v in pending if isinstance(v, int) and 0 <= v < 256])

    def _request_stop(self) -> None:
        self._stop_requested = True  # out of emu_start at the next block

    def _after_exit(self) -> None:
        """After an exit inside a hook: back to the loop at the next block if an interrupt
        can be taken now (the quantum is checked there anyway) or a save waits for an
        instruction boundary.  Firmware of a one-VP partition has no block hook: there a
        save's boundary waits for a HLT or the quantum, as before.  (Tried and dropped:
        stopping the emulator inside the hook.  Unicorn takes a string element again, an
        IN's hook sees EIP where the block's translation last wrote it — in SeaBIOS's VGA
        code the function's start —, and SeaBIOS saved at a clean block boundary inside its
        VGA BIOS did not run once restored: most likely big real mode's segment limits,
        which the register file, selectors only, does not carry.)"""
        if self.port.boundary_wanted or (self.port.interrupt_pending and self._if()):
            self._stop_requested = True

    def _fault(self, fault: GuestFault, rip: int | None = None) -> None:
        """The hypervisor injects an exception (#GP for an MSR, #UD for a hypercall
        without the page): taken at the instruction that caused it."""
        try:
            self._vector(fault.vector, 0, rip)
        except GuestCrash as e:
            raise GuestCrash(f"{e} (the hypervisor's answer to {fault})") from None

    # -- hooks (each runs in the VP thread, inside emu_start) ----------------------------------

    def _in(self, uc, port, size, _):
        try:
            with self._exit_wait:
                value = self.port.port_in(port, size)
        except GuestFault as f:
            self._fault(f)
            return 0
        self._after_exit()
        return value

    def _out(self, uc, port, size, value, _):
        try:
            with self._exit_wait:
                if port == HYPERCALL_PORT:
                    self._hypercall()
                else:
                    self.port.port_out(port, size, value)
        except GuestFault as f:
            self._fault(f)
            return
        self._after_exit()

    def _hypercall(self) -> None:
        uc = self.uc
        if uc.msr_read(IA32_EFER) & (1 << 10):  # long mode: RCX, RDX, R8 → RAX
            control, inp, out = (uc.reg_read(r) for r in (X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_R8))
            uc.reg_write(X.UC_X86_REG_RAX, self.port.hypercall_from_page(control, inp, out))
            return
        r = {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n}")) for n in ("EAX", "EBX", "ECX", "EDX", "ESI", "EDI")}
        result = self.port.hypercall_from_page((r["EDX"] << 32) | r["EAX"], (r["EBX"] << 32) | r["ECX"],
                                               (r["EDI"] << 32) | r["ESI"])
        uc.reg_write(X.UC_X86_REG_EAX, result & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_EDX, result >> 32)

    def _cpuid(self, uc, _):
        leaf, subleaf = uc.reg_read(X.UC_X86_REG_EAX), uc.reg_read(X.UC_X86_REG_ECX)
        with self._exit_wait:
            a, b, c, d = self.port.cpuid(leaf, subleaf)
        for reg, v in ((X.UC_X86_REG_EAX, a), (X.UC_X86_REG_EBX, b), (X.UC_X86_REG_ECX, c), (X.UC_X86_REG_EDX, d)):
            uc.reg_write(reg, v & 0xFFFFFFFF)
        self._after_exit()
        return 1  # skip the native CPUID

    def _mmio_read(self, uc, offset, size, base):
        gpa = base + offset
        try:
            # An SSE access is wider than any MMIO exit (at most 8 bytes): 8 at a time.
            value = 0
            with self._exit_wait:
                for i in range(0, size, 8):
                    value |= self.port.mmio_read(gpa + i, min(8, size - i)) << (8 * i)
        except GuestFault as f:
            f.args = (f"{f.args[0]} of {gpa:#x}",)
            self._fault(f)
            return 0
        self._after_exit()
        return value

    def _mmio_write(self, uc, offset, size, value, base):
        gpa = base + offset
        try:
            with self._exit_wait:
                for i in range(0, size, 8):
                    self.port.mmio_write(gpa + i, min(8, size - i),
                                         (value >> (8 * i)) & ((1 << (8 * min(8, size - i))) - 1))
        except GuestFault as f:
            f.args = (f"{f.args[0]} of {gpa:#x}",)
            self._fault(f)
            return
        self._after_exit()

    def _scan_block(self, uc, address, size, _):
        """A basic block starts: stop here if the loop is wanted (see the module's
        docstring); the first time a block of the kernel runs, look for RDMSR/WRMSR in it
        and put a code hook on each, then run the block again so that the hooks are in its
        translation (firmware is not watched: it has no use for the synthetic MSRs)."""
        # The stop check first: this runs for every block in RAM.
        if self._stop_requested or perf_counter_ns() >= self._slice_end:
            self._stopped_by_hook = True
            uc.emu_stop()
            return
        if not any(start <= address <= end for start, end in self.boot.msr_code):
            return
        if address in self._scanned:
            return
        self._scanned.add(address)
        code = bytes(uc.mem_read(address, size))
        found = False
        for pattern in (RDMSR, WRMSR):
            i = code.find(pattern)
            while i >= 0:
                site = address + i
                if site not in self._msr_hooks:
                    self._msr_hooks.add(site)
                    uc.hook_add(UC_HOOK_CODE, self._msr, None, site, site)
                    self.counters["msr_sites"] += 1
                    found = True
                i = code.find(pattern, i + 1)
        if found:
            uc.ctl_remove_cache(address, address + size)
            uc.reg_write(self._ip, uc.reg_read(self._ip))  # re-run the block

    def _msr(self, uc, address, size, _):
        if size != 2:
            return  # 0F 3x inside a longer instruction: not an MSR access
        code = bytes(uc.mem_read(address, 2))
        msr = uc.reg_read(X.UC_X86_REG_ECX)
        if code not in (RDMSR, WRMSR) or msr not in MSR_SYNTHETIC:
            return  # the emulator's own MSRs (EFER, APIC base, …) run natively
        eip = uc.reg_read(self._ip)
        try:
            if code == RDMSR:
                with self._exit_wait:
                    value = self.port.msr_read(msr)
                # RDMSR writes EAX and EDX, zeroing the upper halves of RAX and RDX.
                ax, dx = (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX) if self.boot.long_mode else (X.UC_X86_REG_EAX,
                                                                                          X.UC_X86_REG_EDX)
                uc.reg_write(ax, value & 0xFFFFFFFF)
                uc.reg_write(dx, value >> 32)
            else:
                value = ((uc.reg_read(X.UC_X86_REG_EDX) & 0xFFFFFFFF) << 32) | (uc.reg_read(X.UC_X86_REG_EAX)
                                                                               & 0xFFFFFFFF)
                with self._exit_wait:
                    self.port.msr_write(msr, value)
        except GuestFault as f:
            self._fault(f, rip=eip)
            return
        uc.reg_write(self._ip, eip + 2)  # skip the native instruction
        self._after_exit()

    def _interrupt(self, uc, number, _):
        """INT n (EIP is past it: unicorn reports software interrupts here) — vectored
        through the guest's table.  An exception this emulation cannot attribute stops
        the VP, as a triple fault would."""
        eip = uc.reg_read(self._ip)
        pc = self._linear_pc()
        before = bytes(uc.mem_read(pc - 2, 2)) if pc >= 2 else b""
        if before == bytes((0xCD, number)) or (number == 3 and before[-1:] == b"\xcc"):
            self.counters["software_interrupts"] += 1
            self._vector(number, rip=eip)
            return
        raise GuestCrash(f"exception {number:#x} at {pc:#x}")

    def _invalid(self, uc, _):
        """An undefined opcode: #UD at the instruction."""
        self._vector(UD)
        return True

    def close(self) -> None:
        """Let go of the emulator and then of the RAM view it used."""
        self.uc = None
        self._ram_view = None
