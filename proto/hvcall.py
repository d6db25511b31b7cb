"""Hypercall input and output blocks as the TLFS lays them out, named once.

The hypervisor unpacks them (``hypervisor/hypercalls.py``), the root packs them to build
partitions (``root/client.py``) and the guest packs them for its enlightened calls
(``partitions/workloads.py``).  Names follow the TLFS and Linux ``hvhdk.h`` /
``hvgdk_mini.h`` (``HV_INPUT_CREATE_VP`` is ``struct hv_input_create_vp``); every block is
little-endian and packed, 8-byte aligned as the TLFS requires of parameter blocks.

A rep call's fixed block (its *header*) is followed by its rep list: one element per rep,
of the element layout named beside it (:func:`pack_rep`, :func:`unpack_rep`).
"""

from __future__ import annotations

import struct
from struct import Struct

# -- partitions (TLFS virtualization host: create, set properties, initialize, … delete) ------

# HvCallCreatePartition: Flags u64, ProximityDomainInfo u64, CompatibilityVersion u32,
# padding u32, then the creation properties — DisabledProcessorFeatures (two u64 banks),
# DisabledProcessorXsaveFeatures u64 — and IsolationProperties u64.  56 bytes.
HV_INPUT_CREATE_PARTITION = Struct("<QQI4xQQQQ")
HV_OUTPUT_CREATE_PARTITION = Struct("<Q")  # PartitionId
# HvCallInitializePartition / FinalizePartition / DeletePartition: PartitionId u64.
HV_INPUT_INITIALIZE_PARTITION = Struct("<Q")
HV_INPUT_FINALIZE_PARTITION = HV_INPUT_INITIALIZE_PARTITION
HV_INPUT_DELETE_PARTITION = HV_INPUT_INITIALIZE_PARTITION
# HvCallGetPartitionProperty: PartitionId u64, PropertyCode u32, padding u32.
HV_INPUT_GET_PARTITION_PROPERTY = Struct("<QI4x")
HV_OUTPUT_GET_PARTITION_PROPERTY = Struct("<Q")  # PropertyValue
# HvCallSetPartitionProperty: the same, then PropertyValue u64.
HV_INPUT_SET_PARTITION_PROPERTY = Struct("<QI4xQ")
HV_OUTPUT_GET_PARTITION_ID = Struct("<Q")  # PartitionId

# -- memory (TLFS host flow: deposit, map; unmap, withdraw) --------------------------------

# HvCallDepositMemory: PartitionId u64; rep list: the host pages given (HV_GPA_PAGE_NUMBER).
HV_INPUT_DEPOSIT_MEMORY = Struct("<Q")
# HvCallWithdrawMemory: PartitionId u64, ProximityDomainInfo u64; the output is the rep
# list of the pages given back (HV_GPA_PAGE_NUMBER).
HV_INPUT_WITHDRAW_MEMORY = Struct("<QQ")
# HvCallMapGpaPages: TargetPartitionId u64, TargetGpaBase u64 (a page number), MapFlags u32,
# padding u32; rep list: the source (host) pages, HV_GPA_PAGE_NUMBER each.
HV_INPUT_MAP_GPA_PAGES = Struct("<QQI4x")
# HvCallUnmapGpaPages: TargetPartitionId u64, TargetGpaBase u64, UnmapFlags u32, padding
# u32; the rep count is the number of pages.
HV_INPUT_UNMAP_GPA_PAGES = Struct("<QQI4x")
HV_GPA_PAGE_NUMBER = Struct("<Q")  # a rep element: a page number

# -- virtual processors ------------------------------------------------------------------

# HvCallCreateVp: PartitionId u64, VpIndex u32, padding u32, ProximityDomainInfo u64,
# Flags u64.
HV_INPUT_CREATE_VP = Struct("<QI4xQQ")
# HvCallGetVpRegisters / SetVpRegisters: PartitionId u64, VpIndex u32, InputVtl u8,
# RsvdZ u8 + u16; then the rep list — register names (Get) or HV_REGISTER_ASSOCs (Set).
HV_INPUT_GET_VP_REGISTERS = Struct("<QIB3x")
HV_INPUT_SET_VP_REGISTERS = HV_INPUT_GET_VP_REGISTERS
HV_REGISTER_NAME = Struct("<I")  # a GetVpRegisters rep element
# HV_REGISTER_ASSOC, a SetVpRegisters rep element: Name u32, Reserved u32 + u64, then the
# 128-bit value as its low and high halves.
HV_REGISTER_ASSOC = Struct("<I4x8xQQ")
HV_REGISTER_VALUE = Struct("<QQ")  # a GetVpRegisters output element: low, high

# -- address spaces and TLB flushes (TLFS virtual MMU) --------------------------------------

