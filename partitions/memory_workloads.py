"""A memory-writing guest workload (issue 13: what live migration's pre-copy is measured
and checked with): VP 0 writes guest pages above 1 MiB at a steady rate, pass after pass
over its area, each page stamped with its pass and number at both ends — and before
overwriting a page it checks the stamp the previous pass left there.  A page write that a
migration (or a save) lost shows as a stale stamp: ``MISMATCH``.  A restored kernel goes on
from its last checkpoint (partitions/resume.py), so it may redo writes of the current pass:
a stamp of this pass or the one before is right.

The first pass fills the area as fast as the guest runs (a guest that has touched all its
memory, as a long-running one has); then ``memwrite`` writes 256 pages (1 MiB) a second,
``memwrite_fast`` 4096 (16 MiB) a second, and ``memwrite_max`` as fast as the guest runs —
a dirtier bound by its CPU, which is what a migration's auto-converge throttle slows.
"""

from __future__ import annotations

import time

AREA_START = 0x100000  # above the low megabyte the kernel's own state lives in
PAGE = 4096
MAX_PAGES_PER_TURN = 512  # a turn is one workload step: bounded, whatever the backlog
REPORT_EVERY_PASSES = 1


def _stamp(pass_: int, page: int) -> bytes:
    return (pass_ << 32 | page).to_bytes(8, "little")


def _area_pages(vp, sys) -> int:
    """The guest pages of the area: from 1 MiB to the end of the first mapped run holding it."""
    pages = sys.timers.get("memwrite_area")
    if pages is None:
        top = next((gpa + length for gpa, length in vp.mem.mapped_runs() if gpa <= AREA_START < gpa + length),
                   AREA_START)
        pages = sys.timers["memwrite_area"] = (top - AREA_START) // PAGE
    return pages


def _memwrite(vp, sys, rate: int | None) -> int:
    """``rate`` pages a second (None: a bounded turn's worth at every turn)."""
    if vp.index != 0:
        return 0
    now = time.monotonic()
    last = getattr(sys, "memwrite_t", None)  # host time, not state: a restored kernel starts afresh
    if last is None:
        sys.memwrite_t = now
        return 0
    filling = sys.timers.get("memwrite_pass", 1) == 1
    due = MAX_PAGES_PER_TURN if filling or rate is None else min(int((now - last) * rate), MAX_PAGES_PER_TURN)
    if due == 0:
        return 0  # (the time accumulates until a page is due)
    sys.memwrite_t = now
    area = _area_pages(vp, sys)
    if area == 0:
        return 0
    pass_, page = sys.timers.get("memwrite_pass", 1), sys.timers.get("memwrite_page", 0)
    for _ in range(due):
        gpa = AREA_START + page * PAGE
        if pass_ > 1:
            have = vp.mem.read(gpa, 8)
            if have not in (_stamp(pass_ - 1, page), _stamp(pass_, page)) \
                    or vp.mem.read(gpa + PAGE - 8, 8) != have:
                sys.timers["memwrite_errors"] = sys.timers.get("memwrite_errors", 0) + 1
                sys.console(vp, f"[{sys.name}] memwrite: MISMATCH at page {page} of pass {pass_}: "
                                f"{int.from_bytes(have, 'little'):#x}")
        stamp = _stamp(pass_, page)
        vp.write_bytes(gpa, stamp + bytes(PAGE - 16) + stamp)
        page += 1
        if page == area:
            if pass_ % REPORT_EVERY_PASSES == 0:
                sys.console(vp, f"[{sys.name}] memwrite: pass {pass_} of {area} pages "
                                f"{'verified' if pass_ > 1 else 'written'}")
            pass_, page = pass_ + 1, 0
    sys.timers["memwrite_pass"], sys.timers["memwrite_page"] = pass_, page
    vp.counters["memwrite_pages"] = vp.counters.get("memwrite_pages", 0) + due
    return due


def wl_memwrite(vp, sys) -> int:
    """256 guest pages a second (1 MiB/s), each checked before it is written again."""
    return _memwrite(vp, sys, 256)


def wl_memwrite_fast(vp, sys) -> int:
    """4096 guest pages a second (16 MiB/s)."""
    return _memwrite(vp, sys, 4096)


def wl_memwrite_max(vp, sys) -> int:
    """As many guest pages as the VP's CPU allows (a turn's worth at each turn)."""
    return _memwrite(vp, sys, None)


MEMORY_WORKLOADS = {"memwrite": wl_memwrite, "memwrite_fast": wl_memwrite_fast, "memwrite_max": wl_memwrite_max}
