"""The guest kernel's periodic tick: the PIT's channel 0 at TICK_HZ on IRQ0, counted from
the clock, and stopped while VP 0 idles.

The tick counts the periods the clock says have passed, not its interrupts (Linux's
``tick_do_update_jiffies64``): on a loaded host some ticks are never delivered (the platform
drops a tick while the last one is in service: worker/tick_gate.py), and time must not run
slow for it.

While VP 0 idles with nothing due for a while, the tick is stopped and a one-shot timer
wakes it instead (partitions/workloads.py ``idle``), as Linux's NO_HZ_IDLE stops an idle
CPU's tick (``tick_nohz_idle_stop_tick``) and, at the idle's end, starts it again and counts
the periods it slept from the clock (``tick_nohz_idle_exit``).  A periodic tick on an idle VP costs an interrupt, an EOI
exit and a HLT exit a period — 100 a second of work for the hypervisor and the worker
while the guest does nothing (README, "An idle guest's tick").
"""

from __future__ import annotations

from partitions.drivers import pic, pit

TICK_HZ = 100


def on_tick(vp, vector: int, sys) -> None:
    """IRQ0: the periods due by the clock (the TSC read does not exit), then the EOI.
    ``lost_ticks``: the periods no interrupt stood for while the tick ran (the periods it
    was stopped are ``idle_ticks``, not lost)."""
    due = int((vp.rdtsc() - sys.tick_base_ns) * sys.tick_hz / 1e9)
    sys.ticks = max(sys.ticks, due)
    sys.tick_interrupts += 1
    # (Counted per interrupt as "due - ticks - 1", an interrupt a hair early — its period
    # not yet due by the guest's clock — was taken yet its period counted lost by the next:
    # the report once read "391 ticks (326 taken, 67 lost)".)
    sys.lost_ticks = max(0, sys.ticks - sys.tick_interrupts - sys.idle_ticks)
    c = vp.counters
    c["ticks"], c["tick_interrupts"], c["lost_ticks"] = sys.ticks, sys.tick_interrupts, sys.lost_ticks
    pic.eoi(vp, 0)


def start(vp, sys) -> None:
    """Program the tick; tick 0 is put where ``sys.ticks`` goes on from now (after a reset or
    a restore the count goes on from where it was, guest time having stood still)."""
    sys.tick_hz = pit.start_tick(vp, TICK_HZ)
    sys.tick_base_ns = vp.rdtsc() - int(sys.ticks * 1_000_000_000 / sys.tick_hz)


def stop(vp, sys) -> None:
    """No more ticks until :func:`restart` (partitions/workloads.py ``idle``)."""
    pit.stop_tick(vp)


def restart(vp, sys) -> None:
    """The tick again after an idle, and the periods it was stopped counted from the clock,
    as ``idle_ticks`` (Linux's ``tick_nohz_idle_exit``)."""
    pit.start_tick(vp, TICK_HZ)
    due = int((vp.rdtsc() - sys.tick_base_ns) * sys.tick_hz / 1e9)
    if due > sys.ticks:
        sys.idle_ticks += due - sys.ticks
        sys.ticks = due
        c = vp.counters
        c["ticks"], c["idle_ticks"] = sys.ticks, sys.idle_ticks
