"""The VP scheduler: which VPs execute guest code on the logical processors.

A VP runs only while dispatched on an LP: from the moment the hypervisor sends it the
message it was waiting for (its hello reply or a resume) until its next exit.  Every exit
gives the LP back — an intercept, HLT, the end of its quantum, or a long-spin-wait
notification — and the LP goes to the best ready VP:

* a VP below its partition's *reserve* in the current window comes first;
* a VP at its partition's *limit* (cap) waits for the next window;
* among the rest, the smallest virtual run time (run time scaled by 100 / *weight*) wins,
  as in a proportional-share scheduler; equal ones in the order they became ready.

Reserve and limit are in Hyper-V's units, thousandths of a percent of one LP (0–100000), per
VP; weight is relative (1–10000, 100 by default).  Accounting windows are 100 ms.  A VP's
quantum is 10 ms, cut short to what is left of its limit; the VP checks it at its
preemption points (PAUSE, RAM access) and exits when it is over, as a hypervisor's
scheduler timer would force it to.

Those checks are the guest's own: guest code that never reaches a preemption point would
keep its LP for ever.  So the scheduler does not trust them: a VP still on its LP
:data:`GRACE_NS` after its quantum ended is *preempted* by force (:meth:`Scheduler.preempt_overruns`,
from the loop's timers and housekeeping) — its LP is taken back and given to the next ready
VP, and the VP, whose thread still executes guest code host-side, is PREEMPTED.  Its next
exit is accepted as any exit is, and it then waits for a new dispatch like every other VP:
its resume is sent only when it has an LP again.

This is also the VP's state machine, and the one place its run state is held: in its
:class:`VpSched`, with its suspension (HvRegisterExplicitSuspend) beside it, and its
partition's pause in the :class:`CpuControls` all the partition's VPs share::

               hello, exit done, woken (make_ready)
    CREATED ───┐
    INTERCEPT ─┼──▶ READY ──an LP is free; not paused or suspended; within its limit──▶ RUNNING
    HALTED ────┘    (or straight to RUNNING when nobody else waits)                        │
    INTERCEPT ◀──────────────────────────── any exit (exited) ────────────────────────────┤
    INTERCEPT ◀── any exit (exited) ── PREEMPTED ◀── quantum + grace over (preempt_overruns) ┘
    INTERCEPT ──HLT (halted)──▶ HALTED

"Executing guest code" is RUNNING or PREEMPTED (:attr:`VpState.executing`): the only
states in which an exit from the VP's thread is in turn.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Callable, ClassVar

from proto.status import LpStatus, SchedulerStatus, VpSchedStatus

DEFAULT_QUANTUM_NS = 10_000_000
# How long past the end of its quantum a VP may keep its LP before the scheduler takes it
# back.  A well-behaved VP exits at its first preemption point after the quantum (well
# under a millisecond of Python); the grace covers the host not running its thread at that
# moment (2 host cores shared by many processes), so that forced preemptions count
# hostile or stuck guests rather than a loaded host.
GRACE_NS = 20_000_000
WINDOW_NS = 100_000_000
FULL = 100_000  # 100 % of an LP, in thousandths of a percent
DEFAULT_WEIGHT = 100


class VpState(enum.Enum):
    """A VP's run state.  ``value`` is its name in status; ``sched`` is the name the
    scheduler's view gives it (a VP in an exit, or not started, is "blocked")."""

    CREATED = "created", "blocked"  # exists, no thread has said hello yet
    READY = "ready", "ready"  # its exit is complete; waits for a logical processor
    RUNNING = "running", "running"  # dispatched on a logical processor, executing guest code
    INTERCEPT = "intercept", "blocked"  # in an exit: suspended until the exit completes
    HALTED = "halted", "halted"  # executed HLT; waits for an interrupt
    # Overran its quantum by GRACE_NS: its LP was taken back, but its thread still executes
    # guest code (host-side) until its next exit, which then waits for a new dispatch.
    PREEMPTED = "preempted", "preempted"

    def __new__(cls, value: str, sched: str):
        member = object.__new__(cls)
        member._value_ = value
        member.sched = sched
        return member

    @property
    def executing(self) -> bool:
        """The VP's thread is executing guest code (RUNNING, or PREEMPTED: off its LP but
        not yet at its next exit) — the one test of whether an exit from it is in turn."""
        return self is RUNNING or self is PREEMPTED  # (identity: an enum's hash is Python code)


