"""Hypercall input decoding and the TLFS status codes for bad input."""

from __future__ import annotations

import struct
import tempfile

import pytest

from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HV_ROOT_PRIVILEGES,
    HvPartitionProperty,
    HvPartitionState,
    HvStatus,
    HypercallCode as C,
    HypercallInput,
    control_value,
)
from hypervisor.hypercalls import Caller, Hypercalls
from hypervisor.memory import MemoryManager
from hypervisor.partitions import PartitionTable

S = HvStatus


@pytest.fixture
def hc():
    return Hypercalls(PartitionTable(), MemoryManager(tempfile.mkdtemp(prefix="hvmem"), 64))


def root():
    return Caller(None, None, HV_ROOT_PRIVILEGES)


def child(hc):
    part = hc.table.create()
    part.privileges = HV_CHILD_ENLIGHTENED_PRIVILEGES
    return Caller(part, None, part.privileges)


def status(result: int) -> S:
    return S(result & 0xFFFF)


def call(hc, caller, control, data=b""):
    result, out = hc.dispatch(caller, control, data)
    return status(result), (result >> 32) & 0xFFF, out


def test_input_value_fields_decode_as_the_tlfs_lays_them_out():
    control = 0x0003 | 1 << 16 | 5 << 32 | 2 << 48
    h = HypercallInput.parse(control)
    assert (h.code, h.fast, h.rep_count, h.rep_start, h.reserved, h.var_header_qwords) == (3, True, 5, 2, 0, 0)
    assert control_value(3, fast=True, rep_count=5, rep_start=2) == control


def test_unknown_call_code_is_invalid_hypercall_code(hc):
    assert call(hc, root(), 0x7777)[0] == S.HV_STATUS_INVALID_HYPERCALL_CODE
    assert call(hc, child(hc), 0x0000)[0] == S.HV_STATUS_INVALID_HYPERCALL_CODE


@pytest.mark.parametrize("code", [C.HvCallCreatePartition, C.HvCallSetPartitionProperty, C.HvCallCreateVp,
                                  C.HvCallMapGpaPages, C.HvCallGetVpRegisters, C.HvCallGetPartitionId])
def test_a_child_calling_a_root_only_call_is_denied(hc, code):
    rep = 1 if code in (C.HvCallMapGpaPages, C.HvCallGetVpRegisters) else 0
    assert call(hc, child(hc), control_value(code, rep_count=rep))[0] == S.HV_STATUS_ACCESS_DENIED


def test_access_denied_takes_priority_over_bad_input(hc):
    bad = control_value(C.HvCallCreatePartition) | 1 << 31  # reserved bit too
    assert call(hc, child(hc), bad)[0] == S.HV_STATUS_ACCESS_DENIED


@pytest.mark.parametrize("bit", [27, 31, 44, 47, 60, 63])
def test_reserved_bits_set_are_invalid_input(hc, bit):
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True) | 1 << bit
    assert call(hc, child(hc), control, b"\x01\0\0\0")[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_rep_start_index_beyond_rep_count_is_invalid_input(hc):
    control = control_value(C.HvCallFlushVirtualAddressList, rep_count=2, rep_start=2)
    assert call(hc, child(hc), control)[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_a_rep_count_on_a_simple_call_is_invalid_input(hc):
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True, rep_count=1)
    assert call(hc, child(hc), control, b"\x01\0\0\0")[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_a_variable_header_where_none_is_taken_is_invalid_input(hc):
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True, var_header_qwords=1)
    assert call(hc, child(hc), control, b"\x01\0\0\0")[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_fast_input_larger_than_two_registers_is_invalid_input_for_the_root(hc):
    """The root's own calls are messages, not instructions: no #UD, a status."""
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True)
    assert call(hc, root(), control, bytes(17))[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_fast_input_larger_than_two_registers_is_a_ud_for_a_guest(hc):
    """TLFS "XMM Fast Hypercall Input": XMM input is not offered here, so using it is #UD."""
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True)
    assert Hypercalls.fault(control, bytes(17)) == 6
    assert Hypercalls.fault(control, bytes(16)) == 0
    assert Hypercalls.fault(control_value(C.HvCallNotifyLongSpinWait), bytes(4096)) == 0  # not fast: a page


def test_notify_long_spin_wait_succeeds_even_where_never_notify_is_advertised(hc):
    """TLFS "HvCallNotifyLongSpinWait": advisory, always succeeds (KVM may refuse it)."""
    caller = child(hc)
    caller.partition.spin_retry = 0xFFFFFFFF
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True)
    assert call(hc, caller, control, struct.pack("<I", 1))[0] == S.HV_STATUS_SUCCESS


