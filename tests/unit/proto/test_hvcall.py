"""The TLFS hypercall blocks: sizes and field offsets as the TLFS and hvhdk.h lay them out."""

from __future__ import annotations

import pytest

from proto import hvcall as h


@pytest.mark.parametrize("layout, size", [
    (h.HV_INPUT_CREATE_PARTITION, 56),
    (h.HV_OUTPUT_CREATE_PARTITION, 8),
    (h.HV_INPUT_INITIALIZE_PARTITION, 8),
    (h.HV_INPUT_GET_PARTITION_PROPERTY, 16),
    (h.HV_INPUT_SET_PARTITION_PROPERTY, 24),
    (h.HV_INPUT_DEPOSIT_MEMORY, 8),
    (h.HV_INPUT_WITHDRAW_MEMORY, 16),
    (h.HV_INPUT_MAP_GPA_PAGES, 24),
    (h.HV_INPUT_UNMAP_GPA_PAGES, 24),
    (h.HV_INPUT_CREATE_VP, 32),
    (h.HV_INPUT_GET_VP_REGISTERS, 16),
    (h.HV_REGISTER_ASSOC, 32),
    (h.HV_REGISTER_VALUE, 16),
    (h.HV_INPUT_SWITCH_VIRTUAL_ADDRESS_SPACE, 8),
    (h.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE, 24),
    (h.HV_INPUT_NOTIFY_LONG_SPIN_WAIT, 4),
])
def test_every_block_has_its_tlfs_size_and_keeps_8_byte_alignment_where_it_is_a_header(layout, size):
    assert layout.size == size


def test_fields_sit_at_their_tlfs_offsets():
    # SetPartitionProperty: PropertyCode at 8, PropertyValue at 16 (after the padding).
    b = h.HV_INPUT_SET_PARTITION_PROPERTY.pack(7, 0x10000, 0x55)
    assert b[0:8] == (7).to_bytes(8, "little") and b[8:12] == (0x10000).to_bytes(4, "little")
    assert b[12:16] == bytes(4) and b[16:24] == (0x55).to_bytes(8, "little")
    # HV_REGISTER_ASSOC: Name at 0, the 128-bit value at 16.
    b = h.HV_REGISTER_ASSOC.pack(0x00040002, 1, 2)
    assert b[0:4] == (0x00040002).to_bytes(4, "little") and b[4:16] == bytes(12)
    assert b[16:32] == (1 | 2 << 64).to_bytes(16, "little")
    # CreateVp: VpIndex at 8, ProximityDomainInfo at 16, Flags at 24.
    assert h.HV_INPUT_CREATE_VP.pack(3, 1, 5, 6)[8:] == b"\x01\0\0\0\0\0\0\0\x05" + bytes(7) + b"\x06" + bytes(7)
    # Get/SetVpRegisters: InputVtl at 12.
    assert h.HV_INPUT_GET_VP_REGISTERS.pack(1, 2, 3)[12] == 3


def test_rep_lists_pack_and_unpack_element_by_element():
    data = h.HV_INPUT_DEPOSIT_MEMORY.pack(1) + h.pack_rep(h.HV_GPA_PAGE_NUMBER, [5, 1, 9])
    assert h.unpack_rep(h.HV_GPA_PAGE_NUMBER, data, 8 + 8, 2) == [1, 9]
    names = h.pack_rep(h.HV_REGISTER_NAME, [0, 0x00020011])
    assert names == b"\0\0\0\0\x11\0\x02\0" and h.unpack_rep(h.HV_REGISTER_NAME, names, 0, 2) == [0, 0x00020011]
    assert h.pack_rep(h.HV_GVA, []) == b""
