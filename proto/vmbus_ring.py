"""VMBus ring buffers, as Hyper-V lays them out (Linux drivers/hv/ring_buffer.c,
include/linux/hyperv.h ``struct hv_ring_buffer``; OpenVMM vm/devices/vmbus/vmbus_ring).

Pure code over a memory view (``read(offset, n)`` / ``write(offset, data)`` at byte offsets
into the ring): the guest's VMBus driver and the root's VSPs both use it, so it lives here
rather than in either (a partition process imports nothing of ``root``).

A ring is one 4 KiB header page then its data pages::

    0   write_index u32     byte offset into the data where the writer writes next
    4   read_index u32      byte offset where the reader reads next
    8   interrupt_mask u32  the reader's "do not signal me" while it drains
    12  pending_send_sz u32 a blocked writer's request: signal me once this much is free
    64  feature_bits u32    bit 0: the reader honours pending_send_sz
    4096 data (D bytes; indices wrap at D)

Equal indices mean empty; a writer never fills the ring completely (it writes only while
free space is strictly greater than what it needs).  A packet is 8-byte aligned: the
16-byte descriptor (type u16, data_offset8 u16, length8 u16, flags u16 — bit 0 completion
requested —, transaction_id u64), any type-specific header, the payload padded to 8, and an
8-byte trailer holding the packet's start offset << 32.  ``length8`` counts up to the
trailer; the reader advances by ``length8 * 8 + 8``.

Signals: the writer signals only when the ring went from empty to non-empty and the
reader has not set ``interrupt_mask``; the reader signals the writer when a read frees the
space ``pending_send_sz`` asked for (and the feature bit says it is honoured).

Everything read from a ring is the other side's to forge: an index outside the data or
not 8-aligned, a length past the written bytes, a data offset inside the descriptor —
each raises :class:`RingCorrupt` (a typed error; the channel's owner resets the channel),
never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proto.errors import HvstackError

PAGE_SIZE = 4096
HEADER_SIZE = PAGE_SIZE
WRITE_INDEX, READ_INDEX, INTERRUPT_MASK, PENDING_SEND_SZ, FEATURE_BITS = 0, 4, 8, 12, 64
FEAT_PENDING_SEND_SZ = 1
DESCRIPTOR = struct.Struct("<HHHHQ")  # type, data_offset8, length8, flags, transaction_id
DESCRIPTOR_SIZE = DESCRIPTOR.size  # 16
TRAILER_SIZE = 8

# Packet types (Linux ``enum vmbus_packet_type``).
VM_PKT_DATA_INBAND = 0x6
VM_PKT_DATA_USING_XFER_PAGES = 0x7
VM_PKT_DATA_USING_GPA_DIRECT = 0x9
VM_PKT_COMP = 0xB
PACKET_TYPES = (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_XFER_PAGES, VM_PKT_DATA_USING_GPA_DIRECT, VM_PKT_COMP)
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1

# GPA-direct: after the descriptor, reserved u32 and range count u32; each range is
# byte_count u32, byte_offset u32 (into its first page) and its page numbers (u64 each).
GPA_DIRECT_HEADER = struct.Struct("<II")
GPA_RANGE = struct.Struct("<II")
MAX_GPA_RANGES = 32
MAX_RANGE_PAGES = 1024  # 4 MiB per range: far above any transfer a VSP accepts


class RingError(HvstackError):
    """A ring operation that cannot be done."""


class RingCorrupt(RingError):
    """What the other side wrote into the ring is not a valid ring (bad index, length or
    offset).  ``reason`` names it; the channel is reset."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ring corrupt: {reason}")
        self.reason = reason


class RingFull(RingError):
    """Not enough free space now; the writer may ask to be signalled (pending_send_sz)."""


def align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(slots=True)
class Packet:
    """One packet as read: its descriptor, the bytes between the descriptor and the data
    offset (a type-specific header) and the payload (up to the trailer, padding included)."""

    type: int
    flags: int
    transaction_id: int
    header: bytes
    payload: bytes

    @property
    def completion_requested(self) -> bool:
        return bool(self.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)


@dataclass(slots=True)
class GpaRange:
    byte_count: int
    byte_offset: int
    pfns: tuple[int, ...]


def encode_packet(ptype: int, payload: bytes, transaction_id: int = 0, flags: int = 0,
                  header: bytes = b"") -> bytes:
    """A packet without its trailer (the ring adds it): descriptor, header, padded payload."""
    offset = DESCRIPTOR_SIZE + len(header)
    if offset & 7:
        raise ValueError("a packet header must keep the data 8-byte aligned")
    total = align8(offset + len(payload))
    return (DESCRIPTOR.pack(ptype, offset >> 3, total >> 3, flags, transaction_id) + header + payload
            + bytes(total - offset - len(payload)))


