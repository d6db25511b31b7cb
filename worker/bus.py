"""The worker's buses: route a port or MMIO access to the device that claims it, after checking
that the device takes it (rust-vmm vm-device's ``Bus::check_access``, openvmm's chipset).

A device declares its ranges and the access sizes each takes (``PortRange.sizes``,
``MmioRange.sizes``); the bus refuses an access of another size, and an MMIO access that
runs past the end of its range, before the device sees it.  Ranges are checked at
registration (an overlap is a configuration error), so routing is one lookup.

Two views of one access:

* ``io_read``/``io_write`` (``mmio_read``/``mmio_write``) answer as a device does: the value,
  or the :class:`IoError` saying why the access reached no register;
* ``read``/``write`` are what the guest sees: a mistake reads all-ones and the write is
  dropped.

Either way every access is counted, in the device's ``stats`` (reached a register, or a
guest mistake) and the bus's, and mistakes are logged at a limited rate; they never raise.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Callable

from proto.errors import ConfigError
from worker.devices.base import Device, IoError, MmioDevice, MmioRange, PortRange, all_ones, is_clocked

log = logging.getLogger("worker.bus")

# Log the first few guest mistakes of each kind, then one in this many.
LOG_FIRST, LOG_EVERY = 5, 1000

_BAD_SIZE = IoError.INVALID_ACCESS_SIZE
NEVER = 1 << 200  # a stored deadline that never comes (keeps min() free of None tests)


class DeviceOverlap(ConfigError, ValueError):
    """Two devices of one partition's topology claim the same port or address."""


@dataclass
class BusStats:
    reads: int = 0
    writes: int = 0
    unclaimed_reads: int = 0
    unclaimed_writes: int = 0
    errors: int = 0  # accesses a device refused: wrong size, no such register, unaligned


class _Mistakes:
    """Rate-limited warnings for guest mistakes, one count per (who, what)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._counts: dict[tuple[str, str], int] = {}

    def __call__(self, who: str, what: str, address: int, size: int) -> None:
        key = (who, what)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("guest %s: %s at %s %#x size %d (%d so far)", who, what, self._where,
                        address, size, n)


class _GuestView:
    """What the guest sees of a bus's accesses (the device's view is ``_answer``/``_take``:
    ``io_read``/``io_write`` or ``mmio_read``/``mmio_write``)."""

    def read(self, address: int, size: int) -> int:
        """The guest's ``in`` or load: all-ones when nothing answers."""
        value = self._answer(address, size)
        return all_ones(size) if value.__class__ is IoError else value

    def write(self, address: int, size: int, value: int) -> None:
        """The guest's ``out`` or store: dropped when nothing takes it."""
        self._take(address, size, value)


