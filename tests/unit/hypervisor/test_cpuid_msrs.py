"""The hypervisor-handled intercepts: CPUID leaves and synthetic MSRs."""

from __future__ import annotations

from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HvMsr,
    HvRecommendation,
    X86Exception,
)
from hypervisor import cpuid, msrs
from hypervisor.partitions import Partition, VirtualProcessor


def enlightened() -> Partition:
    p = Partition(1, privileges=int(HV_CHILD_ENLIGHTENED_PRIVILEGES),
                  recommendations=int(HvRecommendation.UseRelaxedTiming), spin_retry=0xFFF)
    p.vps = [VirtualProcessor(0), VirtualProcessor(1)]
    return p


def regs_text(*regs: int) -> str:
    return b"".join(r.to_bytes(4, "little") for r in regs).decode()


def test_leaf_1_says_a_hypervisor_is_present_and_gives_the_apic_id():
    _, ebx, ecx, _ = cpuid.cpuid(enlightened(), 1, 1, 0)
    assert ecx >> 31 == 1 and ebx >> 24 == 1


def test_vendor_leaf_says_microsoft_hv_and_the_max_leaf():
    eax, ebx, ecx, edx = cpuid.cpuid(enlightened(), 0, 0x40000000, 0)
    assert regs_text(ebx, ecx, edx) == "Microsoft Hv" and eax == 0x40000006


def test_interface_leaf_says_hv1():
    assert regs_text(cpuid.cpuid(enlightened(), 0, 0x40000001, 0)[0]) == "Hv#1"


def test_features_and_recommendations_come_from_the_partition():
    p = enlightened()
    assert cpuid.cpuid(p, 0, 0x40000003, 0)[:2] == (int(HV_CHILD_ENLIGHTENED_PRIVILEGES), 0)
    assert cpuid.cpuid(p, 0, 0x40000004, 0)[:2] == (int(HvRecommendation.UseRelaxedTiming), 0xFFF)
    legacy = Partition(2)
    assert cpuid.cpuid(legacy, 0, 0x40000003, 0) == (0, 0, 0, 0)
    assert cpuid.cpuid(legacy, 0, 0x40000004, 0)[1] == 0xFFFFFFFF


def test_vp_index_reads_the_calling_vp():
    assert msrs.rdmsr(enlightened(), enlightened().vps[1], HvMsr.HV_X64_MSR_VP_INDEX) == (X86Exception.NONE, 1)


def test_synthetic_msrs_without_the_privilege_are_gp():
    legacy = Partition(2)
    for msr in (HvMsr.HV_X64_MSR_VP_INDEX, HvMsr.HV_X64_MSR_GUEST_OS_ID, HvMsr.HV_X64_MSR_HYPERCALL):
        assert msrs.rdmsr(legacy, VirtualProcessor(0), msr)[0] == X86Exception.GP
    assert msrs.wrmsr(legacy, VirtualProcessor(0), HvMsr.HV_X64_MSR_GUEST_OS_ID, 1) == X86Exception.GP


def test_read_only_and_unknown_msrs_are_gp_on_write():
    p = enlightened()
    assert msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_VP_INDEX, 5) == X86Exception.GP
    assert msrs.wrmsr(p, VirtualProcessor(0), 0x12345678, 5) == X86Exception.GP


def test_hypercall_page_cannot_be_enabled_before_a_guest_os_id():
    p = enlightened()
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0xFF000 | 1)
    assert not p.hypercalls_enabled
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_GUEST_OS_ID, 1 << 63)
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0xFF000 | 1)
    assert p.hypercalls_enabled and msrs.rdmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL)[1] == 0xFF001


def test_a_locked_hypercall_msr_ignores_writes():
    p = enlightened()
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_GUEST_OS_ID, 1 << 63)
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0xFF000 | 3)
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0)
    assert p.hypercalls_enabled


def test_clearing_the_guest_os_id_disables_hypercalls():
    p = enlightened()
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_GUEST_OS_ID, 1 << 63)
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0xFF000 | 1)
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_GUEST_OS_ID, 0)
    assert not p.hypercalls_enabled


def test_apic_frequency_is_gated_by_the_frequency_msrs_privilege_not_the_apic_msrs_one():
    """TLFS "Partition Privilege Flags": AccessFrequencyMsrs (bit 11) grants
    HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY; AccessApicMsrs (bit 4) is the
    EOI/ICR/TPR MSRs and the VP assist page."""
    from proto.codes import HvPrivilege
    from hypervisor.apic import APIC_TIMER_HZ
    apic_only = Partition(1, privileges=int(HvPrivilege.AccessApicMsrs))
    vp = VirtualProcessor(0)
    assert msrs.rdmsr(apic_only, vp, HvMsr.HV_X64_MSR_APIC_FREQUENCY) == (X86Exception.GP, 0)
    assert msrs.rdmsr(apic_only, vp, HvMsr.HV_X64_MSR_TPR)[0] == X86Exception.NONE
    freq_only = Partition(2, privileges=int(HvPrivilege.AccessFrequencyMsrs))
    assert msrs.rdmsr(freq_only, vp, HvMsr.HV_X64_MSR_APIC_FREQUENCY) == (X86Exception.NONE, APIC_TIMER_HZ)
    assert msrs.rdmsr(freq_only, vp, HvMsr.HV_X64_MSR_TPR)[0] == X86Exception.GP
    assert msrs.wrmsr(freq_only, vp, HvMsr.HV_X64_MSR_APIC_FREQUENCY, 1) == X86Exception.GP  # read-only


def test_the_hypercall_msr_keeps_its_gpfn_with_enable_clear_while_the_guest_os_id_is_0():
    """TLFS "Establishing the Hypercall Interface": Enable cannot be set while the guest OS
    ID is 0; the rest of the write is kept (KVM drops the whole write)."""
    p = enlightened()
    msrs.wrmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL, 0xFF000 | 1)
    assert msrs.rdmsr(p, VirtualProcessor(0), HvMsr.HV_X64_MSR_HYPERCALL) == (X86Exception.NONE, 0xFF000)