CREATED, READY, RUNNING, INTERCEPT, HALTED, PREEMPTED = VpState


@dataclass
class CpuControls:
    """A partition's share of the LPs, which all its VPs' :class:`VpSched` refer to."""

    reserve: int = 0
    limit: int = FULL
    weight: int = DEFAULT_WEIGHT
    # The partition is paused (or stopped): none of its VPs is dispatched.  What
    # HvRegisterDispatchSuspend reads, and status shows as the partition's "paused".
    paused: bool = False
    stopped: bool = False  # `ctl stop`: its VPs wait for nothing, not even an LP
    # How many CpuControls (of this process) have a limit below FULL now: none, in most
    # runs, and then the scheduler need not look through its ready VPs for one waiting on
    # its limit (next_event_ns).  Counted where any limit is set.
    capped: ClassVar[int] = 0

    def __setattr__(self, name: str, value) -> None:
        if name == "limit":
            CpuControls.capped += (value < FULL) - (getattr(self, "limit", FULL) < FULL)
        object.__setattr__(self, name, value)


@dataclass(slots=True, eq=False)
class VpSched:
    """A VP as the scheduler sees it: its run state and its accounting."""

    key: tuple  # (partition id, vp index), for status
    controls: CpuControls
    owner: object = None  # the hypervisor's record of the VP
    state: VpState = CREATED
    # HvRegisterExplicitSuspend: a VP is created suspended; the root starts it by clearing
    # this (TLFS host flow).  A suspended VP is never dispatched.
    suspended: bool = True
    lp: int = 0  # the LP it runs on while RUNNING, else the one it last ran on (whose TLB it filled)
    since_ns: int = 0  # when the current state began
    run_ns: int = 0
    wait_ns: int = 0
    dispatches: int = 0
    preemptions: int = 0  # quantum ends
    yields: int = 0  # long-spin-wait notifications
    forced: int = 0  # LPs taken back from it at quantum + GRACE_NS (forced preemptions)
    quantum_end_ns: int = 0  # while RUNNING: when its quantum ends (perf_counter_ns)
    vruntime: float = 0.0
    window_ns: int = 0  # run time in accounting window number window_id
    window_id: int = 0
    order: int = 0  # FIFO among equals

    @property
    def executing(self) -> bool:
        """See :attr:`VpState.executing`."""
        state = self.state
        return state is RUNNING or state is PREEMPTED


@dataclass
class Lp:
    index: int
    vp: VpSched | None = None
    busy_ns: int = 0


