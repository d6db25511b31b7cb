"""Interrupts waiting for a VP: what the VP's local APIC holds until the VP can take one.

The chipset's interrupt controller lives in the worker (the PIC, as in a Hyper-V generation
1 VM) and delivers a vector as ExtINT; the hypervisor queues it here for the target VP and
injects it at the VP's next resume — at once if the VP is halted (HLT ends), else when its
current exit completes.  Higher vectors go first, as the APIC prioritises them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class InterruptQueue:
    pending: list[tuple[int, tuple]] = field(default_factory=list)  # (vector, stamps)
    asserted: int = 0
    injected: int = 0
    by_vector: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def post(self, vector: int, stamps: tuple) -> None:
        self.asserted += 1
        self.pending.append((vector, stamps))

    def take(self) -> tuple[int, tuple]:
        """The highest pending vector and the stamps it came with."""
        best = max(range(len(self.pending)), key=lambda i: self.pending[i][0])
        vector, stamps = self.pending.pop(best)
        self.injected += 1
        self.by_vector[vector] = self.by_vector.get(vector, 0) + 1
        return vector, stamps

    def clear(self) -> None:
        self.pending.clear()