def encode_gpa_direct(payload: bytes, ranges: list[GpaRange], transaction_id: int,
                      flags: int = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) -> bytes:
    """A GPA-direct packet (Linux ``vmbus_sendpacket_mpb_desc``): the page ranges, then the payload."""
    header = GPA_DIRECT_HEADER.pack(0, len(ranges)) + b"".join(
        GPA_RANGE.pack(r.byte_count, r.byte_offset) + struct.pack(f"<{len(r.pfns)}Q", *r.pfns) for r in ranges)
    return encode_packet(VM_PKT_DATA_USING_GPA_DIRECT, payload, transaction_id, flags, header)


def parse_gpa_ranges(header: bytes) -> list[GpaRange]:
    """The ranges of a GPA-direct packet's header; a malformed one is :class:`RingCorrupt`."""
    if len(header) < GPA_DIRECT_HEADER.size:
        raise RingCorrupt("GPA-direct header shorter than its range count")
    _, count = GPA_DIRECT_HEADER.unpack_from(header)
    if not 0 < count <= MAX_GPA_RANGES:
        raise RingCorrupt(f"GPA-direct packet with {count} ranges")
    ranges, at = [], GPA_DIRECT_HEADER.size
    for _ in range(count):
        if at + GPA_RANGE.size > len(header):
            raise RingCorrupt("GPA-direct range past the packet header")
        byte_count, byte_offset = GPA_RANGE.unpack_from(header, at)
        at += GPA_RANGE.size
        if byte_offset >= PAGE_SIZE or byte_count == 0:
            raise RingCorrupt(f"GPA-direct range of {byte_count} bytes at offset {byte_offset}")
        npages = (byte_offset + byte_count + PAGE_SIZE - 1) // PAGE_SIZE
        if npages > MAX_RANGE_PAGES or at + 8 * npages > len(header):
            raise RingCorrupt(f"GPA-direct range of {npages} pages past the packet header")
        ranges.append(GpaRange(byte_count, byte_offset, struct.unpack_from(f"<{npages}Q", header, at)))
        at += 8 * npages
    return ranges


class PagedView:
    """A ring's bytes seen through the pages that hold it: ``mem`` reads and writes by
    address (guest-physical for the guest, the partition's RAM for the VSP), ``pages`` are
    the pages' addresses in ring order (a GPADL's, scattered or not)."""

    def __init__(self, mem, pages: list[int]) -> None:
        self.mem = mem
        self.pages = list(pages)
        self.size = len(self.pages) * PAGE_SIZE

    def _chunks(self, offset: int, n: int):
        if offset < 0 or offset + n > self.size:
            raise RingCorrupt(f"access {offset}+{n} outside a ring of {self.size} bytes")
        while n:
            page, within = divmod(offset, PAGE_SIZE)
            step = min(n, PAGE_SIZE - within)
            yield self.pages[page] + within, step
            offset += step
            n -= step

    def read(self, offset: int, n: int) -> bytes:
        if (offset & (PAGE_SIZE - 1)) + n <= PAGE_SIZE and 0 <= offset and offset + n <= self.size:
            return self.mem.read(self.pages[offset >> 12] + (offset & (PAGE_SIZE - 1)), n)
        return b"".join(self.mem.read(addr, step) for addr, step in self._chunks(offset, n))

    def write(self, offset: int, data: bytes) -> None:
        if (offset & (PAGE_SIZE - 1)) + len(data) <= PAGE_SIZE and 0 <= offset and offset + len(data) <= self.size:
            self.mem.write(self.pages[offset >> 12] + (offset & (PAGE_SIZE - 1)), data)
            return
        i = 0
        for addr, step in self._chunks(offset, len(data)):
            self.mem.write(addr, data[i:i + step])
            i += step


