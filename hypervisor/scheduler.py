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
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter_ns
from typing import Callable

DEFAULT_QUANTUM_NS = 10_000_000
WINDOW_NS = 100_000_000
FULL = 100_000  # 100 % of an LP, in thousandths of a percent
DEFAULT_WEIGHT = 100


@dataclass
class CpuControls:
    reserve: int = 0
    limit: int = FULL
    weight: int = DEFAULT_WEIGHT


@dataclass
class VpSched:
    """A VP as the scheduler sees it."""

    key: tuple  # (partition id, vp index), for status
    controls: CpuControls
    owner: object = None  # the hypervisor's record of the VP
    state: str = "blocked"  # blocked (in an exit) | ready | running | halted
    lp: int | None = None
    since_ns: int = 0  # when the current state began
    run_ns: int = 0
    wait_ns: int = 0
    dispatches: int = 0
    preemptions: int = 0  # quantum ends
    yields: int = 0  # long-spin-wait notifications
    vruntime: float = 0.0
    window_ns: int = 0  # run time in accounting window number window_id
    window_id: int = 0
    order: int = 0  # FIFO among equals


@dataclass
class Lp:
    index: int
    vp: VpSched | None = None
    busy_ns: int = 0


class Scheduler:
    def __init__(self, lps: int, dispatch: Callable[[VpSched, int, int], None],
                 quantum_ns: int = DEFAULT_QUANTUM_NS) -> None:
        self.lps = [Lp(i) for i in range(lps)]
        self.quantum_ns = quantum_ns
        self._dispatch_cb = dispatch
        self.ready: list[VpSched] = []
        self.paused: set = set()  # partition ids whose VPs are not dispatched
        self.suspended: set = set()  # (partition id, vp index) held by HvRegisterExplicitSuspend
        self.window_start = 0
        self.window_id = 0
        self.max_running = 0
        self._order = 0

    @property
    def running(self) -> int:
        return sum(1 for lp in self.lps if lp.vp is not None)

    def exited(self, s: VpSched, now: int, *, preempted: bool = False, yielded: bool = False) -> None:
        """The VP left guest mode: account its run and free its LP."""
        if s.state != "running":
            return
        now = max(now, s.since_ns)
        ran = now - s.since_ns
        s.run_ns += ran
        self._window(s).window_ns += ran
        s.vruntime += ran * DEFAULT_WEIGHT / s.controls.weight
        lp = self.lps[s.lp]
        lp.busy_ns += ran
        lp.vp = None
        s.lp = None
        s.state = "blocked"
        s.since_ns = now
        if preempted:
            s.preemptions += 1
        if yielded:
            s.yields += 1

    def halted(self, s: VpSched, now: int) -> None:
        s.state = "halted"
        s.since_ns = now

    def make_ready(self, s: VpSched, now: int, *, to_back: bool = False) -> None:
        """The VP's exit is complete: it may run once an LP is free."""
        if s.state == "ready":
            return
        if not self.ready:
            # Nobody else waits: the common case, and the hot path of every round trip.
            for lp in self.lps:
                if lp.vp is None:
                    if s.key[0] in self.paused or s.key in self.suspended or not self._eligible(s):
                        break
                    s.since_ns = now
                    self._run(s, lp, now)
                    return
        if self.ready:
            floor = min(r.vruntime for r in self.ready)
            # A VP that slept does not get to monopolise the LPs with its saved-up credit.
            s.vruntime = max(s.vruntime, floor - self.quantum_ns)
            if to_back:  # a long-spin-wait notification: let everyone else go first
                s.vruntime = max(s.vruntime, max(r.vruntime for r in self.ready) + 1)
        s.state = "ready"
        s.since_ns = now
        self._order += 1
        s.order = self._order
        self.ready.append(s)
        self.dispatch(now)

    def remove(self, s: VpSched) -> None:
        if s in self.ready:
            self.ready.remove(s)
        if s.lp is not None:
            self.lps[s.lp].vp = None
            s.lp = None
        s.state = "blocked"

    def tick(self, now: int) -> None:
        """Start a new accounting window when the old one is over, then fill idle LPs."""
        if now - self.window_start >= WINDOW_NS:
            # Windows keep their phase: a late tick does not stretch the next one.
            self.window_start = now - (now - self.window_start) % WINDOW_NS
            self.window_id += 1
        self.dispatch(now)

    def next_event_ns(self, now: int) -> int | None:
        """When the scheduler next needs to run by itself: the next window, if a ready VP
        waits for it (its limit is used up); otherwise never."""
        if any(s.controls.limit < FULL and not self._eligible(s) for s in self.ready):
            return self.window_start + WINDOW_NS
        return None

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
        s.wait_ns += now - s.since_ns
        s.state = "running"
        s.since_ns = now
        s.lp = lp.index
        s.dispatches += 1
        lp.vp = s
        if self.max_running < len(self.lps):
            self.max_running = max(self.max_running, self.running)
        quantum = self.quantum_ns
        c = s.controls
        if c.limit < FULL:
            quantum = min(quantum, max(0, c.limit * WINDOW_NS // FULL - s.window_ns))
        self._dispatch_cb(s, lp.index, quantum)

    def _eligible(self, s: VpSched) -> bool:
        c = self._window(s).controls
        return c.limit >= FULL or s.window_ns < c.limit * WINDOW_NS // FULL

    def _pick(self) -> VpSched | None:
        best, best_key = None, None
        for s in self.ready:
            if s.key[0] in self.paused or s.key in self.suspended or not self._eligible(s):
                continue
            c = s.controls
            key = (0 if s.window_ns < c.reserve * WINDOW_NS // FULL else 1, s.vruntime, s.order)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    def status(self, now: int) -> dict:
        return {
            "lps": [{"index": lp.index, "vp": list(lp.vp.key) if lp.vp else None,
                     "busy_s": round((lp.busy_ns + (now - lp.vp.since_ns if lp.vp else 0)) / 1e9, 4)}
                    for lp in self.lps],
            "running": self.running,
            "max_running": self.max_running,
            "ready": len(self.ready),
            "quantum_ms": self.quantum_ns / 1e6,
        }
