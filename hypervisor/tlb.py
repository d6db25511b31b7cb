"""The TLBs of the logical processors: created and flushed by the hypervisor.

One shared-memory file per LP in the memory directory (the run directory); the layout and
the races accepted are in :mod:`proto.tlb`.  The VPs fill them; the hypervisor flushes:

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
from proto.tlb import LpTlb

FLUSH_KINDS = ("mov_cr3", "invlpg", "address_space", "address_list")


class Tlbs:
    def __init__(self, directory: str, lps: int) -> None:
        self.paths = [str(Path(directory) / f"tlb-lp{i}.bin") for i in range(lps)]
        for p in self.paths:
            layout.create(p)
        self.lps = [LpTlb(p) for p in self.paths]
        self.flushes = [dict.fromkeys(FLUSH_KINDS, 0) for _ in self.lps]
        self.cleared = [0] * lps  # valid entries the flushes removed

    def flush_lp(self, lp: int, kind: str) -> int:
        """The whole LP's TLB (``kind``: mov_cr3 or invlpg)."""
        n = self.lps[lp].flush()
        self.flushes[lp][kind] += 1
        self.cleared[lp] += n
        return n

    def flush_partition(self, partition: int, cr3: int | None = None, vpns=None,
                        kind: str = "address_space") -> int:
        """``partition``'s entries on every LP: of address space ``cr3`` (None: all), of
        the pages in ``vpns`` (``[(first, count), …]``; None: all)."""
        total = 0
        for i, t in enumerate(self.lps):
            n = t.flush(partition, cr3, vpns)
            self.flushes[i][kind] += 1
            self.cleared[i] += n
            total += n
        return total

    def status(self) -> TlbStatus:
        lps = []
        for i, t in enumerate(self.lps):
            by_partition: dict[str, int] = {}
            for _, valid, p, *_ in t.entries():
                if valid:
                    by_partition[str(p)] = by_partition.get(str(p), 0) + 1
            lps.append(TlbLpStatus(i, t.fills, dict(self.flushes[i]), self.cleared[i], by_partition))
        return TlbStatus(layout.ENTRIES, lps)
