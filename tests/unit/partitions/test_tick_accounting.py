"""The guest's tick counts the clock's periods, not the interrupts (partitions/kernel.py's
on_tick, as Linux's tick_do_update_jiffies64): dropped ticks do not slow its time."""

from __future__ import annotations

from partitions import kernel, tick
from partitions.drivers import lapic


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
    s.tick_hz, s.tick_base_ns, s.tick_source = 100.0, 1_000_000, "pit"
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


def test_a_local_apic_tick_ends_with_the_apics_eoi_not_the_pics():
    class ApicVp(Vp):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[tuple[int, int]] = []

        def write(self, gpa: int, size: int, value: int) -> None:
            self.writes.append((gpa, value))

    vp, s = ApicVp(), system()
    s.tick_source = "lapic"
    vp.now = 1_000_000 + 10_000_000 + 300_000
    tick.on_tick(vp, tick.TICK_VECTOR, s)
    assert vp.outs == [] and vp.writes == [(lapic.APIC_BASE + lapic.APIC_EOI, 0)] and s.ticks == 1


class BootVp:
    """What tick.start uses: handlers, the APIC's MMIO, the PIT's ports, the TSC."""

    def __init__(self) -> None:
        self.handlers, self.writes, self.ports = {}, [], []

    def set_handler(self, vector, fn):
        self.handlers[vector] = fn

    def write(self, gpa, size, value):
        self.writes.append((gpa - lapic.APIC_BASE, value))

    def outb(self, port, value):
        self.ports.append((port, value))

    def outs(self, port, size, data):
        self.ports.extend((port, b) for b in data)

    def rdtsc(self):
        return 0


def test_the_tick_is_the_local_apic_timer_unless_a_workload_measures_the_pits_or_owns_the_apic_timer():
    for workloads, source in ((["serial", "disk"], "lapic"), (["timer"], "pit"), (["serial", "eoi_msr"], "pit")):
        s, vp = kernel.System("t", workloads, 1.0), BootVp()
        tick.start(vp, s)
        assert s.tick_source == source and round(s.tick_hz) == tick.TICK_HZ
        if source == "lapic":
            assert tick.TICK_VECTOR in vp.handlers and not vp.ports
            assert (lapic.APIC_LVT_TIMER, tick.TICK_VECTOR | lapic.LVT_PERIODIC) in vp.writes
        else:
            assert not vp.handlers and not vp.writes and len(vp.ports) == 3
