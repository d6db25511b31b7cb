"""A child partition's memory as the VSP process reaches it: only the pages a guest has
described — a GPADL's, mapped while the GPADL lives, and a request's page list, read or
written for that request by pread/pwrite on the RAM file — never the whole partition.

The launcher hands over the partition's RAM file (indexed by guest page number,
proto/memory.py) and its SLAT table by descriptor.  Every page is checked against the
SLAT when it is mapped and again on each access (the hypervisor may unmap it meanwhile),
so what the VSP touches is RAM the partition has now: a page outside it is
:class:`~proto.memory.UnmappedGpa`, which the VSPs turn into a refusal.  What the VSP maps
only to read (a frame's page list, netvsc's send buffer) is mapped read-only: the host's
memory protection, not a check, keeps the VSP from writing there (:class:`ReadOnlyGpa`).
"""

from __future__ import annotations

import mmap
import os
from contextlib import contextmanager

from proto.memory import PAGE_SHIFT, PAGE_SIZE, SLAT_INVALID, UnmappedGpa, page_runs


class ReadOnlyGpa(UnmappedGpa):
    """A write through a read-only mapping (refused like an unmapped page)."""

    def __init__(self, gpa: int) -> None:
        super().__init__(gpa)
        self.args = (f"GPA {gpa:#x} is mapped read-only",)


