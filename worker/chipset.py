"""One partition's device set, built from the topology's device list.

The chipset owns the devices and their glue (IRQ lines, clock, console); the bus routes
accesses to them.  Device types are looked up by name in :data:`DEVICE_TYPES`, each with the
config keys it takes, so a topology names a device the way the datasheet does.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable

from worker.bus import PortBus
from worker.devices.base import MonotonicClock, NullIrqLine
from worker.devices.uart16550 import Uart16550, Uart16550Config


class Chipset:
    def __init__(self, devices: list[dict]) -> None:
        self.bus = PortBus()
        self.clock = MonotonicClock()
        self.on_console_tx: Callable[[bytes], None] = lambda data: None
        self.devices = []
        self.console = None  # the UART that is the partition's console (the first one)
        for spec in devices:
            spec = dict(spec)
            kind = spec.pop("type")
            if kind not in DEVICE_TYPES:
                raise ValueError(f"unknown device type {kind!r}; known: {', '.join(DEVICE_TYPES)}")
            device = DEVICE_TYPES[kind](self, spec)
            self.bus.register(device)
            self.devices.append(device)

    def _uart(self, spec: dict) -> Uart16550:
        config = _config(Uart16550Config, spec)
        # Until the chipset has an interrupt controller the UART's line goes nowhere;
        # guests poll LSR, as a boot loader's serial driver does.
        uart = Uart16550(config, NullIrqLine(), self.clock, lambda data: self.on_console_tx(data))
        if self.console is None:
            self.console = uart
        return uart

    def console_input(self, data: bytes) -> int:
        """Bytes typed at the console go to the console UART's receive FIFO."""
        if self.console is None:
            return 0
        return self.console.push_rx(data)

    def close(self) -> None:
        for device in self.devices:
            close = getattr(device, "close", None)
            if close is not None:
                close()


def _config(cls, spec: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {', '.join(sorted(unknown))}; "
                         f"it takes {', '.join(sorted(known))}")
    return cls(**spec)


DEVICE_TYPES: dict[str, Callable[[Chipset, dict], object]] = {
    "uart16550": Chipset._uart,
}
