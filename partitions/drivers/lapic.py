"""The local APIC's timer, as a kernel drives it: periodic for a tick, one-shot for an idle's
wake, and the EOI that ends its interrupt (an MMIO write to the APIC page, which the
hypervisor handles: two hops, no worker)."""

from __future__ import annotations

from partitions.vp import Vp

APIC_BASE = 0xFEE00000
APIC_EOI, APIC_SVR, APIC_LVT_TIMER, APIC_TIMER_ICR, APIC_TIMER_DCR = 0xB0, 0xF0, 0x320, 0x380, 0x3E0
APIC_TIMER_HZ = 200_000_000  # HV_X64_MSR_APIC_FREQUENCY
# The timer's initial count is 32 bits: at APIC_TIMER_HZ and divide by 1, a one-shot reaches
# at most ~21 s ahead.
APIC_TIMER_MAX_COUNT = 0xFFFFFFFF
LVT_PERIODIC = 1 << 17
SVR_ENABLE_SPURIOUS = 0x1FF  # APIC software-enabled, spurious vector 0xFF
DIVIDE_BY_1 = 0b1011


def enable(vp: Vp) -> None:
    """The APIC on, its timer counting at APIC_TIMER_HZ (divide by 1)."""
    vp.write(APIC_BASE + APIC_SVR, 4, SVR_ENABLE_SPURIOUS)
    vp.write(APIC_BASE + APIC_TIMER_DCR, 4, DIVIDE_BY_1)


def periodic(vp: Vp, vector: int, hz: int) -> float:
    """The timer periodic at ``hz`` on ``vector``; returns the exact rate its count gives."""
    count = APIC_TIMER_HZ // hz
    vp.write(APIC_BASE + APIC_LVT_TIMER, 4, vector | LVT_PERIODIC)
    vp.write(APIC_BASE + APIC_TIMER_ICR, 4, count)
    return APIC_TIMER_HZ / count


def one_shot_mode(vp: Vp, vector: int) -> None:
    """The timer one-shot on ``vector``; :func:`arm` starts it."""
    vp.write(APIC_BASE + APIC_LVT_TIMER, 4, vector)


def arm(vp: Vp, seconds: float) -> None:
    """Start the one-shot ``seconds`` from now (at least one count: 0 would stop the timer,
    and a VP waiting for it would wait for nothing)."""
    vp.write(APIC_BASE + APIC_TIMER_ICR, 4, min(APIC_TIMER_MAX_COUNT, max(1, int(APIC_TIMER_HZ * seconds))))


def eoi(vp: Vp) -> None:
    vp.write(APIC_BASE + APIC_EOI, 4, 0)
