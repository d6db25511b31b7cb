"""VMBus rings (proto/vmbus_ring.py): layout, wrap-around, signal rules, hostile indices."""

from __future__ import annotations

import struct

import pytest

from proto.vmbus_ring import (
    DESCRIPTOR,
    FEATURE_BITS,
    HEADER_SIZE,
    INTERRUPT_MASK,
    PAGE_SIZE,
    PENDING_SEND_SZ,
    READ_INDEX,
    VM_PKT_COMP,
    VM_PKT_DATA_INBAND,
    VM_PKT_DATA_USING_GPA_DIRECT,
    WRITE_INDEX,
    GpaRange,
    PagedView,
    Ring,
    RingCorrupt,
    RingError,
    RingFull,
    encode_gpa_direct,
    encode_packet,
    parse_gpa_ranges,
)


class Mem:
    """Flat bytes addressed like guest-physical memory."""

    def __init__(self, pages: int) -> None:
        self.b = bytearray(pages * PAGE_SIZE)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.b[addr:addr + n])

    def write(self, addr: int, data: bytes) -> None:
        self.b[addr:addr + len(data)] = data


def make_ring(data_pages: int = 1, scattered: bool = True, suppress: bool = True):
    mem = Mem(2 * (data_pages + 1) + 1)
    # The ring's pages in reverse order, every other page: a GPADL is a page list.
    pages = [(2 * i + 1) * PAGE_SIZE for i in range(data_pages + 1)]
    if scattered:
        pages = pages[:1] + pages[1:][::-1]
    ring = Ring(PagedView(mem, pages), suppress=suppress)
    ring.init()
    return ring, mem, pages


def set_u32(ring: Ring, at: int, value: int) -> None:
    ring.view.write(at, struct.pack("<I", value))


def test_header_layout_and_one_packet():
    ring, mem, pages = make_ring()
    assert ring.data_size == PAGE_SIZE
    pkt = encode_packet(VM_PKT_DATA_INBAND, b"hello", transaction_id=7, flags=1)
    assert len(pkt) == 24  # 16 + 5 padded to 8
    assert ring.write([pkt]) is True  # empty → non-empty, not masked
    w = struct.unpack_from("<I", mem.b, pages[0] + WRITE_INDEX)[0]
    assert w == 32  # packet + trailer
    ptype, off8, len8, flags, tid = DESCRIPTOR.unpack_from(mem.b, pages[1])
    assert (ptype, off8, len8, flags, tid) == (VM_PKT_DATA_INBAND, 2, 3, 1, 7)
    assert struct.unpack_from("<Q", mem.b, pages[1] + 24)[0] == 0 << 32  # trailer: start << 32
    assert struct.unpack_from("<I", mem.b, pages[0] + FEATURE_BITS)[0] == 1
    packets, signal = ring.read()
    assert signal is False
    assert len(packets) == 1 and packets[0].payload[:5] == b"hello" and packets[0].transaction_id == 7
    assert packets[0].completion_requested
    assert ring.is_empty()


def test_writer_signals_only_empty_to_nonempty_and_unmasked():
    ring, _, _ = make_ring()
    p = encode_packet(VM_PKT_DATA_INBAND, b"x" * 8)
    assert ring.write([p]) is True
    assert ring.write([p]) is False  # not empty before
    ring.read()
    ring.set_interrupt_mask(True)
    assert ring.write([p]) is False  # reader masked
    ring.read()
    ring.set_interrupt_mask(False)
    assert ring.write([p, p, p]) is True  # a batch: one signal
    assert ring.write([p]) is False


def test_suppression_off_signals_every_write():
    ring, _, _ = make_ring(suppress=False)
    p = encode_packet(VM_PKT_DATA_INBAND, b"x")
    assert ring.write([p]) and ring.write([p]) and ring.write([p])


def test_never_completely_full_and_pending_send_signal():
    ring, _, _ = make_ring()
    p = encode_packet(VM_PKT_DATA_INBAND, bytes(1000))  # 1016 + 8 trailer = 1024
    assert len(p) + 8 == 1024
    ring.write([p, p, p])  # 3072 of 4096
    with pytest.raises(RingFull):
        ring.write([p])  # would fill the ring exactly: refused
    assert ring.pending_send_size == 1032
    packets, signal = ring.read(limit=1)  # frees 1024: 2048 free ≥ 1032 → signal
    assert len(packets) == 1 and signal is True
    assert ring.write([p]) is False  # it fits now; pending cleared
    assert ring.pending_send_size == 0


def test_pending_send_needs_the_feature_bit():
    ring, _, _ = make_ring()
    set_u32(ring, FEATURE_BITS, 0)
    p = encode_packet(VM_PKT_DATA_INBAND, bytes(100))
    ring.write([p] * 30)
    set_u32(ring, PENDING_SEND_SZ, 4000)
    _, signal = ring.read()
    assert signal is False


