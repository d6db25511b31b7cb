"""An idle VP's timer (partitions/workloads.py ``next_due``, ``idle``): armed for when a
workload is next due or the workloads end — NOHZ idle — not every IDLE_S."""

from __future__ import annotations

import time

import pytest
from types import SimpleNamespace

from partitions import tick, workloads as wl
from partitions.drivers import lapic, pit


def system(names, tick_source="", **timers):
    return SimpleNamespace(workloads=list(names), timers=dict(timers), has_vga=False, tick_source=tick_source,
                           idle_timers={}, ticks=0, idle_ticks=0, tick_hz=100.0,
                           tick_base_ns=0)


def vp(index=0):
    return SimpleNamespace(index=index)


def test_an_idle_partition_sleeps_to_its_deadline():
    deadline = time.monotonic() + 1000
    assert wl.next_due(vp(), system([]), deadline) == deadline
    assert wl.next_due(vp(), system(["timer"]), deadline) == deadline  # ticks are interrupts


def test_a_paced_workload_is_due_at_its_next_turn_and_only_on_vp_0():
    deadline = time.monotonic() + 1000
    sys_ = system(["serial", "disk"], serial=100.0, disk=100.8)
    assert wl.next_due(vp(0), sys_, deadline) == 100.0 + wl.LOG_INTERVAL_S
    assert wl.next_due(vp(1), sys_, deadline) == deadline
    assert wl.next_due(vp(0), system(["screen"], screen=5.0), deadline) == deadline  # no VGA: never


def test_a_workload_without_a_due_time_is_polled_as_before():
    now = time.monotonic()
    due = wl.next_due(vp(1), system(["serial", "vmbus_net"]), now + 1000)
    assert now + wl.IDLE_S <= due <= time.monotonic() + wl.IDLE_S


class ApicVp:
    def __init__(self, index=1):
        self.index, self.handlers, self.writes, self.halts = index, {}, [], 0
        self.ports, self.counters, self.now, self.on_hlt = [], {}, 0, None

    def outb(self, port, value):
        self.ports.append((port, value))

    def rdtsc(self):
        return self.now

    def set_handler(self, vector, fn):
        self.handlers[vector] = fn

    def write(self, gpa, size, value):
        self.writes.append((gpa - lapic.APIC_BASE, value))

    def sti(self):
        pass

    def hlt(self):
        self.halts += 1
        if self.on_hlt is not None:
            self.on_hlt(self)

    def outs(self, port, size, data):
        self.ports.extend((port, b) for b in data)


def test_idle_arms_one_one_shot_for_the_time_due_within_the_timers_reach():
    v = ApicVp()
    wl.idle(v, system([]), time.monotonic() + 10**6)  # "until stopped": as far as the timer goes
    wl.idle(v, system([]), time.monotonic() + 0.5)
    wl.idle(v, system([]), time.monotonic() - 1)  # already due: at once, never a stopped timer
    counts = [value for reg, value in v.writes if reg == lapic.APIC_TIMER_ICR]
    assert counts[0] == lapic.APIC_TIMER_MAX_COUNT
    assert 0.45 * lapic.APIC_TIMER_HZ < counts[1] <= 0.5 * lapic.APIC_TIMER_HZ
    assert counts[2] == 1 and v.halts == 3
    v = ApicVp()
    wl.idle(v, system([]))  # no time given: IDLE_S, as before
    assert [value for reg, value in v.writes if reg == lapic.APIC_TIMER_ICR] == [int(lapic.APIC_TIMER_HZ * wl.IDLE_S)]


def test_a_timer_armed_for_the_same_time_is_left_alone_until_it_fires():
    """An interrupt that woke the VP for nothing (a UART's THRE) changes nothing: no write."""
    v, s = ApicVp(), system([])
    until = time.monotonic() + 0.5
    wl.idle(v, s, until)
    wl.idle(v, s, until)
    assert len([1 for reg, _ in v.writes if reg == lapic.APIC_TIMER_ICR]) == 1 and v.halts == 2
    v.handlers[wl.IDLE_VECTOR](v, wl.IDLE_VECTOR)  # it fired: the next idle arms it again
    wl.idle(v, s, until)
    assert len([1 for reg, _ in v.writes if reg == lapic.APIC_TIMER_ICR]) == 2


@pytest.mark.parametrize("source", ["pit", "lapic"])
def test_vp_0_stops_its_tick_sleeps_through_other_interrupts_until_its_one_shot_then_starts_it_again(source):
    def wake(v):  # the first two wakes are some other interrupt's (a UART's THRE); the third, the one-shot
        if v.halts == 3:
            v.now = 2_035_000_000  # 2.03 s later: 203 periods by the clock, none of them lost
            v.handlers[wl.IDLE_VECTOR](v, wl.IDLE_VECTOR)

    v, s = ApicVp(index=0), system(["serial"], tick_source=source)
    v.on_hlt = wake
    v.now = 5_000_000
    wl.idle(v, s, time.monotonic() + 2)
    assert v.halts == 3 and (s.ticks, s.idle_ticks) == (203, 203)
    assert v.counters == {"ticks": 203, "idle_ticks": 203}
    timer = [(reg, value) for reg, value in v.writes if reg in (lapic.APIC_LVT_TIMER, lapic.APIC_TIMER_ICR)]
    period = lapic.APIC_TIMER_HZ // tick.TICK_HZ
    if source == "pit":
        div = pit.divisor_for(tick.TICK_HZ)
        assert v.ports == [(pit.MODE_CMD, pit.CH0_LOHI_MODE0),  # stopped
                           (pit.MODE_CMD, pit.CH0_LOHI_MODE2), (pit.CH0, div & 0xFF), (pit.CH0, div >> 8)]  # started
        assert timer[0] == (lapic.APIC_LVT_TIMER, wl.IDLE_VECTOR) and timer[1][0] == lapic.APIC_TIMER_ICR
    else:  # the one timer: one-shot for the idle, then periodic for the tick again
        assert v.ports == []
        assert [reg for reg, _ in timer] == [lapic.APIC_LVT_TIMER, lapic.APIC_TIMER_ICR] * 2
        assert timer[0][1] == wl.IDLE_VECTOR and 1.9 * lapic.APIC_TIMER_HZ < timer[1][1] <= 2 * lapic.APIC_TIMER_HZ
        assert timer[2:] == [(lapic.APIC_LVT_TIMER, tick.TICK_VECTOR | lapic.LVT_PERIODIC),
                             (lapic.APIC_TIMER_ICR, period)]


def test_vp_0_keeps_its_tick_for_an_idle_shorter_than_two_periods_or_for_the_timer_workload():
    for names, source, until in ((["serial"], "lapic", 0.015), (["serial"], "pit", 0.015), (["timer"], "pit", 1.0)):
        v, s = ApicVp(index=0), system(names, tick_source=source)
        wl.idle(v, s, time.monotonic() + until)
        assert v.ports == [] and v.writes == [] and v.halts == 1
