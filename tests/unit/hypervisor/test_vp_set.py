"""HV_VP_SET and the Ex hypercalls (TLFS "HV_VP_SET", HvCallFlushVirtualAddressSpaceEx 0x13,
HvCallFlushVirtualAddressListEx 0x14, HvCallSendSyntheticClusterIpi 0x0B and
HvCallSendSyntheticClusterIpiEx 0x15), on a partition of 130 VPs."""

from __future__ import annotations

import struct
import tempfile

import pytest

from proto.codes import HV_CHILD_ENLIGHTENED_PRIVILEGES, HvStatus as S, HypercallCode as C, control_value
from proto.hvcall import (
    HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES,
    HV_GENERIC_SET_ALL,
    HV_GENERIC_SET_SPARSE_4K,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX,
)
from hypervisor.hypercalls import Caller, Hypercalls
from hypervisor.memory import MemoryManager
from hypervisor.partitions import MAX_VPS_PER_PARTITION, PartitionTable, VirtualProcessor
from hypervisor.vp_set import ALL, MAX_VP_SET_INDEX, parse_vp_set

VPS = 130


@pytest.fixture
def hc():
    woken = []
    h = Hypercalls(PartitionTable(), MemoryManager(tempfile.mkdtemp(prefix="hvmem"), 64), wake=woken.append)
    h.woken = woken
    part = h.table.create()
    part.privileges = int(HV_CHILD_ENLIGHTENED_PRIVILEGES)
    part.vps = [VirtualProcessor(i, part) for i in range(VPS)]
    for vp in part.vps:
        vp.apic.svr = 0x1FF
    h.caller = Caller(part, part.vps[0], part.privileges)
    return h


def call(h, code, data, var=0, rep=0):
    result, _ = h.dispatch(h.caller, control_value(code, var_header_qwords=var, rep_count=rep), data)
    return S(result & 0xFFFF)