def test_wrap_around_packets_split_over_the_end():
    ring, _, _ = make_ring(data_pages=1)
    for rnd in range(50):
        payloads = [bytes([rnd, i]) * (37 + 13 * i) for i in range(3)]
        ring.write([encode_packet(VM_PKT_DATA_INBAND, d, transaction_id=rnd * 10 + i) for i, d in enumerate(payloads)])
        packets, _ = ring.read()
        assert [p.payload[:len(d)] for p, d in zip(packets, payloads)] == payloads
        assert [p.transaction_id for p in packets] == [rnd * 10 + i for i in range(3)]


def test_gpa_direct_round_trip():
    ranges = [GpaRange(65536, 0, tuple(range(100, 116))), GpaRange(10, 4090, (7, 8))]
    pkt = encode_gpa_direct(b"srb-bytes", ranges, transaction_id=3)
    ring, _, _ = make_ring()
    ring.write([pkt])
    (p,), _ = ring.read()
    assert p.type == VM_PKT_DATA_USING_GPA_DIRECT and p.completion_requested
    assert parse_gpa_ranges(p.header) == ranges
    assert p.payload.startswith(b"srb-bytes")


@pytest.mark.parametrize("header", [
    b"",                                              # no range count
    struct.pack("<II", 0, 0),                         # no ranges
    struct.pack("<II", 0, 1000),                      # absurd count
    struct.pack("<II", 0, 1) + struct.pack("<II", 8192, 0) + struct.pack("<Q", 1),  # 2 pages, 1 PFN
    struct.pack("<II", 0, 1) + struct.pack("<II", 10, 4096) + struct.pack("<Q", 1),  # offset past page
    struct.pack("<II", 0, 1) + struct.pack("<II", 0, 0) + struct.pack("<Q", 1),      # zero bytes
])
def test_gpa_direct_malformed_headers(header):
    with pytest.raises(RingCorrupt):
        parse_gpa_ranges(header)


@pytest.mark.parametrize("field,value", [
    (WRITE_INDEX, PAGE_SIZE),        # == data size: out of range
    (WRITE_INDEX, 0xFFFFFFF8),
    (WRITE_INDEX, 12),               # misaligned
    (READ_INDEX, PAGE_SIZE + 8),
    (READ_INDEX, 3),
])
def test_hostile_indices(field, value):
    ring, _, _ = make_ring()
    ring.write([encode_packet(VM_PKT_DATA_INBAND, b"ok")])
    set_u32(ring, field, value)
    with pytest.raises(RingCorrupt):
        ring.read()
    with pytest.raises(RingCorrupt):
        ring.write([encode_packet(VM_PKT_DATA_INBAND, b"ok")])


def forge(ring: Ring, ptype=VM_PKT_DATA_INBAND, off8=2, len8=3, used=32):
    ring.view.write(HEADER_SIZE, DESCRIPTOR.pack(ptype, off8, len8, 0, 1))
    set_u32(ring, WRITE_INDEX, used)
    set_u32(ring, READ_INDEX, 0)


@pytest.mark.parametrize("kw", [
    dict(len8=100),                 # length past what was written
    dict(len8=0xFFFF),              # past the ring
    dict(len8=1),                   # shorter than its descriptor
    dict(off8=1),                   # data offset inside the descriptor
    dict(off8=0),
    dict(off8=5),                   # data offset past the packet
    dict(ptype=0x42),               # no such packet type
    dict(used=16),                  # fewer bytes than a packet
])
def test_hostile_packets_raise_ring_corrupt_and_commit_nothing(kw):
    ring, _, _ = make_ring()
    forge(ring, **kw)
    with pytest.raises(RingCorrupt):
        ring.read()
    assert ring.view.read(READ_INDEX, 4) == bytes(4)


def test_a_bad_packet_after_good_ones_commits_nothing():
    ring, _, _ = make_ring()
    ring.write([encode_packet(VM_PKT_COMP, b"a" * 8)])
    w = int.from_bytes(ring.view.read(WRITE_INDEX, 4), "little")
    ring.view.write(HEADER_SIZE + w, DESCRIPTOR.pack(VM_PKT_DATA_INBAND, 2, 0x300, 0, 2))
    set_u32(ring, WRITE_INDEX, w + 32)
    with pytest.raises(RingCorrupt):
        ring.read()
    assert ring.view.read(READ_INDEX, 4) == bytes(4)


def test_view_refuses_access_outside_its_pages():
    ring, _, _ = make_ring()
    with pytest.raises(RingCorrupt):
        ring.view.read(2 * PAGE_SIZE - 4, 8)


def test_too_small_and_oversized():
    with pytest.raises(RingError):
        Ring(PagedView(Mem(1), [0]))
    ring, _, _ = make_ring()
    with pytest.raises(RingError):
        ring.write([encode_packet(VM_PKT_DATA_INBAND, bytes(PAGE_SIZE))])


def test_interrupt_mask_field():
    ring, _, _ = make_ring()
    ring.set_interrupt_mask(True)
    assert ring.view.read(INTERRUPT_MASK, 4) == b"\x01\0\0\0"
