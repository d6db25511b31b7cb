"""Guest memory as the processes share it: per-partition RAM files and SLAT tables.

The hypervisor owns two shared-memory files per partition in the run directory, both 0600:

* its **RAM** (``mem-ID.bin``) — the bytes of its guest-physical memory, indexed by guest
  page number; no other partition's bytes are in it;
* its **SLAT table** (``slat-ID.bin``) — ``u32`` host page numbers indexed by guest page
  number (GPA >> 12), :data:`SLAT_INVALID` where nothing is mapped: the second-level
  address translation the hypervisor programs with HvCallMapGpaPages/UnmapGpaPages.

A VP (and the partition's worker, for DMA) reads guest memory only through
:class:`GuestMemory`, which checks every access against the partition's table, so a page
the hypervisor unmaps is gone at once, for everyone.  Where the run is root's, the launcher
opens the two files (RAM read-write, SLAT read-only) and hands the descriptors to the
partition's processes, which run under uids of their own: they can neither open another
partition's files nor reopen their own table for writing (``/proc/self/fd/N`` is a fresh
open, checked against their uid).
"""

from __future__ import annotations

import mmap
import os

from proto.atomic import fetch_and_u8

PAGE_SIZE = 4096
PAGE_SHIFT = 12
SLAT_INVALID = 0xFFFFFFFF
SLAT_ENTRY = 4


class UnmappedGpa(Exception):
    """No host page backs this guest-physical address."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"GPA {gpa:#x} is not mapped")
        self.gpa = gpa


def page_runs(pfns) -> list[list[int]]:
    """Guest page numbers, in the order given → [first, count] runs of consecutive pages (as
    the GPA map messages carry them)."""
    out: list[list[int]] = []
    for p in pfns:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return out


def memory_path(directory, partition: int) -> str:
    """The partition's RAM file in the run directory."""
    return os.path.join(directory, f"mem-{partition}.bin")


def slat_path(directory, partition: int) -> str:
    """The partition's SLAT table in the run directory."""
    return os.path.join(directory, f"slat-{partition}.bin")


def dirty_path(directory, partition: int) -> str:
    """The partition's dirty log in the run directory: one byte per guest page, set by
    every :class:`GuestMemory` write of a process given it (live migration's pre-copy:
    root/migration.py harvests it)."""
    return os.path.join(directory, f"dirty-{partition}.bin")


def _map(file: str | int, writable: bool) -> mmap.mmap:
    """Map a file given by path or by an open descriptor (which stays the caller's)."""
    if isinstance(file, int):
        return mmap.mmap(file, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    fd = os.open(file, os.O_RDWR if writable else os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)


class GuestMemory:
    """One partition's guest-physical memory, seen through its SLAT table: ``ram`` and
    ``slat`` are paths or open descriptors (read-write and read-only); ``dirty``, where
    given, the partition's dirty log (path or descriptor, read-write): each write marks its
    pages there after storing (the harvester clears a mark before it copies the page, so
    no write is missed; a late mark only sends a page again).  A process may lie in its
    own partition's log, which only spoils that partition's migration."""

    def __init__(self, ram: str | int, slat: str | int, dirty: str | int | None = None) -> None:
        self._pool = _map(ram, writable=True)
        self._slat_map = _map(slat, writable=False)
        self._slat = memoryview(self._slat_map).cast("I")
        self.pages = len(self._slat)
        self._dirty = _map(dirty, writable=True) if dirty is not None else None
        if self._dirty is not None and len(self._dirty) < self.pages:
            size = len(self._dirty)
            self.close()
            raise ValueError(f"a dirty log of {size} bytes for {self.pages} pages")

    def host_offset(self, gpa: int) -> int:
        """Where ``gpa`` lies in the partition's RAM file (its guest-physical page is its
        place there; the SLAT says whether it is mapped)."""
        page = gpa >> PAGE_SHIFT
        if page >= self.pages or self._slat[page] == SLAT_INVALID:
            raise UnmappedGpa(gpa)
        return gpa

    def is_mapped(self, gpa: int, size: int = 1) -> bool:
        try:
            self.host_offset(gpa)
            if (gpa & (PAGE_SIZE - 1)) + size > PAGE_SIZE:
                self.host_offset(gpa + size - 1)
        except UnmappedGpa:
            return False
        return True

    def read(self, gpa: int, size: int) -> bytes:
        out = bytearray()
        while size:
            off = self.host_offset(gpa)
            n = min(size, PAGE_SIZE - (gpa & (PAGE_SIZE - 1)))
            out += self._pool[off:off + n]
            gpa += n
            size -= n
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        i = 0
        while i < len(data):
            off = self.host_offset(gpa)
            n = min(len(data) - i, PAGE_SIZE - (gpa & (PAGE_SIZE - 1)))
            self._pool[off:off + n] = data[i:i + n]
            if self._dirty is not None:
                self._dirty[off >> PAGE_SHIFT] = 1
            gpa += n
            i += n

    def read_int(self, gpa: int, size: int) -> int:
        off = self.host_offset(gpa)
        if (gpa & (PAGE_SIZE - 1)) + size <= PAGE_SIZE:
            return int.from_bytes(self._pool[off:off + size], "little")
        return int.from_bytes(self.read(gpa, size), "little")

    def write_int(self, gpa: int, size: int, value: int) -> None:
        off = self.host_offset(gpa)
        if (gpa & (PAGE_SIZE - 1)) + size <= PAGE_SIZE:
            self._pool[off:off + size] = value.to_bytes(size, "little")
            if self._dirty is not None:
                self._dirty[off >> PAGE_SHIFT] = 1
        else:
            self.write(gpa, value.to_bytes(size, "little"))

    def mapped_runs(self) -> list[tuple[int, int]]:
        """The mapped guest-physical ranges as (gpa, length), in GPA order: what a real-CPU
        backend maps into its emulator or KVM memory slots (partitions/cpu)."""
        runs: list[tuple[int, int]] = []
        start = None
        for page, entry in enumerate(self._slat):
            if entry != SLAT_INVALID:
                if start is None:
                    start = page
            elif start is not None:
                runs.append((start << PAGE_SHIFT, (page - start) << PAGE_SHIFT))
                start = None
        if start is not None:
            runs.append((start << PAGE_SHIFT, (self.pages - start) << PAGE_SHIFT))
        return runs

    def slat_snapshot(self) -> bytes:
        """The table as it is now: a backend that mapped ``mapped_runs`` compares it to see
        whether HvCallMapGpaPages/UnmapGpaPages changed the map since."""
        return bytes(self._slat_map)

    @property
    def ram(self) -> mmap.mmap:
        """The partition's RAM file as mapped here, indexed by GPA: the host memory behind
        every mapped range (``mapped_runs``).  Whoever maps it elsewhere must still check
        the SLAT for each access, as ``mapped_runs`` does at the time it is called."""
        return self._pool

    def fetch_and_u8(self, gpa: int, mask: int) -> int:
        """``lock and byte [gpa], mask``, atomic against the hypervisor's writes too (the
        SynIC's event flags: :mod:`proto.atomic`); the byte's old value."""
        old = fetch_and_u8(self._pool, off := self.host_offset(gpa), mask)
        if self._dirty is not None:
            self._dirty[off >> PAGE_SHIFT] = 1
        return old

    def close(self) -> None:
        self._slat.release()
        self._slat_map.close()
        self._pool.close()
        if self._dirty is not None:
            self._dirty.close()
