"""The guest kernel's spinlock.

A guest must never block in a host primitive while it is dispatched on a logical
processor: it would hold the LP without ever exiting, and the VP holding the lock might be
the one waiting for that LP.  So a waiter spins on PAUSE, a preemption point where the
scheduler takes the LP back at the end of the quantum — which is also what makes lock-holder
preemption, and the long-spin-wait enlightenment, matter.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from partitions.vp import Vp


class SpinLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the lock word; only ever tried, never waited on

    @contextmanager
    def held(self, vp: Vp):
        while not self._lock.acquire(blocking=False):
            vp.pause()
        try:
            yield
        finally:
            self._lock.release()