class PortBus(_GuestView):
    def __init__(self) -> None:
        # port -> (device, the sizes its range takes, the device's counters)
        self._by_port: dict[int, tuple[Device, frozenset[int], object]] = {}
        self.devices: list[Device] = []
        self.stats = BusStats()
        self._mistake = _Mistakes("port")
        # Deadlines (see poll): each clocked device's as its last poll returned it, the
        # earliest of them, and per port the clocked devices an access there may move,
        # each with what gives its deadline then (deadline_after).
        self._due: dict[Device, int] = {}
        self._next = NEVER
        self._moves: dict[int, tuple[tuple[Device, Callable], ...]] = {}

    def register(self, device: Device, moves: tuple[Device, ...] = ()) -> None:
        """Put ``device`` on its ports.  ``moves``: other clocked devices whose deadline an
        access to ``device`` can move (a wire from its registers into their timing).  None
        of today's devices has one (tests/unit/worker/test_deadlines.py holds that for the
        gen-1 chipset): a device's deadline follows from its own state and the time."""
        ranges = device.port_ranges()
        for r in ranges:
            for port in range(r.base, r.base + r.count):
                other = self._by_port.get(port)
                if other is not None:
                    raise DeviceOverlap(f"{device.name} claims port {port:#x}, which {other[0].name} has")
        # (device, what gives its deadline after this access): the device's own answer
        # after an access of its own, a peer's poll (its state moved through a wire).
        moved = tuple((d, _own_deadline(d) if d is device else _polled_deadline(d))
                      for d in (device, *moves) if is_clocked(d))
        for d, _ in moved:
            self._due.setdefault(d, 0)  # due at once: the owner polls
        self._next = 0
        for r in ranges:
            slot = (device, frozenset(r.sizes), device.stats)
            for port in range(r.base, r.base + r.count):
                self._by_port[port] = slot
                if moved:
                    self._moves[port] = moved
        self.devices.append(device)

    def read_string(self, address: int, size: int, count: int) -> bytes:
        """REP INS: ``count`` reads of ``address`` in order, as little-endian elements."""
        read = self.read
        return b"".join(read(address, size).to_bytes(size, "little") for _ in range(count))

    def write_string(self, address: int, size: int, data: bytes) -> None:
        """REP OUTS: each ``size``-byte little-endian element of ``data`` written in order."""
        write = self.write
        for i in range(0, len(data) - size + 1, size):
            write(address, size, int.from_bytes(data[i:i + size], "little"))

    def device_at(self, port: int) -> Device | None:
        slot = self._by_port.get(port)
        return slot[0] if slot is not None else None

    def ranges(self) -> list[PortRange]:
        """The claimed ports as maximal contiguous ranges (what the hypervisor is told)."""
        out: list[PortRange] = []
        for port in sorted(self._by_port):
            if out and out[-1].base + out[-1].count == port:
                out[-1] = PortRange(out[-1].base, out[-1].count + 1)
            else:
                out.append(PortRange(port, 1))
        return out

    def io_read(self, port: int, size: int) -> int | IoError:
        self.stats.reads += 1
        slot = self._by_port.get(port)
        if slot is None:
            self.stats.unclaimed_reads += 1
            self._mistake("unclaimed", "read", port, size)
            return IoError.INVALID_REGISTER
        dev, sizes, stats = slot
        value = dev.io_read(port, size) if size in sizes else _BAD_SIZE
        if value.__class__ is IoError:
            stats.missed_reads += 1
            self.stats.errors += 1
            self._mistake(dev.name, value.value, port, size)
        else:
            stats.reads += 1
        return value

    def io_write(self, port: int, size: int, value: int) -> IoError | None:
        self.stats.writes += 1
        slot = self._by_port.get(port)
        if slot is None:
            self.stats.unclaimed_writes += 1
            self._mistake("unclaimed", "write", port, size)
            return IoError.INVALID_REGISTER
        dev, sizes, stats = slot
        err = dev.io_write(port, size, value) if size in sizes else _BAD_SIZE
        if err is not None:
            stats.missed_writes += 1
            self.stats.errors += 1
            self._mistake(dev.name, err.value, port, size)
        else:
            stats.writes += 1
        return err

    _answer, _take = io_read, io_write

    def poll(self, now_ns: int) -> int | None:
        """Let every clocked device catch up; the earliest next deadline, or None.

        A device's ``poll`` returns when its state next changes by itself; until then a
        poll changes nothing anyone can see (devices catch up lazily, at every access too),
        so the owner calls this at the deadline it returns, and :meth:`deadline_after`
        after an access.  Anything else that changes a device (input, a reset, a restore,
        a clock step) is followed by this."""
        return self._poll_upto(now_ns, NEVER)

    def poll_due(self, now_ns: int) -> int | None:
        """:meth:`poll` for the devices whose deadline has come, the others left as their
        last poll left them: until its deadline a device's poll changes nothing (see
        :meth:`poll`), so the owner's timer, which fires at the earliest deadline, needs
        only these.  A QEMU timer list's way: an expired timer runs its own device.  (The
        gen-1 chipset's 100 Hz PIT tick polled the RTC, the UART and the PIT each time:
        36 % of the workers' device polling went to the two that were not due; cProfile,
        16 booting partitions.)"""
        return self._poll_upto(now_ns, now_ns)

    def _poll_upto(self, now_ns: int, upto: int) -> int | None:
        """Poll every clocked device whose deadline is at or before ``upto`` (all of them:
        NEVER); the earliest deadline, or None."""
        due = self._due
        for dev, d in due.items():  # (values replaced, no key added: iteration stays valid)
            if d <= upto:
                d = dev.poll(now_ns)
                due[dev] = NEVER if d is None else d
        self._next = deadline = min(due.values(), default=NEVER)
        return None if deadline == NEVER else deadline

    def deadline_after(self, port: int, clock: Callable[[], int]) -> int | None:
        """:meth:`poll`'s answer after an access to ``port``, re-polling only the devices
        that access may have moved (the device there when it is clocked, and its
        ``moves``; ``clock`` gives the time, read only if one needs it): every other
        device's deadline is as its last poll left it, since nothing but time changed it.
        The owner polls them all when that deadline passes, whether or not accesses come.
        (Polling every device after each access: 98.3k instructions per UART access with
        the gen-1 chipset, 57.6k this way; cachegrind, the worker's serve loop fed
        PortNotify frames.)"""
        moved = self._moves.get(port)
        if moved is not None:
            due = self._due
            for dev, deadline in moved:
                d = deadline(clock)
                if d is None:
                    d = NEVER
                if d != due[dev]:  # moved: the earliest may have changed (else nothing did)
                    due[dev] = d
                    self._next = min(due.values())
        return None if self._next == NEVER else self._next