class Scheduler:
    def __init__(self, lps: int, dispatch: Callable[[VpSched, int, int], None],
                 quantum_ns: int = DEFAULT_QUANTUM_NS, grace_ns: int = GRACE_NS) -> None:
        self.lps = [Lp(i) for i in range(lps)]
        self.quantum_ns = quantum_ns
        self.grace_ns = grace_ns
        self.forced_preemptions = 0
        self._dispatch_cb = dispatch
        self.ready: list[VpSched] = []
        self.window_start = 0
        self.window_id = 0
        self.max_running = 0
        self._order = 0
        # LPs with a VP on them, kept as VPs go on (_run) and off (exited) an LP: counted
        # once per dispatch, not by a walk over the LPs.
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    def exited(self, s: VpSched, now: int, preempted: bool = False, yielded: bool = False) -> None:
        """The VP left guest mode (RUNNING → INTERCEPT): account its run up to ``now`` and
        free its LP — the one place a run is accounted (preempt_overruns and remove come
        here too).  A PREEMPTED VP's LP and run were settled when it lost the LP.
        (Positional arguments on the hot path: keywords cost a call ~250 instructions more.)"""
        state = s.state
        if state is RUNNING:
            since = s.since_ns
            if now < since:
                now = since
            ran = now - since
            s.run_ns += ran
            if s.window_id != self.window_id:
                self._window(s)
            s.window_ns += ran
            s.vruntime += ran * DEFAULT_WEIGHT / s.controls.weight
            lp = self.lps[s.lp]
            lp.busy_ns += ran
            lp.vp = None
            self._running -= 1
            s.since_ns = now
            s.state = INTERCEPT
        elif state is PREEMPTED:
            s.state = INTERCEPT
            s.since_ns = max(now, s.since_ns)
        else:
            return
        if preempted:
            s.preemptions += 1
        if yielded:
            s.yields += 1

    def preempt_overruns(self, now: int) -> int:
        """Take back the LP of every VP still on it ``grace_ns`` after its quantum ended
        (RUNNING → PREEMPTED), and give the LPs to ready VPs; the number taken back."""
        taken = 0
        for lp in self.lps:
            s = lp.vp
            if s is not None and now >= s.quantum_end_ns + self.grace_ns:
                self.exited(s, now)  # its run accounted, its LP freed
                s.state = PREEMPTED
                s.forced += 1
                taken += 1
        if taken:
            self.forced_preemptions += taken
            self.dispatch(now)
        return taken

    def halted(self, s: VpSched, now: int) -> None:
        """The VP executed HLT (INTERCEPT → HALTED): nothing runs it until it is woken."""
        s.state = HALTED
        s.since_ns = now

    def make_ready(self, s: VpSched, now: int, to_back: bool = False) -> None:
        """The VP's exit is complete (→ READY): it may run once an LP is free."""
        state = s.state
        if state is READY:
            return
        if state is RUNNING or state is PREEMPTED:
            # Queuing a VP that executes guest code would dispatch it twice: a bug here,
            # which the loop's guard reports (the loop refuses exits out of turn before).
            raise RuntimeError(f"VP {s.key} made ready while {s.state.value}")
        c = s.controls
        if c.stopped:
            s.state = INTERCEPT
            return
        if not self.ready:
            # Nobody else waits: the common case, and the hot path of every round trip.
            for lp in self.lps:
                if lp.vp is None:
                    if c.paused or s.suspended or (c.limit < FULL and not self._eligible(s)):
                        break
                    if c.limit < FULL:
                        s.since_ns = now
                        self._run(s, lp, now)
                        return
                    # _run(s, lp, now) without a wait (it is READY for no time) nor a
                    # limit, inline: a call less on every round trip (~500 instructions).
                    # Keep it alike with _run.
                    s.state = RUNNING
                    s.since_ns = now
                    s.lp = index = lp.index
                    s.dispatches += 1
                    lp.vp = s
                    self._running = running = self._running + 1
                    if running > self.max_running:
                        self.max_running = running
                    quantum = self.quantum_ns
                    s.quantum_end_ns = now + quantum
                    self._dispatch_cb(s, index, quantum)
                    return
        if self.ready:
            floor = min(r.vruntime for r in self.ready)
            # A VP that slept does not get to monopolise the LPs with its saved-up credit.
            s.vruntime = max(s.vruntime, floor - self.quantum_ns)
            if to_back:  # a long-spin-wait notification: let everyone else go first
                s.vruntime = max(s.vruntime, max(r.vruntime for r in self.ready) + 1)
        s.state = READY
        s.since_ns = now
        self._order += 1
        s.order = self._order
        self.ready.append(s)
        self.dispatch(now)

    def remove(self, s: VpSched) -> None:
        """The VP cannot be reached: it takes no LP and waits for nothing."""
        if s in self.ready:
            self.ready.remove(s)
        if s.state is RUNNING:
            self.exited(s, perf_counter_ns())  # its run accounted, its LP freed
        s.state = INTERCEPT

    def suspend(self, s: VpSched, suspended: bool) -> None:
        """Set or clear HvRegisterExplicitSuspend; a VP let go may run at once."""
        s.suspended = suspended
        if not suspended:
            self.dispatch_now()

    def pause(self, controls: CpuControls, paused: bool) -> None:
        """Pause a partition (its VPs finish their exits but are not dispatched again) or
        let it run."""
        controls.paused = paused
        if not paused:
            self.dispatch_now()

    def tick(self, now: int) -> None:
        """Take LPs back from VPs that overran their quantum, start a new accounting window
        when the old one is over, then fill idle LPs."""
        self.preempt_overruns(now)
        if now - self.window_start >= WINDOW_NS:
            # Windows keep their phase: a late tick does not stretch the next one.
            self.window_start = now - (now - self.window_start) % WINDOW_NS
            self.window_id += 1
        self.dispatch(now)

    def next_event_ns(self, now: int) -> int | None:
        """When the scheduler next needs to run by itself, while VPs are ready: the next
        window, if a ready VP waits for it (its limit is used up); the moment a running VP
        will have overrun its quantum by the grace period; otherwise never.  (With nobody
        ready, an overrun costs no one an LP: housekeeping takes it back.)"""
        if not self.ready:
            return None
        when = None
        for lp in self.lps:
            if lp.vp is not None:
                overrun = lp.vp.quantum_end_ns + self.grace_ns
                if when is None or overrun < when:
                    when = overrun
        # The next window, if a ready VP waits for it — looked for only when some partition
        # has a limit and the window would come first: the loop asks at every message, and
        # the scan is O(ready VPs) (at N = 16 on 2 LPs, 14 VPs a message: 10-14 % of the
        # hypervisor's time, cProfile while 16 boot).
        window_end = self.window_start + WINDOW_NS
        if CpuControls.capped and (when is None or window_end < when) and \
                any(s.controls.limit < FULL and not self._eligible(s) for s in self.ready):
            when = window_end
        return when

    def _window(self, s: VpSched) -> VpSched:
        """Bring the VP's window accounting up to the current window.  Run time beyond a
        limit (a VP that reached its preemption point late) is carried into the next
        windows as debt, so the limit holds on average."""
        if s.window_id != self.window_id:
            passed = self.window_id - s.window_id
            budget = s.controls.limit * WINDOW_NS // FULL
            s.window_ns = max(0, s.window_ns - passed * budget) if s.controls.limit < FULL else 0
            s.window_id = self.window_id
        return s

    def dispatch(self, now: int) -> None:
        for lp in self.lps:
            if lp.vp is not None:
                continue
            s = self._pick()
            if s is None:
                return
            self.ready.remove(s)
            self._run(s, lp, now)

    def dispatch_now(self) -> None:
        self.dispatch(perf_counter_ns())

    def _run(self, s: VpSched, lp: Lp, now: int) -> None:
        # (Also written out in make_ready's fast path for a VP without a limit.)
        s.wait_ns += now - s.since_ns
        s.state = RUNNING
        s.since_ns = now
        s.lp = lp.index
        s.dispatches += 1
        lp.vp = s
        self._running += 1
        if self._running > self.max_running:
            self.max_running = self._running
        quantum = self.quantum_ns
        c = s.controls
        if c.limit < FULL:
            quantum = min(quantum, max(0, c.limit * WINDOW_NS // FULL - s.window_ns))
        s.quantum_end_ns = now + quantum
        self._dispatch_cb(s, lp.index, quantum)

    def _eligible(self, s: VpSched) -> bool:
        c = self._window(s).controls
        return c.limit >= FULL or s.window_ns < c.limit * WINDOW_NS // FULL

    def _pick(self) -> VpSched | None:
        best, best_key = None, None
        for s in self.ready:
            c = s.controls
            if c.paused or s.suspended or not self._eligible(s):
                continue
            key = (0 if s.window_ns < c.reserve * WINDOW_NS // FULL else 1, s.vruntime, s.order)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    def status(self, now: int) -> SchedulerStatus:
        return SchedulerStatus(
            [LpStatus(lp.index, tuple(lp.vp.key) if lp.vp else None,
                      round((lp.busy_ns + (now - lp.vp.since_ns if lp.vp else 0)) / 1e9, 4)) for lp in self.lps],
            self.running, self.max_running, len(self.ready), self.quantum_ns / 1e6,
            self.grace_ns / 1e6, self.forced_preemptions)

    @staticmethod
    def vp_status(s: VpSched, now: int) -> VpSchedStatus | None:
        """A VP's scheduling, for status; None before its thread said hello."""
        if s.state is CREATED:
            return None
        running = now - s.since_ns if s.state is RUNNING else 0
        waiting = now - s.since_ns if s.state is READY else 0
        return VpSchedStatus(s.state.sched, s.lp if s.state is RUNNING else None, (s.run_ns + running) / 1e9,
                             (s.wait_ns + waiting) / 1e9, s.dispatches, s.preemptions, s.yields, s.forced)
