"""A long bench's progress on standard error — which step, which round, the time left — as a
bar redrawn in place on a terminal, as plain lines when standard error is a pipe or a file.
Standard output keeps the results alone."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """``step(what)`` as each measurement starts; the time left is estimated from the
    planned steps' weights (their seconds of measuring) and the pace so far."""

    def __init__(self, plan: list[tuple[str, float]], stream: TextIO | None = None, enabled: bool = True) -> None:
        self.plan = plan  # (label, weight in seconds), in order
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = sum(w for _, w in plan) or 1.0
        self.done_weight = 0.0
        self.index = 0
        self.started = time.monotonic()
        self._drawn = False

    def step(self, label: str | None = None) -> None:
        """The next planned step starts (its label, or ``label`` if given)."""
        if self.index > 0:
            self.done_weight += self.plan[self.index - 1][1]
        if self.index >= len(self.plan):
            return
        planned, _ = self.plan[self.index]
        self.index += 1
        self._show(label or planned)

    def _left_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.done_weight <= 0:
            return None
        return elapsed / self.done_weight * (self.total - self.done_weight)

    def _show(self, label: str) -> None:
        if not self.enabled:
            return
        left = self._left_s()
        eta = f"~{left:.0f} s left" if left is not None else "estimating"
        n = f"[{self.index}/{len(self.plan)}]"
        if self.tty:
            filled = int(BAR_WIDTH * self.done_weight / self.total)
            line = f"\r{n} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {label} ({eta})"
            self.stream.write(line[:200].ljust(100))
            self._drawn = True
        else:
            self.stream.write(f"bench: {n} {label} ({eta})\n")
        self.stream.flush()

    def close(self) -> None:
        """The bar's line ends (on a terminal), so that what follows starts on its own."""
        if self._drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._drawn = False