class PartitionMemory:
    def __init__(self, ram_fd: int, slat_fd: int, dirty_fd: int | None = None) -> None:
        self.ram_fd = ram_fd
        self._slat_map = mmap.mmap(slat_fd, 0, access=mmap.ACCESS_READ)
        self.slat = memoryview(self._slat_map).cast("I")
        self.pages = len(self.slat)
        self.mapped_pages = 0  # pages mapped now (GPADLs and requests in flight)
        # The partition's dirty log (live migration: root/migration.py), a byte per page:
        # every write of ours marks its pages after storing, as GuestMemory's do — the VSP
        # writes rings, receive sections and read data into guest memory while pre-copy runs.
        self._dirty = mmap.mmap(dirty_fd, 0) if dirty_fd is not None else None
        if self._dirty is not None and len(self._dirty) < self.pages:
            raise ValueError(f"a dirty log of {len(self._dirty)} bytes for {self.pages} pages")

    def mark(self, gpa: int, n: int) -> None:
        """Pages [gpa, gpa + n) were written (after the store)."""
        if self._dirty is not None and n > 0:
            first, last = gpa >> PAGE_SHIFT, (gpa + n - 1) >> PAGE_SHIFT
            self._dirty[first:last + 1] = b"\x01" * (last + 1 - first)

    def check(self, pfn: int) -> None:
        if not 0 <= pfn < self.pages or self.slat[pfn] == SLAT_INVALID:
            raise UnmappedGpa(pfn << PAGE_SHIFT)

    def _check_span(self, gpa: int, n: int) -> None:
        """Every page of [gpa, gpa + n) against the SLAT, a run at a time (one slice of the
        table, searched in C, instead of a call per page); the first refused page named."""
        first, last = gpa >> PAGE_SHIFT, (gpa + max(n, 1) - 1) >> PAGE_SHIFT
        if first < 0 or last >= self.pages or SLAT_INVALID in self.slat[first:last + 1]:
            for p in range(first, last + 1):
                self.check(p)

    def check_runs(self, runs) -> None:
        """Every page of every (gpa, bytes) run, before any of them is touched: a request
        whose pages cross into one that is not the partition's is refused whole."""
        for gpa, n in runs:
            self._check_span(gpa, n)

    def read(self, gpa: int, n: int) -> bytes:
        """``n`` bytes at ``gpa``, every page checked against the SLAT now: read straight from
        the RAM file (pread: no mapping to make and unmake, and nothing this call could write)."""
        self._check_span(gpa, n)
        return self._pread(gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        """``data`` into the guest's pages at ``gpa``, every page checked against the SLAT."""
        self._check_span(gpa, len(data))
        self._pwrite(gpa, data)

    def read_runs(self, runs) -> bytes:
        """A request's data: every (gpa, bytes) run, joined — every page of every run checked
        first (a request crossing into a page not the partition's is refused whole), then one
        pread a run, each checked once."""
        self.check_runs(runs)
        return b"".join([self._pread(gpa, n) for gpa, n in runs])

    def write_runs(self, runs, data) -> None:
        """``data`` into the (gpa, bytes) runs in order, all checked before the first write."""
        self.check_runs(runs)
        view, at = memoryview(data), 0
        for gpa, n in runs:
            self._pwrite(gpa, view[at:at + n])
            at += n

    def _pread(self, gpa: int, n: int) -> bytes:
        data = os.pread(self.ram_fd, n, gpa)  # (the file is indexed by guest-physical address)
        if len(data) != n:
            raise UnmappedGpa(gpa + len(data))
        return data

    def _pwrite(self, gpa: int, data) -> None:
        if os.pwrite(self.ram_fd, data, gpa) != len(data):
            raise UnmappedGpa(gpa)
        self.mark(gpa, len(data))

    def map(self, pfns: list[int], writable: bool = True) -> "Mapping":
        """Map exactly ``pfns`` (each checked), contiguous runs in one mmap each; read-only
        unless ``writable``."""
        for p in pfns:
            self.check(p)
        return Mapping(self, pfns, writable)

    @contextmanager
    def mapped(self, pfns, writable: bool = True):
        m = self.map(list(pfns), writable)
        try:
            yield m
        finally:
            m.close()

    def close(self) -> None:
        self.slat.release()
        self._slat_map.close()
        if self._dirty is not None:
            self._dirty.close()


class Mapping:
    """Some pages of a partition, by guest-physical address (``read``/``write``, as
    :class:`proto.memory.GuestMemory` offers them, for :class:`proto.vmbus_ring.PagedView`)."""

    def __init__(self, mem: PartitionMemory, pfns: list[int], writable: bool = True) -> None:
        self.mem = mem
        self.writable = writable
        self.where: dict[int, tuple[mmap.mmap, int]] = {}  # pfn → (its run's map, offset in it)
        self.maps: list[mmap.mmap] = []
        self.counted = 0
        runs = page_runs(sorted(set(pfns)))
        try:
            for first, count in runs:
                m = mmap.mmap(mem.ram_fd, count * PAGE_SIZE, offset=first * PAGE_SIZE,
                              access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
                self.maps.append(m)
                for i in range(count):
                    self.where[first + i] = (m, i * PAGE_SIZE)
        except BaseException:
            self.close()
            raise
        self.counted = len(self.where)
        mem.mapped_pages += self.counted

    def _span(self, gpa: int, n: int) -> tuple[mmap.mmap, int, int]:
        """(map, offset, bytes) of as much of [gpa, gpa + n) as one run holds; every page
        of it checked against the SLAT now."""
        pfn = gpa >> PAGE_SHIFT
        got = self.where.get(pfn)
        if got is None:
            raise UnmappedGpa(gpa)
        m, off = got
        off += gpa & (PAGE_SIZE - 1)
        step = min(n, len(m) - off)
        for p in range(pfn, ((gpa + step - 1) >> PAGE_SHIFT) + 1):
            self.mem.check(p)
        return m, off, step

    def read(self, gpa: int, n: int) -> bytes:
        m, off, step = self._span(gpa, n)
        if step == n:
            return m[off:off + n]
        out = [m[off:off + step]]
        while step < n:
            gpa, n = gpa + step, n - step
            m, off, step = self._span(gpa, n)
            out.append(m[off:off + step])
        return b"".join(out)

    def write(self, gpa: int, data: bytes) -> None:
        if not self.writable:
            raise ReadOnlyGpa(gpa)  # (the map itself would refuse it too: ACCESS_READ)
        i = 0
        while i < len(data):
            m, off, step = self._span(gpa + i, len(data) - i)
            m[off:off + step] = data[i:i + step]
            i += step
        self.mem.mark(gpa, len(data))

    def close(self) -> None:
        self.mem.mapped_pages -= self.counted
        self.counted = 0
        for m in self.maps:
            m.close()
        self.maps, self.where = [], {}
