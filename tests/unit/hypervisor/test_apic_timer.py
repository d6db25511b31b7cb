"""The local APIC timer's minimum period (issue 9: a periodic timer at the minimum period
pinned a host core)."""

from __future__ import annotations

from hypervisor.apic import LVT_PERIODIC, LVT_TIMER, MIN_TIMER_PERIOD_NS, SVR, TIMER_CCR, TIMER_DCR, TIMER_ICR, Apic

DIVIDE_BY_1 = 0b1011


def programmed(icr: int, periodic: bool, now: int = 0) -> Apic:
    apic = Apic(0)
    apic.write(SVR, 0x1FF, now)
    apic.write(TIMER_DCR, DIVIDE_BY_1, now)
    apic.write(LVT_TIMER, 0xEF | (LVT_PERIODIC if periodic else 0), now)
    apic.write(TIMER_ICR, icr, now)
    return apic


def test_a_periodic_timer_never_runs_faster_than_the_minimum_period():
    apic = programmed(1, periodic=True)  # 5 ns asked for
    assert apic.timer_deadline_ns == MIN_TIMER_PERIOD_NS and apic.counters["timer_clamped"] == 1
    fires = sum(apic.poll(t) for t in range(0, 10 * MIN_TIMER_PERIOD_NS + 1, 1000))
    assert fires == 10  # in 2 ms: one per 200 µs, not 400,000


def test_a_one_shot_timer_is_clamped_too():
    apic = programmed(1, periodic=False, now=1000)
    assert apic.timer_deadline_ns == 1000 + MIN_TIMER_PERIOD_NS
    assert not apic.poll(1000 + MIN_TIMER_PERIOD_NS - 1) and apic.poll(1000 + MIN_TIMER_PERIOD_NS)
    assert apic.timer_deadline_ns is None


def test_the_guest_reads_back_the_count_it_programmed_and_never_more():
    apic = programmed(10, periodic=True)
    assert apic.read(TIMER_ICR, 0) == 10
    assert apic.read(TIMER_CCR, 0) == 10  # the clamped period's time left, capped at the initial count
    assert apic.read(TIMER_CCR, MIN_TIMER_PERIOD_NS - 5) == 1


def test_a_timer_above_the_minimum_is_untouched():
    apic = programmed(200_000, periodic=True)  # 1 ms at 200 MHz
    assert apic.timer_deadline_ns == 1_000_000 and apic.counters["timer_clamped"] == 0
    assert apic.read(TIMER_CCR, 500_000) == 100_000


def test_an_injected_interrupt_is_traced_under_the_path_the_guest_files_it_by():
    """Two stamps (the APIC timer's fire, the injection) are the APIC timer's path; four
    (the device's raise, the worker's INTA, the hypervisor's arrival, the injection) the
    PIC's: the trace's stage names are then the right ones."""
    from hypervisor.interrupts import irq_path
    from proto.exits import Exit

    assert irq_path((1, 2)) is Exit.APIC_TIMER
    assert irq_path((1, 2, 3, 4)) is Exit.INTERRUPT
    assert irq_path(()) is Exit.INTERRUPT  # an IPI: no stamps, no stages
