"""What every emulated device is built from.

A device is a state machine behind a small interface: ``io_read(port, size)``,
``io_write(port, size, value)``, ``reset()``, ``save()``, ``restore()``.  It knows nothing
of ZeroMQ or msgpack.  Its fields fall in three groups (after openvmm's serial_16550):

* fixed configuration (a frozen dataclass, e.g. ``Uart16550Config``),
* glue handed in from outside: an :class:`IrqLine`, a :class:`Clock`, a backend,
* one ``State`` dataclass whose defaults are the power-on values; ``save()`` is that state
  as a plain dict and ``restore()`` validates before it replaces anything.

A guest mistake (a register that does not exist, a size the register does not take) is not
an exception: ``io_read``/``io_write`` return :data:`IoError` values and the bus reads
all-ones, drops the write and counts it.  An exception escaping a device is an emulator bug.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class IoError(enum.Enum):
    """Why an access did not reach a register (openvmm's chipset_device ``IoError``)."""

    INVALID_REGISTER = "invalid-register"
    INVALID_ACCESS_SIZE = "invalid-access-size"
    UNALIGNED_ACCESS = "unaligned-access"


@dataclass(frozen=True)
class PortRange:
    """``count`` consecutive I/O ports starting at ``base``."""

    base: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.base <= 0xFFFF or self.count < 1 or self.base + self.count > 0x10000:
            raise ValueError(f"port range {self.base:#x}+{self.count} is outside 0..0xffff")

    @property
    def last(self) -> int:
        return self.base + self.count - 1

    def __contains__(self, port: int) -> bool:
        return self.base <= port <= self.last


@dataclass(frozen=True)
class MmioRange:
    """``length`` bytes of guest-physical address space starting at ``base``."""

    base: int
    length: int

    def __post_init__(self) -> None:
        if self.base < 0 or self.length < 1 or self.base + self.length > 1 << 52:
            raise ValueError(f"MMIO range {self.base:#x}+{self.length:#x} is not a valid GPA range")

    @property
    def last(self) -> int:
        return self.base + self.length - 1

    def __contains__(self, gpa: int) -> bool:
        return self.base <= gpa <= self.last


class IrqLine(Protocol):
    """An interrupt request line.  Devices recompute their level after every access."""

    def set_level(self, high: bool) -> None: ...


class NullIrqLine:
    """A line connected to nothing: the level is kept so tests and stats can read it."""

    def __init__(self) -> None:
        self.level = False

    def set_level(self, high: bool) -> None:
        self.level = high


class Clock(Protocol):
    """Time as the device sees it, in nanoseconds.  Devices never read the host clock."""

    def now_ns(self) -> int: ...


class MonotonicClock:
    """The host's monotonic clock; what a running worker hands its devices."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """Virtual time for tests: it moves only when told to."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("virtual time does not go backwards")
        self._now += ns


@dataclass
class DeviceStats:
    """Counters every device keeps (after Firecracker's per-device metrics)."""

    reads: int = 0
    writes: int = 0
    missed_reads: int = 0
    missed_writes: int = 0


@runtime_checkable
class Device(Protocol):
    """The interface the port bus drives.

    ``io_read`` returns the value read or an :class:`IoError`; ``io_write`` returns ``None`` or
    an :class:`IoError`.  ``poll(now_ns)`` lets a clocked device catch up with time; it returns
    the next deadline in ns, or ``None`` when the device needs no wake-up.
    """

    name: str

    def port_ranges(self) -> list[PortRange]: ...

    def io_read(self, port: int, size: int) -> int | IoError: ...

    def io_write(self, port: int, size: int, value: int) -> IoError | None: ...

    def reset(self) -> None: ...

    def save(self) -> dict: ...

    def restore(self, saved: dict) -> None: ...

    def poll(self, now_ns: int) -> int | None: ...


@runtime_checkable
class MmioDevice(Protocol):
    """A device that also (or only) answers memory-mapped accesses, e.g. the VGA text buffer.

    ``size`` is 1, 2, 4 or 8; results follow the same rules as port I/O.
    """

    def mmio_ranges(self) -> list[MmioRange]: ...

    def mmio_read(self, gpa: int, size: int) -> int | IoError: ...

    def mmio_write(self, gpa: int, size: int, value: int) -> IoError | None: ...


def all_ones(size: int) -> int:
    """What a read returns when nothing answers: every data line pulled high."""
    return (1 << (8 * size)) - 1

