"""The guest kernel: boots the way an operating system does on a Hyper-V generation-1 VM.

VP 0 (the bootstrap processor) detects the hypervisor by CPUID and turns on the hypercall
page only when the partition's privilege mask offers it; brings up the PIC, the 100 Hz tick
(its local APIC timer, or the PIT: partitions/tick.py), the serial port (interrupt-driven
once the PIC is up), reads the date from the RTC, prints its banner on COM1 and the screen,
then releases the application processors.  Every VP then runs the topology's workloads
until the run's duration is over, prints what it did, and halts.  Devices the partition
lacks are probed and skipped, as a kernel does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from proto.codes import (
    CPUID_1_ECX_HYPERVISOR_PRESENT,
    HV_INTERFACE_SIGNATURE,
    HV_SPIN_RETRY_NEVER,
    CpuidLeaf,
    HvMsr,
    HvPrivilege,
    HvRecommendation,
)

from partitions import tick
from partitions.coalesced import CoalescedRing
from partitions.drivers import keyboard, pic, rtc, vga
from partitions.drivers.ata import Ata
from partitions.drivers.serial import Serial
from partitions.drivers.synic import SynicState
from partitions.vp import Vp
from partitions.workloads import run_workloads

GUEST_VERSION = "0.2"
# HV_X64_MSR_GUEST_OS_ID for an open-source OS (TLFS: bit 63 set, OS type, version).
GUEST_OS_ID = (1 << 63) | (0x48 << 48) | (0x0002 << 16)  # "H" for hvstack, version 2
# The hypercall page: the last page of conventional memory, below the legacy hole.
HYPERCALL_PAGE_GPA = 0x9F000
TICK_SOURCES = {"pit": "PIT", "lapic": "local APIC timer"}  # as the banner names them


@dataclass
class HvInfo:
    present: bool = False
    vendor: str = ""
    interface: str = ""
    privileges: int = 0
    recommendations: int = 0
    spin_retry: int = HV_SPIN_RETRY_NEVER
    hypercalls: bool = False

    def describe(self) -> str:
        if not self.present:
            return "no hypervisor"
        offered = [p.name for p in HvPrivilege if self.privileges & p] or ["none"]
        return f"{self.vendor} ({self.interface}), enlightenments: {', '.join(offered)}"


@dataclass
class System:
    """What the VPs of one partition share: the guest kernel's own globals."""

    name: str
    workloads: list[str]
    duration_s: float
    booted_generation: int = 0  # bumped by the BSP each time it finishes booting
    hv: HvInfo = field(default_factory=HvInfo)
    serial: Serial = field(default_factory=Serial)
    ata: Ata = field(default_factory=Ata)
    has_pic: bool = False
    has_vga: bool = False
    tick_hz: float = 0.0
    ticks: int = 0  # periods of the tick since boot, from the clock (partitions/tick.py)
    tick_base_ns: int = 0  # when tick 0 was, on the TSC
    tick_interrupts: int = 0  # tick interrupts taken: fewer than ``ticks`` when some were lost
    lost_ticks: int = 0
    idle_ticks: int = 0  # periods passed with the tick stopped (partitions/tick.py)
    tick_source: str = ""  # "lapic" or "pit" once the tick runs (partitions/tick.py); "": no tick
    idle_timers: dict = field(default_factory=dict)  # VP index → the time its idle one-shot is armed for
    boot_time: datetime | None = None
    typed: str = ""
    timers: dict = field(default_factory=dict)
    disk_bytes: int = 0
    disk_exits: int = 0
    disk_ns: int = 0
    disk_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    booted_cv: threading.Condition = field(default_factory=threading.Condition)
    synic: SynicState = field(default_factory=SynicState)  # the SynIC driver's (drivers/synic.py)
    # Save and restore (partitions/resume.py): lines the kernel wrote on its console, every
    # VP by index (the checkpoint reads their counters), and the checkpoint VP 0 writes
    # into guest RAM after a workload turn, every 50 ms at most (None: none).
    console_lines: int = 0
    resume_vps: list = field(default_factory=list)
    checkpoint: object = None
    checkpoint_due: float = 0.0  # time.monotonic() of the next checkpoint
    coalesced: CoalescedRing = field(default_factory=CoalescedRing)  # the partition's coalesced MMIO ring

    def console(self, vp: Vp, line: str) -> None:
        self.console_lines += 1
        self.serial.write(vp, line + "\n")


# -- hypervisor detection and enlightenments ----------------------------------------------


def detect_hypervisor(vp: Vp) -> HvInfo:
    info = HvInfo()
    _, _, ecx, _ = vp.cpuid(1)
    if not ecx & CPUID_1_ECX_HYPERVISOR_PRESENT:
        return info
    _, ebx, ecx, edx = vp.cpuid(CpuidLeaf.HvCpuidFunctionHvVendorAndMaxFunction)
    info.present = True
    info.vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, ecx, edx)).decode("ascii", "replace")
    eax, *_ = vp.cpuid(CpuidLeaf.HvCpuidFunctionHvInterface)
    info.interface = eax.to_bytes(4, "little").decode("ascii", "replace")
    if eax != HV_INTERFACE_SIGNATURE:
        return info  # not a Hyper-V interface: use no enlightenment
    lo, hi, _, _ = vp.cpuid(CpuidLeaf.HvCpuidFunctionMsHvFeatures)
    info.privileges = lo | (hi << 32)
    info.recommendations, info.spin_retry, _, _ = vp.cpuid(
        CpuidLeaf.HvCpuidFunctionMsHvEnlightenmentInformation)
    return info


