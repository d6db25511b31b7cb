"""Hyper-V names and numbers, from the TLFS, in one place.

Sources (see ../shared/reference/hyperv-facts.md): the Hypervisor Top-Level Functional
Specification (hypercall interface, feature discovery, virtual interrupts, inter-partition
communication), Linux ``include/hyperv/hvgdk_mini.h`` / ``hvhdk_mini.h`` and openvmm's
``hvdef``.  Everything else in hvstack uses these by name.  Values that Hyper-V has no public
number for are marked *hvstack extension* and live above 0x80000000 where the TLFS puts
implementation-specific codes.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class HypercallCode(enum.IntEnum):
    """TLFS hypercall call codes (bits 15:0 of the hypercall input value)."""

    HvCallSwitchVirtualAddressSpace = 0x0001
    HvCallFlushVirtualAddressSpace = 0x0002
    HvCallFlushVirtualAddressList = 0x0003
    HvCallNotifyLongSpinWait = 0x0008
    HvCallSendSyntheticClusterIpi = 0x000B
    HvCallFlushVirtualAddressSpaceEx = 0x0013
    HvCallFlushVirtualAddressListEx = 0x0014
    HvCallSendSyntheticClusterIpiEx = 0x0015
    HvCallCreatePartition = 0x0040
    HvCallInitializePartition = 0x0041
    HvCallFinalizePartition = 0x0042
    HvCallDeletePartition = 0x0043
    HvCallGetPartitionProperty = 0x0044
    HvCallSetPartitionProperty = 0x0045
    HvCallGetPartitionId = 0x0046
    HvCallDepositMemory = 0x0048
    HvCallWithdrawMemory = 0x0049
    HvCallMapGpaPages = 0x004B
    HvCallUnmapGpaPages = 0x004C
    HvCallInstallIntercept = 0x004D
    HvCallCreateVp = 0x004E
    HvCallDeleteVp = 0x004F
    HvCallGetVpRegisters = 0x0050
    HvCallSetVpRegisters = 0x0051
    HvCallTranslateVirtualAddress = 0x0052
    HvCallPostMessage = 0x005C
    HvCallSignalEvent = 0x005D
    HvCallRegisterInterceptResult = 0x0091
    HvCallAssertVirtualInterrupt = 0x0094
    HvCallCreatePort = 0x0095
    HvCallConnectPort = 0x0096
    HvCallStartVirtualProcessor = 0x0099
    HvCallSignalEventDirect = 0x00C0
    HvCallPostMessageDirect = 0x00C1


class HvStatus(enum.IntEnum):
    """HV_STATUS values (Linux hvgdk_mini.h, openvmm hvdef); bits 15:0 of the result."""

    HV_STATUS_SUCCESS = 0x0000
    HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002
    HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003
    HV_STATUS_INVALID_ALIGNMENT = 0x0004
    HV_STATUS_INVALID_PARAMETER = 0x0005
    HV_STATUS_ACCESS_DENIED = 0x0006
    HV_STATUS_INVALID_PARTITION_STATE = 0x0007
    HV_STATUS_OPERATION_DENIED = 0x0008
    HV_STATUS_UNKNOWN_PROPERTY = 0x0009
    HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE = 0x000A
    HV_STATUS_INSUFFICIENT_MEMORY = 0x000B
    HV_STATUS_INVALID_PARTITION_ID = 0x000D
    HV_STATUS_INVALID_VP_INDEX = 0x000E
    HV_STATUS_NOT_FOUND = 0x0010
    HV_STATUS_INVALID_PORT_ID = 0x0011
    HV_STATUS_INVALID_CONNECTION_ID = 0x0012
    HV_STATUS_INSUFFICIENT_BUFFERS = 0x0013
    HV_STATUS_INVALID_VP_STATE = 0x0015
    HV_STATUS_INVALID_SYNIC_STATE = 0x0018
    HV_STATUS_NO_RESOURCES = 0x001D
    HV_STATUS_INVALID_REGISTER_VALUE = 0x0050
    HV_STATUS_OPERATION_FAILED = 0x0071
    HV_STATUS_TIME_OUT = 0x0078


class HvMsr(enum.IntEnum):
    """Synthetic MSRs (TLFS, x64)."""

    HV_X64_MSR_GUEST_OS_ID = 0x40000000
    HV_X64_MSR_HYPERCALL = 0x40000001
    HV_X64_MSR_VP_INDEX = 0x40000002
    HV_X64_MSR_RESET = 0x40000003
    HV_X64_MSR_VP_RUNTIME = 0x40000010
    HV_X64_MSR_TIME_REF_COUNT = 0x40000020
    HV_X64_MSR_REFERENCE_TSC = 0x40000021
    HV_X64_MSR_TSC_FREQUENCY = 0x40000022
    HV_X64_MSR_APIC_FREQUENCY = 0x40000023
    HV_X64_MSR_EOI = 0x40000070
    HV_X64_MSR_ICR = 0x40000071
    HV_X64_MSR_TPR = 0x40000072
    HV_X64_MSR_VP_ASSIST_PAGE = 0x40000073
    HV_X64_MSR_SCONTROL = 0x40000080
    HV_X64_MSR_SVERSION = 0x40000081
    HV_X64_MSR_SIEFP = 0x40000082
    HV_X64_MSR_SIMP = 0x40000083
    HV_X64_MSR_EOM = 0x40000084
    HV_X64_MSR_GUEST_IDLE = 0x400000F0
    # SynIC SINTs and synthetic timers (issue 10)
    HV_X64_MSR_SINT0 = 0x40000090
    HV_X64_MSR_SINT1 = 0x40000091
    HV_X64_MSR_SINT2 = 0x40000092
    HV_X64_MSR_SINT3 = 0x40000093
    HV_X64_MSR_SINT4 = 0x40000094
    HV_X64_MSR_SINT5 = 0x40000095
    HV_X64_MSR_SINT6 = 0x40000096
    HV_X64_MSR_SINT7 = 0x40000097
    HV_X64_MSR_SINT8 = 0x40000098
    HV_X64_MSR_SINT9 = 0x40000099
    HV_X64_MSR_SINT10 = 0x4000009A
    HV_X64_MSR_SINT11 = 0x4000009B
    HV_X64_MSR_SINT12 = 0x4000009C
    HV_X64_MSR_SINT13 = 0x4000009D
    HV_X64_MSR_SINT14 = 0x4000009E
    HV_X64_MSR_SINT15 = 0x4000009F
    HV_X64_MSR_STIMER0_CONFIG = 0x400000B0
    HV_X64_MSR_STIMER0_COUNT = 0x400000B1
    HV_X64_MSR_STIMER1_CONFIG = 0x400000B2
    HV_X64_MSR_STIMER1_COUNT = 0x400000B3
    HV_X64_MSR_STIMER2_CONFIG = 0x400000B4
    HV_X64_MSR_STIMER2_COUNT = 0x400000B5
    HV_X64_MSR_STIMER3_CONFIG = 0x400000B6
    HV_X64_MSR_STIMER3_COUNT = 0x400000B7


class HvMessageType(enum.IntEnum):
    """HV_MESSAGE_TYPE values for intercept messages (TLFS datatypes, openvmm hvdef)."""

    HvMessageTypeNone = 0x00000000
    HvMessageTypeUnmappedGpa = 0x80000000
    HvMessageTypeGpaIntercept = 0x80000001
    HvMessageTypeTimerExpired = 0x80000010
    HvMessageTypeHypercallIntercept = 0x80000050
    HvMessageTypeX64IoPortIntercept = 0x80010000
    HvMessageTypeX64MsrIntercept = 0x80010001
    HvMessageTypeX64CpuidIntercept = 0x80010002
    HvMessageTypeExceptionIntercept = 0x80010003
    HvMessageTypeX64ApicEoi = 0x80010004
    HvMessageTypeX64Halt = 0x80010007


class HvInterceptType(enum.IntEnum):
    """HV_INTERCEPT_TYPE for HvCallInstallIntercept."""

    HvInterceptTypeX64IoPort = 0x00
    HvInterceptTypeX64Msr = 0x01
    HvInterceptTypeX64Cpuid = 0x02
    HvInterceptTypeException = 0x03
    HvInterceptTypeHypercall = 0x08
    HvInterceptTypeX64ApicEoi = 0x0E
    HvInterceptTypeX64IoPortRange = 0x11


class HvPartitionProperty(enum.IntEnum):
    """HV_PARTITION_PROPERTY_CODE values (Linux hvhdk_mini.h)."""

    HvPartitionPropertyPrivilegeFlags = 0x00010000
    HvPartitionPropertySyntheticProcFeatures = 0x00010001
    # Scheduling properties; reserve and cap in thousandths of a percent of an LP.
    HvPartitionPropertyCpuReserve = 0x00020001
    HvPartitionPropertyCpuCap = 0x00020002
    HvPartitionPropertyCpuWeight = 0x00020003
    # hvstack extension: CPUID 0x40000004 EAX, which Hyper-V derives from the VM's
    # configuration inside the root and has no public property code for.
    HvPartitionPropertyEnlightenmentRecommendations = 0x80000001
    # hvstack extension: CPUID 0x40000004 EBX, the long-spin-wait retry count.
    HvPartitionPropertySpinRetryCount = 0x80000002
    # hvstack extension: the size of the guest-physical space in 4 KiB pages, which sizes
    # the partition's SLAT table when it is initialized.
    HvPartitionPropertyGpaPageCount = 0x80000003


class HvRegisterName(enum.IntEnum):
    """HV_REGISTER_NAME values (Linux hvgdk_mini.h) of the VP registers this hypervisor keeps."""

    HvRegisterExplicitSuspend = 0x00000000
    HvRegisterInterceptSuspend = 0x00000001
    HvRegisterDispatchSuspend = 0x00000003
    HvX64RegisterRflags = 0x00020011
    HvX64RegisterCr3 = 0x00040002
    HvX64RegisterCr8 = 0x00040004
    HvX64RegisterApicBase = 0x00080003
    HvX64RegisterInitialApicId = 0x0008000C


class HvPartitionState(enum.Enum):
    """Partition life cycle (TLFS virtualization host): Created → … → Deleted."""

    CREATED = "created"
    INITIALIZED = "initialized"
    ACTIVE = "active"
    FINALIZED = "finalized"
    DELETED = "deleted"


class HvPrivilege(enum.IntFlag):
    """HV_PARTITION_PRIVILEGE_MASK (CPUID 0x40000003 EAX = low half, EBX = high half)."""

    AccessVpRunTimeMsr = 1 << 0
    AccessPartitionReferenceCounter = 1 << 1
    AccessSynicMsrs = 1 << 2
    AccessSyntheticTimerMsrs = 1 << 3
    AccessApicMsrs = 1 << 4
    AccessHypercallMsrs = 1 << 5
    AccessVpIndex = 1 << 6
    AccessResetMsr = 1 << 7
    AccessPartitionReferenceTsc = 1 << 9
    AccessGuestIdleMsr = 1 << 10
    AccessFrequencyMsrs = 1 << 11  # HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY
    CreatePartitions = 1 << 32
    AccessPartitionId = 1 << 33
    AccessMemoryPool = 1 << 34
    PostMessages = 1 << 36
    SignalEvents = 1 << 37
    CreatePort = 1 << 38
    ConnectPort = 1 << 39
    CpuManagement = 1 << 44


class HvRecommendation(enum.IntFlag):
    """CPUID 0x40000004 EAX: what the hypervisor recommends the guest use."""

    UseHypercallForAddressSpaceSwitch = 1 << 0
    UseHypercallForLocalFlush = 1 << 1
    UseHypercallForRemoteFlush = 1 << 2
    UseApicMsrs = 1 << 3
    UseRelaxedTiming = 1 << 5
    DeprecateAutoEoi = 1 << 9
    UseSyntheticClusterIpi = 1 << 10
    UseExProcessorMasks = 1 << 11


class CpuidLeaf(enum.IntEnum):
    """Hypervisor CPUID leaves (TLFS feature discovery)."""

    HvCpuidFunctionHvVendorAndMaxFunction = 0x40000000
    HvCpuidFunctionHvInterface = 0x40000001
    HvCpuidFunctionMsHvVersion = 0x40000002
    HvCpuidFunctionMsHvFeatures = 0x40000003
    HvCpuidFunctionMsHvEnlightenmentInformation = 0x40000004
    HvCpuidFunctionMsHvImplementationLimits = 0x40000005
    HvCpuidFunctionMsHvHardwareFeatures = 0x40000006


# "Microsoft Hv" in EBX, ECX, EDX of leaf 0x40000000, and "Hv#1" in EAX of 0x40000001.
HV_VENDOR_SIGNATURE = (0x7263694D, 0x666F736F, 0x76482074)
HV_INTERFACE_SIGNATURE = 0x31237648
# CPUID 0x40000004 EBX value meaning "never notify" the hypervisor of long spin waits.
HV_SPIN_RETRY_NEVER = 0xFFFFFFFF
# CPUID leaf 1 ECX bit 31: a hypervisor is present.
CPUID_1_ECX_HYPERVISOR_PRESENT = 1 << 31

# Privileges an enlightened child gets: only what this hypervisor implements (the hypercall
# page and its MSRs, VP_INDEX, the reference counter, the APIC MSRs and VP assist page).  A
# child without enlightenments gets 0.
HV_CHILD_ENLIGHTENED_PRIVILEGES = (
    HvPrivilege.AccessPartitionReferenceCounter
    | HvPrivilege.AccessApicMsrs
    | HvPrivilege.AccessHypercallMsrs
    | HvPrivilege.AccessVpIndex
    | HvPrivilege.AccessFrequencyMsrs
)
# The root partition's privileges: the child's plus partition management.
HV_ROOT_PRIVILEGES = (
    HV_CHILD_ENLIGHTENED_PRIVILEGES
    | HvPrivilege.CreatePartitions
    | HvPrivilege.AccessPartitionId
    | HvPrivilege.AccessMemoryPool
    | HvPrivilege.CpuManagement
)


class X86Exception(enum.IntEnum):
    """Exceptions the hypervisor injects into a guest instead of completing an instruction."""

    NONE = 0
    UD = 6  # #UD: hypercall with the hypercall page not enabled
    GP = 13  # #GP: a synthetic MSR the partition has no privilege for, or a bad value
    PF = 14  # #PF: a guest page walk found a non-present entry (raised in the VP)


# Hypercall input value (RCX) fields.
CALL_CODE_MASK = 0xFFFF
FAST_BIT = 1 << 16
VAR_HEADER_SHIFT, VAR_HEADER_MASK = 17, 0x3FF
REP_COUNT_SHIFT, REP_START_SHIFT, REP_MASK = 32, 48, 0xFFF
# RsvdZ: bits 31:27, 47:44 and 63:60.
RESERVED_MASK = (0x1F << 27) | (0xF << 44) | (0xF << 60)
# A fast call passes its input in RDX:R8; XMM fast input (CPUID 0x40000003 EDX bit 4) is
# not offered, so a fast call with more input than that is a #UD (TLFS "XMM Fast Hypercall
# Input").
FAST_INPUT_BYTES = 16


class HypercallInput(NamedTuple):
    """The hypercall input value (RCX), parsed once per hypercall.  A named tuple: built in
    C (a frozen dataclass's __init__ took 1.7 µs of every hypercall, this 0.5), immutable."""

    code: int
    fast: bool
    var_header_qwords: int
    rep_count: int
    rep_start: int
    reserved: int

    @classmethod
    def parse(cls, control: int) -> "HypercallInput":
        # tuple.__new__ rather than cls(): the named tuple's __new__ is Python code, a call
        # (~1.4k instructions) on every hypercall.
        return tuple.__new__(cls, (
            control & CALL_CODE_MASK,  # code
            bool(control & FAST_BIT),  # fast
            (control >> VAR_HEADER_SHIFT) & VAR_HEADER_MASK,  # var_header_qwords
            (control >> REP_COUNT_SHIFT) & REP_MASK,  # rep_count
            (control >> REP_START_SHIFT) & REP_MASK,  # rep_start
            control & RESERVED_MASK,  # reserved
        ))


def control_value(code: int, fast: bool = False, rep_count: int = 0, rep_start: int = 0,
                  var_header_qwords: int = 0) -> int:
    """The hypercall input value a guest puts in RCX."""
    return (code & CALL_CODE_MASK) | (FAST_BIT if fast else 0) \
        | ((var_header_qwords & VAR_HEADER_MASK) << VAR_HEADER_SHIFT) \
        | ((rep_count & REP_MASK) << REP_COUNT_SHIFT) | ((rep_start & REP_MASK) << REP_START_SHIFT)


def result_value(status: int, reps_completed: int = 0) -> int:
    return (status & 0xFFFF) | ((reps_completed & REP_MASK) << 32)


# -- SynIC and synthetic timers (issue 10) --------------------------------------------------

# CPUID 0x40000003 EDX bit 19: STIMERn_CONFIG DirectMode is available.
HV_STIMER_DIRECT_MODE_AVAILABLE = 1 << 19
# What the topology's SynIC enlightenments give a child (root/topology.py): the SynIC MSRs
# with PostMessage and SignalEvent (VMBus needs both); the synthetic timers; the reference
# TSC page.
HV_SYNIC_PRIVILEGES = HvPrivilege.AccessSynicMsrs | HvPrivilege.PostMessages | HvPrivilege.SignalEvents
HV_STIMER_PRIVILEGES = HvPrivilege.AccessSyntheticTimerMsrs
HV_TSC_PAGE_PRIVILEGES = HvPrivilege.AccessPartitionReferenceTsc


# hvstack's hypercall page (hypervisor/hypercall_page.py) exits by ``out HYPERCALL_PAGE_PORT,
# eax``: the port the real-CPU backends (partitions/cpu) take as the hypercall instruction.
HYPERCALL_PAGE_PORT = 0xE0
