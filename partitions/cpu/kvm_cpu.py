"""A VP that runs real x86 code under KVM (``/dev/kvm``), driven from Python by ioctls.

No in-kernel irqchip: the PIC is the worker's and the local APIC the hypervisor's, so an
interrupt a resume brings is injected with KVM_INTERRUPT when the guest can take it (else an
interrupt window is requested).  Exits:

* KVM_EXIT_IO: port I/O; string I/O (``rep insw``) is one exit for many elements, and one
  ``io_string_intercept`` for them all (Hyper-V's one intercept for a REP); an OUT to
  ``HYPERCALL_PORT`` is the hypercall page's exit (registers by KVM_GET_REGS/KVM_SET_REGS);
* KVM_EXIT_MMIO: any GPA without a memory slot (the SLAT's holes, writes to firmware ROM);
  the slots follow the SLAT (a MapGpa/UnmapGpa is seen at the VP's next quantum end or HLT);
* KVM_EXIT_X86_RDMSR/WRMSR: the synthetic range 0x40000000–0x400000FF, through an MSR filter
  (KVM_CAP_X86_USER_SPACE_MSR); a #GP from the hypervisor is KVM's to inject;
* KVM_EXIT_HLT;
* CPUID never leaves KVM: the hypervisor's leaves (asked once, by CPUID exits, when the VP
  starts) are loaded with KVM_SET_CPUID2 over the host's supported ones;
* the quantum: a kicker thread sets ``immediate_exit`` and signals the VP thread, whose
  KVM_RUN returns EINTR (KVM's race-free way to interrupt a vCPU).

/dev/kvm is opened before the partition process is confined (:func:`open_kvm`), since the
confined uid has no right to it; the ioctls on the open descriptor need none.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import signal
import struct
import threading

import msgpack

from partitions.cpu.boot import (FOUR_GIB, GDT_ENTRIES, GDT_GPA, LONG_MODE_CR0, LONG_MODE_CR4, LONG_MODE_EFER,
                                  PML4_GPA, RESET_CS, RESET_IP, Boot, saved_regions)
from partitions.cpu.exitport import HYPERCALL_PORT, ExitPort, GuestCrash
from partitions.vp import GuestFault

log = logging.getLogger("partition")

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_SET_TSS_ADDR = 0xAE47
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_INTERRUPT = 0x4004AE86
KVM_SET_CPUID2 = 0x4008AE90
KVM_GET_VCPU_EVENTS = 0x8040AE9F
KVM_SET_VCPU_EVENTS = 0x4040AEA0
KVM_ENABLE_CAP = 0x4068AEA3
KVM_X86_SET_MSR_FILTER = 0x4188AEC6
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_MSR_EXIT_REASON_FILTER = 1, 2, 4
KVM_MSR_FILTER_READ, KVM_MSR_FILTER_WRITE = 1, 2
KVM_MEM_READONLY = 1 << 1

EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_IRQ_WINDOW_OPEN, EXIT_SHUTDOWN, EXIT_FAIL_ENTRY = 2, 5, 6, 7, 8, 9
EXIT_INTR, EXIT_INTERNAL_ERROR, EXIT_X86_RDMSR, EXIT_X86_WRMSR = 10, 17, 29, 30
EXIT_NAMES = {EXIT_SHUTDOWN: "shutdown (triple fault)", EXIT_FAIL_ENTRY: "entry failed",
              EXIT_INTERNAL_ERROR: "internal error (KVM's instruction emulator)"}
IO_OUT = 1
TSS_ADDR = 0xFFFBD000
MSR_SYNTHETIC_BASE, MSR_SYNTHETIC_COUNT = 0x40000000, 0x100
HV_LEAVES = (0x40000000, 0x40000001, 0x40000002, 0x40000003, 0x40000004, 0x40000005, 0x40000006)
RFLAGS_IF = 0x200
KICK = signal.SIGUSR1
MAX_SLICE_NS = 100_000_000
REGS = struct.Struct("<18Q")  # rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rip rflags
SREGS_SIZE = 312  # struct kvm_sregs
EVENTS_SIZE = 64  # struct kvm_vcpu_events
SEGMENT = struct.Struct("<QIHBBBBBBBBBx")  # base limit selector type present dpl db s l g avl unusable
CPUID_ENTRY = struct.Struct("<IIIIIII12x")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.ioctl.restype = ctypes.c_int


class KvmError(Exception):
    pass


def _ioctl(fd: int, request: int, arg=None) -> int:
    """ioctl with an unsigned argument (fcntl.ioctl takes only a signed int) or a buffer."""
    if isinstance(arg, (bytearray, ctypes.Array)):
        buf = (ctypes.c_char * len(arg)).from_buffer(arg) if isinstance(arg, bytearray) else arg
        ptr = ctypes.addressof(buf)
    else:
        ptr = arg or 0
    r = _libc.ioctl(fd, request, ctypes.c_void_p(ptr))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return r


def open_kvm() -> int:
    """/dev/kvm, opened while the process still may (before it is confined)."""
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    if _ioctl(fd, KVM_GET_API_VERSION) != 12:
        os.close(fd)
        raise KvmError("KVM API version is not 12")
    return fd


def before_confinement(boot: Boot) -> None:
    """In the main thread, before the process drops its rights: open /dev/kvm, and give the
    kick signal a handler (doing nothing), so that it interrupts KVM_RUN instead of ending
    the process."""
    boot.kvm_fd = open_kvm()
    signal.signal(KICK, lambda s, f: None)


class KvmCpu:
    def __init__(self, port_factory, mem, boot: Boot, saved: dict | None = None) -> None:
        if boot.kvm_fd is None:
            raise KvmError("/dev/kvm was not opened before confinement")
        self.mem = mem
        self.boot = boot
        self.saved = saved  # a saved state to resume from (issue 13), instead of the boot's
        self._boundary = False  # waiting at an exit between two instructions (cpu_state)
        self.port: ExitPort = port_factory(self.regs)
        self.port.cpu_state_of = self.cpu_state
        self.counters = self.port.counters
        self.counters.update(kvm_exits=0, kvm_kicks=0, kvm_injected=0, slat_remaps=0)
        self.vm = _ioctl(boot.kvm_fd, KVM_CREATE_VM, 0)
        self._slot = 0
        self._ram_slots: list[int] = []
        self._slat = b""
        self._ram_view = None
        self.vcpu = -1
        self.run_map: mmap.mmap | None = None
        self._thread = threading.get_ident()
        self._done = threading.Event()
        self._in_run = False

    # -- set-up ------------------------------------------------------------------------------

    def _region(self, gpa: int, size: int, host: int, readonly: bool = False, slot: int | None = None) -> int:
        """A memory slot (a new one unless ``slot``); size 0 deletes ``slot``."""
        if slot is None:
            slot, self._slot = self._slot, self._slot + 1
        region = struct.pack("<IIQQQ", slot, KVM_MEM_READONLY if readonly else 0, gpa, size, host)
        _ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, bytearray(region))
        return slot

    def _map_ram(self) -> None:
        """A slot per range the SLAT maps now (the old ones deleted): at the start and
        whenever HvCallMapGpaPages/UnmapGpaPages changed the table (seen at the VP's next
        quantum end or HLT)."""
        for slot in self._ram_slots:
            self._region(0, 0, 0, slot=slot)
        self._slat = self.mem.slat_snapshot()
        base = ctypes.addressof(self._ram_view)
        free = list(self._ram_slots)
        self._ram_slots = []
        for gpa, length in self.mem.mapped_runs():
            if gpa < FOUR_GIB:
                self._ram_slots.append(self._region(gpa, min(length, FOUR_GIB - gpa), base + gpa,
                                                    slot=free.pop() if free else None))

    def _slat_changed(self) -> None:
        if self.mem.slat_snapshot() != self._slat:
            self._map_ram()
            self.counters["slat_remaps"] += 1

    def _map(self) -> None:
        self._ram_view = ctypes.c_char.from_buffer(self.mem.ram)
        self._map_ram()
        for r in self.boot.regions:  # the partition's one copy, shared by its VPs
            self._region(r.gpa, r.size, ctypes.addressof(ctypes.c_char.from_buffer(r.buffer())),
                         readonly=not r.writable)
        for gpa, data in self.boot.load if self.saved is None else ():  # (a restored VP's RAM holds them, and more)
            self.mem.write(gpa, data)
        try:
            _ioctl(self.vm, KVM_SET_TSS_ADDR, TSS_ADDR)  # real mode on VMX needs it
        except OSError:
            pass

    def _msr_exits(self) -> None:
        cap = bytearray(104)
        struct.pack_into("<IIQ", cap, 0, KVM_CAP_X86_USER_SPACE_MSR, 0, KVM_MSR_EXIT_REASON_FILTER)
        _ioctl(self.vm, KVM_ENABLE_CAP, cap)
        self._bitmap = (ctypes.c_uint8 * (MSR_SYNTHETIC_COUNT // 8))()  # all 0: deny, i.e. exit
        filt = bytearray(392)  # flags 0: default allow; one deny range
        struct.pack_into("<IIIIQ", filt, 8, KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE, MSR_SYNTHETIC_COUNT,
                         MSR_SYNTHETIC_BASE, 0, ctypes.addressof(self._bitmap))
        _ioctl(self.vm, KVM_X86_SET_MSR_FILTER, filt)

    def _cpuid(self) -> None:
        """The host's supported leaves, the hypervisor's Hyper-V leaves over them, and
        "hypervisor present" in leaf 1."""
        n = 100
        buf = bytearray(8 + n * 40)
        struct.pack_into("<I", buf, 0, n)
        _ioctl(self.boot.kvm_fd, KVM_GET_SUPPORTED_CPUID, buf)
        n = struct.unpack_from("<I", buf, 0)[0]
        entries = [list(CPUID_ENTRY.unpack_from(buf, 8 + 40 * i)) for i in range(n)]
        entries = [e for e in entries if not 0x40000000 <= e[0] <= 0x400000FF]
        for e in entries:
            if e[0] == 1:
                e[5] |= 1 << 31
        for leaf in HV_LEAVES:
            a, b, c, d = self.port.cpuid(leaf, 0)
            entries.append([leaf, 0, 0, a, b, c, d])
        out = bytearray(8 + 40 * len(entries))
        struct.pack_into("<I", out, 0, len(entries))
        for i, e in enumerate(entries):
            CPUID_ENTRY.pack_into(out, 8 + 40 * i, *e)
        _ioctl(self.vcpu, KVM_SET_CPUID2, out)

    def _reset_state(self) -> None:
        sregs = bytearray(312)
        _ioctl(self.vcpu, KVM_GET_SREGS, sregs)
        regs = bytearray(REGS.size)
        if self.boot.long_mode:
            # 64-bit mode, as Firecracker enters a kernel (boot.long_mode_tables).
            code = (0, 0xFFFFFFFF, 0x08, 0xB, 1, 0, 0, 1, 1, 1, 0, 0)
            data = (0, 0xFFFFFFFF, 0x10, 0x3, 1, 0, 1, 1, 0, 1, 0, 0)
            SEGMENT.pack_into(sregs, 0, *code)
            for i in (1, 2, 3, 4, 5):
                SEGMENT.pack_into(sregs, 24 * i, *data)
            struct.pack_into("<QH", sregs, 192, GDT_GPA, 8 * len(GDT_ENTRIES) - 1)
            struct.pack_into("<QQQQ", sregs, 224, LONG_MODE_CR0, 0, PML4_GPA, LONG_MODE_CR4)
            struct.pack_into("<Q", sregs, 264, LONG_MODE_EFER)
            struct.pack_into("<Q", regs, 16 * 8, self.boot.ip)
            struct.pack_into("<Q", regs, 4 * 8, self.boot.rsi)
        elif not self.boot.real_mode:
            # Flat 32-bit protected mode, paging off, as a multiboot loader leaves it.
            code = (0, 0xFFFFFFFF, 0x08, 0xB, 1, 0, 1, 1, 0, 1, 0, 0)
            data = (0, 0xFFFFFFFF, 0x10, 0x3, 1, 0, 1, 1, 0, 1, 0, 0)
            SEGMENT.pack_into(sregs, 0, *code)
            for i in (1, 2, 3, 4, 5):  # ds es fs gs ss
                SEGMENT.pack_into(sregs, 24 * i, *data)
            cr0 = struct.unpack_from("<Q", sregs, 224)[0]
            struct.pack_into("<Q", sregs, 224, (cr0 | 1) & ~(1 << 31))
            struct.pack_into("<Q", regs, 16 * 8, self.boot.ip)
        else:
            # KVM's reset state is the x86 one: CS F000 based at FFFF0000, IP FFF0.  Any
            # other real-mode start is CS × 16 + IP.
            if (self.boot.cs, self.boot.ip) != (RESET_CS, RESET_IP):
                SEGMENT.pack_into(sregs, 0, self.boot.cs << 4, 0xFFFF, self.boot.cs, 0xB, 1, 0, 0, 1, 0, 0, 0, 0)
            struct.pack_into("<Q", regs, 16 * 8, self.boot.ip)
        struct.pack_into("<Q", regs, 17 * 8, 0x2)
        _ioctl(self.vcpu, KVM_SET_SREGS, sregs)
        _ioctl(self.vcpu, KVM_SET_REGS, regs)

    # -- save and restore (issue 13) ------------------------------------------------------------

    def _at_boundary(self, exit_, *args):
        """An exit from the run loop between KVM_RUNs (a quantum end, a HLT): a save may
        take the registers there, not while an IN or MMIO read waits for its answer."""
        self._boundary = True
        try:
            return exit_(*args)
        finally:
            self._boundary = False

    def _regions(self) -> dict:
        """VP 0 carries the partition's writable firmware regions (partitions/cpu/boot.py)."""
        return {"regions": saved_regions(self.boot)} if self.port.index == 0 and any(
            r.writable for r in self.boot.regions) else {}

    def cpu_state(self) -> tuple[bool, bytes]:
        """(at a boundary, KVM's register file) — asked while the VP waits at an exit.  A
        KVM_RUN with immediate_exit first completes what the last exit left (an IN's
        data into RAX, an MMIO read's into its register: KVM applies them at the next
        entry) and returns at once, so that the registers are those of an instruction
        boundary; then kvm_regs, kvm_sregs and kvm_vcpu_events as KVM's ABI lays them out."""
        if not self._boundary or self.run_map is None:
            return False, b""
        self.run_map[1] = 1
        try:
            _ioctl(self.vcpu, KVM_RUN, 0)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise KvmError(f"KVM_RUN (immediate exit): {e}") from None
        finally:
            self.run_map[1] = 0
        regs, sregs, events = bytearray(REGS.size), bytearray(SREGS_SIZE), bytearray(EVENTS_SIZE)
        _ioctl(self.vcpu, KVM_GET_REGS, regs)
        _ioctl(self.vcpu, KVM_GET_SREGS, sregs)
        _ioctl(self.vcpu, KVM_GET_VCPU_EVENTS, events)
        # (hex: a restored partition's spec, which carries it, is JSON)
        return True, msgpack.packb({"kvm_regs": regs.hex(), "kvm_sregs": sregs.hex(), "kvm_events": events.hex(),
                                    "pending": self.port.pending_vectors(), **self._regions()})

    def _restore(self, saved: dict) -> None:
        """``saved``'s register file (each part of exactly its ABI size; KVM refuses what it
        cannot load, which ends the VP as a crash) and the interrupts it held."""
        sizes = {"kvm_regs": REGS.size, "kvm_sregs": SREGS_SIZE, "kvm_events": EVENTS_SIZE}
        try:
            blobs = {k: bytearray.fromhex(saved[k]) for k in sizes}
        except (TypeError, ValueError, KeyError):
            blobs = {}
        if any(len(blobs.get(k, b"")) != n for k, n in sizes.items()):
            raise GuestCrash(f"saved CPU state: not a KVM register file ({sorted(saved or {})})")
        pending = saved.get("pending", [])
        if not isinstance(pending, list) or not all(type(v) is int and 0 <= v < 256 for v in pending):
            raise GuestCrash(f"saved CPU state: pending = {pending!r}")
        try:
            _ioctl(self.vcpu, KVM_SET_SREGS, blobs["kvm_sregs"])
            _ioctl(self.vcpu, KVM_SET_REGS, blobs["kvm_regs"])
            _ioctl(self.vcpu, KVM_SET_VCPU_EVENTS, blobs["kvm_events"])
        except OSError as e:
            raise GuestCrash(f"saved CPU state: KVM refused it: {e}") from None
        self.port.set_pending(pending)

    # -- registers ---------------------------------------------------------------------------

    def _get_regs(self) -> list[int]:
        buf = bytearray(REGS.size)
        _ioctl(self.vcpu, KVM_GET_REGS, buf)
        return list(REGS.unpack(buf))

    def _set_regs(self, values: list[int]) -> None:
        _ioctl(self.vcpu, KVM_SET_REGS, bytearray(REGS.pack(*values)))

    def regs(self) -> tuple[int, int]:
        """RFLAGS and CR3 for an exit's register block (IF from kvm_run; CR3 not read on
        the hot path: the test kernels and firmware run unpaged)."""
        if self.run_map is None:
            return 0x2, 0
        return (0x2 | (RFLAGS_IF if self.run_map[13] else 0)), 0

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self._map()
        self._msr_exits()
        self.vcpu = _ioctl(self.vm, KVM_CREATE_VCPU, 0)
        size = _ioctl(self.boot.kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0)
        self.run_map = mmap.mmap(self.vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._cpuid()
        if self.saved is not None:
            self._restore(self.saved)
        else:
            self._reset_state()
        kicker = threading.Thread(target=self._kicker, name="kvm-kick", daemon=True)
        kicker.start()
        try:
            self._loop()
        finally:
            self._done.set()
            kicker.join(timeout=1)

    def _kicker(self) -> None:
        """Ends KVM_RUN at the end of the quantum (or to see a stop): immediate_exit, then
        a signal to the VP thread in case it is already inside."""
        port = self.port
        while not self._done.is_set():
            left = min(port.quantum_left_ns, MAX_SLICE_NS)
            if left > 0:
                self._done.wait(left / 1e9)
                continue
            if self._in_run:
                self.run_map[1] = 1  # immediate_exit
                self.counters["kvm_kicks"] += 1
                signal.pthread_kill(self._thread, KICK)
            self._done.wait(0.001)

    def _loop(self) -> None:
        port, run = self.port, self.run_map
        while True:
            if port.stop.is_set() or port.exit_wanted:
                run[1] = 0
                self._at_boundary(port.quantum_exit)  # raises VpStopped when stopping
                self._slat_changed()
            self._inject()
            self._in_run = True
            try:
                _ioctl(self.vcpu, KVM_RUN, 0)
                reason = struct.unpack_from("<I", run, 8)[0]
            except InterruptedError:
                reason = EXIT_INTR
            except OSError as e:
                if e.errno != 4:
                    raise KvmError(f"KVM_RUN: {e}") from None
                reason = EXIT_INTR
            finally:
                self._in_run = False
            run[1] = 0
            self.counters["kvm_exits"] += 1
            if reason == EXIT_IO:
                self._io()
            elif reason == EXIT_MMIO:
                self._mmio()
            elif reason in (EXIT_X86_RDMSR, EXIT_X86_WRMSR):
                self._msr(reason)
            elif reason == EXIT_HLT:
                if not port.interrupt_pending:
                    self._at_boundary(port.halt, bool(run[13]))
                    self._slat_changed()
            elif reason in (EXIT_INTR, EXIT_IRQ_WINDOW_OPEN):
                pass
            else:
                raise GuestCrash(f"KVM exit {reason}: {EXIT_NAMES.get(reason, 'unexpected')} at "
                                 f"rip {self._get_regs()[16]:#x}")

    def _inject(self) -> None:
        """A pending interrupt goes in when the guest can take it; else ask KVM to exit
        when it can (the interrupt window)."""
        run, port = self.run_map, self.port
        if not port.interrupt_pending:
            run[0] = 0
            return
        if run[12] and run[13]:  # ready_for_interrupt_injection, if_flag
            _ioctl(self.vcpu, KVM_INTERRUPT, bytearray(struct.pack("<I", port.take_interrupt())))
            self.counters["kvm_injected"] += 1
            run[0] = 0
        else:
            run[0] = 1  # request_interrupt_window

    def _io(self) -> None:
        run, port = self.run_map, self.port
        direction, size, number, count, offset = struct.unpack_from("<BBHIQ", run, 32)
        try:
            if number == HYPERCALL_PORT and direction == IO_OUT:
                self._hypercall()
                return
            if count > 1:  # REP INS/OUTS: KVM's one exit is Hyper-V's one intercept (at most a page)
                end = offset + count * size
                if direction == IO_OUT:
                    port.port_out_string(number, size, bytes(run[offset:end]))
                else:
                    run[offset:end] = port.port_in_string(number, size, count)
                return
            for i in range(count):
                at = offset + i * size
                if direction == IO_OUT:
                    port.port_out(number, size, int.from_bytes(run[at:at + size], "little"))
                else:
                    run[at:at + size] = port.port_in(number, size).to_bytes(size, "little")
        except GuestFault as f:
            self._exception(f.vector)

    def _hypercall(self) -> None:
        r = self._get_regs()
        sregs = bytearray(312)
        _ioctl(self.vcpu, KVM_GET_SREGS, sregs)
        long_mode = struct.unpack_from("<Q", sregs, 264)[0] & (1 << 10)
        if long_mode:  # RCX, RDX, R8 → RAX
            r[0] = self.port.hypercall_from_page(r[2], r[3], r[8])
        else:  # EDX:EAX, EBX:ECX, EDI:ESI → EDX:EAX
            low = lambda v: v & 0xFFFFFFFF  # noqa: E731
            result = self.port.hypercall_from_page(low(r[3]) << 32 | low(r[0]), low(r[1]) << 32 | low(r[2]),
                                                   low(r[5]) << 32 | low(r[4]))
            r[0], r[3] = result & 0xFFFFFFFF, result >> 32
        self._set_regs(r)

    def _mmio(self) -> None:
        run, port = self.run_map, self.port
        gpa = struct.unpack_from("<Q", run, 32)[0]
        length, is_write = struct.unpack_from("<IB", run, 48)
        try:
            if is_write:
                port.mmio_write(gpa, length, int.from_bytes(run[40:40 + length], "little"))
            else:
                run[40:40 + length] = port.mmio_read(gpa, length).to_bytes(length, "little")
        except GuestFault as f:
            self._exception(f.vector)

    def _msr(self, reason: int) -> None:
        run, port = self.run_map, self.port
        index = struct.unpack_from("<I", run, 44)[0]
        try:
            if reason == EXIT_X86_RDMSR:
                struct.pack_into("<Q", run, 48, port.msr_read(index))
            else:
                port.msr_write(index, struct.unpack_from("<Q", run, 48)[0])
            run[32] = 0
        except GuestFault:
            run[32] = 1  # error: KVM injects #GP

    def _exception(self, vector: int) -> None:
        """Inject an exception the hypervisor asked for (KVM_SET_VCPU_EVENTS)."""
        events = bytearray(64)
        _ioctl(self.vcpu, KVM_GET_VCPU_EVENTS, events)
        events[0], events[1], events[2] = 1, vector, 1 if vector in (8, 10, 11, 12, 13, 14, 17) else 0
        struct.pack_into("<I", events, 4, 0)
        struct.pack_into("<I", events, 20, 0)  # flags: no NMI, SIPI or shadow state to set
        _ioctl(self.vcpu, KVM_SET_VCPU_EVENTS, events)

    def close(self) -> None:
        if self.run_map is not None:
            self.run_map.close()
            self.run_map = None
        for fd in (self.vcpu, self.vm):
            if fd >= 0:
                os.close(fd)
        self.vcpu = self.vm = -1
        self._ram_view = None