def enable_hypercalls(vp: Vp, info: HvInfo) -> None:
    """TLFS: write a guest OS ID, then enable the hypercall page; check it took."""
    if not info.privileges & HvPrivilege.AccessHypercallMsrs:
        return
    vp.wrmsr(HvMsr.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID)
    vp.wrmsr(HvMsr.HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE_GPA | 1)
    info.hypercalls = bool(vp.rdmsr(HvMsr.HV_X64_MSR_HYPERCALL) & 1)


# -- interrupt handlers ---------------------------------------------------------------------


def on_serial(vp: Vp, vector: int, sys: System) -> None:
    sys.serial.handle_interrupt(vp)
    pic.eoi(vp, 4)


def on_disk(vp: Vp, vector: int, sys: System) -> None:
    sys.ata.handle_interrupt(vp)
    pic.eoi(vp, 14)


def on_key(vp: Vp, vector: int, sys: System) -> None:
    ch = keyboard.read_key(vp)
    pic.eoi(vp, 1)
    if ch is not None:
        sys.typed = (sys.typed + ch)[-70:]
        if sys.has_vga:
            vga.write_line(vp, 23, "typed: " + sys.typed.replace("\n", " "))
        if ch == "\n":
            sys.console(vp, f"[{sys.name}] keyboard: {sys.typed.strip().splitlines()[-1] if sys.typed.strip() else ''}")


def on_spurious(vp: Vp, vector: int, sys: System) -> None:
    # Spurious IRQ7/IRQ15: no EOI for IRQ7; the master still needs one for IRQ15.
    if vector == pic.vector(15):
        pic.eoi(vp, 2)


# -- boot -------------------------------------------------------------------------------------


def start_interrupts(vp: Vp, sys: System) -> None:
    """The PIC, its handlers, the PIT tick (partitions/tick.py) and the UART's and disk's
    interrupts — at boot and again after a restore (partitions/resume.py)."""
    pic.init(vp)
    handlers = {0: tick.on_tick, 1: on_key, 4: on_serial, 14: on_disk, 7: on_spurious, 15: on_spurious}
    for irq, fn in handlers.items():
        vp.set_handler(pic.vector(irq), lambda v, vec, fn=fn: fn(v, vec, sys))
    tick.start(vp, sys)
    for irq in (0, 1, 4, 14) if sys.tick_source == "pit" else (1, 4, 14):
        pic.unmask(vp, irq)
    sys.ata.use_irq = True
    sys.serial.enable_interrupts(vp)
    vp.sti()


def bsp_main(vp: Vp, sys: System) -> None:
    sys.has_vga = sys.has_pic = False  # a reset boots from scratch
    sys.hv = detect_hypervisor(vp)
    enable_hypercalls(vp, sys.hv)
    sys.serial = Serial()
    sys.serial.init(vp)
    sys.has_pic = pic.present(vp)
    if sys.has_pic:
        start_interrupts(vp, sys)
    sys.boot_time = rtc.read_time(vp)
    clock = sys.boot_time.isoformat(sep=" ") if sys.boot_time else "no RTC"
    # The screen is set up before the console says the kernel is up, so that whoever waits
    # for the console's boot lines finds the screen ready too.
    if vga.present(vp):
        vga.clear(vp)
        vga.write_line(vp, 0, f"hvstack guest kernel {GUEST_VERSION} - partition {sys.name}")
        vga.write_line(vp, 1, f"RTC {clock}")
        vga.set_cursor(vp, 2, 0)
        sys.has_vga = True
    rec = [r.name for r in HvRecommendation if sys.hv.recommendations & r] or ["none"]
    banner = f"hvstack guest kernel {GUEST_VERSION} on partition {sys.name}: {sys.hv.describe()}"
    sys.console(vp, banner)
    sys.console(vp, f"[{sys.name}] RTC {clock}; hypercall page {'on' if sys.hv.hypercalls else 'off'}; "
                     f"recommendations: {', '.join(rec)}; spin retries: {sys.hv.spin_retry:#x}; "
                     f"tick {sys.tick_hz:.2f} Hz ({TICK_SOURCES[sys.tick_source]})" if sys.has_pic
                else f"[{sys.name}] RTC {clock}; no PIC: polled")
    with sys.booted_cv:
        sys.booted_generation += 1
        sys.booted_cv.notify_all()
    run(vp, sys)


def ap_main(vp: Vp, sys: System, after_generation: int) -> None:
    """An application processor waits for the BSP to boot, as after INIT-SIPI-SIPI."""
    while sys.booted_generation <= after_generation:
        # A spin on the BSP's "booted" flag: PAUSE is a preemption point, so the scheduler
        # takes the LP back when the quantum is over and the BSP gets to run.
        vp.pause()
        with sys.booted_cv:
            sys.booted_cv.wait(0.001)
    run(vp, sys)


def run(vp: Vp, sys: System) -> None:
    done = run_workloads(vp, sys)
    summary = ", ".join(f"{k} {v}" for k, v in done.items() if v)
    sys.console(vp, f"[{sys.name}] vp{vp.index}: workloads done ({summary or 'nothing'}); halting")
    vp.counters["workloads_done"] = 1
    vp.flush_stats()
    while True:
        vp.hlt()
