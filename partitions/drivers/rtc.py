"""The CMOS RTC: date and time at boot, as an OS reads it (wait for UIP to clear)."""

from __future__ import annotations

from datetime import datetime

from partitions.vp import Vp

INDEX, DATA = 0x70, 0x71
SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x07, 0x08, 0x09
REG_A, REG_B, CENTURY = 0x0A, 0x0B, 0x32
REG_A_UIP = 0x80
REG_B_24H, REG_B_BINARY = 0x02, 0x04
HOUR_PM = 0x80


def _read(vp: Vp, reg: int) -> int:
    vp.outb(INDEX, reg)
    return vp.inb(DATA)


def read_time(vp: Vp) -> datetime | None:
    """None when no RTC answers."""
    for _ in range(1000):
        a = _read(vp, REG_A)
        if a == 0xFF:
            return None
        if not a & REG_A_UIP:
            break
    regs = [_read(vp, r) for r in (SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY)]
    b = _read(vp, REG_B)

    def dec(v: int) -> int:
        return v if b & REG_B_BINARY else (v >> 4) * 10 + (v & 0xF)

    sec, minute, hour_raw, day, month, year, century = regs
    pm = hour_raw & HOUR_PM
    hour = dec(hour_raw & ~HOUR_PM)
    if not b & REG_B_24H:
        hour = (hour % 12) + (12 if pm else 0)
    try:
        return datetime(dec(century) * 100 + dec(year), dec(month), dec(day), hour, dec(minute), dec(sec))
    except ValueError:
        return None
