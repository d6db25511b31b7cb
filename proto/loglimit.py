"""Log lines about what peers do, at a bounded rate and length.

A refused hello, a failed handshake or an idle connection shut down is worth a line; a
thousand a second from a hostile peer is a disk filling up.  :class:`LimitedLog` lets
``per_second`` lines through in each second, clips each to ``max_chars`` (the text in it
comes from peers), counts the rest, and says how many it held back in the next line it
writes (or when :meth:`flush` is called after the second is over).
"""

from __future__ import annotations

import logging
import time

MAX_CHARS = 240
PER_SECOND = 5


def clip(text: str, max_chars: int = MAX_CHARS) -> str:
    """``text`` cut to ``max_chars`` characters, with non-printable ones escaped."""
    if len(text) > max_chars:
        text = text[:max_chars] + f"… ({len(text) - max_chars} more characters)"
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class LimitedLog:
    def __init__(self, logger: logging.Logger, per_second: int = PER_SECOND, max_chars: int = MAX_CHARS,
                 clock=time.monotonic) -> None:
        self._log = logger
        self.per_second = per_second
        self.max_chars = max_chars
        self._clock = clock
        self._window = clock()
        self._in_window = 0
        self.suppressed = 0  # held back in the current window
        self.suppressed_total = 0

    def warning(self, fmt: str, *args) -> None:
        self._emit(logging.WARNING, fmt, args)

    def info(self, fmt: str, *args) -> None:
        self._emit(logging.INFO, fmt, args)

    def flush(self) -> None:
        """Report what was held back, once the second it was held back in is over."""
        if self.suppressed and self._clock() - self._window >= 1.0:
            self._roll(self._clock())

    def _roll(self, now: float) -> None:
        if self.suppressed:
            self._log.warning("… %d similar line(s) suppressed in the last %.1f s", self.suppressed,
                              now - self._window)
        self._window, self._in_window, self.suppressed = now, 0, 0

    def _emit(self, level: int, fmt: str, args: tuple) -> None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._roll(now)
        if self._in_window >= self.per_second:
            self.suppressed += 1
            self.suppressed_total += 1
            return
        self._in_window += 1
        try:
            text = fmt % args
        except (TypeError, ValueError):
            text = f"{fmt} {args!r}"
        self._log.log(level, "%s", clip(text, self.max_chars))
