"""An idle VP's timer (partitions/workloads.py ``next_due``, ``idle``): armed for when a
workload is next due or the workloads end — NOHZ idle — not every IDLE_S."""

from __future__ import annotations

import time
from types import SimpleNamespace

from partitions import workloads as wl


def system(names, **timers):
    return SimpleNamespace(workloads=list(names), timers=dict(timers), has_vga=False, has_pic=False)


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

    def set_handler(self, vector, fn):
        self.handlers[vector] = fn

    def write(self, gpa, size, value):
        self.writes.append((gpa - wl.APIC_BASE, value))

    def sti(self):
        pass

    def hlt(self):
        self.halts += 1


def test_idle_arms_one_one_shot_for_the_time_due_within_the_timers_reach():
    v = ApicVp()
    wl.idle(v, system([]), time.monotonic() + 10**6)  # "until stopped": as far as the timer goes
    wl.idle(v, system([]), time.monotonic() + 0.5)
    wl.idle(v, system([]), time.monotonic() - 1)  # already due: at once, never a stopped timer
    counts = [value for reg, value in v.writes if reg == wl.APIC_TIMER_ICR]
    assert counts[0] == wl.APIC_TIMER_MAX_COUNT
    assert 0.45 * wl.APIC_TIMER_HZ < counts[1] <= 0.5 * wl.APIC_TIMER_HZ
    assert counts[2] == 1 and v.halts == 3
    v = ApicVp()
    wl.idle(v, system([]))  # no time given: IDLE_S, as before
    assert [value for reg, value in v.writes if reg == wl.APIC_TIMER_ICR] == [int(wl.APIC_TIMER_HZ * wl.IDLE_S)]
