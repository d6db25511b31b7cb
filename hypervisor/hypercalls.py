"""Hypercall dispatch: decode the TLFS hypercall input value, check it, run the handler.

Checks in the order that keeps state from leaking (TLFS: ACCESS_DENIED takes priority over
the other errors): unknown call code → INVALID_HYPERCALL_CODE; missing privilege →
ACCESS_DENIED; reserved bits, a variable header or rep count where the call takes none, a
rep start index not below the rep count, or a fast call whose input does not fit in
registers → INVALID_HYPERCALL_INPUT; a call this hypervisor does not implement →
INVALID_HYPERCALL_CODE; then the handler, which returns an HV_STATUS and output bytes.

The result value is the TLFS one: bits 15:0 the status, bits 43:32 the reps completed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from proto.codes import (
    FAST_INPUT_BYTES,
    HypercallCode as C,
    HypercallInput,
    HvPartitionProperty,
    HvPartitionState,
    HvPrivilege,
    HvStatus,
    result_value,
)

from hypervisor.registers import VpRegisters
from hypervisor.memory import MAX_GPA_PAGES, MemoryError_, MemoryManager
from hypervisor.scheduler import FULL
from hypervisor.tlb import Tlbs
from hypervisor.partitions import MAX_VPS_PER_PARTITION, ROOT_PARTITION_ID, Partition, PartitionTable, Vp

@dataclass
class Caller:
    """Who is calling: a child VP, or the root partition (``partition`` None)."""

    partition: Partition | None
    vp: Vp | None
    privileges: int


Result = tuple[int, bytes]  # (HV_STATUS, output block)
Handler = Callable[["Hypercalls", Caller, HypercallInput, bytes], Result]


@dataclass(frozen=True)
class CallSpec:
    privilege: int  # HvPrivilege bits the caller must hold (0: any partition)
    rep: bool = False
    handler: Handler | None = None  # None: known to the TLFS, not implemented here


_ROOT = HvPrivilege.CreatePartitions
# Every TLFS call code we know, with the privilege it needs; handlers are added below.
SPECS: dict[int, CallSpec] = {
    C.HvCallSwitchVirtualAddressSpace: CallSpec(0),
    C.HvCallFlushVirtualAddressSpace: CallSpec(0),
    C.HvCallFlushVirtualAddressList: CallSpec(0, rep=True),
    C.HvCallNotifyLongSpinWait: CallSpec(0),
    C.HvCallSendSyntheticClusterIpi: CallSpec(0),
    C.HvCallFlushVirtualAddressSpaceEx: CallSpec(0),
    C.HvCallFlushVirtualAddressListEx: CallSpec(0, rep=True),
    C.HvCallSendSyntheticClusterIpiEx: CallSpec(0),
    C.HvCallCreatePartition: CallSpec(_ROOT),
    C.HvCallInitializePartition: CallSpec(_ROOT),
    C.HvCallFinalizePartition: CallSpec(_ROOT),
    C.HvCallDeletePartition: CallSpec(_ROOT),
    C.HvCallGetPartitionProperty: CallSpec(_ROOT),
    C.HvCallSetPartitionProperty: CallSpec(_ROOT),
    C.HvCallGetPartitionId: CallSpec(HvPrivilege.AccessPartitionId),
    C.HvCallDepositMemory: CallSpec(HvPrivilege.AccessMemoryPool, rep=True),
    C.HvCallWithdrawMemory: CallSpec(HvPrivilege.AccessMemoryPool, rep=True),
    C.HvCallMapGpaPages: CallSpec(_ROOT, rep=True),
    C.HvCallUnmapGpaPages: CallSpec(_ROOT, rep=True),
    C.HvCallInstallIntercept: CallSpec(_ROOT),
    C.HvCallCreateVp: CallSpec(_ROOT),
    C.HvCallDeleteVp: CallSpec(_ROOT),
    C.HvCallGetVpRegisters: CallSpec(_ROOT, rep=True),
    C.HvCallSetVpRegisters: CallSpec(_ROOT, rep=True),
    C.HvCallTranslateVirtualAddress: CallSpec(0),
    C.HvCallPostMessage: CallSpec(HvPrivilege.PostMessages),
    C.HvCallSignalEvent: CallSpec(HvPrivilege.SignalEvents),
    C.HvCallRegisterInterceptResult: CallSpec(_ROOT),
    C.HvCallAssertVirtualInterrupt: CallSpec(_ROOT),
    C.HvCallCreatePort: CallSpec(HvPrivilege.CreatePort),
    C.HvCallConnectPort: CallSpec(HvPrivilege.ConnectPort),
    C.HvCallStartVirtualProcessor: CallSpec(_ROOT),
    C.HvCallSignalEventDirect: CallSpec(HvPrivilege.SignalEvents),
    C.HvCallPostMessageDirect: CallSpec(HvPrivilege.PostMessages),
}

_U64 = struct.Struct("<Q")
# HvCallSetPartitionProperty / GetPartitionProperty: PartitionId u64, PropertyCode u32,
# padding u32, PropertyValue u64 (set only).
_PROPERTY = struct.Struct("<QII")
# HvCallCreateVp: PartitionId u64, VpIndex u32 (then padding, proximity, flags).
_CREATE_VP = struct.Struct("<QI")
# HvCallMapGpaPages / UnmapGpaPages: TargetPartitionId u64, TargetGpaBase u64 (a page
# number), MapFlags u32, padding u32; then the rep list of source page numbers (map only).
_MAP_GPA = struct.Struct("<QQI4x")
# HvCallGetVpRegisters / SetVpRegisters: PartitionId u64, VpIndex u32, InputVtl u8, RsvdZ
# u8 + u16; then the names (u32 each) or the HV_REGISTER_ASSOCs: Name u32, Reserved u32 +
# u64, Value 128 bits.
_VP_REGISTERS = struct.Struct("<QIB3x")
_REGISTER_ASSOC = struct.Struct("<IIQQQ")
# HvCallNotifyLongSpinWait: SpinCount u32 (fast: in RDX).
_SPIN_COUNT = struct.Struct("<I")
# HvCallFlushVirtualAddressSpace / the header of FlushVirtualAddressList: AddressSpace u64
# (a CR3 value), Flags u64, ProcessorMask u64.
_FLUSH = struct.Struct("<QQQ")
HV_FLUSH_ALL_PROCESSORS = 1 << 0
HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES = 1 << 1
HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY = 1 << 2
HV_FLUSH_USE_EXTENDED_RANGE_FORMAT = 1 << 3
_FLUSH_FLAGS = (HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY
                | HV_FLUSH_USE_EXTENDED_RANGE_FORMAT)

S = HvStatus


class Hypercalls:
    """The dispatcher, bound to the partition table and memory it manages."""

    def __init__(self, table: PartitionTable, memory: MemoryManager, tlb: Tlbs | None = None,
                 registers: VpRegisters | None = None) -> None:
        self.table = table
        self.memory = memory
        self.tlb = tlb
        self.registers = registers or VpRegisters()
        self.counts: dict[int, int] = {}
        self.failures: dict[str, int] = {}

    def dispatch(self, caller: Caller, control: int, data: bytes) -> tuple[int, bytes]:
        """Returns (result value for RAX, output block)."""
        hc = HypercallInput.parse(control)
        self.counts[hc.code] = self.counts.get(hc.code, 0) + 1
        status, out, reps = self._run(caller, hc, data)
        if status != S.HV_STATUS_SUCCESS:
            name = S(status).name
            self.failures[name] = self.failures.get(name, 0) + 1
        return result_value(status, reps), out

    def _run(self, caller: Caller, hc: HypercallInput, data: bytes) -> tuple[int, bytes, int]:
        spec = SPECS.get(hc.code)
        if spec is None:
            return S.HV_STATUS_INVALID_HYPERCALL_CODE, b"", 0
        if spec.privilege and not caller.privileges & spec.privilege:
            return S.HV_STATUS_ACCESS_DENIED, b"", 0
        if hc.reserved or hc.var_header_qwords:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        if spec.rep:
            if hc.rep_start >= hc.rep_count:
                return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        elif hc.rep_count or hc.rep_start:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        if hc.fast and len(data) > FAST_INPUT_BYTES:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        handler = HANDLERS.get(hc.code)
        if handler is None:
            return S.HV_STATUS_INVALID_HYPERCALL_CODE, b"", 0
        status, out = handler(self, caller, hc, data)
        return status, out, (hc.rep_count - hc.rep_start if spec.rep and status == S.HV_STATUS_SUCCESS else 0)

    # -- handlers ---------------------------------------------------------------------

    def _partition(self, data: bytes, layout: struct.Struct = _U64):
        """Unpack ``layout`` (which starts with a PartitionId) and find the partition."""
        if len(data) < layout.size:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, None, ()
        fields = layout.unpack_from(data)
        part = self.table.get(fields[0])
        if part is None:
            return S.HV_STATUS_INVALID_PARTITION_ID, None, fields
        return S.HV_STATUS_SUCCESS, part, fields

    def create_partition(self, caller, hc, data) -> Result:
        # The TLFS input (flags, proximity, compatibility version, feature banks) selects
        # processor features this emulation does not have; it is accepted and not used.
        part = self.table.create()
        return S.HV_STATUS_SUCCESS, _U64.pack(part.id)

    def initialize_partition(self, caller, hc, data) -> Result:
        status, part, _ = self._partition(data)
        if part is None:
            return status, b""
        if part.state is not HvPartitionState.CREATED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        part.state = HvPartitionState.INITIALIZED
        if part.gpa_pages:
            self.memory.slat(part.id, part.gpa_pages)
        return S.HV_STATUS_SUCCESS, b""

    def finalize_partition(self, caller, hc, data) -> Result:
        status, part, _ = self._partition(data)
        if part is None:
            return status, b""
        part.state = HvPartitionState.FINALIZED
        return S.HV_STATUS_SUCCESS, b""

    # -- memory (TLFS host flow: deposit, map; unmap, withdraw) ---------------------------------

    def _rep_list(self, hc, data: bytes, header: int) -> list[int] | None:
        """The rep elements (u64 each) from the rep start index on, or None if the input
        is too short for the rep count."""
        need = header + 8 * hc.rep_count
        if len(data) < need:
            return None
        return list(struct.unpack_from(f"<{hc.rep_count - hc.rep_start}Q", data, header + 8 * hc.rep_start))

    def deposit_memory(self, caller, hc, data) -> Result:
        status, part, _ = self._partition(data)
        if part is None:
            return status, b""
        pages = self._rep_list(hc, data, 8)
        if pages is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        try:
            self.memory.deposit(part.id, pages)
        except MemoryError_:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def withdraw_memory(self, caller, hc, data) -> Result:
        status, part, _ = self._partition(data)
        if part is None:
            return status, b""
        freed = self.memory.withdraw(part.id, hc.rep_count - hc.rep_start)
        return S.HV_STATUS_SUCCESS, struct.pack(f"<{len(freed)}Q", *freed)

    def map_gpa_pages(self, caller, hc, data) -> Result:
        status, part, fields = self._partition(data, _MAP_GPA)
        if part is None:
            return status, b""
        if not part.gpa_pages:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        pages = self._rep_list(hc, data, _MAP_GPA.size)
        if pages is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        try:
            self.memory.map(part.id, fields[1] + hc.rep_start, pages, part.gpa_pages)
        except MemoryError_:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def unmap_gpa_pages(self, caller, hc, data) -> Result:
        status, part, fields = self._partition(data, _MAP_GPA)
        if part is None:
            return status, b""
        try:
            self.memory.unmap(part.id, fields[1] + hc.rep_start, hc.rep_count - hc.rep_start)
        except MemoryError_:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def delete_partition(self, caller, hc, data) -> Result:
        status, part, _ = self._partition(data)
        if part is None:
            return status, b""
        if part.state is not HvPartitionState.FINALIZED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        self.memory.release(part.id)
        self.table.delete(part.id)
        return S.HV_STATUS_SUCCESS, b""

    def set_partition_property(self, caller, hc, data) -> Result:
        status, part, fields = self._partition(data, _PROPERTY)
        if part is None:
            return status, b""
        if len(data) < _PROPERTY.size + 8:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        (value,) = _U64.unpack_from(data, _PROPERTY.size)
        code = fields[1]
        scheduling = code in (HvPartitionProperty.HvPartitionPropertyCpuReserve,
                              HvPartitionProperty.HvPartitionPropertyCpuCap,
                              HvPartitionProperty.HvPartitionPropertyCpuWeight)
        if part.state is not HvPartitionState.CREATED and not scheduling:
            # Privileges and enlightenments are fixed once the partition is initialized;
            # CPU controls may change while it runs, as on Hyper-V.
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        if code == HvPartitionProperty.HvPartitionPropertyPrivilegeFlags:
            part.privileges = value
        elif code == HvPartitionProperty.HvPartitionPropertyEnlightenmentRecommendations:
            if value >> 32:
                return S.HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE, b""
            part.recommendations = value
        elif code == HvPartitionProperty.HvPartitionPropertySpinRetryCount:
            if value >> 32:
                return S.HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE, b""
            part.spin_retry = value
        elif code in (HvPartitionProperty.HvPartitionPropertyCpuReserve, HvPartitionProperty.HvPartitionPropertyCpuCap):
            if value > FULL:
                return S.HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE, b""
            if code == HvPartitionProperty.HvPartitionPropertyCpuReserve:
                part.cpu.reserve = value
            else:
                part.cpu.limit = value
        elif code == HvPartitionProperty.HvPartitionPropertyGpaPageCount:
            if not 0 < value <= MAX_GPA_PAGES:
                return S.HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE, b""
            part.gpa_pages = value
        elif code == HvPartitionProperty.HvPartitionPropertyCpuWeight:
            if not 1 <= value <= 10000:
                return S.HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE, b""
            part.cpu.weight = value
        else:
            return S.HV_STATUS_UNKNOWN_PROPERTY, b""
        return S.HV_STATUS_SUCCESS, b""

    def get_partition_property(self, caller, hc, data) -> Result:
        status, part, fields = self._partition(data, _PROPERTY)
        if part is None:
            return status, b""
        values = {
            HvPartitionProperty.HvPartitionPropertyPrivilegeFlags: part.privileges,
            HvPartitionProperty.HvPartitionPropertyEnlightenmentRecommendations: part.recommendations,
            HvPartitionProperty.HvPartitionPropertySpinRetryCount: part.spin_retry,
            HvPartitionProperty.HvPartitionPropertyCpuReserve: part.cpu.reserve,
            HvPartitionProperty.HvPartitionPropertyCpuCap: part.cpu.limit,
            HvPartitionProperty.HvPartitionPropertyCpuWeight: part.cpu.weight,
            HvPartitionProperty.HvPartitionPropertyGpaPageCount: part.gpa_pages,
        }
        if fields[1] not in values:
            return S.HV_STATUS_UNKNOWN_PROPERTY, b""
        return S.HV_STATUS_SUCCESS, _U64.pack(values[fields[1]])

    def get_partition_id(self, caller, hc, data) -> Result:
        pid = caller.partition.id if caller.partition else ROOT_PARTITION_ID
        return S.HV_STATUS_SUCCESS, _U64.pack(pid)

    def create_vp(self, caller, hc, data) -> Result:
        status, part, fields = self._partition(data, _CREATE_VP)
        if part is None:
            return status, b""
        index = fields[1]
        if part.state is not HvPartitionState.INITIALIZED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        # VPs are created in order, as the root does; a gap or a repeat is a bad index.
        if index != len(part.vps) or index >= MAX_VPS_PER_PARTITION:
            return S.HV_STATUS_INVALID_VP_INDEX, b""
        part.vps.append(Vp(index))
        return S.HV_STATUS_SUCCESS, b""

    # -- VP registers -----------------------------------------------------------------------

    def _vp(self, data: bytes):
        """The VP named by a Get/SetVpRegisters header, or the status saying why not."""
        if len(data) < _VP_REGISTERS.size:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, None, None
        pid, index, vtl = _VP_REGISTERS.unpack_from(data)
        part = self.table.get(pid)
        if part is None:
            return S.HV_STATUS_INVALID_PARTITION_ID, None, None
        if index >= len(part.vps):
            return S.HV_STATUS_INVALID_VP_INDEX, None, None
        if vtl:  # only VTL 0 exists here
            return S.HV_STATUS_INVALID_PARAMETER, None, None
        return S.HV_STATUS_SUCCESS, part, part.vps[index]

    def get_vp_registers(self, caller, hc, data) -> Result:
        status, part, vp = self._vp(data)
        if vp is None:
            return status, b""
        end = _VP_REGISTERS.size + 4 * hc.rep_count
        if len(data) < end:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        names = struct.unpack_from(f"<{hc.rep_count - hc.rep_start}I", data, _VP_REGISTERS.size + 4 * hc.rep_start)
        out = bytearray()
        for name in names:
            value = self.registers.read(part, vp, name)
            if value is None:
                return S.HV_STATUS_INVALID_PARAMETER, bytes(out)
            out += value.to_bytes(16, "little")
        return S.HV_STATUS_SUCCESS, bytes(out)

    def set_vp_registers(self, caller, hc, data) -> Result:
        status, part, vp = self._vp(data)
        if vp is None:
            return status, b""
        if len(data) < _VP_REGISTERS.size + _REGISTER_ASSOC.size * hc.rep_count:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        for i in range(hc.rep_start, hc.rep_count):
            name, _, _, lo, hi = _REGISTER_ASSOC.unpack_from(data, _VP_REGISTERS.size + _REGISTER_ASSOC.size * i)
            if not self.registers.write(part, vp, name, lo | hi << 64):
                return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def notify_long_spin_wait(self, caller, hc, data) -> Result:
        # TLFS: advisory, always succeeds.  Without a scheduler there is nobody to yield to;
        # the call is still a full hypercall round trip, which is what is measured.
        if len(data) < _SPIN_COUNT.size:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        return S.HV_STATUS_SUCCESS, b""

    # -- address spaces and TLB flushes (TLFS "virtual MMU" calls) ------------------------

    def switch_virtual_address_space(self, caller, hc, data) -> Result:
        """The new CR3 (fast: in RDX).  The TLB is tagged by address space: no flush."""
        if len(data) < 8:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        if caller.vp is not None:
            caller.vp.cr3 = _U64.unpack_from(data)[0]
        return S.HV_STATUS_SUCCESS, b""

    def _flush_header(self, data: bytes):
        if len(data) < _FLUSH.size:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, None
        space, flags, _mask = _FLUSH.unpack_from(data)
        if flags & ~_FLUSH_FLAGS:
            return S.HV_STATUS_INVALID_PARAMETER, None
        # The processor mask names VPs, but a VP may have run on any LP, so the caller's
        # entries are flushed on every LP whatever the mask says.
        return S.HV_STATUS_SUCCESS, None if flags & HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES else space

    def flush_virtual_address_space(self, caller, hc, data) -> Result:
        """Only the caller's entries: of one address space, or of all of them."""
        status, space = self._flush_header(data)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        if self.tlb is not None and caller.partition is not None:
            self.tlb.flush_partition(caller.partition.id, space, kind="address_space")
        return S.HV_STATUS_SUCCESS, b""

    def flush_virtual_address_list(self, caller, hc, data) -> Result:
        """Rep elements: GVAs whose bits 11:0 count additional pages to flush."""
        status, space = self._flush_header(data)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        gvas = self._rep_list(hc, data, _FLUSH.size)
        if gvas is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        if self.tlb is not None and caller.partition is not None:
            ranges = [(gva >> 12, (gva & 0xFFF) + 1) for gva in gvas]
            self.tlb.flush_partition(caller.partition.id, space, ranges, kind="address_list")
        return S.HV_STATUS_SUCCESS, b""


