"""The buses: routing, overlaps refused, access sizes checked before a device sees them, guest
mistakes read all-ones and are counted."""

from __future__ import annotations

import pytest

from proto.errors import ConfigError
from worker.bus import DeviceOverlap, MmioBus, PortBus
from worker.devices.backends import NullConsole
from worker.devices.base import DeviceStats, FakeClock, IoError, MmioRange, MmioStats, NullIrqLine, PortRange
from worker.devices.uart16550 import Uart16550, Uart16550Config


class Latch:
    """A one-register device at ``base`` (byte accesses unless told otherwise); the ports
    after the first in its range hold no register."""

    def __init__(self, name: str, base: int, count: int = 1, sizes=(1,)) -> None:
        self.name, self.base, self.count, self.sizes, self.value = name, base, count, sizes, 0
        self.stats = DeviceStats()
        self.seen: list[tuple[int, int]] = []

    def port_ranges(self):
        return [PortRange(self.base, self.count, self.sizes)]

    def io_read(self, port, size):
        self.seen.append((port, size))
        return self.value if port == self.base else IoError.INVALID_REGISTER

    def io_write(self, port, size, value):
        self.seen.append((port, size))
        if port != self.base:
            return IoError.INVALID_REGISTER
        self.value = value
        return None

    def poll(self, now_ns):
        return None


class Window:
    """16 bytes of MMIO at ``base`` taking byte and word accesses."""

    def __init__(self, base: int) -> None:
        self.name, self.base, self.data = "window", base, bytearray(16)
        self.stats = MmioStats()

    def mmio_ranges(self):
        return [MmioRange(self.base, 16, sizes=(1, 2))]

    def mmio_read(self, gpa, size):
        return int.from_bytes(self.data[gpa - self.base:gpa - self.base + size], "little")

    def mmio_write(self, gpa, size, value):
        self.data[gpa - self.base:gpa - self.base + size] = value.to_bytes(size, "little")


def test_accesses_reach_the_device_that_claims_the_port():
    bus = PortBus()
    bus.register(Latch("a", 0x80))
    bus.write(0x80, 1, 0x5A)
    assert bus.read(0x80, 1) == 0x5A


def test_overlapping_ranges_are_refused_at_registration():
    bus = PortBus()
    bus.register(Latch("a", 0x80, 4))
    with pytest.raises(DeviceOverlap, match="0x83"):
        bus.register(Latch("b", 0x83, 2))
    # The refused device claimed nothing.
    assert bus.read(0x84, 1) == 0xFF


def test_an_overlap_is_a_configuration_error():
    assert issubclass(DeviceOverlap, ConfigError)


@pytest.mark.parametrize("size, ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_ports_read_all_ones_and_drop_writes(size, ones):
    bus = PortBus()
    assert bus.read(0x1234, size) == ones
    bus.write(0x1234, size, 0)
    assert (bus.stats.unclaimed_reads, bus.stats.unclaimed_writes) == (1, 1)


def test_a_size_the_range_does_not_take_never_reaches_the_device():
    bus = PortBus()
    dev = Latch("a", 0x80)
    bus.register(dev)
    dev.value = 7
    assert bus.io_read(0x80, 2) is IoError.INVALID_ACCESS_SIZE
    assert bus.read(0x80, 2) == 0xFFFF
    bus.write(0x80, 4, 1)
    assert dev.value == 7 and dev.seen == []
    assert bus.stats.errors == 3
    assert (dev.stats.missed_reads, dev.stats.missed_writes, dev.stats.reads) == (2, 1, 0)


def test_each_range_takes_the_sizes_it_declares():
    bus = PortBus()
    dev = Latch("a", 0x80, sizes=(2, 4))
    bus.register(dev)
    assert bus.io_write(0x80, 2, 0x1234) is None
    assert bus.io_read(0x80, 4) == 0x1234
    assert bus.io_read(0x80, 1) is IoError.INVALID_ACCESS_SIZE
    assert (dev.stats.reads, dev.stats.writes, dev.stats.missed_reads) == (1, 1, 1)


def test_a_register_the_device_does_not_have_is_its_answer_and_counted():
    bus = PortBus()
    dev = Latch("a", 0x80, count=2)
    bus.register(dev)
    assert bus.io_read(0x81, 1) is IoError.INVALID_REGISTER
    assert bus.read(0x81, 1) == 0xFF
    assert dev.stats.missed_reads == 2 and bus.stats.errors == 2


@pytest.mark.parametrize("port", [0x7F, 0x80, 0x81, 0x82])
def test_the_bus_probes_one_below_every_port_inside_and_one_past(port):
    bus = PortBus()
    dev = Latch("a", 0x80, count=2)
    bus.register(dev)
    bus.read(port, 1)
    assert dev.seen == ([(port, 1)] if port in (0x80, 0x81) else [])


def test_ranges_are_merged_for_the_intercept_table():
    bus = PortBus()
    bus.register(Latch("a", 0x80, 2))
    bus.register(Latch("b", 0x82, 2))
    bus.register(Latch("c", 0x90))
    assert bus.ranges() == [PortRange(0x80, 4), PortRange(0x90, 1)]


def test_the_uart_sits_on_the_bus_at_com1():
    bus = PortBus()
    bus.register(Uart16550(Uart16550Config(), NullIrqLine(), FakeClock(), NullConsole()))
    bus.write(0x3FF, 1, 0xA5)
    assert bus.read(0x3FF, 1) == 0xA5
    assert bus.ranges() == [PortRange(0x3F8, 8)]


def test_mmio_accesses_are_checked_against_the_range():
    bus = MmioBus()
    dev = Window(0x1000)
    bus.register(dev)
    assert bus.mmio_write(0x100E, 2, 0xBEEF) is None
    assert bus.read(0x100E, 2) == 0xBEEF
    assert bus.mmio_read(0x100F, 2) is IoError.UNALIGNED_ACCESS  # runs past the end
    assert bus.mmio_read(0x1000, 4) is IoError.INVALID_ACCESS_SIZE
    assert bus.mmio_read(0x1010, 1) is IoError.INVALID_REGISTER  # nobody's
    assert bus.read(0x100F, 2) == 0xFFFF
    assert (dev.stats.mmio_reads, dev.stats.mmio_writes, dev.stats.mmio_missed_reads) == (1, 1, 3)
    assert bus.stats.errors == 4


def test_overlapping_mmio_ranges_are_refused():
    bus = MmioBus()
    bus.register(Window(0x1000))
    with pytest.raises(DeviceOverlap):
        bus.register(Window(0x1008))
