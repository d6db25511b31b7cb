"""The port bus: routing, overlaps refused, guest mistakes read all-ones and are counted."""

from __future__ import annotations

import pytest

from worker.bus import DeviceOverlap, PortBus
from worker.devices.base import FakeClock, IoError, NullIrqLine, PortRange
from worker.devices.uart16550 import Uart16550, Uart16550Config


class Latch:
    """A one-register device at ``port`` that takes only byte accesses."""

    def __init__(self, name: str, base: int, count: int = 1) -> None:
        self.name, self.base, self.count, self.value = name, base, count, 0

    def port_ranges(self):
        return [PortRange(self.base, self.count)]

    def io_read(self, port, size):
        return IoError.INVALID_ACCESS_SIZE if size != 1 else self.value

    def io_write(self, port, size, value):
        if size != 1:
            return IoError.INVALID_ACCESS_SIZE
        self.value = value
        return None

    def poll(self, now_ns):
        return None


def test_accesses_reach_the_device_that_claims_the_port():
    bus = PortBus()
    bus.register(Latch("a", 0x80))
    bus.io_write(0x80, 1, 0x5A)
    assert bus.io_read(0x80, 1) == 0x5A


def test_overlapping_ranges_are_refused_at_registration():
    bus = PortBus()
    bus.register(Latch("a", 0x80, 4))
    with pytest.raises(DeviceOverlap, match="0x83"):
        bus.register(Latch("b", 0x83, 2))
    # The refused device claimed nothing.
    assert bus.io_read(0x84, 1) == 0xFF


@pytest.mark.parametrize("size, ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_ports_read_all_ones_and_drop_writes(size, ones):
    bus = PortBus()
    assert bus.io_read(0x1234, size) == ones
    bus.io_write(0x1234, size, 0)
    assert (bus.stats.unclaimed_reads, bus.stats.unclaimed_writes) == (1, 1)


def test_a_size_the_device_refuses_reads_all_ones_and_is_counted():
    bus = PortBus()
    dev = Latch("a", 0x80)
    bus.register(dev)
    dev.value = 7
    assert bus.io_read(0x80, 2) == 0xFFFF
    bus.io_write(0x80, 4, 1)
    assert dev.value == 7 and bus.stats.errors == 2


def test_ranges_are_merged_for_the_intercept_table():
    bus = PortBus()
    bus.register(Latch("a", 0x80, 2))
    bus.register(Latch("b", 0x82, 2))
    bus.register(Latch("c", 0x90))
    assert bus.ranges() == [PortRange(0x80, 4), PortRange(0x90, 1)]


def test_the_uart_sits_on_the_bus_at_com1():
    bus = PortBus()
    bus.register(Uart16550(Uart16550Config(), NullIrqLine(), FakeClock(), lambda b: None))
    bus.io_write(0x3FF, 1, 0xA5)
    assert bus.io_read(0x3FF, 1) == 0xA5
    assert bus.ranges() == [PortRange(0x3F8, 8)]
