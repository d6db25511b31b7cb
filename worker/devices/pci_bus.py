"""PCI bus 0 behind the host bridge: configuration mechanism #1 and the PCI memory window.

Configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2; the i440BX and PIIX4 datasheets):
CONFIG_ADDRESS is the dword at 0xCF8 (bit 31 enable, bus 23:16, device 15:11, function
10:8, register 7:2); CONFIG_DATA is 0xCFC-0xCFF, the addressed dword's bytes.  Port 0xCF9,
a byte, is PIIX4's Reset Control register.  The host bridge also forwards a range of memory
addresses to the bus; the expansion ROM BARs of the functions decode inside it.

Policies:

* Only a 32-bit access at 0xCF8 is CONFIG_ADDRESS; its reserved bits (30:24, 1:0) read 0.
  A byte at 0xCF9 is Reset Control; any other access to 0xCF8-0xCFB is not a configuration
  register (IoError.INVALID_REGISTER: the guest reads all-ones, the write is dropped).
* CONFIG_DATA takes bytes, words and dwords at any of 0xCFC-0xCFF: the access reaches the
  addressed dword's bytes ``port - 0xCFC`` onwards, as the byte enables of a configuration
  cycle do.  The bytes of an access that runs past 0xCFF are not configuration bytes: they
  read FFh and are not written.
* With the enable bit clear there is no configuration cycle: CONFIG_DATA is
  IoError.INVALID_REGISTER.  A cycle to a bus other than 0 or a device/function with nothing
  there ends in master abort: reads are all-ones, writes vanish (not a guest mistake: it is
  how firmware finds what is there).
* Reset Control (PIIX4 CF9h): bits 1 (system reset) and 2 (reset CPU) are kept; bit 2 going
  from 0 to 1 resets the partition, as the i8042's pulse does (hard and soft alike).
* The memory window is 0xE0000000-0xFEBFFFFF (what SeaBIOS allocates BARs from and where it
  maps the expansion ROMs, below the I/O APIC's page).  An access in it that no function's
  ROM decodes ends in master abort: reads all-ones, writes vanish.  A ROM BAR programmed
  outside the window is not reachable (the host bridge does not forward there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

from worker.devices.base import ChipsetDevice, IoError, MmioRange, MmioStats, NullIrqLine, PortRange, all_ones
from worker.devices.config import PciConfig
from worker.devices.pci_function import CONFIG_SIZE, PciFunction
from worker.devices.state import Length, Mask

CONFIG_ADDRESS_PORT = 0xCF8
RESET_CONTROL_PORT = 0xCF9
CONFIG_DATA_PORT = 0xCFC
CONFIG_ENABLE = 0x80000000
CONFIG_ADDRESS_MASK = 0x80FFFFFC  # 30:24 and 1:0 are reserved, read 0
RESET_CONTROL_MASK = 0x06
RESET_CPU = 0x04
WINDOW_BASE, WINDOW_END = 0xE0000000, 0xFEC00000


@dataclass
class PciBusState:
    config_address: Annotated[int, Mask(CONFIG_ADDRESS_MASK)] = 0
    reset_control: Annotated[int, Mask(RESET_CONTROL_MASK)] = 0
    # Every function's 256 configuration bytes, in the order the bus was given them.
    config: list[Annotated[bytearray, Length(exactly=CONFIG_SIZE)]] = field(default_factory=list)


class PciBus(ChipsetDevice):
    """Bus 0: its functions by (device, function), mechanism #1 and the memory window."""

    def __init__(self, config: PciConfig, functions: dict[tuple[int, int], PciFunction],
                 reset: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.name = config.name
        self.stats = MmioStats()
        self.irq = NullIrqLine()
        for (dev, fn) in functions:
            if not (0 <= dev < 32 and 0 <= fn < 8):
                raise ValueError(f"no PCI device {dev:#x} function {fn}")
        self.functions = dict(functions)
        self._reset = reset
        self.state = PciBusState(config=[f.config for f in self.functions.values()])

    def reset(self) -> None:
        for f in self.functions.values():
            f.reset()
        self.state = PciBusState(config=[f.config for f in self.functions.values()])

    def _check_state(self, state: PciBusState) -> None:
        if len(state.config) != len(self.functions):
            raise ValueError(f"{self.name}: {len(state.config)} functions saved, {len(self.functions)} here")
        for f, saved in zip(self.functions.values(), state.config):
            why = f.check_config(saved)
            if why:
                raise ValueError(why)

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        for f, config in zip(self.functions.values(), self.state.config):
            f.config = config  # the function works on the restored bytes

    def port_ranges(self) -> list[PortRange]:
        return self.config.ports()

    def mmio_ranges(self) -> list[MmioRange]:
        return [MmioRange(WINDOW_BASE, WINDOW_END - WINDOW_BASE)]

    # ------------------------------------------------------------------ configuration

    def _addressed(self) -> tuple[PciFunction | None, int]:
        address = self.state.config_address
        bus, dev, fn = (address >> 16) & 0xFF, (address >> 11) & 0x1F, (address >> 8) & 0x7
        return (self.functions.get((dev, fn)) if bus == 0 else None), address & 0xFC

    def io_read(self, port: int, size: int) -> int | IoError:
        if port < CONFIG_DATA_PORT:
            if port == CONFIG_ADDRESS_PORT and size == 4:
                return self.state.config_address
            if port == RESET_CONTROL_PORT and size == 1:
                return self.state.reset_control
            return IoError.INVALID_REGISTER
        if not self.state.config_address & CONFIG_ENABLE:
            return IoError.INVALID_REGISTER
        function, register = self._addressed()
        lane = port - CONFIG_DATA_PORT
        inside = min(size, 4 - lane)  # the bytes that are configuration bytes
        if function is None:
            return all_ones(size)  # master abort
        value = function.config_read(register + lane, inside)
        return value | (all_ones(size) & ~all_ones(inside))

    def io_write(self, port: int, size: int, value: int) -> IoError | None:
        s = self.state
        if port < CONFIG_DATA_PORT:
            if port == CONFIG_ADDRESS_PORT and size == 4:
                s.config_address = value & CONFIG_ADDRESS_MASK
                return None
            if port == RESET_CONTROL_PORT and size == 1:
                before, s.reset_control = s.reset_control, value & RESET_CONTROL_MASK
                if s.reset_control & RESET_CPU and not before & RESET_CPU:
                    self._reset()
                return None
            return IoError.INVALID_REGISTER
        if not s.config_address & CONFIG_ENABLE:
            return IoError.INVALID_REGISTER
        function, register = self._addressed()
        lane = port - CONFIG_DATA_PORT
        if function is not None:
            function.config_write(register + lane, min(size, 4 - lane), value)
        return None

    # ------------------------------------------------------------------ the memory window

    def _rom_at(self, gpa: int, size: int) -> tuple[PciFunction, int] | None:
        for f in self.functions.values():
            base = f.rom_base()
            if base is not None and base <= gpa and gpa + size <= base + f.rom_size:
                return f, gpa - base
        return None

    def mmio_read(self, gpa: int, size: int) -> int:
        hit = self._rom_at(gpa, size)
        return hit[0].rom_read(hit[1], size) if hit else all_ones(size)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        return None  # a ROM ignores writes; elsewhere in the window: master abort
