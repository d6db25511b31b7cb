"""What every device test uses: an IRQ line that records, and a bus to plug a device into."""

from __future__ import annotations

from worker.bus import MmioBus, PortBus


class RecordingIrqLine:
    """An IrqLine that remembers every level it was driven to, in order."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def level(self) -> bool:
        """The level now (low until first driven)."""
        return self.levels[-1] if self.levels else False

    def rising_edges(self, initial: bool = False) -> int:
        """Low-to-high transitions, starting from ``initial``."""
        edges, level = 0, initial
        for new in self.levels:
            edges += new and not level
            level = new
        return edges


def plug(device) -> PortBus:
    """A port bus with ``device`` on it: accesses are checked and counted as in the worker."""
    bus = PortBus()
    bus.register(device)
    return bus


def plug_mmio(device) -> MmioBus:
    bus = MmioBus()
    bus.register(device)
    return bus
