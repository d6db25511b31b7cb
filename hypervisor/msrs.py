"""Synthetic MSRs handled in the hypervisor (TLFS §hypercall interface, §timers).

An MSR the partition has no privilege for, or one this hypervisor does not implement, is a
#GP, as on Hyper-V.  Results are ``(fault, value)`` with ``fault`` an X86Exception.
"""

from __future__ import annotations

from proto.codes import HvMsr, HvPrivilege, X86Exception

from hypervisor import synic_msrs
from hypervisor.apic import APIC_TIMER_HZ

from hypervisor.partitions import Partition, VirtualProcessor

GP = X86Exception.GP
OK = X86Exception.NONE

# HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 63:12 GPFN of the hypercall page.
HYPERCALL_ENABLE = 1 << 0
HYPERCALL_LOCKED = 1 << 1
HYPERCALL_WRITABLE = ~((1 << 12) - 1) & 0xFFFFFFFFFFFFFFFF | HYPERCALL_ENABLE | HYPERCALL_LOCKED


def rdmsr(part: Partition, vp: VirtualProcessor, msr: int) -> tuple[int, int]:
    if synic_msrs.handles(msr):  # SynIC, synthetic timers, reference TSC page
        return synic_msrs.rdmsr(part, vp, msr)
    priv = part.privileges
    vp_index = vp.index
    if msr == HvMsr.HV_X64_MSR_GUEST_OS_ID and priv & HvPrivilege.AccessHypercallMsrs:
        return OK, part.guest_os_id
    if msr == HvMsr.HV_X64_MSR_HYPERCALL and priv & HvPrivilege.AccessHypercallMsrs:
        return OK, part.hypercall_msr
    if msr == HvMsr.HV_X64_MSR_VP_INDEX and priv & HvPrivilege.AccessVpIndex:
        return OK, vp_index
    if msr == HvMsr.HV_X64_MSR_TIME_REF_COUNT and priv & HvPrivilege.AccessPartitionReferenceCounter:
        return OK, part.reference_time_100ns()
    if msr == HvMsr.HV_X64_MSR_APIC_FREQUENCY and priv & HvPrivilege.AccessFrequencyMsrs:
        # TLFS "Partition Privilege Flags": AccessFrequencyMsrs grants the TSC and APIC
        # frequency MSRs (not AccessApicMsrs, which is EOI/ICR/TPR and the assist page).
        # HV_X64_MSR_TSC_FREQUENCY stays #GP: no TSC is modelled.
        return OK, APIC_TIMER_HZ
    if priv & HvPrivilege.AccessApicMsrs:
        if msr == HvMsr.HV_X64_MSR_TPR:
            return OK, vp.apic.tpr
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE:
            return OK, vp.assist_page
    return GP, 0


def wrmsr(part: Partition, vp: VirtualProcessor, msr: int, value: int) -> int:
    """Returns the fault to inject (X86Exception.NONE when the write took)."""
    if synic_msrs.handles(msr):  # SynIC, synthetic timers, reference TSC page
        return synic_msrs.wrmsr(part, vp, msr, value)
    priv = part.privileges
    if msr == HvMsr.HV_X64_MSR_GUEST_OS_ID and priv & HvPrivilege.AccessHypercallMsrs:
        part.guest_os_id = value
        if value == 0:
            # TLFS: clearing the guest OS ID disables the hypercall page.
            part.hypercall_msr &= ~HYPERCALL_ENABLE
        return OK
    if msr == HvMsr.HV_X64_MSR_HYPERCALL and priv & HvPrivilege.AccessHypercallMsrs:
        if part.hypercall_msr & HYPERCALL_LOCKED:
            return OK  # locked: writes are ignored until reset
        value &= HYPERCALL_WRITABLE
        if part.guest_os_id == 0:
            # TLFS "Hypercall Interface" › "Establishing the Hypercall Interface": the page
            # cannot be enabled before the guest identifies itself.  Only Enable is refused:
            # the GPFN is kept and reads back with Enable clear.  (KVM drops the whole
            # write, so there the MSR reads back its old value; we follow the TLFS.)
            value &= ~HYPERCALL_ENABLE
        part.hypercall_msr = value
        return OK
    if priv & HvPrivilege.AccessApicMsrs:
        if msr == HvMsr.HV_X64_MSR_EOI:
            vp.apic.msr_eoi()
            return OK
        if msr == HvMsr.HV_X64_MSR_TPR:
            vp.apic.tpr = value & 0xFF
            return OK
        if msr == HvMsr.HV_X64_MSR_ICR:
            vp.apic.msr_icr(value)  # the hypervisor delivers it once the write completes
            return OK
        if msr == HvMsr.HV_X64_MSR_VP_ASSIST_PAGE:
            # Bit 0 enable, bits 63:12 the GPFN of the page (TLFS virtual interrupts).
            vp.assist_page = value & ~0xFFE & 0xFFFFFFFFFFFFFFFF
            vp.apic.assist_enabled = bool(value & 1)
            return OK
    # VP_INDEX and TIME_REF_COUNT are read-only; everything else is not ours.
    return GP
