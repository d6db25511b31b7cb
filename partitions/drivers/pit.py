"""i8254 channel 0 as the system tick."""

from __future__ import annotations

from partitions.vp import Vp

PIT_HZ = 1193182
CH0, MODE_CMD = 0x40, 0x43
# Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
CH0_LOHI_MODE2 = 0x34
# Channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
CH0_LOHI_MODE0 = 0x30


def divisor_for(hz: int) -> int:
    return max(1, min(0xFFFF, round(PIT_HZ / hz)))


def start_tick(vp: Vp, hz: int) -> float:
    """Program channel 0; returns the exact rate the divisor gives."""
    div = divisor_for(hz)
    vp.outb(MODE_CMD, CH0_LOHI_MODE2)
    vp.outs(CH0, 1, bytes((div & 0xFF, div >> 8)))  # the count, low byte then high: one REP OUTSB
    return PIT_HZ / div


def stop_tick(vp: Vp) -> None:
    """Stop channel 0: a mode 0 control word and no count (Linux's ``pit_shutdown``).  OUT
    goes low and the counter waits for a count that never comes: no edge on IRQ0."""
    vp.outb(MODE_CMD, CH0_LOHI_MODE0)
