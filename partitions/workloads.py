"""Workloads the topology names; each VP runs its list in turns until the duration is over.

A workload function does one turn and returns how many operations it did; a turn in which
no workload did anything idles the VP (HLT until the next interrupt on VP 0, which takes
the PIC's interrupts).
"""

from __future__ import annotations

import time

from proto.codes import HV_SPIN_RETRY_NEVER, CpuidLeaf, HvMsr, HvPrivilege, HvRecommendation, HypercallCode
from proto.hvcall import (
    HV_GVA,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE,
    HV_INPUT_NOTIFY_LONG_SPIN_WAIT,
    HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE,
)

from partitions import tick
from partitions.drivers import lapic, vga
from partitions.drivers.ata import SECTOR, AtaError
from partitions.drivers.serial import COM1, SCR
from partitions.synic_workloads import SYNIC_WORKLOADS
from partitions.vp import Vp
from partitions.vmbus_disk import wl_vmbus_disk, wl_vmbus_diskbench
from partitions.vmbus_hostile import wl_vmbus_hostile
from partitions.vmbus_net import wl_vmbus_net, wl_vmbus_net_stream

BATCH = 200  # operations per workload turn, so every workload gets time on every VP
IDLE_S = 0.01
# An idle VP 0 stops its tick only for an idle at least this long (two of its periods), as
# Linux keeps the tick for an event within the next one.
NOHZ_MIN_S = 0.02
LOG_INTERVAL_S = 1.0
DISK_INTERVAL_S = 0.5
DISK_SECTORS = 8  # 4 KiB per round
DISK_AREA = 2048  # sectors the disk workload cycles through


