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

from pathlib import Path

from proto import tlb as layout
from proto.status import TlbLpStatus, TlbStatus
from proto.tlb import LpTlb, tlb_path

FLUSH_KINDS = ("mov_cr3", "invlpg", "address_space", "address_list")


class Tlbs:
    def __init__(self, directory: str, lps: int) -> None:
        self.dir = Path(directory)
        self.lp_count = lps
        self.by_partition: dict[int, list[LpTlb]] = {}  # partition → its TLB on each LP
        self.flushes = [dict.fromkeys(FLUSH_KINDS, 0) for _ in range(lps)]
        self.cleared = [0] * lps  # valid entries the flushes removed

    def paths_of(self, partition: int) -> list[str]:
        """The partition's TLB files, by LP index (created on first use)."""
        if partition not in self.by_partition:
            paths = [tlb_path(self.dir, partition, i) for i in range(self.lp_count)]
            for p in paths:
                layout.create(p)
            self.by_partition[partition] = [LpTlb(p) for p in paths]
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
