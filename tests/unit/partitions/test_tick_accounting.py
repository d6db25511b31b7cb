"""The guest's tick counts the clock's periods, not the interrupts (partitions/kernel.py's
on_tick, as Linux's tick_do_update_jiffies64): dropped ticks do not slow its time."""

from __future__ import annotations

from partitions import kernel, tick


class Vp:
    """What on_tick uses: the TSC (ns), OUT for the EOI, the guest counters."""

    def __init__(self) -> None:
        self.now = 0
        self.outs: list[tuple[int, int]] = []
        self.counters: dict[str, int] = {}

    def rdtsc(self) -> int:
        return self.now

    def outb(self, port: int, value: int) -> None:
        self.outs.append((port, value))


def system() -> kernel.System:
    s = kernel.System("t", [], 1.0)
    s.tick_hz, s.tick_base_ns = 100.0, 1_000_000
    return s


def test_a_tick_each_period_counts_one_each_and_loses_none():
    vp, s = Vp(), system()
    for i in range(1, 6):
        vp.now = 1_000_000 + i * 10_000_000 + 300_000  # a little after each boundary
        tick.on_tick(vp, 0x20, s)
    assert (s.ticks, s.tick_interrupts, s.lost_ticks) == (5, 5, 0)
    assert vp.outs == [(0x20, 0x20)] * 5  # every one EOIed


def test_ticks_dropped_on_a_loaded_host_still_count_as_time():
    vp, s = Vp(), system()
    for period in (1, 4, 5, 9):  # interrupts taken in periods 1, 4, 5 and 9 only
        vp.now = 1_000_000 + period * 10_000_000 + 9_000_000  # and late in each
        tick.on_tick(vp, 0x20, s)
    assert (s.ticks, s.tick_interrupts, s.lost_ticks) == (9, 4, 5)
    assert vp.counters == {"ticks": 9, "tick_interrupts": 4, "lost_ticks": 5}


def test_two_interrupts_in_one_period_do_not_count_it_twice():
    vp, s = Vp(), system()
    vp.now = 1_000_000 + 10_000_000 + 100
    tick.on_tick(vp, 0x20, s)
    vp.now += 5_000_000
    tick.on_tick(vp, 0x20, s)
    assert (s.ticks, s.tick_interrupts) == (1, 2) and len(vp.outs) == 2
