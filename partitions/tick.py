"""The guest kernel's periodic tick: on the local APIC timer, as a modern kernel ticks, or on
the PIT's channel 0 through the PIC where a workload measures that path; counted from the
clock, and stopped while VP 0 idles.

A modern Linux takes the local APIC timer as each CPU's clockevent and leaves the PIT stopped
("x86/i8253: Disable PIT timer 0 when not in use": "Leaving the PIT interrupt running can
cause noticeable steal time for virtual guests").  Here the difference is the worker: a PIT
tick is the worker's timer, its PIC's INTA, an assert_interrupt, and an EOI exit through the
worker (four hops) — ≈ 2.2 ms of CPU across the processes; a local APIC tick fires in the
hypervisor and its EOI is a two-hop exit — ≈ 0.6 ms (README, "A twelfth pass").  The PIT
ticks where a workload wants its path (``timer``: the interrupt benches and the chipset's
tests) or owns the APIC timer (the ``eoi_*`` experiments).

The tick counts the periods the clock says have passed, not its interrupts (Linux's
``tick_do_update_jiffies64``): on a loaded host some ticks are never delivered (the platform
drops a PIT tick while the last one is in service: worker/tick_gate.py; an APIC timer fires
once for periods it missed), and time must not run slow for it.

While VP 0 idles with nothing due for a while, the tick is stopped and a one-shot timer wakes
it instead (partitions/workloads.py ``idle``), as Linux's NO_HZ_IDLE stops an idle CPU's tick
(``tick_nohz_idle_stop_tick``) and, at the idle's end, starts it again and counts the periods
it slept from the clock (``tick_nohz_idle_exit``).
"""

from __future__ import annotations

from partitions.drivers import lapic, pic, pit

TICK_HZ = 100
TICK_VECTOR = 0xEC  # Linux's LOCAL_TIMER_VECTOR
# Workloads that tick on the PIT: they measure its path, or own the local APIC timer.
PIT_WORKLOADS = frozenset({"timer", "eoi_mmio", "eoi_msr", "eoi_assist"})


def on_tick(vp, vector: int, sys) -> None:
    """The tick's interrupt: the periods due by the clock (the TSC read does not exit), then
    the EOI.  ``lost_ticks``: the periods no interrupt stood for while the tick ran (the
    periods it was stopped are ``idle_ticks``, not lost)."""
    sys.ticks = max(sys.ticks, _due(vp, sys))
    sys.tick_interrupts += 1
    # (Counted per interrupt as "due - ticks - 1", an interrupt a hair early — its period
    # not yet due by the guest's clock — was taken yet its period counted lost by the next:
    # the report once read "391 ticks (326 taken, 67 lost)".)
    sys.lost_ticks = max(0, sys.ticks - sys.tick_interrupts - sys.idle_ticks)
    c = vp.counters
    c["ticks"], c["tick_interrupts"], c["lost_ticks"] = sys.ticks, sys.tick_interrupts, sys.lost_ticks
    if sys.tick_source == "pit":
        pic.eoi(vp, 0)
    else:
        lapic.eoi(vp)


def start(vp, sys) -> None:
    """Program the tick (``sys.tick_source``: "pit" or "lapic"); tick 0 is put where
    ``sys.ticks`` goes on from now (after a reset or a restore the count goes on from where
    it was, guest time having stood still)."""
    if PIT_WORKLOADS & set(sys.workloads):
        sys.tick_source = "pit"
        sys.tick_hz = pit.start_tick(vp, TICK_HZ)
    else:
        sys.tick_source = "lapic"
        vp.set_handler(TICK_VECTOR, lambda v, vector: on_tick(v, vector, sys))
        lapic.enable(vp)
        sys.tick_hz = lapic.periodic(vp, TICK_VECTOR, TICK_HZ)
    sys.tick_base_ns = vp.rdtsc() - int(sys.ticks * 1_000_000_000 / sys.tick_hz)


def stop(vp, sys, wake_vector: int) -> None:
    """No more ticks until :func:`restart`: the PIT stopped (a mode 0 control word and no
    count, Linux's ``pit_shutdown``), or the local APIC timer made a one-shot on
    ``wake_vector`` for the idle's wake (the caller arms it)."""
    if sys.tick_source == "pit":
        pit.stop_tick(vp)
    else:
        lapic.one_shot_mode(vp, wake_vector)


def restart(vp, sys) -> None:
    """The tick again after an idle, and the periods it was stopped counted from the clock,
    as ``idle_ticks`` (Linux's ``tick_nohz_idle_exit``)."""
    if sys.tick_source == "pit":
        pit.start_tick(vp, TICK_HZ)
    else:
        lapic.periodic(vp, TICK_VECTOR, TICK_HZ)
    due = _due(vp, sys)
    if due > sys.ticks:
        sys.idle_ticks += due - sys.ticks
        sys.ticks = due
        c = vp.counters
        c["ticks"], c["idle_ticks"] = sys.ticks, sys.idle_ticks


def _due(vp, sys) -> int:
    """The tick's periods since tick 0, by the clock (the TSC read does not exit)."""
    return int((vp.rdtsc() - sys.tick_base_ns) * sys.tick_hz / 1e9)
