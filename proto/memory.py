"""Guest memory as the processes share it: a host page pool and per-partition SLAT tables.

The hypervisor owns two kinds of shared-memory files in the run directory:

* the **pool** — the host's physical memory, ``pages`` × 4 KiB;
* one **SLAT table** per partition — ``u32`` host page numbers indexed by guest page
  number (GPA >> 12), :data:`SLAT_INVALID` where nothing is mapped: the second-level
  address translation the hypervisor programs with HvCallMapGpaPages/UnmapGpaPages.

A VP (and the partition's worker, for DMA) reads guest memory only through
:class:`GuestMemory`, which translates every access through the partition's table, so a
page the hypervisor unmaps is gone at once, for everyone.  The table is mapped read-only
outside the hypervisor.  (All processes of a run are one user's, so the pool file itself
cannot be fenced off per process; isolation is enforced at the translation and protocol
layers, and counted when refused.)
"""

from __future__ import annotations

import mmap
import os

PAGE_SIZE = 4096
PAGE_SHIFT = 12
SLAT_INVALID = 0xFFFFFFFF
SLAT_ENTRY = 4


class UnmappedGpa(Exception):
    """No host page backs this guest-physical address."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"GPA {gpa:#x} is not mapped")
        self.gpa = gpa


def _map_file(path: str, writable: bool) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)


class GuestMemory:
    """One partition's guest-physical memory, seen through its SLAT table."""

    def __init__(self, pool_path: str, slat_path: str) -> None:
        self._pool = _map_file(pool_path, writable=True)
        self._slat_map = _map_file(slat_path, writable=False)
        self._slat = memoryview(self._slat_map).cast("I")
        self.pages = len(self._slat)

    def host_offset(self, gpa: int) -> int:
        page = gpa >> PAGE_SHIFT
        if page >= self.pages:
            raise UnmappedGpa(gpa)
        host = self._slat[page]
        if host == SLAT_INVALID:
            raise UnmappedGpa(gpa)
        return (host << PAGE_SHIFT) | (gpa & (PAGE_SIZE - 1))

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
        else:
            self.write(gpa, value.to_bytes(size, "little"))

    def close(self) -> None:
        self._slat.release()
        self._slat_map.close()
        self._pool.close()
