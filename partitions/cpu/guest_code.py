"""One VP of a partition in guest code at a time, for the unicorn backend: QEMU's TCG
without MTTCG.  Unicorn translates ``lock`` prefixes without host atomics, so two emulator
instances sharing memory lose updates (2 threads × 2 M ``lock incl`` on one word counted
2.6 M), and SeaBIOS's ``SMPLock`` (``lock btsl``) was once lost for good: its owner's
release landed between a spinner's read and write, which wrote the 1 back."""

from __future__ import annotations

import threading
from typing import Callable

WAIT_S = 0.05  # how often a VP waiting for the lock looks at the partition's stop


class GuestCode:
    """The partition's lock (``Boot.guest_code_lock``) as one VP holds it: :meth:`take`
    before ``emu_start``, :meth:`give` after; ``with`` around a hook's exit gives it up
    while the VP waits for the answer (the hook's instruction is not half done in memory:
    IN/OUT, CPUID, MMIO, MSR) and takes it back, or calls ``on_stop`` if the partition
    stops first."""

    def __init__(self, lock: threading.Lock, stop: threading.Event, on_stop: Callable[[], None]) -> None:
        self._lock, self._stop, self._on_stop = lock, stop, on_stop
        self._holding = False

    def take(self) -> bool:
        """Wait for the lock (False: the partition stops first)."""
        while not self._lock.acquire(timeout=WAIT_S):
            if self._stop.is_set():
                return False
        self._holding = True
        return True

    def give(self) -> None:
        if self._holding:
            self._holding = False
            self._lock.release()

    def __enter__(self) -> None:
        self.give()

    def __exit__(self, *_) -> None:
        if not self.take():
            self._on_stop()
