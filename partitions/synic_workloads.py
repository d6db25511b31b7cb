"""Workloads of the SynIC enlightenments (issue 10): synthetic timer ticks, and reading the
reference time by the TSC page or by the MSR.

``stimer`` (and ``stimer_direct``, the same in direct mode): VP 0 sets up its SynIC and runs STIMER0 periodic at 1 kHz into SINT 3 (the
HvMessageTypeTimerExpired message); every tick's handler reads the reference time — by the
TSC page where it is offered, else by HV_X64_MSR_TIME_REF_COUNT — and records how long
after its ExpirationTime the handler ran.  A console line a second gives the ticks and that
latency.  ``reftime``: reads the reference time over and over, by the page and (a tenth as
often) by the MSR, timing each way; the counters say how many exits the page saved.
"""

from __future__ import annotations

import time
from time import perf_counter_ns

from proto.codes import HvMsr, HvPrivilege, HypercallCode
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from proto.stats import Histogram
from proto.synic_messages import (
    HV_TIMER_MESSAGE_PAYLOAD,
    STIMER_DIRECT,
    STIMER_ENABLE,
    STIMER_PERIODIC,
    STIMER_SINT_SHIFT,
    STIMER_VECTOR_SHIFT,
)

from partitions.drivers import synic
from partitions.vp import GuestFault, Vp

STIMER0_CONFIG, STIMER0_COUNT = HvMsr.HV_X64_MSR_STIMER0_CONFIG, HvMsr.HV_X64_MSR_STIMER0_COUNT
STIMER_PERIOD_100NS = 10_000  # 1 ms: the APIC timer experiment's 1 kHz
STIMER_DIRECT_VECTOR = 0xE8
REPORT_INTERVAL_S = 1.0
REFTIME_BATCH = 200


def _count(vp: Vp, key: str, n: int = 1) -> None:
    vp.counters[key] = vp.counters.get(key, 0) + n


def wl_stimer(vp: Vp, sys, direct: bool = False) -> int:
    if vp.index != 0:
        return 0
    st = synic.state(sys)
    if st.stimer is None:
        st.stimer = _start_stimer(vp, sys, direct)
    if st.stimer and time.monotonic() - st.stimer["reported"] >= REPORT_INTERVAL_S:
        _report(vp, sys, st.stimer)
    return 0  # then idle: HLT until the next tick


def _start_stimer(vp: Vp, sys, direct: bool) -> dict | bool:
    if not sys.hv.privileges & HvPrivilege.AccessSyntheticTimerMsrs or not synic.setup(vp, sys):
        sys.console(vp, f"[{sys.name}] stimer: the SynIC and synthetic timers are not offered")
        return False
    page = synic.enable_tsc_page(vp, sys)
    t = {"latency": Histogram(), "ticks": 0, "reported": time.monotonic(), "last_ticks": 0}

    def tick(v: Vp, due: int | None) -> None:
        """A tick whose expiry was due at reference time ``due``: how late its handler runs.
        (Direct mode says no due time: its latency is the interrupt path's stamps.)"""
        t["ticks"] += 1
        _count(v, "stimer_ticks")
        if due is not None:
            now, exited = synic.read_reference_time(v, sys)
            t["latency"].record(max(0, now - due) * 100)
            _count(v, "stimer_time_by_msr" if exited else "stimer_time_by_page")

    def on_timer(v: Vp, message_type: int, payload: bytes) -> None:
        if message_type == 0x80000010 and len(payload) >= HV_TIMER_MESSAGE_PAYLOAD.size:
            tick(v, HV_TIMER_MESSAGE_PAYLOAD.unpack_from(payload)[2])  # ExpirationTime

    def on_direct(v: Vp, vector: int) -> None:
        tick(v, None)
        synic.eoi(v, sys)

    if direct:
        vp.set_handler(STIMER_DIRECT_VECTOR, on_direct)
        config = STIMER_ENABLE | STIMER_PERIODIC | STIMER_DIRECT | STIMER_DIRECT_VECTOR << STIMER_VECTOR_SHIFT
    else:
        synic.on_message(sys, synic.STIMER_SINT, on_timer)
        # (a resumed kernel's SINT handler may have left a timer message in the slot for
        # this driver: read, or the slot stays busy and the timer's messages wait behind it)
        synic.take_message(vp, sys, synic.STIMER_SINT)
        config = STIMER_ENABLE | STIMER_PERIODIC | synic.STIMER_SINT << STIMER_SINT_SHIFT
    vp.wrmsr(STIMER0_COUNT, STIMER_PERIOD_100NS)
    vp.wrmsr(STIMER0_CONFIG, config)
    vp.sti()
    how = f"direct to vector {STIMER_DIRECT_VECTOR:#x}" if direct else f"into SINT {synic.STIMER_SINT}"
    sys.console(vp, f"[{sys.name}] stimer: STIMER0 periodic at 1 kHz {how}; "
                    f"reference time by {'the TSC page' if page else 'MSR'}")
    return t


