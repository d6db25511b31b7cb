"""The SynIC's MSRs (TLFS inter-partition communication, "SynIC MSRs"): register state only.

``msrs.py`` asks here first for 0x40000080–0x4000009F (and the synthetic timers' and the
reference TSC page's MSRs, ``stimer.py`` / ``tsc_page.py``).  A write that sets something
in motion — a page enabled, an EOM, a SINT unmasked, a timer armed — records it in
``vp.synic.actions``; the intercept then lets the :class:`~hypervisor.synic.Synic` act on
it (``Synic.after_wrmsr``), since delivery needs guest memory and the local APIC.

Access: every SynIC MSR is a #GP unless the partition holds AccessSynicMsrs (CPUID
0x40000003 EAX bit 2), as on Hyper-V.  SVERSION is read-only (a write is a #GP), EOM
write-only (reads 0).  A SINT unmasked with a vector below 16 is a #GP; a masked one is
taken whatever its vector — the reset value 0x10000 has vector 0, and a guest writing it
back must not fault (KVM's reading; the TLFS's text would fault it too: see
vmbus-synic.md §6.2).
"""

from __future__ import annotations

from proto.codes import HvMsr, HvPrivilege, X86Exception

from hypervisor import stimer, tsc_page
from hypervisor.synic import (
    HV_SYNIC_VERSION_1,
    SCONTROL_ENABLE,
    SINT_MASKED,
    SINT_VECTOR_MASK,
    SINT_WRITABLE,
)

GP = int(X86Exception.GP)
OK = int(X86Exception.NONE)
SINT0 = HvMsr.HV_X64_MSR_SINT0
SINT15 = HvMsr.HV_X64_MSR_SINT15
# SIMP / SIEFP: bit 0 enable, 63:12 GPFN; 11:1 RsvdP (kept as zero here).
PAGE_WRITABLE = 0xFFFFFFFFFFFFF001
FIRST, LAST = HvMsr.HV_X64_MSR_SCONTROL, SINT15


def handles(msr: int) -> bool:
    return FIRST <= msr <= LAST or stimer.handles(msr) or tsc_page.handles(msr)


def rdmsr(part, vp, msr: int) -> tuple[int, int]:
    if stimer.handles(msr):
        return stimer.rdmsr(part, vp, msr)
    if tsc_page.handles(msr):
        return tsc_page.rdmsr(part, vp, msr)
    if not part.privileges & HvPrivilege.AccessSynicMsrs:
        return GP, 0
    s = vp.synic
    if msr == HvMsr.HV_X64_MSR_SCONTROL:
        return OK, s.scontrol
    if msr == HvMsr.HV_X64_MSR_SVERSION:
        return OK, HV_SYNIC_VERSION_1
    if msr == HvMsr.HV_X64_MSR_SIEFP:
        return OK, s.siefp
    if msr == HvMsr.HV_X64_MSR_SIMP:
        return OK, s.simp
    if msr == HvMsr.HV_X64_MSR_EOM:
        return OK, 0
    if SINT0 <= msr <= SINT15:
        return OK, s.sints[msr - SINT0]
    return GP, 0  # 0x40000085–0x4000008F: reserved


def wrmsr(part, vp, msr: int, value: int) -> int:
    if stimer.handles(msr):
        return stimer.wrmsr(part, vp, msr, value)
    if tsc_page.handles(msr):
        return tsc_page.wrmsr(part, vp, msr, value)
    if not part.privileges & HvPrivilege.AccessSynicMsrs:
        return GP
    s = vp.synic
    if msr == HvMsr.HV_X64_MSR_SCONTROL:
        s.scontrol = value & SCONTROL_ENABLE
        s.actions.add("rescan")
    elif msr == HvMsr.HV_X64_MSR_SIEFP:
        if value & 1 and not s.siefp & 1:
            s.actions.add("clear_siefp")
        s.siefp = value & PAGE_WRITABLE
    elif msr == HvMsr.HV_X64_MSR_SIMP:
        if value & 1 and not s.simp & 1:
            s.actions.add("clear_simp")
        s.simp = value & PAGE_WRITABLE
        s.actions.add("rescan")
    elif msr == HvMsr.HV_X64_MSR_EOM:
        s.counters["eom"] += 1
        s.actions.add("rescan")
    elif SINT0 <= msr <= SINT15:
        if not value & SINT_MASKED and (value & SINT_VECTOR_MASK) < 16:
            return GP
        s.sints[msr - SINT0] = value & SINT_WRITABLE
        s.actions.update(("sints", "rescan"))
    else:
        return GP  # SVERSION is read-only; 0x40000085–0x4000008F reserved
    return OK