def _own_deadline(device: Device) -> Callable[[Callable[[], int]], int | None]:
    """A device's deadline after an access of its own: its ``deadline_after_access``
    (worker.devices.base.ChipsetDevice) or, lacking one, a poll."""
    return getattr(device, "deadline_after_access", None) or _polled_deadline(device)


def _polled_deadline(device: Device) -> Callable[[Callable[[], int]], int | None]:
    return lambda clock: device.poll(clock())


class MmioBus(_GuestView):
    """Guest-physical ranges that devices claim (the VGA text buffer, later the APIC page).
    Few ranges, so a sorted list and bisect; an access must lie inside one range."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[tuple[MmioRange, MmioDevice]] = []
        self.stats = BusStats()
        self._mistake = _Mistakes("GPA")

    def register(self, device: MmioDevice) -> None:
        for r in device.mmio_ranges():
            i = bisect.bisect_left(self._starts, r.base)
            before = self._ranges[i - 1][0] if i > 0 else None
            after = self._ranges[i][0] if i < len(self._ranges) else None
            if (before and before.last >= r.base) or (after and after.base <= r.last):
                other = (before if before and before.last >= r.base else after)
                raise DeviceOverlap(f"{device.name} claims GPA {r.base:#x}, which overlaps {other}")
            self._starts.insert(i, r.base)
            self._ranges.insert(i, (r, device))

    def ranges(self) -> list[MmioRange]:
        return [r for r, _ in self._ranges]

    def device_at(self, gpa: int) -> MmioDevice | None:
        found = self._find(gpa)
        return found[1] if found is not None else None

    def _find(self, gpa: int) -> tuple[MmioRange, MmioDevice] | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            r, dev = self._ranges[i]
            if gpa <= r.last:
                return r, dev
        return None

    @staticmethod
    def _check(r: MmioRange, gpa: int, size: int) -> IoError | None:
        if size not in r.sizes:
            return _BAD_SIZE
        if gpa + size - 1 > r.last:
            return IoError.UNALIGNED_ACCESS  # starts inside the range, ends outside it
        return None

    def mmio_read(self, gpa: int, size: int) -> int | IoError:
        self.stats.reads += 1
        found = self._find(gpa)
        if found is None:
            self.stats.errors += 1
            self._mistake("unclaimed", IoError.INVALID_REGISTER.value, gpa, size)
            return IoError.INVALID_REGISTER
        r, dev = found
        value = self._check(r, gpa, size) or dev.mmio_read(gpa, size)
        if value.__class__ is IoError:
            dev.stats.mmio_missed_reads += 1
            self.stats.errors += 1
            self._mistake(dev.name, value.value, gpa, size)
        else:
            dev.stats.mmio_reads += 1
        return value

    def mmio_write(self, gpa: int, size: int, value: int) -> IoError | None:
        self.stats.writes += 1
        found = self._find(gpa)
        if found is None:
            self.stats.errors += 1
            self._mistake("unclaimed", IoError.INVALID_REGISTER.value, gpa, size)
            return IoError.INVALID_REGISTER
        r, dev = found
        err = self._check(r, gpa, size) or dev.mmio_write(gpa, size, value)
        if err is not None:
            dev.stats.mmio_missed_writes += 1
            self.stats.errors += 1
            self._mistake(dev.name, err.value, gpa, size)
        else:
            dev.stats.mmio_writes += 1
        return err

    _answer, _take = mmio_read, mmio_write
