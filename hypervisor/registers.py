"""VP registers the hypervisor keeps, as HvCallGetVpRegisters / HvCallSetVpRegisters reach them.

The VP's register block — RFLAGS and CR3 — is saved with every exit and restored with every
dispatch (``proto.messages.REGS``), so while a VP is off its LP the hypervisor's copy is the
one that counts, and a write here takes effect at its next dispatch.  The hypervisor also
keeps the suspend registers that decide whether the scheduler may run the VP at all, and the
local APIC's TPR (CR8), base and ID.  The guest's general-purpose registers are its Python
frames in the partition process: not a register file anyone can reach.
"""

from __future__ import annotations

from proto.codes import HvRegisterName as R

from hypervisor.apic import APIC_BASE
from hypervisor.partitions import Partition, VirtualProcessor
from hypervisor.scheduler import VpState

# IA32_APIC_BASE: the base address, bit 11 "xAPIC enabled", bit 8 "bootstrap processor".
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_BSP = 1 << 8


class VpRegisters:
    def __init__(self, scheduler=None) -> None:
        self.scheduler = scheduler

    def read(self, part: Partition, vp: VirtualProcessor, name: int) -> int | None:
        if name == R.HvRegisterExplicitSuspend:
            return int(vp.sched.suspended)
        if name == R.HvRegisterInterceptSuspend:
            return int(vp.sched.state is VpState.INTERCEPT)
        if name == R.HvRegisterDispatchSuspend:
            return int(part.cpu.paused)
        if name == R.HvX64RegisterRflags:
            return vp.rflags
        if name == R.HvX64RegisterCr3:
            return vp.cr3
        if name == R.HvX64RegisterCr8:
            return vp.apic.tpr >> 4
        if name == R.HvX64RegisterApicBase:
            return APIC_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if vp.index == 0 else 0)
        if name == R.HvX64RegisterInitialApicId:
            return vp.index
        return None

    def write(self, part: Partition, vp: VirtualProcessor, name: int, value: int) -> bool:
        if name == R.HvRegisterExplicitSuspend:
            if self.scheduler is not None:
                self.scheduler.suspend(vp.sched, bool(value & 1))
            else:
                vp.sched.suspended = bool(value & 1)
            return True
        if name in (R.HvX64RegisterRflags, R.HvX64RegisterCr3):
            attr = "rflags" if name == R.HvX64RegisterRflags else "cr3"
            value &= 0xFFFFFFFFFFFFFFFF
            if attr == "rflags":
                value |= 0x2  # bit 1 is fixed
            setattr(vp, attr, value)
            # A VP on its LP saves its own copy at its next exit; this write must win.
            vp.regs_written[attr] = value
            return True
        if name == R.HvX64RegisterCr8:
            vp.apic.tpr = (value & 0xF) << 4
            return True
        return False  # read-only, or not a register this hypervisor keeps