def _report(vp: Vp, sys, t: dict) -> None:
    lat = t["latency"]
    new = t["ticks"] - t["last_ticks"]
    t["last_ticks"], t["reported"] = t["ticks"], time.monotonic()
    if lat.n:
        # For `status`: the guest's own view of the latency so far (expiry → handler).
        vp.counters["stimer_latency_p50_us"] = lat.percentile(50) // 1000
        vp.counters["stimer_latency_p99_us"] = lat.percentile(99) // 1000
        sys.console(vp, f"[{sys.name}] stimer: {t['ticks']} ticks (+{new}); expiry → handler "
                        f"p50 {lat.percentile(50) / 1000:.0f} µs p99 {lat.percentile(99) / 1000:.0f} µs")
    else:
        sys.console(vp, f"[{sys.name}] stimer: {t['ticks']} ticks (+{new})")


def wl_reftime(vp: Vp, sys) -> int:
    """The reference time, by the TSC page (no exit) and by the MSR (an exit), timed."""
    page = synic.enable_tsc_page(vp, sys)
    if not sys.hv.privileges & HvPrivilege.AccessPartitionReferenceCounter and not page:
        return 0
    if page:
        t0 = perf_counter_ns()
        for _ in range(REFTIME_BATCH):
            _, exited = synic.read_reference_time(vp, sys)
        _count(vp, "reftime_page_ns", perf_counter_ns() - t0)
        _count(vp, "reftime_msr_reads" if exited else "reftime_page_reads", REFTIME_BATCH)
    if sys.hv.privileges & HvPrivilege.AccessPartitionReferenceCounter:
        t0 = perf_counter_ns()
        for _ in range(REFTIME_BATCH // 10):
            vp.rdmsr(HvMsr.HV_X64_MSR_TIME_REF_COUNT)
        _count(vp, "reftime_msr_ns", perf_counter_ns() - t0)
        _count(vp, "reftime_msr_reads", REFTIME_BATCH // 10)
    return REFTIME_BATCH + REFTIME_BATCH // 10


def wl_synic_hostile(vp: Vp, sys) -> int:
    """A hostile guest of the SynIC: posts to connections nobody connected, oversized and
    hypervisor-typed messages, reserved bits, signals with bad flags; EOM out of turn;
    SINT vectors below 16; the SIM page on MMIO and beyond RAM; a synthetic timer of
    period 1 (100 ns).  Each turn is a handful of such operations; what the hypervisor
    answers is counted (``hostile_refused``), and faults are taken as a guest would."""
    st = synic.state(sys)
    if st.stimer is None:
        st.stimer = synic.setup(vp, sys)
        if st.stimer and sys.hv.privileges & HvPrivilege.AccessSyntheticTimerMsrs:
            vp.wrmsr(STIMER0_COUNT, 1)  # a period of 100 ns: clamped to the APIC timer's minimum
            vp.wrmsr(STIMER0_CONFIG, STIMER_ENABLE | STIMER_PERIODIC | synic.STIMER_SINT << STIMER_SINT_SHIFT)
    calls = (
        (HypercallCode.HvCallPostMessage, HV_INPUT_POST_MESSAGE.pack(0x4242, 0, 1, 4) + bytes(240)),  # no such connection
        (HypercallCode.HvCallPostMessage, HV_INPUT_POST_MESSAGE.pack(4, 0, 1, 241) + bytes(240)),  # oversized
        (HypercallCode.HvCallPostMessage, HV_INPUT_POST_MESSAGE.pack(4, 0, 0x80000010, 4) + bytes(240)),  # hv type
        (HypercallCode.HvCallPostMessage, HV_INPUT_POST_MESSAGE.pack(4, 7, 1, 4)),  # RsvdZ, short input
        (HypercallCode.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(0xFFFFFF, 0xFFFF, 0)),
        (HypercallCode.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(2, 0, 0xFFFF)),  # RsvdZ
    )
    n = 0
    for code, data in calls:
        if sys.hv.hypercalls:
            status, _, _ = vp.hypercall(code, data, fast=code == HypercallCode.HvCallSignalEvent)
            if status:
                _count(vp, "hostile_refused")
            n += 1
    for msr, value in ((HvMsr.HV_X64_MSR_EOM, 0), (synic.SINT0 + 5, 0x05), (synic.SINT0 + 6, 0x10000),
                       (HvMsr.HV_X64_MSR_SIMP, 0xFEE00000 | 1), (HvMsr.HV_X64_MSR_SIMP, (1 << 40) | 1),
                       (HvMsr.HV_X64_MSR_SIMP, synic.simp_gpa(vp) | 1), (HvMsr.HV_X64_MSR_SVERSION, 7)):
        try:
            vp.wrmsr(msr, value)
        except GuestFault:
            _count(vp, "hostile_faults")
        n += 1
    return n


def wl_stimer_direct(vp: Vp, sys) -> int:
    """``stimer`` in direct mode: the expiry is a fixed interrupt, no message."""
    return wl_stimer(vp, sys, direct=True)


SYNIC_WORKLOADS = {"stimer": wl_stimer, "stimer_direct": wl_stimer_direct, "reftime": wl_reftime,
                   "synic_hostile": wl_synic_hostile}
