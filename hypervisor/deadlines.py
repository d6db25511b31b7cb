"""The loop's next timer wake-up, kept as one timer moves, without a walk over every VP of
every partition (issue 12: the local APIC's writes, each EOI among them, and the synthetic
timers' MSR writes walked them all).

The kept value is at most every deadline: a wake-up that comes too early finds nothing due,
and the expiry's own walk sets it right.
"""

from __future__ import annotations


def after_move(earliest: int | None, old: int | None, new: int | None) -> tuple[bool, int | None]:
    """One deadline went from ``old`` to ``new``: (walk, earliest) — ``walk`` when the one
    that moved may have been the earliest (only a walk over every timer can tell the next);
    otherwise the earliest, lowered to ``new`` if that is sooner."""
    if old == new:
        return False, earliest
    if old is not None and old == earliest:
        return True, earliest
    if new is not None and (earliest is None or new < earliest):
        return False, new
    return False, earliest


__all__ = ["after_move"]
