"""One partition's device set, built from the topology's device list, and its glue.

The chipset owns the devices and what connects them: the IRQ lines (into the PIC when the
partition has one), the clock, the console, the reset line, and the host resources the
devices are handed (disk images, the NVRAM file), which it opens and closes.  A topology
entry names a device by its type; :data:`worker.devices.config.DEVICE_TYPES` says which
config (and backend settings) each type takes, and :data:`_FACTORIES` wires it up.

Interrupts: the PIC's INTR output is the chipset's interrupt output.  When it rises, the
worker performs the INTA cycle at once (:meth:`Chipset.take_interrupts`) and hands the vector
to the hypervisor, as an interrupt router delivers a vector message to the local APIC; the
PIC keeps the request in service until the guest's EOI, as it would.
"""

from __future__ import annotations

import dataclasses
import time
from time import perf_counter_ns
from typing import Any, Callable

from proto.errors import ConfigError
from proto.status import DeviceCounters, ScreenSnapshot
from worker.backends import DiskFile, NvramFile
from worker.bus import MmioBus, PortBus
from worker.devices.ata import AtaDisk
from worker.devices.backends import ConsoleSink, NullConsole
from worker.devices.base import IrqLine, NullIrqLine, SteppableClock
from worker.devices.cmos_rtc import NVRAM_SIZE, CmosRtc
from worker.devices.config import DEVICE_TYPES, DiskImageSettings, NvramSettings
from worker.devices.gen1_pci import gen1_pci_bus
from worker.devices.i8042 import I8042
from worker.devices.pic8259 import Pic8259
from worker.devices.pit8254 import Pit8254
from worker.devices.uart16550 import Uart16550
from worker.devices.vga_graphics import VgaGraphics
from worker.devices.vga_text import VgaText
from worker.tick_gate import TickGate