def test_error_checks_come_in_the_documented_order(hc):
    """The module's order: code, privilege, input value, unimplemented, block length,
    partition id.  Each pair below has both errors; the first listed wins."""
    bad_bits = 1 << 31
    # unknown code beats everything
    assert call(hc, child(hc), 0x7777 | bad_bits)[0] == S.HV_STATUS_INVALID_HYPERCALL_CODE
    # privilege beats reserved bits and short input
    assert call(hc, child(hc), control_value(C.HvCallInitializePartition) | bad_bits)[0] == S.HV_STATUS_ACCESS_DENIED
    # reserved bits beat the unknown partition
    assert call(hc, root(), control_value(C.HvCallInitializePartition) | bad_bits, struct.pack("<Q", 99))[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    # a short block beats the unknown partition
    assert call(hc, root(), control_value(C.HvCallInitializePartition), b"\x63")[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(hc, root(), control_value(C.HvCallInitializePartition), struct.pack("<Q", 99))[0] \
        == S.HV_STATUS_INVALID_PARTITION_ID


def test_an_unrecommended_flush_call_is_still_made(hc):
    """TLFS "Implementation Recommendations": advice, not a privilege (KVM may refuse)."""
    caller = child(hc)
    assert caller.partition.recommendations == 0
    control = control_value(C.HvCallFlushVirtualAddressSpace)
    assert call(hc, caller, control, struct.pack("<QQQ", 0x1000, 0, 1))[0] == S.HV_STATUS_SUCCESS


def test_notify_long_spin_wait_always_succeeds(hc):
    control = control_value(C.HvCallNotifyLongSpinWait, fast=True)
    assert call(hc, child(hc), control, struct.pack("<I", 100))[0] == S.HV_STATUS_SUCCESS


def test_a_known_call_this_hypervisor_lacks_is_invalid_code_not_a_crash(hc):
    assert call(hc, child(hc), control_value(C.HvCallTranslateVirtualAddress))[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_CODE


def test_root_builds_a_partition_by_the_tlfs_host_flow(hc):
    st, _, out = call(hc, root(), control_value(C.HvCallCreatePartition), bytes(56))
    assert st == S.HV_STATUS_SUCCESS
    (pid,) = struct.unpack("<Q", out)
    prop = struct.pack("<QIIQ", pid, HvPartitionProperty.HvPartitionPropertyPrivilegeFlags, 0, 0x60)
    assert call(hc, root(), control_value(C.HvCallSetPartitionProperty), prop)[0] == S.HV_STATUS_SUCCESS
    # A VP before InitializePartition is refused: wrong state.
    vp0 = struct.pack("<QI4xQQ", pid, 0, 0, 0)
    assert call(hc, root(), control_value(C.HvCallCreateVp), vp0)[0] == S.HV_STATUS_INVALID_PARTITION_STATE
    assert call(hc, root(), control_value(C.HvCallInitializePartition), struct.pack("<Q", pid))[0] \
        == S.HV_STATUS_SUCCESS
    assert call(hc, root(), control_value(C.HvCallCreateVp), vp0)[0] == S.HV_STATUS_SUCCESS
    # VP indexes come in order: a gap is refused.
    vp5 = struct.pack("<QI4xQQ", pid, 5, 0, 0)
    assert call(hc, root(), control_value(C.HvCallCreateVp), vp5)[0] == S.HV_STATUS_INVALID_VP_INDEX
    # Properties are fixed once initialized.
    assert call(hc, root(), control_value(C.HvCallSetPartitionProperty), prop)[0] \
        == S.HV_STATUS_INVALID_PARTITION_STATE
    part = hc.table.get(pid)
    assert part.state is HvPartitionState.INITIALIZED and part.privileges == 0x60 and len(part.vps) == 1


def test_a_partition_id_that_does_not_exist_is_invalid_partition_id(hc):
    assert call(hc, root(), control_value(C.HvCallInitializePartition), struct.pack("<Q", 99))[0] \
        == S.HV_STATUS_INVALID_PARTITION_ID


def test_an_input_block_too_short_for_the_call_is_invalid_input(hc):
    assert call(hc, root(), control_value(C.HvCallInitializePartition), b"\x01")[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_unknown_property_is_reported(hc):
    pid = hc.table.create().id
    prop = struct.pack("<QIIQ", pid, 0x12345, 0, 1)
    assert call(hc, root(), control_value(C.HvCallSetPartitionProperty), prop)[0] == S.HV_STATUS_UNKNOWN_PROPERTY


def test_failures_are_counted_by_status(hc):
    call(hc, child(hc), 0x7777)
    call(hc, child(hc), control_value(C.HvCallCreatePartition))
    assert hc.failures == {"HV_STATUS_INVALID_HYPERCALL_CODE": 1, "HV_STATUS_ACCESS_DENIED": 1}


def _partition(hc, pages: int = 16) -> int:
    pid = hc.table.create().id
    hc.table.get(pid).gpa_pages = pages
    return pid


def test_root_deposits_and_maps_memory_with_rep_calls(hc):
    pid = _partition(hc)
    data = struct.pack("<Q3Q", pid, 5, 1, 9)
    st, reps, _ = call(hc, root(), control_value(C.HvCallDepositMemory, rep_count=3), data)
    assert (st, reps) == (S.HV_STATUS_SUCCESS, 3)
    data = struct.pack("<QQI4x3Q", pid, 0, 0, 5, 1, 9)
    st, reps, _ = call(hc, root(), control_value(C.HvCallMapGpaPages, rep_count=3), data)
    assert (st, reps) == (S.HV_STATUS_SUCCESS, 3)
    assert list(hc.memory.slats[pid].entries[:3]) == [5, 1, 9]


def test_mapping_a_page_not_deposited_is_invalid_parameter(hc):
    pid = _partition(hc)
    data = struct.pack("<QQI4xQ", pid, 0, 0, 7)
    assert call(hc, root(), control_value(C.HvCallMapGpaPages, rep_count=1), data)[0] == S.HV_STATUS_INVALID_PARAMETER


def test_a_rep_list_shorter_than_the_rep_count_is_invalid_input(hc):
    pid = _partition(hc)
    data = struct.pack("<QQ", pid, 5)
    assert call(hc, root(), control_value(C.HvCallDepositMemory, rep_count=2), data)[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_a_child_cannot_deposit_or_map(hc):
    pid = _partition(hc)
    assert call(hc, child(hc), control_value(C.HvCallDepositMemory, rep_count=1), struct.pack("<QQ", pid, 1))[0] \
        == S.HV_STATUS_ACCESS_DENIED


def _vp_registers_header(pid: int, vp: int = 0) -> bytes:
    return struct.pack("<QIB3x", pid, vp, 0)


def test_vp_registers_read_and_write_through_the_tlfs_layouts(hc):
    from proto.codes import HvRegisterName as R

    pid = hc.table.create().id
    from hypervisor.partitions import VirtualProcessor
    hc.table.get(pid).vps.append(VirtualProcessor(0))
    names = struct.pack("<3I", R.HvRegisterExplicitSuspend, R.HvX64RegisterInitialApicId, R.HvX64RegisterApicBase)
    st, reps, out = call(hc, root(), control_value(C.HvCallGetVpRegisters, rep_count=3), _vp_registers_header(pid) + names)
    assert (st, reps) == (S.HV_STATUS_SUCCESS, 3)
    values = [int.from_bytes(out[i:i + 16], "little") for i in range(0, 48, 16)]
    assert values == [1, 0, 0xFEE00000 | 1 << 11 | 1 << 8]  # created suspended; the BSP's APIC
    assoc = struct.pack("<IIQQQ", R.HvRegisterExplicitSuspend, 0, 0, 0, 0)
    st, reps, _ = call(hc, root(), control_value(C.HvCallSetVpRegisters, rep_count=1), _vp_registers_header(pid) + assoc)
    assert (st, reps) == (S.HV_STATUS_SUCCESS, 1) and hc.table.get(pid).vps[0].sched.suspended is False


def test_a_register_that_is_not_kept_or_is_read_only_is_invalid_parameter(hc):
    pid = hc.table.create().id
    from hypervisor.partitions import VirtualProcessor
    hc.table.get(pid).vps.append(VirtualProcessor(0))
    names = struct.pack("<I", 0x00020000)  # RAX lives in the guest's process, not here
    assert call(hc, root(), control_value(C.HvCallGetVpRegisters, rep_count=1), _vp_registers_header(pid) + names)[0] \
        == S.HV_STATUS_INVALID_PARAMETER
    assoc = struct.pack("<IIQQQ", 0x0008000C, 0, 0, 5, 0)  # the initial APIC ID is read-only
    assert call(hc, root(), control_value(C.HvCallSetVpRegisters, rep_count=1), _vp_registers_header(pid) + assoc)[0] \
        == S.HV_STATUS_INVALID_PARAMETER
    assert call(hc, root(), control_value(C.HvCallGetVpRegisters, rep_count=1), _vp_registers_header(pid, 3) + names)[0] \
        == S.HV_STATUS_INVALID_VP_INDEX
    assert call(hc, child(hc), control_value(C.HvCallGetVpRegisters, rep_count=1), _vp_registers_header(pid) + names)[0] \
        == S.HV_STATUS_ACCESS_DENIED


def test_the_one_table_is_what_dispatches(hc, monkeypatch):
    from hypervisor import hypercalls as module

    calls = []

    def handler(self, caller, hc_, args, data):
        calls.append(args)
        return S.HV_STATUS_SUCCESS, b"ok"

    spec = module.CallSpec(0, handler, layout=struct.Struct("<I"))
    monkeypatch.setitem(module.SPECS, C.HvCallNotifyLongSpinWait, spec)
    assert call(hc, child(hc), control_value(C.HvCallNotifyLongSpinWait, fast=True), b"\x07\0\0\0") \
        == (S.HV_STATUS_SUCCESS, 0, b"ok")
    assert calls == [(7,)]  # the layout unpacked for the handler
    assert call(hc, child(hc), control_value(C.HvCallNotifyLongSpinWait, fast=True), b"\x07")[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT and len(calls) == 1


def test_where_only_leading_fields_are_read_only_they_are_required(hc):
    pid = hc.table.create().id
    # SetPartitionProperty: the partition is checked before the value is missed.
    assert call(hc, root(), control_value(C.HvCallSetPartitionProperty), struct.pack("<QI4x", 99, 1))[0] \
        == S.HV_STATUS_INVALID_PARTITION_ID
    assert call(hc, root(), control_value(C.HvCallSetPartitionProperty), struct.pack("<QI4x", pid, 1))[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    # CreateVp: the partition and the index are enough.
    call(hc, root(), control_value(C.HvCallInitializePartition), struct.pack("<Q", pid))
    assert call(hc, root(), control_value(C.HvCallCreateVp), struct.pack("<QI", pid, 0))[0] == S.HV_STATUS_SUCCESS
    assert call(hc, root(), control_value(C.HvCallCreateVp), struct.pack("<Q", pid))[0] \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    # CreatePartition reads nothing of its input.
    assert call(hc, root(), control_value(C.HvCallCreatePartition))[0] == S.HV_STATUS_SUCCESS
