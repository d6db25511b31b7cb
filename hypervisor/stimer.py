"""Synthetic timers STIMER0–3 per VP (TLFS "Synthetic Timers"): their MSRs and their expiry.

HV_X64_MSR_STIMERn_CONFIG (0x400000B0 + 2n): bit 0 Enable, 1 Periodic, 2 Lazy, 3
AutoEnable, 11:4 ApicVector (direct mode), 12 DirectMode, 19:16 SINTx.
HV_X64_MSR_STIMERn_COUNT (0x400000B1 + 2n), in 100 ns units of the partition's reference
time: the absolute expiry of a one-shot timer, the period of a periodic one.  Access needs
AccessSyntheticTimerMsrs (CPUID 0x40000003 EAX bit 3), else #GP; direct mode is offered
with it (EDX bit 19, ``cpuid.py``).

Writes (TLFS): COUNT 0 stops the timer and clears Enable; a non-zero COUNT with AutoEnable
sets Enable; enabling with SINTx 0 outside direct mode clears Enable at once.  A one-shot
timer fires when the reference time reaches COUNT (at once if that has passed) and clears
Enable; a periodic one fires every COUNT from when it was enabled, always in phase with
that start.

A periodic timer that is late (TLFS "Periodic Timers"): without Lazy, the hypervisor
modulates the period — the ticks it missed come at half the period until it has caught up,
at most MAX_CATCH_UP of them (the rest are skipped, counted as missed).  A Lazy timer's
expiry waits while its VP is unavailable — not executing guest code nor halted (waiting
for a logical processor, in an intercept, paused or suspended) —, looked at again every
LAZY_RETRY_NS, and is skipped entirely when the VP becomes available only within
1/LAZY_SKIP_FRACTION of a period of the next expiry (counted as deferred and skipped).

Expiry: direct mode asserts ApicVector at the VP's local APIC (``Interrupts.assert_vector``)
and sends no message; otherwise the hypervisor posts HvMessageTypeTimerExpired
(0x80000010) to SINTx with HV_TIMER_MESSAGE_PAYLOAD (TimerIndex u32, reserved u32,
ExpirationTime u64, DeliveryTime u64).  Each timer has one message buffer (TLFS): while its
last message waits behind a busy slot, or its SINT is masked, a new expiry is a missed
tick (counted), as KVM drops it.

The period is at least the local APIC timer's minimum (``apic.MIN_TIMER_PERIOD_NS``,
200 µs): a timer of COUNT 1 must not make the hypervisor's one loop fire back to back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns

from proto.codes import HvMessageType, HvMsr, HvPrivilege, HvStatus, X86Exception

from proto.synic_messages import (
    HV_TIMER_MESSAGE_PAYLOAD,
    STIMER_AUTO_ENABLE,
    STIMER_DIRECT,
    STIMER_ENABLE,
    STIMER_LAZY,
    STIMER_PERIODIC,
    STIMER_SINT_SHIFT,
    STIMER_VECTOR_SHIFT,
)

from hypervisor.apic import MIN_TIMER_PERIOD_NS
from hypervisor.scheduler import VpState

GP = int(X86Exception.GP)
OK = int(X86Exception.NONE)
HV_STIMER_COUNT = 4
STIMER0_CONFIG = HvMsr.HV_X64_MSR_STIMER0_CONFIG
STIMER3_COUNT = HvMsr.HV_X64_MSR_STIMER3_COUNT
CONFIG_WRITABLE = 0xF1FFF  # bits 19:16, 12, 11:4, 3:0
TIMER_EXPIRED = int(HvMessageType.HvMessageTypeTimerExpired)
NS_PER_REF = 100
MAX_CATCH_UP = 4  # non-lazy: missed ticks made up at a modulated period; beyond them, skipped
LAZY_RETRY_NS = MIN_TIMER_PERIOD_NS  # a lazy tick waiting for its VP is looked at again this often
LAZY_SKIP_FRACTION = 4  # a lazy tick whose VP is available only this close to the next (1/4 period) is skipped


@dataclass
class StimerState:
    config: int = 0
    count: int = 0
    deadline_ns: int | None = None  # perf_counter_ns the hypervisor next looks at it, None when stopped
    due_ns: int = 0  # perf_counter_ns the next expiry is due at (periodic: in phase; the deadline may differ)
    due_ref: int = 0  # the reference time (100 ns) the next expiry is due at
    deferred: bool = False  # lazy: the due expiry waits for its VP
    counters: dict = field(default_factory=lambda: {"fired": 0, "missed": 0, "clamped": 0,
                                                    "deferred": 0, "skipped_lazy": 0, "caught_up": 0})

    @property
    def enabled(self) -> bool:
        return bool(self.config & STIMER_ENABLE)

    @property
    def sint(self) -> int:
        return (self.config >> STIMER_SINT_SHIFT) & 0xF

    @property
    def direct(self) -> bool:
        return bool(self.config & STIMER_DIRECT)

    @property
    def vector(self) -> int:
        return (self.config >> STIMER_VECTOR_SHIFT) & 0xFF


def handles(msr: int) -> bool:
    return STIMER0_CONFIG <= msr <= STIMER3_COUNT


def rdmsr(part, vp, msr: int) -> tuple[int, int]:
    if not part.privileges & HvPrivilege.AccessSyntheticTimerMsrs:
        return GP, 0
    t = vp.synic.stimers[(msr - STIMER0_CONFIG) // 2]
    return OK, t.count if msr & 1 else t.config


def wrmsr(part, vp, msr: int, value: int) -> int:
    if not part.privileges & HvPrivilege.AccessSyntheticTimerMsrs:
        return GP
    t = vp.synic.stimers[(msr - STIMER0_CONFIG) // 2]
    if msr & 1:  # COUNT
        t.count = value
        if value == 0:
            t.config &= ~STIMER_ENABLE
        elif t.config & STIMER_AUTO_ENABLE:
            t.config |= STIMER_ENABLE
    else:
        t.config = value & CONFIG_WRITABLE
    if t.enabled and not t.direct and t.sint == 0:
        t.config &= ~STIMER_ENABLE  # TLFS: no SINT to deliver to
    old = t.deadline_ns
    arm(part, t, perf_counter_ns())
    vp.synic.stimer_moves.append((old, t.deadline_ns))
    vp.synic.actions.add("stimer_moved")
    return OK


def arm(part, t: StimerState, now: int) -> None:
    """Set the timer's next expiry from its registers (or stop it)."""
    if not t.enabled or t.count == 0:
        t.deadline_ns = None
        return
    ref_now = part.reference_time_100ns()
    if t.config & STIMER_PERIODIC:
        period = t.count * NS_PER_REF
        if period < MIN_TIMER_PERIOD_NS:
            t.counters["clamped"] += 1
        t.deadline_ns = t.due_ns = now + max(period, MIN_TIMER_PERIOD_NS)
        t.due_ref = ref_now + t.count
        t.deferred = False
    else:
        # Absolute: due at COUNT (at once if past — but never sooner than the minimum period).
        t.due_ref = t.count
        t.deadline_ns = now + max((t.count - ref_now) * NS_PER_REF, MIN_TIMER_PERIOD_NS)


