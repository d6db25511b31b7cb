"""VGA colour text mode: the 80x25 text buffer at 0xB8000 and the CRT controller registers
that place the screen and the cursor in it.

Memory: the 32 KiB window 0xB8000-0xBFFFF, two bytes a cell (character, then attribute).
Ports: CRTC index/data 0x3D4/0x3D5, input status 1 at 0x3DA, misc output (write 0x3C2,
read 0x3CC; a read of 0x3C2 is input status 0).

Policies:

* The screen is always 80x25 with a row pitch of 80 cells; the CRTC timing and geometry
  registers (0x00-0x09, 0x10-0x18) are stored and read back but do not reshape it.  The
  start address (0x0C/0x0D) and cursor location (0x0E/0x0F) are cell indexes; the display
  wraps around the 32 KiB window, so start addresses near its end scroll into its start.
* Power-on is the state a BIOS leaves in mode 3: the standard mode-3 CRTC values, misc
  output 67h, and every cell a space in light grey on black (20h, 07h).
* The cursor is visible unless cursor start bit 5 (cursor disable) is set, the cursor start
  scan line is below its end scan line (VGA draws no cursor then), or it lies outside the
  displayed 80x25 cells; ``cursor()`` still reports its row and column relative to the
  start address when it is not visible.
* When CRTC register 0x11 bit 7 is set, writes to registers 0x00-0x07 are ignored except
  for the line compare bit (bit 4) of register 0x07, as on VGA.
* A CRTC index beyond 0x18 is stored, but reading or writing 0x3D5 with it is
  IoError.INVALID_REGISTER.  0x3CC (read-only) and 0x3DA writes (feature control, not
  emulated) are IoError.INVALID_REGISTER.  Every port takes byte accesses; 0x3D4 also takes
  16-bit accesses (index in the low byte, data in the high byte), as drivers use ``outw``.
* Input status 1 alternates between "in vertical retrace" (bits 3 and 0 set) and "displaying"
  on every read, so both halves of a wait-for-retrace loop finish.
* MMIO takes sizes 1, 2, 4 and 8 at any alignment (x86 allows unaligned stores), little-endian.
  The bus checks that before the device sees it: an address outside the window is
  IoError.INVALID_REGISTER; an access that starts inside but runs past 0xBFFFF is
  IoError.UNALIGNED_ACCESS (only a misaligned access can, since the window is 32 KiB
  aligned); any other size is IoError.INVALID_ACCESS_SIZE.
* ``screen_text()`` decodes characters with CP437; the bytes Python's codec leaves as
  control characters (01h-1Fh, 7Fh) are shown as their CP437 glyphs (a smiley, arrows, ...),
  and 00h and FFh, which VGA draws blank, as spaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from worker.devices.base import (
    ChipsetDevice,
    FlatWindow,
    IoError,
    MmioStats,
    NullIrqLine,
    PortRange,
)
from worker.devices.config import VgaTextConfig
from worker.devices.state import Byte, Length

TEXT_BASE = 0xB8000
TEXT_WINDOW = 0x8000  # bytes: 0xB8000-0xBFFFF
WINDOW_CELLS = TEXT_WINDOW // 2
COLUMNS = 80
ROWS = 25

PORT_MISC_OUTPUT_WRITE = 0x3C2  # a read here is input status 0
PORT_MISC_OUTPUT_READ = 0x3CC
PORT_CRTC_INDEX = 0x3D4
PORT_CRTC_DATA = 0x3D5
PORT_INPUT_STATUS_1 = 0x3DA

CRTC_REGISTER_COUNT = 0x19  # 0x00-0x18
CRTC_END_VERTICAL_RETRACE = 0x07  # overflow register; bit 4 escapes write protection
CRTC_CURSOR_START = 0x0A
CRTC_CURSOR_END = 0x0B
CRTC_START_ADDRESS_HIGH = 0x0C
CRTC_START_ADDRESS_LOW = 0x0D
CRTC_CURSOR_LOCATION_HIGH = 0x0E
CRTC_CURSOR_LOCATION_LOW = 0x0F
CRTC_VERTICAL_RETRACE_END = 0x11

CURSOR_DISABLE = 0x20  # cursor start register bit 5
SCAN_LINE_MASK = 0x1F
CRTC_PROTECT = 0x80  # vertical retrace end bit 7: registers 0-7 are read-only
OVERFLOW_LINE_COMPARE_BIT = 0x10

INPUT_STATUS_1_RETRACE = 0x09  # vertical retrace (bit 3) and display disabled (bit 0)

# CRTC registers 0x00-0x18 for mode 3 (80x25 colour text, 9x16 cells), as the BIOS sets them.
MODE3_CRTC = (
    0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F,
    0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00, 0x00,
    0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3,
    0xFF,
)
MODE3_MISC_OUTPUT = 0x67  # colour I/O at 0x3Dx, 28 MHz clock, RAM enabled
BLANK_CELL = b"\x20\x07"  # space, light grey on black

# CP437 glyphs for the bytes the 'cp437' codec maps to control characters.
_CONTROL_GLYPHS = "☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"


def _glyph_table() -> tuple[str, ...]:
    table = list(bytes(range(256)).decode("cp437"))
    table[0x00] = " "
    for code, glyph in enumerate(_CONTROL_GLYPHS, start=0x01):
        table[code] = glyph
    table[0x7F] = "⌂"
    table[0xFF] = " "  # the codec gives NO-BREAK SPACE
    return tuple(table)


GLYPHS = _glyph_table()


@dataclass
class VgaTextState:
    memory: Annotated[bytearray, Length(exactly=TEXT_WINDOW)] = field(
        default_factory=lambda: bytearray(BLANK_CELL * WINDOW_CELLS))
    crtc_index: Byte = 0
    crtc: Annotated[list[Byte], Length(exactly=CRTC_REGISTER_COUNT)] = field(
        default_factory=lambda: list(MODE3_CRTC))
    misc_output: Byte = MODE3_MISC_OUTPUT
    in_retrace: bool = False  # what the next input status 1 read will *not* report


class VgaText(FlatWindow, ChipsetDevice):
    """The text-mode part of a VGA: buffer, CRTC, misc output and input status."""

    # The text buffer is plain memory to the guest: its stores may be coalesced.
    WINDOW_BASE, WINDOW_SIZE = TEXT_BASE, TEXT_WINDOW

    def __init__(self, config: VgaTextConfig | None = None) -> None:
        self.config = config or VgaTextConfig()
        self.name = self.config.name
        self.stats = MmioStats()
        self.irq = NullIrqLine()  # text mode raises no interrupt
        self.state = VgaTextState()

    def reset(self) -> None:
        self.state = VgaTextState()

    def port_ranges(self) -> list[PortRange]:
        return [
            PortRange(PORT_MISC_OUTPUT_WRITE, 1),
            PortRange(PORT_MISC_OUTPUT_READ, 1),
            PortRange(PORT_CRTC_INDEX, 1, sizes=(1, 2)),  # outw: index, then data
            PortRange(PORT_CRTC_DATA, 1),
            PortRange(PORT_INPUT_STATUS_1, 1),
        ]

    # ----------------------------------------------------------------- ports

    def io_read(self, port: int, size: int) -> int | IoError:
        s = self.state
        if port == PORT_CRTC_INDEX:
            if size == 2:
                data = self._crtc_read(s.crtc_index)
                return data if isinstance(data, IoError) else s.crtc_index | (data << 8)
            return s.crtc_index
        if port == PORT_CRTC_DATA:
            return self._crtc_read(s.crtc_index)
        if port == PORT_INPUT_STATUS_1:
            s.in_retrace = not s.in_retrace
            return INPUT_STATUS_1_RETRACE if s.in_retrace else 0x00
        if port == PORT_MISC_OUTPUT_READ:
            return s.misc_output
        return 0x00  # 0x3C2 reads input status 0: no retrace interrupt pending, switch sense 0

    def io_write(self, port: int, size: int, value: int) -> IoError | None:
        s = self.state
        if port == PORT_CRTC_INDEX:
            s.crtc_index = value & 0xFF
            if size == 2:  # outw: index then data in one go
                return self._crtc_write(s.crtc_index, (value >> 8) & 0xFF)
            return None
        if port == PORT_CRTC_DATA:
            return self._crtc_write(s.crtc_index, value & 0xFF)
        if port == PORT_MISC_OUTPUT_WRITE:
            s.misc_output = value & 0xFF
            return None
        return IoError.INVALID_REGISTER  # 0x3CC is read-only; 0x3DA (feature control) is not emulated

    def _crtc_read(self, index: int) -> int | IoError:
        if index >= CRTC_REGISTER_COUNT:
            return IoError.INVALID_REGISTER
        return self.state.crtc[index]

    def _crtc_write(self, index: int, value: int) -> IoError | None:
        crtc = self.state.crtc
        if index >= CRTC_REGISTER_COUNT:
            return IoError.INVALID_REGISTER
        if index <= CRTC_END_VERTICAL_RETRACE and crtc[CRTC_VERTICAL_RETRACE_END] & CRTC_PROTECT:
            if index == CRTC_END_VERTICAL_RETRACE:  # only line compare bit 8 stays writable
                crtc[index] = ((crtc[index] & ~OVERFLOW_LINE_COMPARE_BIT)
                               | (value & OVERFLOW_LINE_COMPARE_BIT))
            return None  # protected: the write is ignored, as the hardware does
        crtc[index] = value
        return None

    # ----------------------------------------------------------------- what is on screen

    def start_address(self) -> int:
        crtc = self.state.crtc
        return (crtc[CRTC_START_ADDRESS_HIGH] << 8) | crtc[CRTC_START_ADDRESS_LOW]

    def cursor_location(self) -> int:
        crtc = self.state.crtc
        return (crtc[CRTC_CURSOR_LOCATION_HIGH] << 8) | crtc[CRTC_CURSOR_LOCATION_LOW]

    def screen_text(self) -> list[str]:
        """The 25 displayed lines of 80 characters, from the start address on."""
        memory = self.state.memory
        first = self.start_address()
        lines = []
        for row in range(ROWS):
            cell = first + row * COLUMNS
            lines.append("".join(GLYPHS[memory[((cell + col) % WINDOW_CELLS) * 2]]
                                 for col in range(COLUMNS)))
        return lines

    def cursor(self) -> tuple[int, int, bool]:
        """(row, col, visible) of the cursor, relative to the displayed screen."""
        crtc = self.state.crtc
        relative = (self.cursor_location() - self.start_address()) % WINDOW_CELLS
        row, col = divmod(relative, COLUMNS)
        start, end = crtc[CRTC_CURSOR_START], crtc[CRTC_CURSOR_END]
        visible = (not start & CURSOR_DISABLE
                   and (start & SCAN_LINE_MASK) <= (end & SCAN_LINE_MASK)
                   and row < ROWS)
        return row, col, visible

    def render(self) -> str:
        """The screen in a box.  When the cursor is visible, markers on the frame point at
        its column (top and bottom) and row (left and right); a last line says where it is."""
        row, col, visible = self.cursor()
        top = ["┌", *("─" * COLUMNS), "┐"]
        bottom = ["└", *("─" * COLUMNS), "┘"]
        if visible:
            top[1 + col] = "▼"
            bottom[1 + col] = "▲"
        out = ["".join(top)]
        for index, line in enumerate(self.screen_text()):
            if visible and index == row:
                out.append(f"►{line}◄")
            else:
                out.append(f"│{line}│")
        out.append("".join(bottom))
        out.append(f"cursor row {row} col {col}" if visible else "cursor hidden")
        return "\n".join(out)
