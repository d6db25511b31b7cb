"""A logical processor's TLB as the processes share it: one file per partition and LP in the
run directory (``tlb-pID-lpN.bin``).

The hypervisor creates a partition's files (one per LP, when the partition is initialized)
and flushes them; the partition's VP dispatched on an LP looks translations up in its file
for that LP and fills it after a page walk.  A partition sees and writes only its own
entries: a file shared by every partition on an LP would let one partition read another's
address-space tags and plant translations in its name.  What a partition writes in its own
file can only misdirect its own accesses, and only within its own memory: every
guest-physical page a translation yields is still checked against the read-only SLAT.
Why the partition's view is writable, and what writing it can gain a guest.  The fill is
the emulated MMU's: the VP thread walks the guest's page tables in its own process and
stores the result, as a CPU's page walker does; making the view read-only would move every
fill to the hypervisor, a round trip per TLB miss — the cost the TLB experiment measures.
A guest that writes its view directly gets translations guest virtual → guest physical
in its own address spaces, which it can get anyway by writing its page tables: the guest
physical page a lookup yields still goes through the SLAT (read-only, the hypervisor's)
into the partition's own RAM file, so no entry reaches a page that is not the partition's.
The file is the partition's alone (0600, the hypervisor's; another partition's cannot be
opened).  What else its descriptor allows — changing the file's size, garbage in the header
or in tags — must not reach the hypervisor: the hypervisor reads and clears entries with
``pread``/``pwrite`` (:mod:`hypervisor.tlb`), never through a mapping that a truncated file
would turn into SIGBUS, reads a short file as invalid entries, and counts every valid entry
for the file's owner.  ``fills`` is the guest's own count (as its VP statistics are).

A file is a small header and :data:`ENTRIES` direct-mapped entries of fixed layout::

    header  magic u32, entries u32, fills u64 (counted by the VPs that fill), 16 bytes
    entry   valid u32, partition u32, address space u64 (the CR3 value),
            guest virtual page u64, guest physical page u64                  32 bytes

An entry is found at ``(vpn ^ hash(partition, cr3)) % ENTRIES``: translations are tagged by
partition and address space, so a CR3 switch needs no flush.

Writers and the races accepted:

* Only the partition's VP running on an LP writes its entries' tag and frame fields, and one
  VP runs on an LP at a time (the scheduler), so those fields never tear.  A fill clears ``valid``,
  writes the fields, then sets ``valid`` last.
* The hypervisor only ever clears ``valid``.  A flush of another LP (the flush hypercalls)
  may run while a VP on that LP is filling: the fill's ``valid = 1`` can land after the
  flush, leaving a translation walked before the flush.  A lookup that read ``valid`` just
  before a flush uses the old translation once.  Both are what a remote flush without an
  IPI barrier gives; hvstack's guests do not change page tables under a running walk, so
  such an entry is never wrong, only older than the flush.
* ``fills`` is a plain read-modify-write by the one VP on the LP; the hypervisor only reads it.
"""

from __future__ import annotations

import mmap
import os
import struct

MAGIC = 0x31424C54  # "TLB1"
ENTRIES = 64
HEADER = struct.Struct("<IIQ16x")  # 32 bytes
ENTRY = struct.Struct("<IIQQQ")  # 32 bytes
_VALID = struct.Struct("<I")
_FIELDS = struct.Struct("<IQQQ")  # the entry after its valid word
_FILLS = struct.Struct("<Q")
FILE_SIZE = HEADER.size + ENTRIES * ENTRY.size


def slot(partition: int, cr3: int, vpn: int) -> int:
    """The entry index of a translation: the page number mixed with a hash of the tag."""
    h = ((cr3 >> 12) * 0x9E3779B1 ^ partition * 0x85EBCA77) >> 7
    return (vpn ^ h) % ENTRIES


def offset(index: int) -> int:
    return HEADER.size + index * ENTRY.size


def tlb_path(directory, partition: int, lp: int) -> str:
    """The partition's TLB file for logical processor ``lp``."""
    return os.path.join(directory, f"tlb-p{partition}-lp{lp}.bin")


def create(path: str) -> None:
    """A new, empty TLB file (every entry invalid), 0600 from the start."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, HEADER.pack(MAGIC, ENTRIES, 0) + bytes(ENTRIES * ENTRY.size))
    finally:
        os.close(fd)


class LpTlb:
    """One partition's TLB on one LP as its VPs use it, mapped read-write; ``file`` is a
    path or an open descriptor (which stays the caller's)."""

    def __init__(self, file: str | int) -> None:
        self.path = file if isinstance(file, str) else f"fd {file}"
        if isinstance(file, int):
            self.buf = mmap.mmap(file, FILE_SIZE)
        else:
            fd = os.open(file, os.O_RDWR)
            try:
                self.buf = mmap.mmap(fd, FILE_SIZE)
            finally:
                os.close(fd)
        magic, entries, _ = HEADER.unpack_from(self.buf, 0)
        if magic != MAGIC or entries != ENTRIES:
            raise ValueError(f"{self.path} is not a TLB file of {ENTRIES} entries")

    def lookup(self, partition: int, cr3: int, vpn: int) -> int | None:
        """The guest physical page, or None on a miss."""
        valid, p, asid, v, pfn = ENTRY.unpack_from(self.buf, offset(slot(partition, cr3, vpn)))
        if valid and v == vpn and asid == cr3 and p == partition:
            return pfn
        return None

    def fill(self, partition: int, cr3: int, vpn: int, pfn: int) -> bool:
        """Install a translation; True if it evicted a valid entry with another tag."""
        off = offset(slot(partition, cr3, vpn))
        buf = self.buf
        valid, p, asid, v, _ = ENTRY.unpack_from(buf, off)
        evicted = bool(valid) and (p, asid, v) != (partition, cr3, vpn)
        _VALID.pack_into(buf, off, 0)
        _FIELDS.pack_into(buf, off + 4, partition, cr3, vpn, pfn)
        _VALID.pack_into(buf, off, 1)  # last
        (fills,) = _FILLS.unpack_from(buf, 8)
        _FILLS.pack_into(buf, 8, fills + 1)
        return evicted

    @property
    def fills(self) -> int:
        return _FILLS.unpack_from(self.buf, 8)[0]

    def close(self) -> None:
        self.buf.close()


def in_ranges(vpn: int, ranges) -> bool:
    for first, count in ranges:
        if first <= vpn < first + count:
            return True
    return False
