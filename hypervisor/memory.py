"""The memory manager: the host page pool, who owns each page, and each partition's SLAT.

Every host page belongs to one partition: the root (ID 0) at first.  The root gives pages to
a child with HvCallDepositMemory and maps them into the child's guest-physical space with
HvCallMapGpaPages (the TLFS host flow); HvCallUnmapGpaPages takes them out of the map and
HvCallWithdrawMemory gives unmapped ones back.  When a partition is stopped or deleted,
all its pages return to the root.  The guest-physical → host map is the partition's SLAT
table, a shared-memory file the partition's VPs and worker translate through (see
:mod:`proto.memory`).
"""

from __future__ import annotations

import array
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from proto.errors import HvstackError
from proto.memory import PAGE_SIZE, SLAT_ENTRY, SLAT_INVALID
from proto.status import MemoryStatus, SlatStatus

ROOT = 0
# The largest guest-physical space a partition's table covers: 4 GiB.
MAX_GPA_PAGES = 1 << 20


class MemoryRefused(HvstackError):
    """The memory manager refuses a request (a page that is not the caller's to give or
    map, a range beyond the partition's space); the hypercall layer turns it into
    HV_STATUS_INVALID_PARAMETER and the refusal is counted."""


@dataclass
class Slat:
    path: Path
    entries: memoryview
    mapped: int = 0
    _map: mmap.mmap | None = field(default=None, repr=False)


class MemoryManager:
    def __init__(self, directory: str, pages: int) -> None:
        self.dir = Path(directory)
        self.pages = pages
        self.pool_path = self.dir / "memory.pool"
        with open(self.pool_path, "wb") as f:
            f.truncate(pages * PAGE_SIZE)
        os.chmod(self.pool_path, 0o600)
        self.owner = array.array("I", [ROOT]) * pages
        self._pool: mmap.mmap | None = None
        self.slats: dict[int, Slat] = {}
        self.counters = {"deposited": 0, "withdrawn": 0, "mapped": 0, "unmapped": 0, "released": 0,
                         "refused": 0}

    def pool(self) -> mmap.mmap:
        """The pool, mapped into the hypervisor (for the root's reads of guest RAM)."""
        if self._pool is None:
            fd = os.open(self.pool_path, os.O_RDWR)
            try:
                self._pool = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
        return self._pool

    # -- tables ------------------------------------------------------------------------

    def slat(self, partition: int, gpa_pages: int) -> Slat:
        """The partition's SLAT table, created (all invalid) on first use."""
        s = self.slats.get(partition)
        if s is None:
            if not 0 < gpa_pages <= MAX_GPA_PAGES:
                raise MemoryRefused(f"a guest-physical space of {gpa_pages} pages")
            path = self.dir / f"slat-{partition}.bin"
            with open(path, "wb") as f:
                f.write(b"\xff" * (gpa_pages * SLAT_ENTRY))
            os.chmod(path, 0o600)
            fd = os.open(path, os.O_RDWR)
            try:
                m = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            s = self.slats[partition] = Slat(path, memoryview(m).cast("I"), 0, m)
        return s

    def owned(self, partition: int) -> int:
        return sum(1 for o in self.owner if o == partition)

    # -- the hypercalls' work -------------------------------------------------------------

    def _refuse(self, why: str):
        self.counters["refused"] += 1
        return MemoryRefused(why)

    def deposit(self, partition: int, host_pages: list[int]) -> None:
        for hp in host_pages:
            if not 0 <= hp < self.pages or self.owner[hp] != ROOT:
                raise self._refuse(f"host page {hp:#x} is not the root's to give")
        for hp in host_pages:
            self.owner[hp] = partition
        self.counters["deposited"] += len(host_pages)

    def withdraw(self, partition: int, count: int) -> list[int]:
        """Give back up to ``count`` of the partition's unmapped pages; the pages returned."""
        mapped = set(self._mapped_hosts(partition))
        freed = []
        for hp, o in enumerate(self.owner):
            if len(freed) == count:
                break
            if o == partition and hp not in mapped:
                self.owner[hp] = ROOT
                freed.append(hp)
        self.counters["withdrawn"] += len(freed)
        return freed

    def map(self, partition: int, gpa_page: int, host_pages: list[int], gpa_pages: int) -> None:
        s = self.slat(partition, gpa_pages)
        if gpa_page + len(host_pages) > len(s.entries):
            raise self._refuse(f"GPA pages {gpa_page:#x}+{len(host_pages)} beyond the partition's space")
        for i, hp in enumerate(host_pages):
            if not 0 <= hp < self.pages or self.owner[hp] != partition:
                raise self._refuse(f"host page {hp:#x} was not deposited to partition {partition}")
            if s.entries[gpa_page + i] != SLAT_INVALID:
                raise self._refuse(f"GPA page {gpa_page + i:#x} is already mapped")
        for i, hp in enumerate(host_pages):
            s.entries[gpa_page + i] = hp
        s.mapped += len(host_pages)
        self.counters["mapped"] += len(host_pages)

    def unmap(self, partition: int, gpa_page: int, count: int) -> None:
        s = self.slats.get(partition)
        if s is None or gpa_page + count > len(s.entries):
            raise self._refuse(f"GPA pages {gpa_page:#x}+{count} are not the partition's")
        for i in range(gpa_page, gpa_page + count):
            if s.entries[i] != SLAT_INVALID:
                s.entries[i] = SLAT_INVALID
                s.mapped -= 1
                self.counters["unmapped"] += 1

    def release(self, partition: int) -> int:
        """The partition is gone: unmap everything and return its pages to the root."""
        s = self.slats.pop(partition, None)
        if s is not None:
            for i in range(len(s.entries)):
                s.entries[i] = SLAT_INVALID
            s.entries.release()
            s._map.close()
        n = 0
        for hp, o in enumerate(self.owner):
            if o == partition:
                self.owner[hp] = ROOT
                n += 1
        self.counters["released"] += n
        return n

    def _mapped_hosts(self, partition: int):
        s = self.slats.get(partition)
        if s is None:
            return
        for e in s.entries:
            if e != SLAT_INVALID:
                yield e

    def status(self) -> MemoryStatus:
        free = sum(1 for o in self.owner if o == ROOT)
        return MemoryStatus(self.pages, free, str(self.pool_path),
                            {str(pid): SlatStatus(s.mapped, self.owned(pid), str(s.path))
                             for pid, s in self.slats.items()},
                            dict(self.counters))
