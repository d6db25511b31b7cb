"""The TLBs of the logical processors: created and flushed by the hypervisor.

One shared-memory file per partition and LP in the memory directory (the run directory),
created when the partition is initialized; the layout, the races accepted and why each
partition has files of its own are in :mod:`proto.tlb`.  The VPs fill them; the
hypervisor flushes:

* the whole LP — the non-enlightened flush, an intercepted MOV to CR3 or INVLPG: every
  entry goes, other partitions' included (a hardware TLB without tags would lose them too);
* one partition's entries on every LP — HvCallFlushVirtualAddressSpace (one address space,
  or all of them) and HvCallFlushVirtualAddressList (pages of one or all address spaces).
  A VP may run on any LP, so its partition's entries may be on any of them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from proto import tlb as layout
from proto.status import TlbLpStatus, TlbStatus
from proto.tlb import ENTRY, FILE_SIZE, HEADER, ENTRIES, in_ranges, offset, tlb_path

FLUSH_KINDS = ("mov_cr3", "invlpg", "address_space", "address_list")
_INVALID = bytes(4)


class TlbFile:
    """The hypervisor's view of one partition's TLB on one LP: read with ``pread`` and
    cleared with ``pwrite`` through a descriptor of its own, never mapped.  The partition
    holds a read-write descriptor of the same file (its VPs fill it) and may truncate or
    scribble on it: a mapping would then fault (SIGBUS: the hypervisor, and every partition
    with it, gone), a short read is only entries that are not valid."""

    def __init__(self, path: str) -> None:
        layout.create(path)
        self.path = path
        # A file object, so that the descriptor closes with it.
        self._file = io.FileIO(os.open(path, os.O_RDWR | os.O_CLOEXEC), "r+")
        self.fd = self._file.fileno()

    def _read(self) -> bytes:
        data = os.pread(self.fd, FILE_SIZE, 0)
        return data + bytes(FILE_SIZE - len(data))

    def entries(self):
        """(index, valid, partition, address space, vpn, pfn) of every entry."""
        data = self._read()
        for i in range(ENTRIES):
            yield (i, *ENTRY.unpack_from(data, offset(i)))

    def flush(self, partition: int | None = None, cr3: int | None = None, vpns=None) -> int:
        """Clear ``valid`` of the matching entries — all of them, or only ``partition``'s
        (in address space ``cr3`` if given, for pages in ``vpns`` if given).  Returns how
        many valid entries were cleared."""
        cleared = 0
        for i, valid, p, asid, v, _ in self.entries():
            if not valid:
                continue
            if partition is not None and (p != partition or (cr3 is not None and asid != cr3)
                                          or (vpns is not None and not in_ranges(v, vpns))):
                continue
            os.pwrite(self.fd, _INVALID, offset(i))
            cleared += 1
        return cleared

    @property
    def fills(self) -> int:
        """The fills the partition's VPs counted (the guest's own figure, as its VP stats)."""
        return HEADER.unpack_from(self._read(), 0)[2]

    def close(self) -> None:
        self._file.close()


class Tlbs:
    def __init__(self, directory: str, lps: int) -> None:
        self.dir = Path(directory)
        self.lp_count = lps
        self.by_partition: dict[int, list[TlbFile]] = {}  # partition → its TLB on each LP
        self.flushes = [dict.fromkeys(FLUSH_KINDS, 0) for _ in range(lps)]
        self.cleared = [0] * lps  # valid entries the flushes removed

    def paths_of(self, partition: int) -> list[str]:
        """The partition's TLB files, by LP index (created on first use)."""
        if partition not in self.by_partition:
            self.by_partition[partition] = [TlbFile(tlb_path(self.dir, partition, i))
                                            for i in range(self.lp_count)]
        return [t.path for t in self.by_partition[partition]]

    def flush_lp(self, lp: int, kind: str) -> int:
        """The whole LP's TLB, every partition's entries on it (``kind``: mov_cr3 or invlpg)."""
        n = sum(tlbs[lp].flush() for tlbs in self.by_partition.values())
        self.flushes[lp][kind] += 1
        self.cleared[lp] += n
        return n

    def flush_partition(self, partition: int, cr3: int | None = None, vpns=None,
                        kind: str = "address_space") -> int:
        """``partition``'s entries on every LP: of address space ``cr3`` (None: all), of
        the pages in ``vpns`` (``[(first, count), …]``; None: all)."""
        total = 0
        for i, t in enumerate(self.by_partition.get(partition) or [None] * self.lp_count):
            n = t.flush(partition, cr3, vpns) if t is not None else 0
            self.flushes[i][kind] += 1
            self.cleared[i] += n
            total += n
        return total

    def status(self) -> TlbStatus:
        lps = []
        for i in range(self.lp_count):
            by_partition: dict[str, int] = {}
            fills = 0
            for owner, tlbs in self.by_partition.items():
                fills += tlbs[i].fills
                # Counted for the file's partition, whatever tag an entry claims: a
                # partition writes its own file, and cannot make status speak for another.
                n = sum(1 for _, valid, *_ in tlbs[i].entries() if valid)
                if n:
                    by_partition[str(owner)] = by_partition.get(str(owner), 0) + n
            lps.append(TlbLpStatus(i, fills, dict(self.flushes[i]), self.cleared[i], by_partition))
        return TlbStatus(layout.ENTRIES, lps)
