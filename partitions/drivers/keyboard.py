"""The i8042 keyboard: scancode set 1 from IRQ1, translated to characters."""

from __future__ import annotations

from proto.scancodes import BREAK, SET1

from partitions.vp import Vp

DATA, STATUS = 0x60, 0x64
ST_OBF = 0x01
IRQ = 1


def read_key(vp: Vp) -> str | None:
    """In the IRQ1 handler: the character of a make code, None for breaks and unknowns."""
    if not vp.inb(STATUS) & ST_OBF:
        return None
    code = vp.inb(DATA)
    if code & BREAK:
        return None
    return SET1.get(code)
