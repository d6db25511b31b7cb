"""PC keyboard scancode set 1 (US layout, unshifted): what the root types into a guest's
i8042 and what the guest's keyboard driver decodes.  A key sends its make code when pressed
and the make code with bit 7 set (the break code) when released."""

from __future__ import annotations

BREAK = 0x80

_ROWS = {0x02: "1234567890-=", 0x10: "qwertyuiop[]", 0x1E: "asdfghjkl;'`", 0x2B: "\\zxcvbnm,./"}
SET1: dict[int, str] = {code + i: ch for code, row in _ROWS.items() for i, ch in enumerate(row)}
SET1.update({0x39: " ", 0x1C: "\n", 0x0E: "\b", 0x0F: "\t"})
ASCII_TO_SET1: dict[str, int] = {ch: code for code, ch in SET1.items()}


def scancodes(text: str) -> bytes:
    """Make and break codes for ``text``; characters with no key are skipped."""
    out = bytearray()
    for ch in text.lower():
        code = ASCII_TO_SET1.get(ch)
        if code is not None:
            out += bytes((code, code | BREAK))
    return bytes(out)
