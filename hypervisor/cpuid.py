"""CPUID as the hypervisor answers it: a small virtual CPU plus the Hyper-V leaves.

The hypervisor leaves (TLFS feature discovery) are 0x40000000–0x40000006.  Every partition
sees "Microsoft Hv" and "Hv#1"; what it may use is in its privilege mask (0x40000003) and
what it should use in the recommendations (0x40000004), so a partition without
enlightenments sees a privilege mask of 0 and "never notify" as its spin-retry count.
"""

from __future__ import annotations

from proto.codes import (
    CPUID_1_ECX_HYPERVISOR_PRESENT,
    HV_INTERFACE_SIGNATURE,
    HV_VENDOR_SIGNATURE,
    HV_STIMER_DIRECT_MODE_AVAILABLE,
    CpuidLeaf,
    HvPrivilege,
)

from hypervisor.partitions import MAX_VPS_PER_PARTITION, Partition

# The virtual CPU: "GenuineIntel", family 6.  Fixed rather than copied from the host, so a
# run reads the same everywhere.
VENDOR_GENUINE_INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # EBX, ECX, EDX
MAX_BASIC_LEAF = 0x1
MAX_EXTENDED_LEAF = 0x80000000
FAMILY_MODEL_STEPPING = 0x000906EA
# Leaf 1 EDX: FPU, TSC, MSR, CX8, APIC, SEP, CMOV, PAT, FXSR, SSE, SSE2.
LEAF1_EDX = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 15) \
    | (1 << 16) | (1 << 24) | (1 << 25) | (1 << 26)
# Leaf 1 ECX: SSE3, SSE4.1, SSE4.2, x2APIC, POPCNT, and "hypervisor present".
LEAF1_ECX = (1 << 0) | (1 << 19) | (1 << 20) | (1 << 21) | (1 << 23) | CPUID_1_ECX_HYPERVISOR_PRESENT

# 0x40000002: the hypervisor version reported (build 26100, version 10.0).
HV_BUILD, HV_MAJOR, HV_MINOR = 26100, 10, 0
MAX_LOGICAL_PROCESSORS = 1024


# The leaves as plain ints: a comparison with an enum member's attribute cost ~600
# instructions (the class, then the member), a global's ~100 (cachegrind).
_VENDOR_AND_MAX = int(CpuidLeaf.HvCpuidFunctionHvVendorAndMaxFunction)
_INTERFACE = int(CpuidLeaf.HvCpuidFunctionHvInterface)
_VERSION = int(CpuidLeaf.HvCpuidFunctionMsHvVersion)
_FEATURES = int(CpuidLeaf.HvCpuidFunctionMsHvFeatures)
_ENLIGHTENMENT_INFO = int(CpuidLeaf.HvCpuidFunctionMsHvEnlightenmentInformation)
_IMPLEMENTATION_LIMITS = int(CpuidLeaf.HvCpuidFunctionMsHvImplementationLimits)
_HARDWARE_FEATURES = int(CpuidLeaf.HvCpuidFunctionMsHvHardwareFeatures)


def cpuid(part: Partition, vp_index: int, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for ``leaf``/``subleaf`` on VP ``vp_index`` of ``part``."""
    if leaf == 0:
        return (MAX_BASIC_LEAF, *VENDOR_GENUINE_INTEL)
    if leaf == 1:
        # EBX[31:24] is the initial APIC ID; EBX[23:16] logical processors per package.
        # Both fields are 8 bits: beyond 255 VPs an x2APIC ID (leaf 0xB) would be needed.
        ebx = ((vp_index & 0xFF) << 24) | (min(0xFF, max(1, len(part.vps))) << 16) | (8 << 8)
        return (FAMILY_MODEL_STEPPING, ebx, LEAF1_ECX, LEAF1_EDX)
    if leaf == _VENDOR_AND_MAX:
        return (CpuidLeaf.HvCpuidFunctionMsHvHardwareFeatures, *HV_VENDOR_SIGNATURE)
    if leaf == _INTERFACE:
        return (HV_INTERFACE_SIGNATURE, 0, 0, 0)
    if leaf == _VERSION:
        return (HV_BUILD, (HV_MAJOR << 16) | HV_MINOR, 0, 0)
    if leaf == _FEATURES:
        mask = part.privileges
        # EDX: feature bits; direct-mode synthetic timers (bit 19) come with the timers.
        edx = HV_STIMER_DIRECT_MODE_AVAILABLE if mask & HvPrivilege.AccessSyntheticTimerMsrs else 0
        return (mask & 0xFFFFFFFF, mask >> 32, 0, edx)
    if leaf == _ENLIGHTENMENT_INFO:
        return (part.recommendations, part.spin_retry, 0, 0)
    if leaf == _IMPLEMENTATION_LIMITS:
        return (MAX_VPS_PER_PARTITION, MAX_LOGICAL_PROCESSORS, 0, 0)
    if leaf == _HARDWARE_FEATURES:
        # hvstack uses no hardware assists (no APIC overlay, MSR bitmaps or SLAT): 0.
        return (0, 0, 0, 0)
    if leaf == MAX_EXTENDED_LEAF:
        return (MAX_EXTENDED_LEAF, 0, 0, 0)
    # Leaves past the maximum read as zeros here (real Intel parts repeat the highest
    # basic leaf; zeros are what a guest treats as "not supported" either way).
    return (0, 0, 0, 0)
