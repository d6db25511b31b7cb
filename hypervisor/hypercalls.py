"""Hypercall dispatch: decode the TLFS hypercall input value, check it, run the handler.

One table, :data:`SPECS`, says for every call code what the call needs (privilege), takes
(rep or simple, its fixed input block from :mod:`proto.hvcall`) and which handler runs it,
as openvmm's hv1_hypercall does; the dispatcher reads nothing else.

Checks in one fixed order, which the TLFS leaves open except that ACCESS_DENIED takes
priority over the other errors so that state does not leak ("Hypercall Interface" ›
"Hypercall Status Code"): a fast call with more input than RDX:R8 hold where XMM fast input
is not offered → #UD, an instruction fault before any status ("XMM Fast Hypercall Input":
"any attempt to use this interface when the hypervisor does not indicate availability will
result in a #UD fault"; :meth:`Hypercalls.fault`, which the intercept checks first);
unknown call code → INVALID_HYPERCALL_CODE; missing privilege →
ACCESS_DENIED; reserved bits, a variable header or rep count where the call takes none, a
rep start index not below the rep count, or a fast call whose input does not fit in
registers → INVALID_HYPERCALL_INPUT; a call this hypervisor does not implement →
INVALID_HYPERCALL_CODE; an input shorter than the call's fixed block →
INVALID_HYPERCALL_INPUT; a call on a partition (``CallSpec.partition``) naming one that does
not exist → INVALID_PARTITION_ID; then the handler, which gets the block unpacked (the
partition resolved in place of its id) and returns an HV_STATUS and output bytes.

The result value is the TLFS one: bits 15:0 the status, bits 43:32 the reps completed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from proto.codes import (
    FAST_BIT,
    FAST_INPUT_BYTES,
    HypercallCode as C,
    HypercallInput,
    HvPartitionProperty,
    HvPartitionState,
    HvPrivilege,
    HvStatus,
    result_value,
    X86Exception,
)

from proto.hvcall import (
    HV_GPA_PAGE_NUMBER,
    HV_INPUT_CREATE_PARTITION,
    HV_INPUT_CREATE_VP,
    HV_INPUT_DELETE_PARTITION,
    HV_INPUT_DEPOSIT_MEMORY,
    HV_INPUT_FINALIZE_PARTITION,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX,
    HV_INPUT_GET_PARTITION_PROPERTY,
    HV_INPUT_GET_VP_REGISTERS,
    HV_INPUT_INITIALIZE_PARTITION,
    HV_INPUT_MAP_GPA_PAGES,
    HV_INPUT_NOTIFY_LONG_SPIN_WAIT,
    HV_INPUT_POST_MESSAGE,
    HV_INPUT_SIGNAL_EVENT,
    HV_INPUT_SET_PARTITION_PROPERTY,
    HV_INPUT_SET_VP_REGISTERS,
    HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE,
    HV_INPUT_UNMAP_GPA_PAGES,
    HV_INPUT_WITHDRAW_MEMORY,
    HV_OUTPUT_CREATE_PARTITION,
    HV_OUTPUT_GET_PARTITION_ID,
    HV_OUTPUT_GET_PARTITION_PROPERTY,
    HV_REGISTER_ASSOC,
    HV_REGISTER_NAME,
    HV_REGISTER_VALUE,
    pack_rep,
    unpack_rep,
)

from hypervisor.registers import VpRegisters
from hypervisor.synic_ports import hv_post_message, hv_signal_event
from hypervisor.flush_ipi_calls import FlushAndIpiCalls
from hypervisor.memory import MAX_GPA_PAGES, MemoryRefused, MemoryManager
from hypervisor.scheduler import FULL
from hypervisor.tlb import Tlbs
from hypervisor.partitions import MAX_VPS_PER_PARTITION, ROOT_PARTITION_ID, Partition, PartitionTable, VirtualProcessor

@dataclass(slots=True)
class Caller:
    """Who is calling: a child VP, or the root partition (``partition`` None)."""

    partition: Partition | None
    vp: VirtualProcessor | None
    privileges: int


class VpCaller:
    """A child VP as a caller (what :class:`Caller` says), made once per VP
    (``VirtualProcessor.caller``) rather than per hypercall (a Caller's construction was
    ~2.5k instructions of every call): its privileges are read from its partition when
    asked, so that they are never stale."""

    __slots__ = ("partition", "vp")

    def __init__(self, partition: Partition, vp: VirtualProcessor) -> None:
        self.partition = partition
        self.vp = vp

    @property
    def privileges(self) -> int:
        return self.partition.privileges


Result = tuple[int, bytes]  # (HV_STATUS, output block)
# A call's handler: (dispatcher, caller, input value, its fixed input block unpacked by the
# call's layout, the whole input) → (HV_STATUS, output block).
Handler = Callable[["Hypercalls", Caller, HypercallInput, tuple, bytes], Result]


class CallSpec:
    """One hypercall, as the dispatcher runs it.

    ``privilege``: the HvPrivilege bits the caller must hold (0: any partition).  ``rep``:
    a rep call.  ``layout``: the call's fixed input block (:mod:`proto.hvcall`), which the
    dispatcher checks is there and unpacks for the handler (a rep call's elements follow
    it).  ``required``: how much of the block must be present, when the call reads only its
    leading fields before anything else (the rest then reads as zero); by default all of
    it.  ``handler``: None for a call the TLFS defines and this hypervisor lacks.
    ``partition``: the block's first field is a partition id, which the dispatcher resolves
    once (INVALID_PARTITION_ID if there is none) and hands over as the :class:`Partition`.
    ``var_header``: the call takes a variable header (an HV_VP_SET's banks), which the
    handler reads after the fixed block."""

    __slots__ = ("privilege", "rep", "layout", "required", "handler", "partition", "var_header")

    def __init__(self, privilege: int, handler: Handler | None = None, *, rep: bool = False,
                 layout: struct.Struct | None = None, required: int | None = None,
                 partition: bool = False, var_header: bool = False) -> None:
        self.privilege = privilege
        self.partition = partition
        self.var_header = var_header
        self.rep = rep
        self.layout = layout
        self.required = (layout.size if layout is not None else 0) if required is None else required
        self.handler = handler


_ROOT = HvPrivilege.CreatePartitions

S = HvStatus
_SUCCESS = S.HV_STATUS_SUCCESS


class Hypercalls(FlushAndIpiCalls):
    """The dispatcher, bound to the partition table and memory it manages."""

    def __init__(self, table: PartitionTable, memory: MemoryManager, tlb: Tlbs | None = None,
                 registers: VpRegisters | None = None, wake=None) -> None:
        self.table = table
        self.wake = wake  # Dispatcher.wake: end a VP's HLT for an IPI (set by the service)
        self.memory = memory
        self.tlb = tlb
        self.registers = registers or VpRegisters()
        self.counts: dict[int, int] = {}
        self.failures: dict[str, int] = {}
        self.posted = None  # hypervisor.posted.PostedDescriptors (set by the service)
        self.synic_ports = None  # hypervisor.synic_ports.SynicPorts: PostMessage and SignalEvent

    def dispatch(self, caller: Caller, control: int, data: bytes) -> tuple[int, bytes]:
        """Returns (result value for RAX, output block)."""
        hc = HypercallInput.parse(control)
        code = hc.code
        counts = self.counts
        counts[code] = counts.get(code, 0) + 1
        status, out, reps = self._run(caller, hc, data)
        if status:  # (not HV_STATUS_SUCCESS, 0)
            name = S(status).name
            self.failures[name] = self.failures.get(name, 0) + 1
        if not reps:  # result_value(status, 0), inline: a call less per hypercall (~500 instructions)
            return status & 0xFFFF, out
        return result_value(status, reps), out

    @staticmethod
    def fault(control: int, data: bytes) -> int:
        """The exception a guest's hypercall instruction takes before any status: #UD for
        a fast call whose input needs XMM registers, which this hypervisor does not offer
        (CPUID 0x40000003 EDX bit 4 is clear).  TLFS "XMM Fast Hypercall Input"."""
        # The fast bit alone: dispatch() parses the whole control value right after.
        if control & FAST_BIT and len(data) > FAST_INPUT_BYTES:
            return int(X86Exception.UD)
        return int(X86Exception.NONE)

    def _run(self, caller: Caller, hc: HypercallInput, data: bytes) -> tuple[int, bytes, int]:
        spec = SPECS.get(hc.code)
        if spec is None:
            return S.HV_STATUS_INVALID_HYPERCALL_CODE, b"", 0
        if spec.privilege and not caller.privileges & spec.privilege:
            return S.HV_STATUS_ACCESS_DENIED, b"", 0
        if hc.reserved or (hc.var_header_qwords and not spec.var_header):
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        if spec.rep:
            if hc.rep_start >= hc.rep_count:
                return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        elif hc.rep_count or hc.rep_start:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        if hc.fast and len(data) > FAST_INPUT_BYTES:  # the root's own calls: no #UD for it
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        handler = spec.handler
        if handler is None:
            return S.HV_STATUS_INVALID_HYPERCALL_CODE, b"", 0
        layout = spec.layout
        if layout is None:
            args = ()
        elif len(data) >= layout.size:
            args = layout.unpack_from(data)
        elif len(data) >= spec.required:
            args = layout.unpack_from(data.ljust(layout.size, b"\0"))
        else:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b"", 0
        if spec.partition:
            part = self.table.get(args[0])
            if part is None:
                return S.HV_STATUS_INVALID_PARTITION_ID, b"", 0
            args = (part, *args[1:])
        status, out = handler(self, caller, hc, args, data)
        return status, out, (hc.rep_count - hc.rep_start if spec.rep and status == S.HV_STATUS_SUCCESS else 0)

    # -- handlers: each gets its fixed input block unpacked (``args``) --------------------------

    def _rep_list(self, hc, data: bytes, header: int, element: struct.Struct = HV_GPA_PAGE_NUMBER) -> list | None:
        """The rep elements from the rep start index on, or None if the input is too short
        for the rep count."""
        if len(data) < header + element.size * hc.rep_count:
            return None
        return unpack_rep(element, data, header + element.size * hc.rep_start, hc.rep_count - hc.rep_start)

    def create_partition(self, caller, hc, args, data) -> Result:
        # The TLFS input (flags, proximity, compatibility version, feature banks) selects
        # processor features this emulation does not have; it is accepted and not used.
        part = self.table.create()
        return S.HV_STATUS_SUCCESS, HV_OUTPUT_CREATE_PARTITION.pack(part.id)

    def initialize_partition(self, caller, hc, args, data) -> Result:
        part = args[0]
        if part.state is not HvPartitionState.CREATED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        part.state = HvPartitionState.INITIALIZED
        if part.gpa_pages:
            self.memory.slat(part.id, part.gpa_pages)
        if self.tlb is not None:
            self.tlb.paths_of(part.id)  # its TLB files exist before its processes start
        if self.posted is not None:
            self.posted.create(part.id)  # and its posted-interrupt descriptors
        return S.HV_STATUS_SUCCESS, b""

    def finalize_partition(self, caller, hc, args, data) -> Result:
        part = args[0]
        part.state = HvPartitionState.FINALIZED
        return S.HV_STATUS_SUCCESS, b""

    def delete_partition(self, caller, hc, args, data) -> Result:
        part = args[0]
        if part.state is not HvPartitionState.FINALIZED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        self.memory.release(part.id)
        if self.posted is not None:
            self.posted.forget(part.id)
        self.table.delete(part.id)
        return S.HV_STATUS_SUCCESS, b""

    def set_partition_property(self, caller, hc, args, data) -> Result:
        part = args[0]
        if len(data) < HV_INPUT_SET_PARTITION_PROPERTY.size:  # the partition is checked first
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        _, code, value = args
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

    def get_partition_property(self, caller, hc, args, data) -> Result:
        part, code = args
        values = {
            HvPartitionProperty.HvPartitionPropertyPrivilegeFlags: part.privileges,
            HvPartitionProperty.HvPartitionPropertyEnlightenmentRecommendations: part.recommendations,
            HvPartitionProperty.HvPartitionPropertySpinRetryCount: part.spin_retry,
            HvPartitionProperty.HvPartitionPropertyCpuReserve: part.cpu.reserve,
            HvPartitionProperty.HvPartitionPropertyCpuCap: part.cpu.limit,
            HvPartitionProperty.HvPartitionPropertyCpuWeight: part.cpu.weight,
            HvPartitionProperty.HvPartitionPropertyGpaPageCount: part.gpa_pages,
        }
        if code not in values:
            return S.HV_STATUS_UNKNOWN_PROPERTY, b""
        return S.HV_STATUS_SUCCESS, HV_OUTPUT_GET_PARTITION_PROPERTY.pack(values[code])

    def get_partition_id(self, caller, hc, args, data) -> Result:
        pid = caller.partition.id if caller.partition else ROOT_PARTITION_ID
        return S.HV_STATUS_SUCCESS, HV_OUTPUT_GET_PARTITION_ID.pack(pid)

    # -- memory (TLFS host flow: deposit, map; unmap, withdraw) ---------------------------------

    def deposit_memory(self, caller, hc, args, data) -> Result:
        part = args[0]
        pages = self._rep_list(hc, data, HV_INPUT_DEPOSIT_MEMORY.size)
        if pages is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        try:
            self.memory.deposit(part.id, pages)
        except MemoryRefused:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def withdraw_memory(self, caller, hc, args, data) -> Result:
        part = args[0]
        freed = self.memory.withdraw(part.id, hc.rep_count - hc.rep_start)
        return S.HV_STATUS_SUCCESS, pack_rep(HV_GPA_PAGE_NUMBER, freed)

    def map_gpa_pages(self, caller, hc, args, data) -> Result:
        part = args[0]
        if not part.gpa_pages:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        pages = self._rep_list(hc, data, HV_INPUT_MAP_GPA_PAGES.size)
        if pages is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        try:
            self.memory.map(part.id, args[1] + hc.rep_start, pages, part.gpa_pages)
        except MemoryRefused:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def unmap_gpa_pages(self, caller, hc, args, data) -> Result:
        part = args[0]
        try:
            self.memory.unmap(part.id, args[1] + hc.rep_start, hc.rep_count - hc.rep_start)
        except MemoryRefused:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        if self.synic_ports is not None:  # the VSP lets go of what it mapped there
            self.synic_ports.gpa_unmapped(part.id, args[1] + hc.rep_start, hc.rep_count - hc.rep_start)
        return S.HV_STATUS_SUCCESS, b""

    # -- VPs and their registers -------------------------------------------------------------

    def create_vp(self, caller, hc, args, data) -> Result:
        part = args[0]
        index = args[1]
        if part.state is not HvPartitionState.INITIALIZED:
            return S.HV_STATUS_INVALID_PARTITION_STATE, b""
        # VPs are created in order, as the root does; a gap or a repeat is a bad index.
        if index != len(part.vps) or index >= MAX_VPS_PER_PARTITION:
            return S.HV_STATUS_INVALID_VP_INDEX, b""
        part.vps.append(VirtualProcessor(index, part))
        return S.HV_STATUS_SUCCESS, b""

    def _vp(self, args):
        """The VP named by a Get/SetVpRegisters header (its partition resolved), or the
        status saying why not."""
        part, index, vtl = args
        if index >= len(part.vps):
            return S.HV_STATUS_INVALID_VP_INDEX, None, None
        if vtl:  # only VTL 0 exists here
            return S.HV_STATUS_INVALID_PARAMETER, None, None
        return S.HV_STATUS_SUCCESS, part, part.vps[index]

    def get_vp_registers(self, caller, hc, args, data) -> Result:
        status, part, vp = self._vp(args)
        if vp is None:
            return status, b""
        names = self._rep_list(hc, data, HV_INPUT_GET_VP_REGISTERS.size, HV_REGISTER_NAME)
        if names is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        out = bytearray()
        for name in names:
            value = self.registers.read(part, vp, name)
            if value is None:
                return S.HV_STATUS_INVALID_PARAMETER, bytes(out)
            out += HV_REGISTER_VALUE.pack(value & _U64_MASK, value >> 64)
        return S.HV_STATUS_SUCCESS, bytes(out)

    def set_vp_registers(self, caller, hc, args, data) -> Result:
        status, part, vp = self._vp(args)
        if vp is None:
            return status, b""
        base = HV_INPUT_SET_VP_REGISTERS.size
        if len(data) < base + HV_REGISTER_ASSOC.size * hc.rep_count:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        for i in range(hc.rep_start, hc.rep_count):
            name, lo, hi = HV_REGISTER_ASSOC.unpack_from(data, base + HV_REGISTER_ASSOC.size * i)
            if not self.registers.write(part, vp, name, lo | hi << 64):
                return S.HV_STATUS_INVALID_PARAMETER, b""
        return S.HV_STATUS_SUCCESS, b""

    def notify_long_spin_wait(self, caller, hc, args, data) -> Result:
        # TLFS "HvCallNotifyLongSpinWait": advisory, and it always succeeds — also when
        # the spin-retry count (CPUID 0x40000004 EBX) says "never notify".  (KVM with
        # enforced CPUID refuses it then; we follow the TLFS.)  The yield itself is the
        # scheduler's (the intercept handler sends the VP to the back of the ready queue).
        return _SUCCESS, b""  # (a global: an enum member's attribute is ~600 instructions)


_U64_MASK = (1 << 64) - 1
H = Hypercalls
# The one hypercall table: every TLFS call code this hypervisor knows, what it takes and
# who may make it.  The dispatcher reads nothing else.
SPECS: dict[int, CallSpec] = {
    C.HvCallSwitchVirtualAddressSpace: CallSpec(0, H.switch_virtual_address_space,
                                                layout=HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE),
    C.HvCallFlushVirtualAddressSpace: CallSpec(0, H.flush_virtual_address_space,
                                               layout=HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE),
    C.HvCallFlushVirtualAddressList: CallSpec(0, H.flush_virtual_address_list, rep=True,
                                              layout=HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST),
    C.HvCallNotifyLongSpinWait: CallSpec(0, H.notify_long_spin_wait, layout=HV_INPUT_NOTIFY_LONG_SPIN_WAIT),
    C.HvCallSendSyntheticClusterIpi: CallSpec(0, H.send_synthetic_cluster_ipi,
                                              layout=HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI),
    C.HvCallFlushVirtualAddressSpaceEx: CallSpec(0, H.flush_virtual_address_space_ex, var_header=True,
                                                 layout=HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX),
    C.HvCallFlushVirtualAddressListEx: CallSpec(0, H.flush_virtual_address_list_ex, rep=True, var_header=True,
                                                layout=HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX),
    C.HvCallSendSyntheticClusterIpiEx: CallSpec(0, H.send_synthetic_cluster_ipi_ex, var_header=True,
                                                layout=HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX),
    # Nothing of the input is read (see create_partition), so none of it is required.
    C.HvCallCreatePartition: CallSpec(_ROOT, H.create_partition, layout=HV_INPUT_CREATE_PARTITION, required=0),
    C.HvCallInitializePartition: CallSpec(_ROOT, H.initialize_partition, layout=HV_INPUT_INITIALIZE_PARTITION,
                                          partition=True),
    C.HvCallFinalizePartition: CallSpec(_ROOT, H.finalize_partition, layout=HV_INPUT_FINALIZE_PARTITION,
                                        partition=True),
    C.HvCallDeletePartition: CallSpec(_ROOT, H.delete_partition, layout=HV_INPUT_DELETE_PARTITION,
                                      partition=True),
    C.HvCallGetPartitionProperty: CallSpec(_ROOT, H.get_partition_property, layout=HV_INPUT_GET_PARTITION_PROPERTY,
                                           partition=True),
    # The partition and property first: an unknown partition is reported as such however
    # short the value after them (set_partition_property checks the value is there).
    C.HvCallSetPartitionProperty: CallSpec(_ROOT, H.set_partition_property, layout=HV_INPUT_SET_PARTITION_PROPERTY,
                                           required=HV_INPUT_GET_PARTITION_PROPERTY.size, partition=True),
    C.HvCallGetPartitionId: CallSpec(HvPrivilege.AccessPartitionId, H.get_partition_id),
    C.HvCallDepositMemory: CallSpec(HvPrivilege.AccessMemoryPool, H.deposit_memory, rep=True,
                                    layout=HV_INPUT_DEPOSIT_MEMORY, partition=True),
    # Only the partition is read; the proximity domain is a NUMA hint this emulation lacks.
    C.HvCallWithdrawMemory: CallSpec(HvPrivilege.AccessMemoryPool, H.withdraw_memory, rep=True,
                                     layout=HV_INPUT_WITHDRAW_MEMORY, required=8, partition=True),
    C.HvCallMapGpaPages: CallSpec(_ROOT, H.map_gpa_pages, rep=True, layout=HV_INPUT_MAP_GPA_PAGES,
                                  partition=True),
    C.HvCallUnmapGpaPages: CallSpec(_ROOT, H.unmap_gpa_pages, rep=True, layout=HV_INPUT_UNMAP_GPA_PAGES,
                                    partition=True),
    C.HvCallInstallIntercept: CallSpec(_ROOT),
    # Only the partition and VP index are read; the proximity domain and flags select what
    # this emulation lacks.
    C.HvCallCreateVp: CallSpec(_ROOT, H.create_vp, layout=HV_INPUT_CREATE_VP, required=12, partition=True),
    C.HvCallDeleteVp: CallSpec(_ROOT),
    C.HvCallGetVpRegisters: CallSpec(_ROOT, H.get_vp_registers, rep=True, layout=HV_INPUT_GET_VP_REGISTERS,
                                     partition=True),
    C.HvCallSetVpRegisters: CallSpec(_ROOT, H.set_vp_registers, rep=True, layout=HV_INPUT_SET_VP_REGISTERS,
                                     partition=True),
    C.HvCallTranslateVirtualAddress: CallSpec(0),
    # SynIC (hypervisor/synic_ports.py): the payload after PostMessage's 16-byte header is
    # checked against its PayloadSize by the handler.
    C.HvCallPostMessage: CallSpec(HvPrivilege.PostMessages, hv_post_message, layout=HV_INPUT_POST_MESSAGE),
    C.HvCallSignalEvent: CallSpec(HvPrivilege.SignalEvents, hv_signal_event, layout=HV_INPUT_SIGNAL_EVENT),
    C.HvCallRegisterInterceptResult: CallSpec(_ROOT),
    C.HvCallAssertVirtualInterrupt: CallSpec(_ROOT),
    C.HvCallCreatePort: CallSpec(HvPrivilege.CreatePort),
    C.HvCallConnectPort: CallSpec(HvPrivilege.ConnectPort),
    C.HvCallStartVirtualProcessor: CallSpec(_ROOT),
    C.HvCallSignalEventDirect: CallSpec(HvPrivilege.SignalEvents),
    C.HvCallPostMessageDirect: CallSpec(HvPrivilege.PostMessages),
}
del H
