"""The VGA beyond text mode's buffer and CRTC (:mod:`worker.devices.vga_text`): the
sequencer and graphics controller registers, and the graphics window 0xA0000-0xB7FFF.

A VGA BIOS setting mode 3 programs these and loads its font into plane 2 through
0xA0000; a text screen needs none of it to show its characters, but the BIOS must find
registers that read back and memory that takes its writes (an address no device claims is
an unmapped GPA: the guest takes #GP).

Policies:

* Sequencer (0x3C4/0x3C5, registers 0-4) and graphics controller (0x3CE/0x3CF, registers
  0-8) are register files: what is written reads back, with the power-on values of mode 3.
  They do not steer memory: the plane mask, read map and memory map select change nothing.
  An index past the last register is stored; reading or writing the data port with it is
  IoError.INVALID_REGISTER.  The index ports also take 16-bit accesses (index, then data).
* 0xA0000-0xB7FFF is one flat memory, what the CPU wrote is what it reads (the font lands
  here; graphics modes are not built, so nothing of it is displayed).  Its stores have no
  side effect, so they may come as coalesced MMIO batches, as the text buffer's do.  The text window,
  0xB8000-0xBFFFF, is vga_text's.
* The attribute controller (0x3C0/0x3C1) and the DAC (0x3C6-0x3C9) are not built: a BIOS's
  palette writes are dropped and its reads see all-ones, which text output does not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.base import ChipsetDevice, FlatWindow, IoError, MmioStats, NullIrqLine, PortRange
from worker.devices.config import VgaGraphicsConfig
from worker.devices.state import Byte, Length

GRAPHICS_BASE = 0xA0000
GRAPHICS_WINDOW = 0x18000  # 0xA0000-0xB7FFF
SEQ_INDEX, SEQ_DATA = 0x3C4, 0x3C5
GC_INDEX, GC_DATA = 0x3CE, 0x3CF

# Mode 3's values (IBM VGA technical reference), as a BIOS leaves them.
MODE3_SEQUENCER = (0x03, 0x00, 0x03, 0x00, 0x02)
MODE3_GRAPHICS = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF)


@dataclass
class VgaGraphicsState:
    memory: Annotated[bytearray, Length(exactly=GRAPHICS_WINDOW)] = field(
        default_factory=lambda: bytearray(GRAPHICS_WINDOW))
    seq_index: Byte = 0
    sequencer: Annotated[list[Byte], Length(exactly=len(MODE3_SEQUENCER))] = field(
        default_factory=lambda: list(MODE3_SEQUENCER))
    gc_index: Byte = 0
    graphics: Annotated[list[Byte], Length(exactly=len(MODE3_GRAPHICS))] = field(
        default_factory=lambda: list(MODE3_GRAPHICS))


class VgaGraphics(FlatWindow, ChipsetDevice):
    # Plain memory to the guest, as the text buffer is: its stores may be coalesced.
    WINDOW_BASE, WINDOW_SIZE = GRAPHICS_BASE, GRAPHICS_WINDOW

    def __init__(self, config: VgaGraphicsConfig | None = None) -> None:
        self.config = config or VgaGraphicsConfig()
        self.name = self.config.name
        self.stats = MmioStats()
        self.irq = NullIrqLine()
        self.state = VgaGraphicsState()

    def reset(self) -> None:
        self.state = VgaGraphicsState()

    def port_ranges(self) -> list[PortRange]:
        return self.config.ports()

    def _file(self, port: int) -> tuple[str, list[int]]:
        s = self.state
        return ("seq_index", s.sequencer) if port in (SEQ_INDEX, SEQ_DATA) else ("gc_index", s.graphics)

    def io_read(self, port: int, size: int) -> int | IoError:
        which, registers = self._file(port)
        index = getattr(self.state, which)
        data = registers[index] if index < len(registers) else IoError.INVALID_REGISTER
        if port in (SEQ_DATA, GC_DATA):
            return data
        if size == 2:
            return data if isinstance(data, IoError) else index | (data << 8)
        return index

    def io_write(self, port: int, size: int, value: int) -> IoError | None:
        which, registers = self._file(port)
        if port in (SEQ_INDEX, GC_INDEX):
            setattr(self.state, which, value & 0xFF)
            if size == 1:
                return None
            value >>= 8  # outw: the data byte follows
        index = getattr(self.state, which)
        if index >= len(registers):
            return IoError.INVALID_REGISTER
        registers[index] = value & 0xFF
        return None
