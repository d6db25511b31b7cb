"""The guest kernel: boots the way an operating system does on Hyper-V.

VP 0 (the bootstrap processor) detects the hypervisor by CPUID, turns on the hypercall page
only when the partition's privilege mask offers it, initialises COM1, prints the banner by
polling LSR.THRE as a real serial driver does, then releases the application processors.
Every VP then runs the topology's workloads until the run's duration is over, prints what
it did, and halts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from proto.codes import (
    CPUID_1_ECX_HYPERVISOR_PRESENT,
    HV_INTERFACE_SIGNATURE,
    HV_SPIN_RETRY_NEVER,
    CpuidLeaf,
    HvMsr,
    HvPrivilege,
    HvRecommendation,
    HypercallCode,
)

from partitions.vp import GuestFault, Vp

GUEST_VERSION = "0.1"
# HV_X64_MSR_GUEST_OS_ID for an open-source OS (TLFS: bit 63 set, OS type, version).
GUEST_OS_ID = (1 << 63) | (0x48 << 48) | (0x0001 << 16)  # "H" for hvstack, version 1
# The hypercall page: the last page of the first megabyte of guest RAM.
HYPERCALL_PAGE_GPA = 0xFF000

COM1 = 0x3F8
THR = RBR = DLL = 0
IER = DLM = 1
FCR = 2
LCR = 3
MCR = 4
LSR = 5
SCR = 7
LSR_THRE = 0x20
LCR_DLAB = 0x80
LCR_8N1 = 0x03
FCR_ENABLE_CLEAR_14 = 0xC7
MCR_DTR_RTS_OUT2 = 0x0B
UART_FIFO_DEPTH = 16
BAUD_DIVISOR_115200 = 1


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
    booted: threading.Event = field(default_factory=threading.Event)
    serial_lock: threading.Lock = field(default_factory=threading.Lock)
    hv: HvInfo = field(default_factory=HvInfo)
    last_log: float = 0.0


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


# -- the serial driver ------------------------------------------------------------------------


def serial_init(vp: Vp, base: int = COM1) -> None:
    vp.outb(base + IER, 0)  # polled: no interrupts
    vp.outb(base + LCR, LCR_DLAB)
    vp.outb(base + DLL, BAUD_DIVISOR_115200)
    vp.outb(base + DLM, 0)
    vp.outb(base + LCR, LCR_8N1)
    vp.outb(base + FCR, FCR_ENABLE_CLEAR_14)
    vp.outb(base + MCR, MCR_DTR_RTS_OUT2)


def serial_write(vp: Vp, text: str, base: int = COM1) -> None:
    """Wait for THRE, then fill the 16-byte transmit FIFO, as Linux's 8250 driver does."""
    data = text.replace("\n", "\r\n").encode()
    i = 0
    while i < len(data):
        while not vp.inb(base + LSR) & LSR_THRE:
            vp.pause()
        for b in data[i:i + UART_FIFO_DEPTH]:
            vp.outb(base + THR, b)
        i += UART_FIFO_DEPTH


def console(vp: Vp, sys: System, line: str) -> None:
    with sys.serial_lock:
        serial_write(vp, line + "\n")


# -- workloads ----------------------------------------------------------------------------------

BATCH = 200  # operations per workload turn, so every workload gets time on every VP
IDLE_S = 0.01


def wl_portio(vp: Vp, sys: System) -> int:
    """Emulated port I/O: the UART scratch register, written then read back."""
    for i in range(BATCH // 2):
        vp.outb(COM1 + SCR, i)
        vp.inb(COM1 + SCR)
    return BATCH


def wl_cpuid(vp: Vp, sys: System) -> int:
    for _ in range(BATCH):
        vp.cpuid(CpuidLeaf.HvCpuidFunctionHvInterface)
    return BATCH


def wl_msr(vp: Vp, sys: System) -> int:
    """Synthetic MSR reads; only where the partition may read VP_INDEX."""
    if not sys.hv.privileges & HvPrivilege.AccessVpIndex:
        return 0
    for _ in range(BATCH):
        vp.rdmsr(HvMsr.HV_X64_MSR_VP_INDEX)
    return BATCH


def wl_hypercall(vp: Vp, sys: System) -> int:
    """HvCallNotifyLongSpinWait, a fast call; only where the hypercall page is on."""
    if not sys.hv.hypercalls:
        return 0
    spin_count = (1).to_bytes(4, "little")
    for _ in range(BATCH):
        vp.hypercall(HypercallCode.HvCallNotifyLongSpinWait, spin_count, fast=True)
    return BATCH


def wl_serial(vp: Vp, sys: System) -> int:
    """A line of console output now and then (VP 0 only), like a kernel's log."""
    if vp.index != 0:
        return 0
    now = time.monotonic()
    if now - sys.last_log < 1.0:
        return 0
    sys.last_log = now
    console(vp, sys, f"[{sys.name}] vp0: {vp.exits} exits so far")
    return 1


WORKLOADS = {
    "serial": wl_serial,
    "portio": wl_portio,
    "cpuid": wl_cpuid,
    "msr": wl_msr,
    "hypercall": wl_hypercall,
}


def run_workloads(vp: Vp, sys: System) -> dict[str, int]:
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
            # Nothing to do until the next log line.  With no timer interrupt yet to wake
            # a HLT, the idle loop lets host time pass without exits.
            time.sleep(IDLE_S)
    return done


# -- entry points ---------------------------------------------------------------------------------


def bsp_main(vp: Vp, sys: System) -> None:
    sys.hv = detect_hypervisor(vp)
    enable_hypercalls(vp, sys.hv)
    serial_init(vp)
    rec = [r.name for r in HvRecommendation if sys.hv.recommendations & r] or ["none"]
    console(vp, sys, f"hvstack guest kernel {GUEST_VERSION} on partition {sys.name}: "
                     f"{sys.hv.describe()}")
    console(vp, sys, f"[{sys.name}] hypercall page: {'on' if sys.hv.hypercalls else 'off'}; "
                     f"recommendations: {', '.join(rec)}; spin retries: {sys.hv.spin_retry:#x}")
    sys.booted.set()
    _run(vp, sys)


def ap_main(vp: Vp, sys: System) -> None:
    # An application processor waits for the BSP, as after INIT-SIPI-SIPI.
    while not sys.booted.wait(0.1):
        if vp.stop.is_set():
            return
    _run(vp, sys)


def _run(vp: Vp, sys: System) -> None:
    try:
        done = run_workloads(vp, sys)
    except GuestFault as e:
        console(vp, sys, f"[{sys.name}] vp{vp.index}: fault {e}")
        raise
    summary = ", ".join(f"{k} {v}" for k, v in done.items() if k != "serial")
    console(vp, sys, f"[{sys.name}] vp{vp.index}: workloads done ({summary}); halting")
    vp.hlt()