def sparse(*indices) -> tuple[int, bytes, int]:
    """(ValidBanksMask, the bank masks, how many) naming ``indices``."""
    banks: dict[int, int] = {}
    for i in indices:
        banks[i // 64] = banks.get(i // 64, 0) | 1 << (i % 64)
    valid = sum(1 << b for b in banks)
    return valid, b"".join(struct.pack("<Q", banks[b]) for b in sorted(banks)), len(banks)


def ipi_ex(vector, *indices, fmt=HV_GENERIC_SET_SPARSE_4K):
    valid, masks, n = sparse(*indices) if fmt == HV_GENERIC_SET_SPARSE_4K else (0, b"", 0)
    return HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX.pack(vector, 0, fmt, valid) + masks, n


def pending(h, vector) -> list[int]:
    return [vp.index for vp in h.caller.partition.vps if vp.apic.irr >> vector & 1]


def test_a_sparse_set_names_vps_past_64_in_its_banks():
    """TLFS "HV_VP_SET": bank n of ValidBanksMask holds VPs 64n..64n+63, banks in order."""
    valid, masks, n = sparse(1, 64, 129, 4095)
    assert parse_vp_set(HV_GENERIC_SET_SPARSE_4K, valid, masks, 0, n) == (S.HV_STATUS_SUCCESS,
                                                                          frozenset({1, 64, 129, 4095}))
    assert parse_vp_set(HV_GENERIC_SET_ALL, 0, b"", 0, 0) == (S.HV_STATUS_SUCCESS, ALL)
    assert MAX_VP_SET_INDEX == MAX_VPS_PER_PARTITION - 1 == 4095


def test_a_bank_count_that_disagrees_with_the_mask_or_a_bad_format_is_refused():
    valid, masks, n = sparse(1, 64)
    assert parse_vp_set(HV_GENERIC_SET_SPARSE_4K, valid, masks, 0, n - 1)[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert parse_vp_set(HV_GENERIC_SET_SPARSE_4K, valid, masks[:8], 0, n)[0] == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert parse_vp_set(HV_GENERIC_SET_ALL, 1, masks, 0, 1) == (S.HV_STATUS_SUCCESS, ALL)  # not read
    assert parse_vp_set(7, 0, b"", 0, 0)[0] == S.HV_STATUS_INVALID_PARAMETER


def test_cluster_ipi_ex_reaches_vps_past_index_64_and_wakes_them(hc):
    data, n = ipi_ex(0x41, 3, 64, 129, 2000)  # 2000: no such VP, ignored
    assert call(hc, C.HvCallSendSyntheticClusterIpiEx, data, var=n) == S.HV_STATUS_SUCCESS
    assert pending(hc, 0x41) == [3, 64, 129]
    assert [vp.index for vp in hc.woken] == [3, 64, 129]
    assert hc.caller.partition.vps[129].apic.deliverable() == 0x41


def test_cluster_ipi_ex_to_all_and_the_non_ex_form_with_a_mask(hc):
    data, n = ipi_ex(0x42, fmt=HV_GENERIC_SET_ALL)
    assert call(hc, C.HvCallSendSyntheticClusterIpiEx, data, var=n) == S.HV_STATUS_SUCCESS
    assert pending(hc, 0x42) == list(range(VPS))
    data = HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.pack(0x43, 0, 1 << 0 | 1 << 63)
    assert call(hc, C.HvCallSendSyntheticClusterIpi, data) == S.HV_STATUS_SUCCESS
    assert pending(hc, 0x43) == [0, 63]
    # As a guest makes it: fast, vector and mask in RDX and R8.
    result, _ = hc.dispatch(hc.caller, control_value(C.HvCallSendSyntheticClusterIpi, fast=True),
                            HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.pack(0x44, 0, 1 << 5))
    assert result & 0xFFFF == 0 and pending(hc, 0x44) == [5]


def test_an_ipi_with_a_bad_vector_or_vtl_is_invalid_parameter(hc):
    """TLFS "HvCallSendSyntheticClusterIpi": vectors 0x10..0xFF; only VTL 0 exists here."""
    assert call(hc, C.HvCallSendSyntheticClusterIpi, HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.pack(0x0F, 0, 1)) \
        == S.HV_STATUS_INVALID_PARAMETER
    assert call(hc, C.HvCallSendSyntheticClusterIpi, HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.pack(0x40, 1, 1)) \
        == S.HV_STATUS_INVALID_PARAMETER
    assert pending(hc, 0x0F) == [] and pending(hc, 0x40) == []


def test_a_variable_header_is_taken_only_by_the_ex_calls(hc):
    data = HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.pack(0x40, 0, 1) + bytes(8)
    assert call(hc, C.HvCallSendSyntheticClusterIpi, data, var=1) == S.HV_STATUS_INVALID_HYPERCALL_INPUT


def test_the_ex_flushes_take_a_vp_set_and_flush_the_callers_entries(hc):
    valid, masks, n = sparse(0, 65, 129)
    head = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX.pack(0x1000, 0, HV_GENERIC_SET_SPARSE_4K, valid)
    assert call(hc, C.HvCallFlushVirtualAddressSpaceEx, head + masks, var=n) == S.HV_STATUS_SUCCESS
    gvas = struct.pack("<2Q", 0x7000, 0x9003)
    assert call(hc, C.HvCallFlushVirtualAddressListEx, head + masks + gvas, var=n, rep=2) == S.HV_STATUS_SUCCESS
    # Short rep list, a bank missing, bad flags: refused.
    assert call(hc, C.HvCallFlushVirtualAddressListEx, head + masks + gvas, var=n, rep=3) \
        == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    assert call(hc, C.HvCallFlushVirtualAddressSpaceEx, head + masks[:8], var=1) == S.HV_STATUS_INVALID_HYPERCALL_INPUT
    bad = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX.pack(0, 1 << 20, HV_GENERIC_SET_ALL, 0)
    assert call(hc, C.HvCallFlushVirtualAddressSpaceEx, bad) == S.HV_STATUS_INVALID_PARAMETER
    everything = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX.pack(0, HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES,
                                                              HV_GENERIC_SET_ALL, 0)
    assert call(hc, C.HvCallFlushVirtualAddressSpaceEx, everything) == S.HV_STATUS_SUCCESS


def test_the_root_creates_vps_up_to_what_a_vp_set_names(hc):
    from proto.codes import HV_ROOT_PRIVILEGES, HvPartitionState
    from proto.hvcall import HV_INPUT_CREATE_VP
    root = Caller(None, None, HV_ROOT_PRIVILEGES)
    part = hc.table.create()
    part.state = HvPartitionState.INITIALIZED
    part.vps = [VirtualProcessor(i, part) for i in range(MAX_VPS_PER_PARTITION - 1)]
    create = control_value(C.HvCallCreateVp)
    assert hc.dispatch(root, create, HV_INPUT_CREATE_VP.pack(part.id, 4095, 0, 0))[0] & 0xFFFF == 0
    assert hc.dispatch(root, create, HV_INPUT_CREATE_VP.pack(part.id, 4096, 0, 0))[0] & 0xFFFF \
        == S.HV_STATUS_INVALID_VP_INDEX
