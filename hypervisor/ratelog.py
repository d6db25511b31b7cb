"""Log lines a peer can cause, rate-limited: a peer that repeats one mistake (or hits one bug
of ours) in a loop must not fill the disk.  What is held back is counted and said in the
next line that is written."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most ``per_s`` lines a second through ``logger``."""

    def __init__(self, logger: logging.Logger, per_s: int) -> None:
        self._log = logger
        self._per_s = per_s
        self._second = 0
        self._in_second = 0
        self.suppressed = 0

    def _allow(self) -> bool:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._in_second = second, 0
        self._in_second += 1
        if self._in_second > self._per_s:
            self.suppressed += 1
            return False
        return True

    def _emit(self, level: int, fmt: str, args: tuple, exc_info: bool) -> None:
        if not self._allow():
            return
        if self.suppressed:
            fmt += f" ({self.suppressed} more not logged)"
            self.suppressed = 0
        self._log.log(level, fmt, *args, exc_info=exc_info)

    def warning(self, fmt: str, *args) -> None:
        self._emit(logging.WARNING, fmt, args, False)

    def error(self, fmt: str, *args, traceback: bool = False) -> None:
        """``traceback``: the current exception's, with the first line of each second."""
        self._emit(logging.ERROR, fmt, args, traceback and self._in_second == 1)