# HvCallSwitchVirtualAddressSpace: AddressSpace u64 (the new CR3; fast: in RDX).
HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE = Struct("<Q")
# HvCallFlushVirtualAddressSpace: AddressSpace u64 (a CR3 value), Flags u64,
# ProcessorMask u64 (bit n = VP n).  HvCallFlushVirtualAddressList has the same header,
# then its rep list of HV_GVAs.
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE = Struct("<QQQ")
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE
HV_GVA = Struct("<Q")  # a rep element: a page's GVA; bits 11:0 count additional pages
HV_FLUSH_ALL_PROCESSORS = 1 << 0
HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES = 1 << 1
HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY = 1 << 2
HV_FLUSH_USE_EXTENDED_RANGE_FORMAT = 1 << 3

# -- sparse VP sets and the Ex calls (TLFS "HV_VP_SET", "Virtual Processor Set") ----------

# HV_VP_SET: Format u64, ValidBanksMask u64, then BankContents u64 for each bank whose bit
# is set in ValidBanksMask, lowest first (bank n holds VPs 64n..64n+63).  The bank contents
# are the call's variable header: the input value's variable header size counts them.
HV_VP_SET_HEADER = Struct("<QQ")
HV_GENERIC_SET_SPARSE_4K = 0
HV_GENERIC_SET_ALL = 1
HV_VP_SET_BANKS = 64  # ValidBanksMask's bits: VP indices 0..4095
# HvCallFlushVirtualAddressSpaceEx: AddressSpace u64, Flags u64, ProcessorSet HV_VP_SET.
# HvCallFlushVirtualAddressListEx has the same header, then (after the banks) its rep list
# of HV_GVAs.
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX = Struct("<QQQQ")
HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX
# HvCallSendSyntheticClusterIpi: Vector u32, TargetVtl u8, Reserved u8[3], ProcessorMask u64
# (bit n = VP n; a fast call: in RDX and R8).
HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI = Struct("<IB3xQ")
# HvCallSendSyntheticClusterIpiEx: Vector u32, TargetVtl u8, Reserved u8[3], ProcessorSet
# HV_VP_SET.
HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX = Struct("<IB3xQQ")

# -- scheduling hints ---------------------------------------------------------------------

# HvCallNotifyLongSpinWait: SpinCount u32 (a fast call: in RDX).
HV_INPUT_NOTIFY_LONG_SPIN_WAIT = Struct("<I")


def pack_rep(element: Struct, values) -> bytes:
    """A rep list: ``values`` (single-field elements) one after another."""
    return struct.pack(f"<{len(values)}{element.format[-1]}", *values)


def unpack_rep(element: Struct, data: bytes, offset: int, count: int) -> list:
    """``count`` single-field elements of a rep list, from ``offset`` on."""
    return list(struct.unpack_from(f"<{count}{element.format[-1]}", data, offset))


__all__ = [
    "HV_INPUT_CREATE_PARTITION",
    "HV_OUTPUT_CREATE_PARTITION",
    "HV_INPUT_INITIALIZE_PARTITION",
    "HV_INPUT_FINALIZE_PARTITION",
    "HV_INPUT_DELETE_PARTITION",
    "HV_INPUT_GET_PARTITION_PROPERTY",
    "HV_OUTPUT_GET_PARTITION_PROPERTY",
    "HV_INPUT_SET_PARTITION_PROPERTY",
    "HV_OUTPUT_GET_PARTITION_ID",
    "HV_INPUT_DEPOSIT_MEMORY",
    "HV_INPUT_WITHDRAW_MEMORY",
    "HV_INPUT_MAP_GPA_PAGES",
    "HV_INPUT_UNMAP_GPA_PAGES",
    "HV_GPA_PAGE_NUMBER",
    "HV_INPUT_CREATE_VP",
    "HV_INPUT_GET_VP_REGISTERS",
    "HV_INPUT_SET_VP_REGISTERS",
    "HV_REGISTER_NAME",
    "HV_REGISTER_ASSOC",
    "HV_REGISTER_VALUE",
    "HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST",
    "HV_GVA",
    "HV_FLUSH_ALL_PROCESSORS",
    "HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES",
    "HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY",
    "HV_FLUSH_USE_EXTENDED_RANGE_FORMAT",
    "HV_INPUT_NOTIFY_LONG_SPIN_WAIT",
    "HV_VP_SET_HEADER",
    "HV_GENERIC_SET_SPARSE_4K",
    "HV_GENERIC_SET_ALL",
    "HV_VP_SET_BANKS",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX",
    "HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX",
    "HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI",
    "HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX",
    "pack_rep",
    "unpack_rep",
]


# -- SynIC (TLFS inter-partition communication) -------------------------------------------

# HvCallPostMessage: ConnectionId u32, RsvdZ u32, MessageType u32, PayloadSize u32, then
# Message[240] (Linux struct hv_input_post_message, 256 bytes in all).
HV_INPUT_POST_MESSAGE = Struct("<IIII")
# HvCallSignalEvent (memory or fast, RDX): ConnectionId u32, FlagNumber u16, RsvdZ u16.
HV_INPUT_SIGNAL_EVENT = Struct("<IHH")