def wl_portio(vp: Vp, sys) -> int:
    """Emulated port I/O: the UART scratch register, written then read back."""
    for i in range(BATCH // 2):
        vp.outb(COM1 + SCR, i)
        vp.inb(COM1 + SCR)
    return BATCH


def wl_cpuid(vp: Vp, sys) -> int:
    for _ in range(BATCH):
        vp.cpuid(CpuidLeaf.HvCpuidFunctionHvInterface)
    return BATCH


def wl_msr(vp: Vp, sys) -> int:
    """Synthetic MSR reads; only where the partition may read VP_INDEX."""
    if not sys.hv.privileges & HvPrivilege.AccessVpIndex:
        return 0
    for _ in range(BATCH):
        vp.rdmsr(HvMsr.HV_X64_MSR_VP_INDEX)
    return BATCH


def wl_hypercall(vp: Vp, sys) -> int:
    """HvCallNotifyLongSpinWait, a fast call; only where the hypercall page is on."""
    if not sys.hv.hypercalls:
        return 0
    spin_count = HV_INPUT_NOTIFY_LONG_SPIN_WAIT.pack(1)
    for _ in range(BATCH):
        vp.hypercall(HypercallCode.HvCallNotifyLongSpinWait, spin_count, fast=True)
    return BATCH


def _every(vp: Vp, sys, key: str, interval: float) -> bool:
    now = time.monotonic()
    last = sys.timers.get(key, 0.0)
    if now - last < interval:
        return False
    sys.timers[key] = now
    return True


def wl_serial(vp: Vp, sys) -> int:
    """A line of console output a second (VP 0 only), like a kernel's log."""
    if vp.index != 0 or not _every(vp, sys, "serial", LOG_INTERVAL_S):
        return 0
    uptime = time.monotonic() - sys.started
    rate = f", {sys.ticks / uptime:.1f} ticks/s" if sys.ticks else ""
    sys.console(vp, f"[{sys.name}] vp0: {vp.exits} exits, {sys.ticks} ticks{rate}")
    return 1


def wl_timer(vp: Vp, sys) -> int:
    """The tick runs by itself once the PIT is programmed; this workload just idles so the
    VP spends its time in HLT between ticks (exits per interrupt are then easy to read)."""
    return 0


def wl_screen(vp: Vp, sys) -> int:
    """A status line on the VGA text screen once a second (VP 0)."""
    if vp.index != 0 or not sys.has_vga or not _every(vp, sys, "screen", LOG_INTERVAL_S):
        return 0
    vga.write_line(vp, 24, f"{sys.name}: uptime {time.monotonic() - sys.started:6.1f} s  "
                           f"ticks {sys.ticks}  exits {vp.exits}", attr=0x1F)
    vga.set_cursor(vp, 2, 0)
    return 1


def wl_disk(vp: Vp, sys) -> int:
    """Write a 4 KiB pattern, FLUSH CACHE, read it back and compare (VP 0, every 0.5 s)."""
    if vp.index != 0 or not _every(vp, sys, "disk", DISK_INTERVAL_S):
        return 0
    return disk_round(vp, sys)


def wl_diskbench(vp: Vp, sys) -> int:
    """The disk round back to back, for throughput (VP 0)."""
    if vp.index != 0 or sys.timers.get("disk") == float("inf"):
        return 0
    return disk_round(vp, sys)


def disk_round(vp: Vp, sys) -> int:
    rnd = sys.timers.get("disk_round", 0)
    sys.timers["disk_round"] = rnd + 1
    lba = (rnd * DISK_SECTORS) % DISK_AREA
    pattern = b"".join(f"{sys.name} round {rnd:06d} sector {lba + i:06d} ".encode().ljust(SECTOR, b".")
                       for i in range(DISK_SECTORS))
    exits, t0 = vp.exits, time.perf_counter_ns()
    try:
        sys.ata.write(vp, lba, pattern)
        sys.ata.flush(vp)
        back = sys.ata.read(vp, lba, DISK_SECTORS)
    except AtaError as e:
        sys.console(vp, f"[{sys.name}] disk: {e}")
        sys.timers["disk"] = float("inf")  # no disk: stop trying
        return 0
    ok = back == pattern
    sys.disk_ns += time.perf_counter_ns() - t0
    sys.disk_bytes += 2 * len(pattern)
    sys.disk_exits += vp.exits - exits
    if not ok or rnd % 4 == 0:
        sys.console(vp, f"[{sys.name}] disk: round {rnd} lba {lba}: {'verified' if ok else 'MISMATCH'}; "
                        f"{(vp.exits - exits) / 2:.0f} exits per 4 KiB")
    if not ok:
        sys.disk_errors += 1
    vp.counters.update(disk_bytes=sys.disk_bytes, disk_exits=sys.disk_exits, disk_ns=sys.disk_ns,
                       disk_errors=sys.disk_errors)
    return DISK_SECTORS


# The spinlock experiment's shared state, in guest RAM below the legacy hole.
LOCK_GPA = 0x1000
COUNTER_GPA = 0x1004
CS_OPS = 100  # RAM operations inside the critical section (each a preemption point)
NCS_OPS = 100  # and between two acquisitions


def wl_spinlock(vp: Vp, sys) -> int:
    """4 VPs contend for one test-and-set lock in RAM.  A waiter spins on PAUSE; where the
    partition offers it (hypercall page on, a spin-retry count advertised), it calls
    HvCallNotifyLongSpinWait after every spin_retry attempts, as Windows and Linux do, so
    the hypervisor can give its LP to another VP — the preempted lock holder, often."""
    notify_every = sys.hv.spin_retry if sys.hv.hypercalls and sys.hv.spin_retry != HV_SPIN_RETRY_NEVER else 0
    c = vp.counters
    done = 0
    for _ in range(10):
        spins, t0 = 0, time.perf_counter_ns()
        while vp.xchg(LOCK_GPA, 1):
            spins += 1
            vp.pause()
            if notify_every and spins % notify_every == 0:
                vp.hypercall(HypercallCode.HvCallNotifyLongSpinWait, HV_INPUT_NOTIFY_LONG_SPIN_WAIT.pack(spins),
                             fast=True)
                c["spin_notifies"] = c.get("spin_notifies", 0) + 1
        c["spin_ns"] = c.get("spin_ns", 0) + time.perf_counter_ns() - t0
        c["spins"] = c.get("spins", 0) + spins
        for _ in range(CS_OPS):
            vp.write(COUNTER_GPA, 4, (vp.read(COUNTER_GPA, 4) + 1) & 0xFFFFFFFF)
        vp.xchg(LOCK_GPA, 0)
        c["acquisitions"] = c.get("acquisitions", 0) + 1
        done += 1
        for i in range(NCS_OPS):
            vp.read(0x2000 + 64 * vp.index, 4)
    return done


def wl_compute(vp: Vp, sys) -> int:
    """CPU-bound guest code: RAM reads, no exits but quantum ends.  What the scheduler's
    shares and limits are measured with."""
    base = 0x3000 + 64 * vp.index
    for _ in range(BATCH):
        vp.read(base, 4)
    vp.counters["compute_ops"] = vp.counters.get("compute_ops", 0) + BATCH
    return BATCH


def wl_hog(vp: Vp, sys) -> int:
    """A hostile guest: spins in pure Python with no exit and no preemption point (no RAM
    access, no PAUSE), so only the hypervisor's forced preemption takes its LP back.  It
    watches the partition's stop flag (host state, not an instruction), so the process
    still ends cleanly on SIGTERM."""
    n = 0
    while not vp.stop.is_set():
        n += 1
    return 0


# The EOI experiment: a 1 kHz local APIC timer, and three ways to end each interrupt.
APIC_TIMER_VECTOR = 0xEF
ASSIST_PAGE_GPA = 0x9E000


def _apic_timer(vp: Vp, sys, mode: str) -> int:
    """Program the local APIC timer at 1 kHz on first use (VP 0), then idle in HLT: every
    tick wakes the VP and its handler ends the interrupt by ``mode`` — an MMIO write to the
    APIC's EOI register, a write to HV_X64_MSR_EOI, or nothing when the VP assist page says
    "no EOI required"."""
    if vp.index != 0:
        return 0
    if not sys.timers.get("apic"):
        apic_msrs = sys.hv.privileges & HvPrivilege.AccessApicMsrs
        if mode != "mmio" and not apic_msrs:
            sys.console(vp, f"[{sys.name}] eoi_{mode}: the APIC enlightenment is not offered; using MMIO")
            mode = "mmio"
        if mode == "assist":
            vp.wrmsr(HvMsr.HV_X64_MSR_VP_ASSIST_PAGE, ASSIST_PAGE_GPA | 1)

        def on_apic_timer(v: Vp, vector: int) -> None:
            v.counters["apic_ticks"] = v.counters.get("apic_ticks", 0) + 1
            if mode == "assist" and v.btr(ASSIST_PAGE_GPA, 0):
                return  # the hypervisor did the EOI
            if mode == "mmio":
                lapic.eoi(v)
            else:
                v.wrmsr(HvMsr.HV_X64_MSR_EOI, 0)

        vp.set_handler(APIC_TIMER_VECTOR, on_apic_timer)
        lapic.enable(vp)
        lapic.periodic(vp, APIC_TIMER_VECTOR, 1000)
        sys.timers["apic"] = 1.0
        sys.console(vp, f"[{sys.name}] local APIC timer at 1 kHz, EOI by {mode}")
    return 0  # then idle: HLT until the next tick


def wl_eoi_mmio(vp: Vp, sys) -> int:
    return _apic_timer(vp, sys, "mmio")


def wl_eoi_msr(vp: Vp, sys) -> int:
    return _apic_timer(vp, sys, "msr")


def wl_eoi_assist(vp: Vp, sys) -> int:
    return _apic_timer(vp, sys, "assist")


# The TLB experiment: page tables in guest RAM, built by the guest.  Page-table pages come
# from a bump allocator at PT_AREA; the mapped data pages are at DATA_AREA (both in RAM no
# other workload uses, below the VP assist and hypercall pages at 0x9E000/0x9F000).
PT_AREA = (0x40000, 0x50000)
DATA_AREA = 0x50000
TLB_PAGES = 64  # virtual pages each address space maps
TLB_VA = 0x0000_7F00_0000_0000  # where they start (a user-half address: all four levels used)
PTE_P, PTE_RW = 1, 2
FLUSHER_TURN = 20  # address-space switches per turn
FLUSHER_PAGES = 4  # pages the flusher touches (few: its own fills evict little of the reader's)


class PageTables:
    """A bump allocator of zeroed guest pages for page tables, and the 4-level mapper."""

    def __init__(self, vp: Vp, area: tuple[int, int] = PT_AREA) -> None:
        self.vp = vp
        self.next, self.end = area

    def page(self) -> int:
        if self.next >= self.end:
            raise MemoryError("page-table area exhausted")
        gpa, self.next = self.next, self.next + 0x1000
        self.vp.write_bytes(gpa, bytes(0x1000))
        return gpa

    def map(self, cr3: int, gva: int, gpa: int) -> None:
        """Map the 4 KiB page at ``gva`` to ``gpa`` in the address space rooted at ``cr3``."""
        vp, table = self.vp, cr3
        for shift in (39, 30, 21):
            slot = table + ((gva >> shift) & 0x1FF) * 8
            entry = vp.read(slot, 8)
            if not entry & PTE_P:
                entry = self.page() | PTE_P | PTE_RW
                vp.write(slot, 8, entry)
            table = entry & 0x000FFFFFFFFFF000
        vp.write(table + ((gva >> 12) & 0x1FF) * 8, 8, gpa | PTE_P | PTE_RW)


def address_spaces(vp: Vp, sys) -> list[int]:
    """Two address spaces (CR3 values), each mapping TLB_PAGES pages at TLB_VA onto the same
    data pages, built once per boot (the reader uses the first)."""
    spaces = sys.timers.get("tlb_spaces")
    if spaces is None or sys.timers.get("tlb_generation") != sys.booted_generation:
        pt = PageTables(vp)
        spaces = []
        for _ in range(2):
            cr3 = pt.page()
            for i in range(TLB_PAGES):
                pt.map(cr3, TLB_VA + i * 0x1000, DATA_AREA + i * 0x1000)
            spaces.append(cr3)
        sys.timers["tlb_spaces"] = spaces
        sys.timers["tlb_generation"] = sys.booted_generation
    return spaces


def _recommended(sys, rec: HvRecommendation) -> bool:
    return bool(sys.hv.hypercalls and sys.hv.recommendations & rec)


def load_cr3(vp: Vp, sys, cr3: int) -> None:
    """An address-space switch: HvCallSwitchVirtualAddressSpace where recommended (no
    flush: the TLB is tagged), else MOV CR3 (intercepted: the LP's TLB is flushed)."""
    if _recommended(sys, HvRecommendation.UseHypercallForAddressSpaceSwitch):
        vp.hypercall(HypercallCode.HvCallSwitchVirtualAddressSpace, HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE.pack(cr3),
                     fast=True)
    else:
        vp.mov_cr3(cr3)


def wl_tlb_reader(vp: Vp, sys) -> int:
    """Loads through TLB_PAGES mapped pages, round and round, in one address space.  Its TLB
    misses are in the VP's counters (tlb_misses), its loads in tlb_reads."""
    cr3 = address_spaces(vp, sys)[0]
    if vp.cr3 != cr3:
        load_cr3(vp, sys, cr3)
    at = sys.timers.get("tlb_at", 0)
    for i in range(BATCH):
        vp.vread(TLB_VA + ((at + i) % TLB_PAGES) * 0x1000 + 8 * (vp.index % 512), 8)
    sys.timers["tlb_at"] = (at + BATCH) % TLB_PAGES
    vp.counters["tlb_reads"] = vp.counters.get("tlb_reads", 0) + BATCH
    return BATCH


def wl_tlb_flusher(vp: Vp, sys) -> int:
    """A process switcher: alternates between its two address spaces, touches a page and
    flushes it (as after changing its PTE), and every fourth switch its whole address space.
    Enlightened (hypercall page on and the switch/local-flush recommendations): the switch
    and flush hypercalls, which touch only this partition's TLB entries; otherwise MOV CR3
    and INVLPG, each intercepted and flushing the whole LP, other partitions' entries too."""
    spaces = address_spaces(vp, sys)
    by_hypercall = _recommended(sys, HvRecommendation.UseHypercallForLocalFlush)
    c = vp.counters
    for i in range(FLUSHER_TURN):
        cr3 = spaces[i % 2]
        load_cr3(vp, sys, cr3)
        gva = TLB_VA + (i % FLUSHER_PAGES) * 0x1000
        vp.vread(gva, 8)
        if by_hypercall:
            header = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST.pack(cr3, 0, 1 << vp.index)
            vp.hypercall(HypercallCode.HvCallFlushVirtualAddressList, header + HV_GVA.pack(gva),
                         rep_count=1)
        else:
            vp.invlpg(gva)
        if i % 4 == 3:
            if by_hypercall:
                vp.hypercall(HypercallCode.HvCallFlushVirtualAddressSpace,
                             HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.pack(cr3, 0, 1 << vp.index))
            else:
                vp.mov_cr3(cr3)  # reloading CR3 flushes the (untagged) TLB
            c["tlb_space_flushes"] = c.get("tlb_space_flushes", 0) + 1
        c["tlb_switches"] = c.get("tlb_switches", 0) + 1
    return FLUSHER_TURN


WORKLOADS = {
    "serial": wl_serial,
    "portio": wl_portio,
    "cpuid": wl_cpuid,
    "msr": wl_msr,
    "hypercall": wl_hypercall,
    "timer": wl_timer,
    "screen": wl_screen,
    "disk": wl_disk,
    "diskbench": wl_diskbench,
    "spinlock": wl_spinlock,
    "compute": wl_compute,
    "hog": wl_hog,
    "eoi_mmio": wl_eoi_mmio,
    "eoi_msr": wl_eoi_msr,
    "eoi_assist": wl_eoi_assist,
    "tlb_reader": wl_tlb_reader,
    "tlb_flusher": wl_tlb_flusher,
    "vmbus_disk": wl_vmbus_disk,
    "vmbus_diskbench": wl_vmbus_diskbench,
    "vmbus_hostile": wl_vmbus_hostile,
    "vmbus_net": wl_vmbus_net,
    "vmbus_net_stream": wl_vmbus_net_stream,
}
# The SynIC's (issue 10): synthetic timer ticks, the reference time by TSC page and MSR.
WORKLOADS.update(SYNIC_WORKLOADS)


def run_workloads(vp: Vp, sys) -> dict[str, int]:
    done = dict.fromkeys(sys.workloads, 0)
    fns = [(name, WORKLOADS[name]) for name in sys.workloads]
    deadline = time.monotonic() + sys.duration_s
    while time.monotonic() < deadline:
        ops = 0
        for name, fn in fns:
            n = fn(vp, sys)
            done[name] += n
            ops += n
        if ops == 0:
            idle(vp, sys, next_due(vp, sys, deadline))
        if vp.index == 0 and sys.checkpoint is not None:
            sys.checkpoint(vp, sys)  # the kernel's state into its RAM (partitions/resume.py)
    return done


IDLE_VECTOR = 0xEE


def _due_every(key: str, interval: float, *, vga: bool = False):
    """When a VP-0 workload paced by :func:`_every` is next due (on any other VP: never)."""

    def due(vp: Vp, sys) -> float | None:
        if vp.index != 0 or (vga and not sys.has_vga) or sys.timers.get(key) == float("inf"):
            return None
        return sys.timers.get(key, 0.0) + interval

    return due


# When a workload that returned nothing next has something to do, for an idle VP's timer
# (monotonic seconds; None: nothing until an interrupt comes).  A workload not named here
# is polled every IDLE_S, as before: it may wait for something no interrupt announces.
NEXT_DUE = {
    "serial": _due_every("serial", LOG_INTERVAL_S),
    "screen": _due_every("screen", LOG_INTERVAL_S, vga=True),
    "disk": _due_every("disk", DISK_INTERVAL_S),
    "timer": lambda vp, sys: None,  # its ticks are interrupts
}


def next_due(vp: Vp, sys, deadline: float) -> float:
    """When this VP next has something to do: the first workload due, or the end of the
    workloads — Linux's NOHZ idle, which programs the timer for the next event instead of
    taking every tick.  An idle partition (``workloads = []``) sleeps to its deadline."""
    now = time.monotonic()
    due = deadline
    for name in sys.workloads:
        fn = NEXT_DUE.get(name)
        at = fn(vp, sys) if fn is not None else now + IDLE_S
        if at is not None and at < due:
            due = at
    return due


def idle(vp: Vp, sys, until: float | None = None) -> None:
    """HLT until the next interrupt, tickless (Linux's NO_HZ_IDLE): a one-shot local APIC
    timer armed for ``until`` (monotonic seconds; None: IDLE_S from now) wakes the VP —
    armed again only for another time, as Linux leaves a stopped tick's clockevent alone when
    the next event has not moved.

    VP 0 of a partition with a PIC has a periodic tick (partitions/tick.py).  When the next
    event is at least NOHZ_MIN_S away it stops the tick, sleeps until the one-shot fires —
    other interrupts' handlers run and it sleeps again, as Linux's idle loop does while
    nothing needs the scheduler — and starts the tick again: whatever runs outside the idle
    loop (a driver waiting for its device in HLT) has the tick to wake it.  Nearer, or where a
    workload wants the PIT's tick (``timer``) or VP 0 runs a periodic APIC timer, the tick
    wakes it."""
    ticked = sys.tick_source if vp.index == 0 else ""
    left = IDLE_S if until is None else until - time.monotonic()
    if vp.index == 0 and (sys.timers.get("apic") or (ticked and ("timer" in sys.workloads or left < NOHZ_MIN_S))):
        vp.sti()
        vp.hlt()
        return
    armed = sys.idle_timers
    if IDLE_VECTOR not in vp.handlers:  # first idle since power-on
        armed.pop(vp.index, None)

        def expired(v: Vp, vector: int) -> None:
            armed.pop(v.index, None)
            lapic.eoi(v)

        vp.set_handler(IDLE_VECTOR, expired)
        lapic.enable(vp)
        if ticked != "lapic":
            lapic.one_shot_mode(vp, IDLE_VECTOR)
    if ticked:
        tick.stop(vp, sys, IDLE_VECTOR)
        if ticked == "lapic":
            armed.pop(vp.index, None)  # the tick had the timer: the one-shot is armed afresh
    if until is None or armed.get(vp.index) != until:
        armed[vp.index] = until  # (first: a fire taken with the write's own resume then counts)
        lapic.arm(vp, left)
    if not ticked:
        vp.sti()
        vp.hlt()
        return
    while vp.index in armed:
        vp.sti()
        vp.hlt()
    tick.restart(vp, sys)


# A memory-writing workload (issue 13: live migration's pre-copy), in a module of its own.
from partitions.memory_workloads import MEMORY_WORKLOADS  # noqa: E402

WORKLOADS.update(MEMORY_WORKLOADS)
