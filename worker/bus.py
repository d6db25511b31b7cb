"""The worker's port bus: routes an I/O port access to the device that claims the port.

Ranges are checked at registration (an overlap is a configuration error, as in rust-vmm's
vm-device), so routing is one dict lookup.  Guest mistakes — a port nothing claims, a size a
register does not take — read all-ones and drop writes, are counted per device, and are
logged at a limited rate; they never raise.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

from worker.devices.base import Device, IoError, MmioDevice, MmioRange, PortRange, all_ones

log = logging.getLogger("worker.bus")

# Log the first few guest mistakes of each kind, then one in this many.
LOG_FIRST, LOG_EVERY = 5, 1000


class DeviceOverlap(ValueError):
    """Two devices claim the same port."""


@dataclass
class BusStats:
    reads: int = 0
    writes: int = 0
    unclaimed_reads: int = 0
    unclaimed_writes: int = 0
    errors: int = 0  # accesses a device refused (IoError)


class PortBus:
    def __init__(self) -> None:
        self._by_port: dict[int, Device] = {}
        self.devices: list[Device] = []
        self.stats = BusStats()
        self._mistakes: dict[tuple[str, str], int] = {}

    def register(self, device: Device) -> None:
        ranges = device.port_ranges()
        for r in ranges:
            for port in range(r.base, r.base + r.count):
                other = self._by_port.get(port)
                if other is not None:
                    raise DeviceOverlap(f"{device.name} claims port {port:#x}, which {other.name} has")
        for r in ranges:
            for port in range(r.base, r.base + r.count):
                self._by_port[port] = device
        self.devices.append(device)

    def ranges(self) -> list[PortRange]:
        """The claimed ports as maximal contiguous ranges (what the hypervisor is told)."""
        out: list[PortRange] = []
        for port in sorted(self._by_port):
            if out and out[-1].base + out[-1].count == port:
                out[-1] = PortRange(out[-1].base, out[-1].count + 1)
            else:
                out.append(PortRange(port, 1))
        return out

    def io_read(self, port: int, size: int) -> int:
        self.stats.reads += 1
        dev = self._by_port.get(port)
        if dev is None:
            self.stats.unclaimed_reads += 1
            self._mistake("unclaimed", "read", port, size)
            return all_ones(size)
        value = dev.io_read(port, size)
        if value.__class__ is IoError:
            self.stats.errors += 1
            self._mistake(dev.name, value.value, port, size)
            return all_ones(size)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        self.stats.writes += 1
        dev = self._by_port.get(port)
        if dev is None:
            self.stats.unclaimed_writes += 1
            self._mistake("unclaimed", "write", port, size)
            return
        err = dev.io_write(port, size, value)
        if err is not None:
            self.stats.errors += 1
            self._mistake(dev.name, err.value, port, size)

    def _mistake(self, who: str, what: str, port: int, size: int) -> None:
        key = (who, what)
        n = self._mistakes.get(key, 0) + 1
        self._mistakes[key] = n
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("guest %s: %s at port %#x size %d (%d so far)", who, what, port, size, n)

    def poll(self, now_ns: int) -> int | None:
        """Let clocked devices catch up; the earliest next deadline, or None."""
        deadline = None
        for dev in self.devices:
            d = dev.poll(now_ns)
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        return deadline


class MmioBus:
    """Guest-physical ranges that devices claim (the VGA text buffer, later the APIC page).
    Few ranges, so a sorted list and bisect; an access must lie inside one range."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[tuple[MmioRange, MmioDevice]] = []
        self.stats = BusStats()
        self._mistakes: dict[tuple[str, str], int] = {}

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

    def _find(self, gpa: int):
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            r, dev = self._ranges[i]
            if gpa <= r.last:
                return dev
        return None

    def read(self, gpa: int, size: int) -> int:
        self.stats.reads += 1
        dev = self._find(gpa)
        value = dev.mmio_read(gpa, size) if dev is not None else IoError.INVALID_REGISTER
        if value.__class__ is IoError:
            self.stats.errors += 1
            self._mistake(dev.name if dev else "unclaimed", value.value, gpa, size)
            return all_ones(size)
        return value

    def write(self, gpa: int, size: int, value: int) -> None:
        self.stats.writes += 1
        dev = self._find(gpa)
        err = dev.mmio_write(gpa, size, value) if dev is not None else IoError.INVALID_REGISTER
        if err is not None:
            self.stats.errors += 1
            self._mistake(dev.name if dev else "unclaimed", err.value, gpa, size)

    def _mistake(self, who: str, what: str, gpa: int, size: int) -> None:
        key = (who, what)
        n = self._mistakes.get(key, 0) + 1
        self._mistakes[key] = n
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("guest %s: %s at GPA %#x size %d (%d so far)", who, what, gpa, size, n)
