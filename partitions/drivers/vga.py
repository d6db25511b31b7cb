"""The VGA text screen at 0xB8000 and its cursor (CRTC registers 0x0E/0x0F)."""

from __future__ import annotations

from partitions.vp import GuestFault, Vp

TEXT_BASE = 0xB8000
COLS, ROWS = 80, 25
CRTC_INDEX, CRTC_DATA = 0x3D4, 0x3D5
CURSOR_HI, CURSOR_LO = 0x0E, 0x0F
ATTR = 0x07  # light grey on black


def write_line(vp: Vp, row: int, text: str, attr: int = ATTR) -> None:
    """One row, padded to 80 columns; 8-byte stores, 4 cells each."""
    cells = bytearray()
    for ch in text[:COLS].ljust(COLS):
        cells += bytes((ord(ch) if ord(ch) < 256 else ord("?"), attr))
    vp.write_bytes(TEXT_BASE + row * COLS * 2, bytes(cells))


def clear(vp: Vp) -> None:
    for row in range(ROWS):
        write_line(vp, row, "")


def set_cursor(vp: Vp, row: int, col: int) -> None:
    pos = row * COLS + col
    vp.outb(CRTC_INDEX, CURSOR_HI)
    vp.outb(CRTC_DATA, pos >> 8)
    vp.outb(CRTC_INDEX, CURSOR_LO)
    vp.outb(CRTC_DATA, pos & 0xFF)


def present(vp: Vp) -> bool:
    """Probe the text buffer; with nothing there the access faults (#GP), which the kernel's
    fixup turns into "absent", as an OS's exception table would."""
    try:
        vp.write(TEXT_BASE, 2, 0x0720)
        return vp.read(TEXT_BASE, 2) == 0x0720
    except GuestFault:
        return False