HANDLERS: dict[int, Handler] = {
    C.HvCallSwitchVirtualAddressSpace: Hypercalls.switch_virtual_address_space,
    C.HvCallFlushVirtualAddressSpace: Hypercalls.flush_virtual_address_space,
    C.HvCallFlushVirtualAddressList: Hypercalls.flush_virtual_address_list,
    C.HvCallCreatePartition: Hypercalls.create_partition,
    C.HvCallInitializePartition: Hypercalls.initialize_partition,
    C.HvCallFinalizePartition: Hypercalls.finalize_partition,
    C.HvCallDeletePartition: Hypercalls.delete_partition,
    C.HvCallSetPartitionProperty: Hypercalls.set_partition_property,
    C.HvCallGetPartitionProperty: Hypercalls.get_partition_property,
    C.HvCallGetPartitionId: Hypercalls.get_partition_id,
    C.HvCallCreateVp: Hypercalls.create_vp,
    C.HvCallNotifyLongSpinWait: Hypercalls.notify_long_spin_wait,
    C.HvCallGetVpRegisters: Hypercalls.get_vp_registers,
    C.HvCallSetVpRegisters: Hypercalls.set_vp_registers,
    C.HvCallDepositMemory: Hypercalls.deposit_memory,
    C.HvCallWithdrawMemory: Hypercalls.withdraw_memory,
    C.HvCallMapGpaPages: Hypercalls.map_gpa_pages,
    C.HvCallUnmapGpaPages: Hypercalls.unmap_gpa_pages,
}
