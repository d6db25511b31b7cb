"""What every emulated device is built from.

A device is a state machine behind a small interface: ``io_read(port, size)``,
``io_write(port, size, value)``, ``reset()``, ``save()``, ``restore()``.  It knows nothing
of ZeroMQ or msgpack.  Its fields fall in three groups (after openvmm's serial_16550):

* fixed configuration (a frozen dataclass, e.g. ``Uart16550Config``),
* glue handed in from outside: ``irq`` (an :class:`IrqLine`), a :class:`Clock`, a backend
  (:mod:`worker.devices.backends`): a device does no host I/O of its own,
* one state dataclass whose defaults are the power-on values (``self.state``); ``save()`` is
  that state as plain data and ``restore()`` checks all of it before it replaces anything
  (:mod:`worker.devices.state`).

After every access the device recomputes its interrupt level from its state and drives
``irq`` when the level changes: :meth:`ChipsetDevice._sync_irq`.

The bus checks an access before the device sees it: the port (or address) lies in one of the
device's ranges, and the access size is one that range takes (``PortRange.sizes``).  So a
device only answers accesses of sizes it declared, at its own ports; it still returns
:class:`IoError` for a register that does not exist inside a range.  A guest mistake is not an
exception: the bus reads all-ones, drops the write and counts it.  An exception escaping a
device is an emulator bug.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

from worker.devices.state import load_state, save_state


class IoError(enum.Enum):
    """Why an access did not reach a register (openvmm's chipset_device ``IoError``)."""

    INVALID_REGISTER = "invalid-register"
    INVALID_ACCESS_SIZE = "invalid-access-size"
    UNALIGNED_ACCESS = "unaligned-access"


BYTE = (1,)
WORD_DWORD = (2, 4)
ANY_SIZE = (1, 2, 4, 8)


@dataclass(frozen=True)
class PortRange:
    """``count`` consecutive I/O ports starting at ``base``, taking accesses of ``sizes`` bytes
    (checked by the bus).  Most registers of a PC chip are bytes."""

    base: int
    count: int
    sizes: tuple[int, ...] = BYTE

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
    """``length`` bytes of guest-physical address space starting at ``base``, taking accesses
    of ``sizes`` bytes at any alignment that stays inside the range (checked by the bus)."""

    base: int
    length: int
    sizes: tuple[int, ...] = ANY_SIZE
    # Writes here have no side effect the guest waits for (a frame buffer): they may come
    # in batches, after the fact (coalesced MMIO, hypervisor/coalesced_mmio.py).  Reads
    # and every other range stay one exit each.
    coalesced: bool = False

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


class SteppableClock(MonotonicClock):
    """The host's monotonic clock plus an offset that only grows: what a running worker
    hands its devices, so that ``io clock_step`` can move the partition's device time
    forward (QEMU qtest's ``clock_step``) while host time goes on underneath."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def now_ns(self) -> int:
        return time.monotonic_ns() + self.offset_ns

    def step(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("virtual time does not go backwards")
        self.offset_ns += ns


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
    """Counters every device has (after Firecracker's per-device metrics).  The bus keeps
    them: an access that reached a register counts in ``reads``/``writes``, a guest mistake
    (wrong size, no such register) in ``missed_reads``/``missed_writes``.  Devices add
    their own counters in a subclass."""

    reads: int = 0
    writes: int = 0
    missed_reads: int = 0
    missed_writes: int = 0


@dataclass
class MmioStats(DeviceStats):
    """DeviceStats plus the same four counters for MMIO accesses."""

    mmio_reads: int = 0
    mmio_writes: int = 0
    mmio_missed_reads: int = 0
    mmio_missed_writes: int = 0


@runtime_checkable
class Device(Protocol):
    """The interface the port bus drives.

    The bus calls ``io_read``/``io_write`` only for a port of ``port_ranges()`` and a size
    that range takes.  ``io_read`` returns the value read or an :class:`IoError`; ``io_write``
    returns ``None`` or an :class:`IoError`.  ``poll(now_ns)`` lets a clocked device catch up
    with time; it returns the next deadline in ns, or ``None`` when the device needs no
    wake-up.  ``stats`` are the counters the bus keeps for it.
    """

    name: str
    stats: DeviceStats

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

    The bus calls ``mmio_read``/``mmio_write`` only for an access that lies inside one of
    ``mmio_ranges()`` with a size that range takes; results follow the same rules as port
    I/O, and its ``stats`` are :class:`MmioStats`.
    """

    def mmio_ranges(self) -> list[MmioRange]: ...

    def mmio_read(self, gpa: int, size: int) -> int | IoError: ...

    def mmio_write(self, gpa: int, size: int, value: int) -> IoError | None: ...


class ChipsetDevice:
    """What the devices here share (openvmm's ``ChipsetDevice`` defaults, in spirit): the
    IRQ sync, generic ``save``/``restore`` over ``self.state``, and no-op defaults for what
    only some devices need.

    A subclass sets ``name``, ``stats``, ``irq`` and ``state``, and overrides ``_irq_wanted``
    (the level its state asks for) and, when a saved state can be well-typed yet impossible,
    ``_check_state``.
    """

    SAVE_VERSION: ClassVar[int] = 1
    name: str
    stats: DeviceStats
    state: Any
    irq: IrqLine
    _irq_level: bool = False

    @property
    def irq_level(self) -> bool:
        """The level last driven onto ``irq``."""
        return self._irq_level

    def _irq_wanted(self) -> bool:
        return False

    def _sync_irq(self, force: bool = False) -> None:
        """Recompute the interrupt level from the state; drive the line when it changes (or
        always, with ``force``: after a reset or restore the line may be new)."""
        level = self._irq_wanted()
        if force or level != self._irq_level:
            self._irq_level = level
            self.irq.set_level(level)

    def poll(self, now_ns: int) -> int | None:
        return None  # not clocked

    def deadline_after_access(self, clock: Callable[[], int]) -> int | None:
        """What ``poll(clock())`` returns right after an access of this device's own (the
        worker asks after each one): a device whose accesses leave it current can answer
        from its state, without reading the clock and catching up again."""
        return self.poll(clock())

    def save(self) -> dict:
        return save_state(self.SAVE_VERSION, self.state)

    def restore(self, saved: dict) -> None:
        """Replace the state with ``saved`` after checking all of it (ValueError if bad)."""
        (state,) = load_state(saved, self.SAVE_VERSION, type(self.state), what=self.name)
        self._check_state(state)
        self.state = state
        self._sync_irq(force=True)  # driven even if unchanged: the line may be new

    def _check_state(self, state: Any) -> None:
        """Raise ValueError for a well-typed saved state this device cannot be in."""


def is_clocked(device: object) -> bool:
    """Whether ``device`` has a ``poll`` of its own (a clock it must be woken for)."""
    poll = getattr(type(device), "poll", None)
    return poll is not None and poll is not ChipsetDevice.poll


class FlatWindow:
    """A device's memory window that is plain memory to the guest (``state.memory``, of
    ``WINDOW_SIZE`` bytes at ``WINDOW_BASE``): loads and stores with no side effect, so its
    stores may be coalesced (the VGA's text buffer and its graphics window).  Put before
    :class:`ChipsetDevice` in a device's bases."""

    WINDOW_BASE: ClassVar[int]
    WINDOW_SIZE: ClassVar[int]
    state: Any

    def mmio_ranges(self) -> list[MmioRange]:
        return [MmioRange(self.WINDOW_BASE, self.WINDOW_SIZE, coalesced=True)]

    def mmio_read(self, gpa: int, size: int) -> int:
        offset = gpa - self.WINDOW_BASE
        return int.from_bytes(self.state.memory[offset:offset + size], "little")

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        offset = gpa - self.WINDOW_BASE
        self.state.memory[offset:offset + size] = (value & all_ones(size)).to_bytes(size, "little")


def all_ones(size: int) -> int:
    """What a read returns when nothing answers: every data line pulled high."""
    return (1 << (8 * size)) - 1

