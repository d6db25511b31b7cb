"""What was delivered, for ``io irqs`` (QEMU qtest's ``irq_intercept_in`` idea).

Each VP keeps the vectors injected into it (recorded where any interrupt is taken for the
guest, ``interrupts.next_interrupt`` — with a resume, or posted to a VP executing guest code
— from the VP's local APIC or ExtINT from the PIC), and each partition
the vectors its PIC raised at its output (recorded when the worker's ``assert_interrupt``
arrives, after the PIC's INTA).  A bounded log each: a reader takes what arrived since its
last look, and learns how many it missed if the log overflowed in between.  Recording is a
deque append; nothing else on the interrupt path changes.
"""

from __future__ import annotations

from collections import deque

from proto.io_messages import IRQ_LOG_VECTORS


class IrqLog:
    __slots__ = ("_vectors", "_recorded", "_taken")

    def __init__(self) -> None:
        self._vectors: deque[int] = deque(maxlen=IRQ_LOG_VECTORS)
        self._recorded = 0  # ever recorded
        self._taken = 0  # ever taken or dropped

    def record(self, vector: int) -> None:
        self._vectors.append(vector & 0xFF)
        self._recorded += 1

    def take(self) -> tuple[bytes, int]:
        """(the vectors since the last look, oldest first; how many the log lost)."""
        vectors = bytes(self._vectors)
        self._vectors.clear()
        dropped = self._recorded - self._taken - len(vectors)
        self._taken = self._recorded
        return vectors, dropped
