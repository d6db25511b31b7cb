"""One partition's device set, built from the topology's device list, and its glue.

The chipset owns the devices and what connects them: the IRQ lines (into the PIC when the
partition has one), the clock, the console and the reset line.  Device types are looked up
by name in :data:`DEVICE_TYPES`, each with the config dataclass it takes, so a topology names
a device the way its datasheet does.

Interrupts: the PIC's INTR output is the chipset's interrupt output.  When it rises, the
worker performs the INTA cycle at once (:meth:`Chipset.take_interrupts`) and hands the vector
to the hypervisor, as an interrupt router delivers a vector message to the local APIC; the
PIC keeps the request in service until the guest's EOI, as it would.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import fields
from time import perf_counter_ns
from typing import Callable

from worker.bus import MmioBus, PortBus
from worker.devices.ata import AtaDisk, AtaDiskConfig
from worker.devices.base import IrqLine, MonotonicClock, NullIrqLine
from worker.devices.cmos_rtc import CmosRtc, CmosRtcConfig
from worker.devices.i8042 import I8042, I8042Config
from worker.devices.pic8259 import Pic8259, Pic8259Config
from worker.devices.pit8254 import Pit8254, Pit8254Config
from worker.devices.uart16550 import Uart16550, Uart16550Config
from worker.devices.vga_text import VgaText, VgaTextConfig


class _Intr:
    """The PIC's INTR output: remembers when it rose, for the interrupt path's first stamp."""

    def __init__(self) -> None:
        self.level = False
        self.raised_ns = 0

    def set_level(self, high: bool) -> None:
        if high and not self.level:
            self.raised_ns = perf_counter_ns()
        self.level = high


class Chipset:
    def __init__(self, devices: list[dict]) -> None:
        self.bus = PortBus()
        self.mmio = MmioBus()
        self.clock = MonotonicClock()
        self.on_console_tx: Callable[[bytes], None] = lambda data: None
        self.devices = []
        self.by_name: dict[str, object] = {}
        self.console: Uart16550 | None = None  # the first UART is the partition's console
        self.keyboard: I8042 | None = None
        self.vga: VgaText | None = None
        self.pic: Pic8259 | None = None
        self._intr = _Intr()
        self.reset_requested = ""
        self.memory = None  # proto.memory.GuestMemory, once the worker has mapped it
        specs = [dict(d) for d in devices]
        # The PIC first, so the other devices' IRQ lines can be wired into it.
        specs.sort(key=lambda d: d.get("type") != "pic8259")
        for spec in specs:
            kind = spec.pop("type")
            if kind not in DEVICE_TYPES:
                raise ValueError(f"unknown device type {kind!r}; known: {', '.join(DEVICE_TYPES)}")
            device = DEVICE_TYPES[kind](self, spec)
            if device.name in self.by_name:
                raise ValueError(f"two devices are named {device.name!r}")
            self.bus.register(device)
            if hasattr(device, "mmio_ranges"):
                self.mmio.register(device)
            self.devices.append(device)
            self.by_name[device.name] = device

    # -- glue ------------------------------------------------------------------------------

    def irq_line(self, irq: int) -> IrqLine:
        """IRQn as a device sees it: a PIC input, or nothing when there is no PIC."""
        if self.pic is None:
            return NullIrqLine()
        return self.pic.irq_line(9 if irq == 2 else irq)  # ISA IRQ2 is wired to IRQ9

    def _request_reset(self) -> None:
        self.reset_requested = "i8042 CPU reset"

    @property
    def intr(self) -> bool:
        return self._intr.level

    def take_interrupts(self) -> list[tuple[int, int]]:
        """INTA while INTR is high: [(vector, ns when INTR rose)]."""
        out = []
        pic = self.pic
        while pic is not None and self._intr.level and len(out) < 16:
            raised = self._intr.raised_ns
            out.append((pic.acknowledge(), raised))
            # A request still waiting keeps INTR high; it dates from now.
            self._intr.raised_ns = perf_counter_ns()
        return out

    # -- factories -------------------------------------------------------------------------

    def _pic(self, spec: dict) -> Pic8259:
        self.pic = Pic8259(_config(Pic8259Config, spec), self._intr)
        return self.pic

    def _pit(self, spec: dict) -> Pit8254:
        return Pit8254(_config(Pit8254Config, spec), self.irq_line(0), self.clock)

    def _uart(self, spec: dict) -> Uart16550:
        config = _config(Uart16550Config, spec)
        uart = Uart16550(config, self.irq_line(config.irq), self.clock, lambda data: self.on_console_tx(data))
        if self.console is None:
            self.console = uart
        return uart

    def _rtc(self, spec: dict) -> CmosRtc:
        config = _config(CmosRtcConfig, spec)
        return CmosRtc(config, self.irq_line(config.irq), self.clock, time.time)

    def _ata(self, spec: dict) -> AtaDisk:
        config = _config(AtaDiskConfig, spec)
        return AtaDisk(config, self.irq_line(config.irq))

    def _vga(self, spec: dict) -> VgaText:
        self.vga = VgaText(_config(VgaTextConfig, spec))
        return self.vga

    def _i8042(self, spec: dict) -> I8042:
        config = _config(I8042Config, spec)
        self.keyboard = I8042(config, self.irq_line(config.irq), self._request_reset,
                              aux_irq_line=self.irq_line(config.aux_irq))
        return self.keyboard

    # -- what the worker asks of it ------------------------------------------------------------

    def console_input(self, data: bytes) -> int:
        """Bytes typed at the console go to the console UART's receive FIFO."""
        return self.console.push_rx(data) if self.console is not None else 0

    def keyboard_input(self, data: bytes) -> int:
        return self.keyboard.push_scancodes(data) if self.keyboard is not None else 0

    def reset(self) -> None:
        """Every device to power-on (the RTC keeps its time and NVRAM, disks their data)."""
        for device in self.devices:
            device.reset()
        self.reset_requested = ""

    def screen(self) -> dict:
        if self.vga is None:
            return {"error": "this partition has no VGA"}
        row, col, visible = self.vga.cursor()
        return {"text": self.vga.render(), "lines": self.vga.screen_text(),
                "cursor": [row, col, visible]}

    def device_stats(self) -> dict:
        out = {}
        for device in self.devices:
            entry = {}
            for attr in ("stats", "counters"):
                value = getattr(device, attr, None)
                if dataclasses.is_dataclass(value):
                    entry.update({k: v for k, v in dataclasses.asdict(value).items()
                                  if isinstance(v, (int, float, str, bool))})
            out[device.name] = entry
        out["port_bus"] = dataclasses.asdict(self.bus.stats)
        out["mmio_bus"] = dataclasses.asdict(self.mmio.stats)
        return out

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
    "pic8259": Chipset._pic,
    "pit8254": Chipset._pit,
    "uart16550": Chipset._uart,
    "cmos_rtc": Chipset._rtc,
    "ata": Chipset._ata,
    "vga_text": Chipset._vga,
    "i8042": Chipset._i8042,
}
# What the topology may set for each device type (the config dataclass's fields).
DEVICE_SETTINGS = {
    "pic8259": Pic8259Config, "pit8254": Pit8254Config, "uart16550": Uart16550Config,
    "cmos_rtc": CmosRtcConfig, "ata": AtaDiskConfig, "vga_text": VgaTextConfig, "i8042": I8042Config,
}
