"""The memory manager: the host page pool, who owns each page, and each partition's SLAT
and RAM file.

Every host page belongs to one partition: the root (ID 0) at first.  The root gives pages to
a child with HvCallDepositMemory and maps them into the child's guest-physical space with
HvCallMapGpaPages (the TLFS host flow); HvCallUnmapGpaPages takes them out of the map and
HvCallWithdrawMemory gives unmapped ones back.  When a partition is stopped or deleted,
all its pages return to the root.  The guest-physical → host map is the partition's SLAT
table, a shared-memory file the partition's VPs and worker translate through (see
:mod:`proto.memory`).

The pool is accounting: host page numbers and who owns each.  The bytes of a partition's
RAM live in a file of its own (``mem-ID.bin``, indexed by guest-physical page), never in a
file shared by partitions, so a partition process can be handed a descriptor of its own
memory and of nothing else (issue 9: a partition read and wrote another's RAM through the
shared pool file).  A page mapped by HvCallMapGpaPages reads as zeros, as a deposited page
does on Hyper-V: the file starts sparse (zeros) and an unmapped page is zeroed.  Every file is 0600 and the
hypervisor's (root's, where the run is root's).
"""

from __future__ import annotations

import array
import io
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from proto.errors import HvstackError
from proto.memory import PAGE_SHIFT, PAGE_SIZE, SLAT_ENTRY, SLAT_INVALID, memory_path, slat_path
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
    # The hypervisor's own copy of the table, the one it reads; every change is written
    # through to the file (pwrite) for the partition's read-only view.  Never a mapping
    # of the file: where the partition can reopen it for writing (the namespaces level:
    # one uid) it could truncate it, and a mapping of a truncated file faults (SIGBUS).
    entries: array.array
    mapped: int = 0
    file: io.FileIO | None = field(default=None, repr=False)  # the SLAT file, written through
    ram_path: Path | None = None  # the partition's RAM file, indexed by guest-physical page
    # The hypervisor's descriptor of it (pread/pwrite: read_ram, write_ram, the zeroing of
    # unmapped pages) and its mapping of it (``ram``: SynIC's atomic flag updates and io's
    # bulk accesses need one).  The partition and its worker hold the file read-write; what
    # keeps them from cutting it short under that mapping (SIGBUS in the hypervisor) is the
    # seccomp filter (no truncate, ftruncate, fallocate nor O_TRUNC: proto.seccomp).
    ram_file: io.FileIO | None = field(default=None, repr=False)
    ram: mmap.mmap | None = field(default=None, repr=False)

    @property
    def ram_fd(self) -> int:
        return self.ram_file.fileno()