def expire(part, vp, index: int, t: StimerState, now: int, synic) -> None:
    """The timer's deadline passed: deliver it (direct interrupt or timer message) and set
    the next look."""
    if not t.config & STIMER_PERIODIC:
        _deliver(part, vp, index, t, now, synic)
        t.config &= ~STIMER_ENABLE
        t.deadline_ns = None
        return
    period = max(t.count * NS_PER_REF, MIN_TIMER_PERIOD_NS)
    if t.config & STIMER_LAZY:
        _expire_lazy(part, vp, index, t, now, synic, period)
        return
    _deliver(part, vp, index, t, now, synic)
    _advance(t, period, 1)
    behind = (now - t.due_ns) // period + 1 if now >= t.due_ns else 0  # due ticks not yet delivered
    if behind > MAX_CATCH_UP:
        _advance(t, period, behind - MAX_CATCH_UP)
        t.counters["missed"] += behind - MAX_CATCH_UP
        behind = MAX_CATCH_UP
    if behind:
        # Period modulation (TLFS): the next comes sooner, until the timer is back in phase.
        t.counters["caught_up"] += 1
        t.deadline_ns = now + max(period // 2, MIN_TIMER_PERIOD_NS)
    else:
        t.deadline_ns = t.due_ns


def _expire_lazy(part, vp, index: int, t: StimerState, now: int, synic, period: int) -> None:
    nxt = t.due_ns + period
    if not vp_available(vp):
        if not t.deferred:
            t.deferred = True
            t.counters["deferred"] += 1
        if now >= nxt:  # the VP missed the whole period: this one is skipped, the next waits
            _advance(t, period, (now - t.due_ns) // period)
            t.counters["skipped_lazy"] += 1
        t.deadline_ns = now + LAZY_RETRY_NS
        return
    if t.deferred and (nxt - now) * LAZY_SKIP_FRACTION < period:
        t.counters["skipped_lazy"] += 1  # available only shortly before the next: skipped entirely
    else:
        _deliver(part, vp, index, t, now, synic)
    t.deferred = False
    ticks = max(1, (now - t.due_ns) // period + 1)
    t.counters["missed"] += ticks - 1  # (a hypervisor loop late by whole periods: lazy skips those)
    _advance(t, period, ticks)
    t.deadline_ns = t.due_ns


def _advance(t: StimerState, period: int, ticks: int) -> None:
    t.due_ns += ticks * period
    t.due_ref += ticks * (period // NS_PER_REF)


def vp_available(vp) -> bool:
    """TLFS: a VP is unavailable while suspended (an intercept being handled, an explicit
    suspend, a pause) or not scheduled on a logical processor; a halted VP is available
    (the expiry wakes it)."""
    sched = vp.sched
    if sched.controls.paused or sched.suspended:
        return False
    return vp.state in (VpState.RUNNING, VpState.HALTED)


def _deliver(part, vp, index: int, t: StimerState, now: int, synic) -> None:
    t.counters["fired"] += 1
    if t.direct:
        synic.assert_direct(vp, t.vector, now)
    elif _buffer_busy(vp, t.sint, index):
        t.counters["missed"] += 1
    else:
        payload = HV_TIMER_MESSAGE_PAYLOAD.pack(index, 0, t.due_ref, part.reference_time_100ns())
        if synic.post(part, vp, t.sint, TIMER_EXPIRED, payload, 0, now) != HvStatus.HV_STATUS_SUCCESS:
            t.counters["missed"] += 1  # SINT masked, SIMP off: the tick is lost


def _buffer_busy(vp, sint: int, index: int) -> bool:
    """Whether timer ``index``'s one message buffer still waits in its SINT's queue."""
    for msg in vp.synic.queues[sint]:
        if msg.message_type == TIMER_EXPIRED and int.from_bytes(msg.payload[:4], "little") == index:
            return True
    return False