class BadDeviceConfig(ConfigError, ValueError):
    """A device of the topology the worker cannot build: an unknown type or setting, a bad
    value, a name two devices share."""


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
    def __init__(self, devices: list[dict], console: ConsoleSink | None = None,
                 clock: SteppableClock | None = None) -> None:
        """``clock``: the devices' time (tests hand in one they move themselves)."""
        self.bus = PortBus()
        self.mmio = MmioBus()
        self.clock = clock if clock is not None else SteppableClock()  # `io clock_step` moves it on
        self.console_sink = console if console is not None else NullConsole()  # every UART's
        self.devices = []
        self.by_name: dict[str, object] = {}
        self.console: Uart16550 | None = None  # the first UART is the partition's console
        self.keyboard: I8042 | None = None
        self.vga: VgaText | None = None
        self.pic: Pic8259 | None = None
        self.tick_gate: TickGate | None = None  # PIT OUT0 → IR0 (tick_gate.py)
        self.intr_out = _Intr()  # the PIC's INTR pin (``intr`` is its level)
        self._backends: list[DiskFile] = []  # opened here, closed with the chipset
        self.reset_requested = ""
        self.memory = None  # proto.memory.GuestMemory, once the worker has mapped it
        specs = [dict(d) for d in devices]
        # The PIC first, so the other devices' IRQ lines can be wired into it.
        specs.sort(key=lambda d: d.get("type") != "pic8259")
        for spec in specs:
            kind = spec.pop("type")
            if kind not in DEVICE_TYPES:
                raise BadDeviceConfig(f"unknown device type {kind!r}; known: {', '.join(DEVICE_TYPES)}")
            try:
                config, backend = DEVICE_TYPES[kind].build(spec)
            except ValueError as e:
                raise BadDeviceConfig(str(e)) from e
            device = _FACTORIES[kind](self, config, backend)
            if device.name in self.by_name:
                raise BadDeviceConfig(f"two devices are named {device.name!r}")
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
        return self.intr_out.level

    def take_interrupts(self) -> list[tuple[int, int]]:
        """INTA while INTR is high: [(vector, ns when INTR rose)]."""
        out = []
        pic = self.pic
        while pic is not None and self.intr_out.level and len(out) < 16:
            raised = self.intr_out.raised_ns
            out.append((pic.acknowledge(), raised))
            # A request still waiting keeps INTR high; it dates from now.
            self.intr_out.raised_ns = perf_counter_ns()
        return out

    # -- factories: a device from its config, its backend opened and its lines wired ------

    def _pic(self, config, _) -> Pic8259:
        self.pic = Pic8259(config, self.intr_out)
        return self.pic

    def _pit(self, config, _) -> Pit8254:
        if self.pic is None:
            return Pit8254(config, NullIrqLine(), self.clock)
        # OUT0 reaches IR0 through the platform's lost-tick policy (tick_gate.py).
        self.tick_gate = TickGate(self.pic, 0)
        return Pit8254(config, self.tick_gate, self.clock)

    def _uart(self, config, _) -> Uart16550:
        uart = Uart16550(config, self.irq_line(config.irq), self.clock, self.console_sink)
        if self.console is None:
            self.console = uart
        return uart

    def _rtc(self, config, settings: NvramSettings) -> CmosRtc:
        nvram = None if settings.nvram_path is None else NvramFile(settings.nvram_path, NVRAM_SIZE)
        return CmosRtc(config, self.irq_line(config.irq), self.clock, time.time, nvram)

    def _ata(self, config, settings: DiskImageSettings) -> AtaDisk:
        image = DiskFile(settings.image_path, settings.size_bytes)
        self._backends.append(image)
        return AtaDisk(config, self.irq_line(config.irq), image)

    def _vga(self, config, _) -> VgaText:
        self.vga = VgaText(config)
        return self.vga

    def _vga_graphics(self, config, _) -> VgaGraphics:
        return VgaGraphics(config)

    def _pci(self, config, _):
        missing = config.missing()
        if missing:
            raise BadDeviceConfig(missing)
        path = config.vgabios_path()
        try:
            with open(path, "rb") as f:
                image = f.read(1 << 20)
            return gen1_pci_bus(config, image, self._request_pci_reset, what=path)
        except OSError as e:
            raise BadDeviceConfig(f"{path}: {e.strerror}") from e
        except ValueError as e:  # not an option ROM
            raise BadDeviceConfig(str(e)) from e

    def _request_pci_reset(self) -> None:
        self.reset_requested = "PIIX4 reset control (0xCF9)"

    def _i8042(self, config, _) -> I8042:
        self.keyboard = I8042(config, self.irq_line(config.irq), self._request_reset,
                              aux_irq=self.irq_line(config.aux_irq))
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

    def screen(self) -> ScreenSnapshot | None:
        if self.vga is None:
            return None
        row, col, visible = self.vga.cursor()
        return ScreenSnapshot(self.vga.render(), self.vga.screen_text(), (row, col, visible))

    def device_stats(self) -> DeviceCounters:
        out = {}
        for device in self.devices:
            entry = {}
            for attr in ("stats", "counters"):
                value = getattr(device, attr, None)
                if dataclasses.is_dataclass(value):
                    entry.update({k: v for k, v in dataclasses.asdict(value).items()
                                  if isinstance(v, (int, float, str, bool))})
            out[device.name] = entry
        if self.tick_gate is not None:
            out["tick_gate"] = dataclasses.asdict(self.tick_gate.counters)
        out["port_bus"] = dataclasses.asdict(self.bus.stats)
        out["mmio_bus"] = dataclasses.asdict(self.mmio.stats)
        return DeviceCounters(out)

    def save(self) -> dict:
        """Every device's state value, by device name (the saved state's ``worker`` section)."""
        return {device.name: device.save() for device in self.devices}

    def restore(self, saved: dict) -> None:
        """Every device from ``saved`` (what :meth:`save` made, possibly in another
        process): the same devices by name, each value checked by its device (ValueError
        naming what is wrong).  Used by a new worker before it serves: one that fails here
        exits, and the saved state is still where it was."""
        if not isinstance(saved, dict) or set(saved) != set(self.by_name):
            got = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"saved devices {got} are not this partition's {sorted(self.by_name)}")
        for device in self.devices:
            device.restore(saved[device.name])

    def close(self) -> None:
        for backend in self._backends:
            backend.close()


_FACTORIES: dict[str, Callable[[Chipset, Any, Any], object]] = {
    "pic8259": Chipset._pic,
    "pit8254": Chipset._pit,
    "uart16550": Chipset._uart,
    "cmos_rtc": Chipset._rtc,
    "ata": Chipset._ata,
    "vga_text": Chipset._vga,
    "i8042": Chipset._i8042,
    "vga_graphics": Chipset._vga_graphics,
    "pci": Chipset._pci,
}
assert set(_FACTORIES) == set(DEVICE_TYPES), "every device type needs a factory"