class MemoryManager:
    def __init__(self, directory: str, pages: int) -> None:
        self.dir = Path(directory)
        self.pages = pages
        self.owner = array.array("I", [ROOT]) * pages
        # Pages owned, by partition, kept as pages change hands: status reads it for every
        # partition, 4 times a second (counting the pool for each was O(partitions × pool)).
        self._owned: dict[int, int] = {}
        self.slats: dict[int, Slat] = {}
        self.counters = {"deposited": 0, "withdrawn": 0, "mapped": 0, "unmapped": 0, "released": 0,
                         "refused": 0}

    # -- tables ------------------------------------------------------------------------

    def slat(self, partition: int, gpa_pages: int) -> Slat:
        """The partition's SLAT table, created (all invalid) on first use."""
        s = self.slats.get(partition)
        if s is None:
            if not 0 < gpa_pages <= MAX_GPA_PAGES:
                raise MemoryRefused(f"a guest-physical space of {gpa_pages} pages")
            path = Path(slat_path(self.dir, partition))
            file = _create(path)
            # Read-only for everyone, the owner too: the hypervisor writes through the
            # descriptor it holds, and a partition of the same uid (the namespaces level)
            # cannot reopen it for writing (nor chmod it back: the seccomp filter).
            os.fchmod(file.fileno(), 0o400)
            entries = array.array("I", [SLAT_INVALID]) * gpa_pages
            os.pwrite(file.fileno(), entries.tobytes(), 0)
            ram_path = Path(memory_path(self.dir, partition))
            ram_file = _create(ram_path)
            os.ftruncate(ram_file.fileno(), gpa_pages * PAGE_SIZE)  # sparse: pages cost nothing until written
            ram = mmap.mmap(ram_file.fileno(), 0)
            s = self.slats[partition] = Slat(path, entries, 0, file, ram_path, ram_file, ram)
        return s

    def ram_offset(self, partition: int, gpa: int) -> int | None:
        """Where ``gpa`` lies in the partition's RAM file; None when it is not mapped."""
        s = self.slats.get(partition)
        page = gpa >> PAGE_SHIFT
        if s is None or page >= len(s.entries) or s.entries[page] == SLAT_INVALID:
            return None
        return gpa

    def read_ram(self, partition: int, gpa: int, size: int) -> bytes:
        """``size`` bytes of the partition's RAM at ``gpa`` (a mapped page, see
        :meth:`ram_offset`); what the partition cut off its file reads as zeros."""
        data = os.pread(self.slats[partition].ram_fd, size, gpa)
        return data + bytes(size - len(data))

    def write_ram(self, partition: int, gpa: int, data: bytes) -> None:
        os.pwrite(self.slats[partition].ram_fd, data, gpa)

    def owned(self, partition: int) -> int:
        return self._owned.get(partition, 0)

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
        self._owned[partition] = self._owned.get(partition, 0) + len(host_pages)
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
        self._owned[partition] = self._owned.get(partition, 0) - len(freed)
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
        s.entries[gpa_page:gpa_page + len(host_pages)] = array.array("I", host_pages)
        _write_through(s, gpa_page, len(host_pages))
        s.mapped += len(host_pages)
        self.counters["mapped"] += len(host_pages)

    def unmap(self, partition: int, gpa_page: int, count: int) -> None:
        s = self.slats.get(partition)
        if s is None or gpa_page + count > len(s.entries):
            raise self._refuse(f"GPA pages {gpa_page:#x}+{count} are not the partition's")
        for i in range(gpa_page, gpa_page + count):
            if s.entries[i] != SLAT_INVALID:
                s.entries[i] = SLAT_INVALID
                os.pwrite(s.ram_fd, bytes(PAGE_SIZE), i * PAGE_SIZE)
                s.mapped -= 1
                self.counters["unmapped"] += 1
        _write_through(s, gpa_page, count)

    def release(self, partition: int) -> int:
        """The partition is gone: unmap everything and return its pages to the root."""
        s = self.slats.pop(partition, None)
        if s is not None:
            s.entries = array.array("I", [SLAT_INVALID]) * len(s.entries)
            _write_through(s, 0, len(s.entries))
            s.file.close()
            s.ram.close()
            s.ram_file.close()
            for path in (s.ram_path, s.path):
                path.unlink(missing_ok=True)  # the processes that mapped them keep their pages
        n = 0
        for hp, o in enumerate(self.owner):
            if o == partition:
                self.owner[hp] = ROOT
                n += 1
        self._owned.pop(partition, None)
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
        free = self.owner.count(ROOT)
        return MemoryStatus(self.pages, free, str(self.dir),
                            {str(pid): SlatStatus(s.mapped, self.owned(pid), str(s.path))
                             for pid, s in self.slats.items()},
                            dict(self.counters))


def _write_through(s: Slat, first: int, count: int) -> None:
    """Entries ``first``…``first + count - 1`` of the hypervisor's copy into the file."""
    os.pwrite(s.file.fileno(), s.entries[first:first + count].tobytes(), first * SLAT_ENTRY)


def _create(path: Path) -> io.FileIO:
    """A new file, 0600 from the start (never briefly wider), read-write; a file object
    (unbuffered) so that its descriptor closes with it."""
    path.unlink(missing_ok=True)
    return io.FileIO(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "r+")

