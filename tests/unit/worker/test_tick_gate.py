"""The PIT → PIC wire's lost-tick policy (worker/tick_gate.py): a tick that falls while the
last is in service is dropped, so the guest's EOI is never answered by a tick at once."""

from __future__ import annotations

import pytest

from worker.chipset import Chipset
from worker.devices.config import CHIPSETS

PERIOD_NS = 10_000_000  # 100 Hz
DIVISOR = 11932


@pytest.fixture
def chipset():
    c = Chipset(CHIPSETS["gen1"])
    out = c.bus.write
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),  # master: vectors 0x20
                        (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01),
                        (0x21, 0xFE), (0xA1, 0xFF),  # only IRQ0
                        (0x43, 0x34), (0x40, DIVISOR & 0xFF), (0x40, DIVISOR >> 8)):  # ch0 mode 2, 100 Hz
        out(port, 1, value)
    yield c
    c.close()


def step(c: Chipset, ns: int) -> list[int]:
    """Device time moves on; the vectors the CPU would take now (INTA)."""
    c.clock.step(ns)
    c.bus.poll(c.clock.now_ns())
    return [v for v, _ in c.take_interrupts()]


def test_ticks_while_the_last_is_in_service_are_dropped_and_the_eoi_raises_none(chipset):
    assert step(chipset, PERIOD_NS + 1_000) == [0x20]  # in service from here
    for _ in range(3):
        assert step(chipset, PERIOD_NS) == []  # three periods pass: nothing latched
    assert chipset.tick_gate.counters.edges_discarded >= 3
    chipset.bus.write(0x20, 1, 0x20)  # the guest's EOI
    assert not chipset.intr  # an 8259A alone would raise the latched tick now
    assert step(chipset, PERIOD_NS) == [0x20]  # the next period's tick comes as usual


def test_ticks_that_are_ended_in_time_all_arrive(chipset):
    taken = 0
    for _ in range(20):
        taken += len(step(chipset, PERIOD_NS))
        chipset.bus.write(0x20, 1, 0x20)
    assert taken >= 19 and chipset.tick_gate.counters.edges_discarded == 0