class Ring:
    """One direction of a channel.  The same object can read or write it; each side uses
    one of the two roles per ring.  ``suppress`` False: the writer signals after every
    write (the experiment without signal suppression)."""

    def __init__(self, view, suppress: bool = True) -> None:
        if view.size < HEADER_SIZE + PAGE_SIZE:
            raise RingError(f"a ring needs a header page and at least one data page, got {view.size} bytes")
        self.view = view
        self.data_size = view.size - HEADER_SIZE
        self.suppress = suppress

    # -- the header ---------------------------------------------------------------------

    def _u32(self, at: int) -> int:
        return int.from_bytes(self.view.read(at, 4), "little")

    def _set_u32(self, at: int, value: int) -> None:
        self.view.write(at, value.to_bytes(4, "little"))

    def init(self, pending_feature: bool = True) -> None:
        """A fresh ring (the guest does this before it hands the GPADL over)."""
        self.view.write(0, bytes(128))
        if pending_feature:
            self._set_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ)

    def _index(self, at: int, name: str) -> int:
        value = self._u32(at)
        if value >= self.data_size or value & 7:
            raise RingCorrupt(f"{name} {value:#x} outside a data area of {self.data_size:#x} bytes or not 8-aligned")
        return value

    def indices(self) -> tuple[int, int]:
        """(write_index, read_index), checked."""
        return self._index(WRITE_INDEX, "write_index"), self._index(READ_INDEX, "read_index")

    def _used(self, w: int, r: int) -> int:
        return w - r if w >= r else self.data_size - r + w

    def bytes_used(self) -> int:
        w, r = self.indices()
        return self._used(w, r)

    def is_empty(self) -> bool:
        w, r = self.indices()
        return w == r

    @property
    def interrupt_mask(self) -> int:
        return self._u32(INTERRUPT_MASK)

    def set_interrupt_mask(self, masked: bool) -> None:
        self._set_u32(INTERRUPT_MASK, int(masked))

    @property
    def pending_send_size(self) -> int:
        return self._u32(PENDING_SEND_SZ)

    # -- the data area, with wrap-around --------------------------------------------------

    def _copy_in(self, at: int, data: bytes) -> int:
        first = min(len(data), self.data_size - at)
        self.view.write(HEADER_SIZE + at, data[:first])
        if first < len(data):
            self.view.write(HEADER_SIZE, data[first:])
        return (at + len(data)) % self.data_size

    def _copy_out(self, at: int, n: int) -> bytes:
        first = min(n, self.data_size - at)
        data = self.view.read(HEADER_SIZE + at, first)
        if first < n:
            data += self.view.read(HEADER_SIZE, n - first)
        return data

    # -- the writer -------------------------------------------------------------------------

    def write(self, packets: list[bytes]) -> bool:
        """Append ``packets`` (each from :func:`encode_packet`, without trailer) in one
        commit; returns whether the reader must be signalled.  :class:`RingFull` when they
        do not fit now (pending_send_sz then asks the reader for the space)."""
        w, r = self.indices()
        need = sum(len(p) + TRAILER_SIZE for p in packets)
        if need >= self.data_size - self._used(w, r):
            if need >= self.data_size:
                raise RingError(f"{need} bytes of packets can never fit a ring of {self.data_size}")
            self._set_u32(PENDING_SEND_SZ, need + 8)
            raise RingFull(f"{need} bytes do not fit: {self.data_size - self._used(w, r)} free")
        # One copy of every packet with its trailer (the packet's start offset << 32).
        out, at = bytearray(), w
        for p in packets:
            out += p
            out += (at << 32).to_bytes(8, "little")
            at = (at + len(p) + TRAILER_SIZE) % self.data_size
        self._copy_in(w, bytes(out))
        if self._u32(PENDING_SEND_SZ):
            self._set_u32(PENDING_SEND_SZ, 0)
        # The index is stored after the data (a full barrier between, on hardware).
        self._set_u32(WRITE_INDEX, at)
        if not self.suppress:
            return True
        return self.interrupt_mask == 0 and self._u32(READ_INDEX) == w

    def free_bytes(self) -> int:
        w, r = self.indices()
        return self.data_size - self._used(w, r)

    # -- the reader -------------------------------------------------------------------------

    def read(self, limit: int = 1 << 30) -> tuple[list[Packet], bool]:
        """Every packet available (at most ``limit``), committed with one read-index
        store; returns them and whether the writer must be signalled (pending send space
        freed).  A malformed packet raises :class:`RingCorrupt` and nothing is committed."""
        w, r = self.indices()
        used = self._used(w, r)
        free_before = self.data_size - used
        packets: list[Packet] = []
        # Everything written, in one copy (two where it wraps), then parsed in place.
        data = self._copy_out(r, used) if used else b""
        pos = 0
        while pos < len(data) and len(packets) < limit:
            left = len(data) - pos
            if left < DESCRIPTOR_SIZE + TRAILER_SIZE:
                raise RingCorrupt(f"{left} bytes left, less than a packet")
            ptype, offset8, len8, flags, tid = DESCRIPTOR.unpack_from(data, pos)
            total = len8 * 8
            if total < DESCRIPTOR_SIZE or total + TRAILER_SIZE > left:
                raise RingCorrupt(f"packet length {total} at {(r + pos) % self.data_size:#x} "
                                  f"past the {left} bytes written")
            if offset8 * 8 < DESCRIPTOR_SIZE or offset8 > len8:
                raise RingCorrupt(f"data offset {offset8 * 8} inside the descriptor or past the packet")
            if ptype not in PACKET_TYPES:
                raise RingCorrupt(f"packet type {ptype:#x}")
            split = pos + offset8 * 8
            packets.append(Packet(ptype, flags, tid, data[pos + DESCRIPTOR_SIZE:split], data[split:pos + total]))
            pos += total + TRAILER_SIZE
        if not packets:
            return packets, False
        used -= pos
        at = (r + pos) % self.data_size
        self._set_u32(READ_INDEX, at)
        return packets, self._writer_wants_signal(free_before, self.data_size - used)

    def _writer_wants_signal(self, free_before: int, free_after: int) -> bool:
        if not self._u32(FEATURE_BITS) & FEAT_PENDING_SEND_SZ:
            return False
        pending = self._u32(PENDING_SEND_SZ) & ~7
        return bool(pending) and free_before < pending <= free_after
