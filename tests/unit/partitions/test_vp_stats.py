"""When a VP sends its statistics (``vp_stats``): every STATS_INTERVAL_NS at an exit's return,
and when a wait for a resume outlasts EXIT_TIMEOUT_MS with something measured since the last
— never before every HLT (with a 1 kHz timer that was a message of every histogram per tick,
the hypervisor's largest cost).  And what it sends holds every round trip measured."""

from __future__ import annotations

import threading
from time import perf_counter_ns

from proto import messages as m
from proto.exits import Exit
from partitions import vp as vpmod
from partitions.vp import Vp
from tests.unit.partitions.test_vp_preemption_point import Dealer, Ram


class SlowDealer(Dealer):
    """The first ``slow`` waits time out (a HLT that lasts), then the inbox answers."""

    def __init__(self, slow: int = 0) -> None:
        super().__init__()
        self.slow = slow

    def wait(self, timeout_ms: int) -> bool:
        self.polls += 1
        if self.slow:
            self.slow -= 1
            return False
        return bool(self.inbox)


def resume(seq: int, path: Exit) -> bytes:
    now = perf_counter_ns()
    return m.VpResume(seq, 0, 0, 0, 0, 0, b"", (now - 3000, now - 2000, now - 1000), 0, (),
                      now + 10**9, 0, path.code).encode()


def stats_sent(d: Dealer) -> list[m.VpStats]:
    return [x for x in d.sent if isinstance(x, m.VpStats)]


def new_vp(d: Dealer) -> Vp:
    v = Vp(d, 0, Ram(), threading.Event())
    v._next_stats = perf_counter_ns() + 10**12  # the interval never ends by itself here
    return v


def test_no_vp_stats_before_a_hlt_however_many_hlts():
    d = Dealer()
    v = new_vp(d)
    for seq in range(1, 51):
        d.inbox.append(resume(seq, Exit.HALT))
        v.hlt()
    assert [type(x) for x in d.sent] == [m.HaltIntercept] * 50 and not stats_sent(d)


def test_vp_stats_at_the_first_exit_return_after_the_interval_with_every_round_trip():
    d = Dealer()
    v = new_vp(d)
    for seq in range(1, 6):
        d.inbox.append(resume(seq, Exit.CPUID))
        v.cpuid(0)
    assert not stats_sent(d)
    v._next_stats = 0  # STATS_INTERVAL_NS has passed
    d.inbox.append(resume(6, Exit.CPUID))
    v.cpuid(0)
    (stats,) = stats_sent(d)
    assert stats.paths["cpuid"]["t"]["n"] == 6 and stats.counters["exits"] == 6
    assert v._next_stats > perf_counter_ns() + vpmod.STATS_INTERVAL_NS // 2  # the next interval began
    d.inbox.append(resume(7, Exit.CPUID))
    v.cpuid(0)
    assert len(stats_sent(d)) == 1


def test_a_long_wait_sends_vp_stats_once_and_only_with_something_new():
    d = SlowDealer(slow=1)
    v = new_vp(d)
    d.inbox.append(resume(1, Exit.HALT))
    v.hlt()
    assert not stats_sent(d)  # nothing measured yet: nothing to say
    d.inbox.append(resume(2, Exit.CPUID))
    v.cpuid(0)
    d.slow = 3  # this HLT outlasts EXIT_TIMEOUT_MS, then two more slices: one vp_stats
    d.inbox.append(resume(3, Exit.HALT))
    v.hlt()
    (stats,) = stats_sent(d)
    assert stats.paths["cpuid"]["t"]["n"] == 1
    v._next_stats = 0  # sent at this exit's return: everything measured is out
    d.inbox.append(resume(4, Exit.CPUID))
    v.cpuid(0)
    assert len(stats_sent(d)) == 2
    d.slow = 2  # a long HLT with nothing measured since: no vp_stats
    d.inbox.append(resume(5, Exit.HALT))
    v.hlt()
    assert len(stats_sent(d)) == 2


def test_each_vp_stats_holds_the_round_trips_since_the_last_and_together_every_one():
    """A vp_stats carries what was measured since the previous one (issue 12: resending
    every histogram 4 times a second per VP was a third of the hypervisor's CPU with 16
    partitions); added up, as the hypervisor does, they are the VP's own histograms."""
    from proto.stats import PathStats

    d = Dealer()
    v = new_vp(d)
    seq = 0
    for batch, path in ((3, Exit.CPUID), (5, Exit.CPUID), (0, Exit.CPUID), (2, Exit.MSR)):
        for _ in range(batch):
            seq += 1
            d.inbox.append(resume(seq, path))
            v.cpuid(0) if path is Exit.CPUID else v.rdmsr(0x40000002)
        v.flush_stats()
    sent = stats_sent(d)
    assert [{p: s["t"]["n"] for p, s in x.paths.items()} for x in sent] == [{"cpuid": 3}, {"cpuid": 5}, {}, {"msr": 2}]
    added: dict[str, PathStats] = {}
    for x in sent:
        for p, s in x.paths.items():
            added.setdefault(p, PathStats()).merge(PathStats.from_wire(s))
    mine = v.paths
    assert set(added) == set(mine) == {"cpuid", "msr"}
    for p in mine:
        assert added[p].to_wire() == mine[p].to_wire()
    assert sent[-1].counters["exits"] == 10  # the counters stay cumulative


def test_an_interrupt_with_the_resume_is_taken_before_the_vp_stats_that_is_due():
    """A HLT's resume carries the tick, and the stats interval has passed: the handler runs
    first (its EOI is the next thing sent), the vp_stats after it — a tick in 25 used to
    wait for the filing and sending of the stats."""
    d = Dealer()
    v = new_vp(d)
    taken = []
    v.set_handler(0x20, lambda vp, vector: taken.append(len(d.sent)))
    v.if_flag = True
    v._next_stats = 0
    now = perf_counter_ns()
    d.inbox.append(m.VpResume(1, 0, 0, 0, 0, 0, b"", (now - 3000, now - 2000, now - 1000), 0x20,
                              (now - 5000, now - 4000, now - 3000, now - 2000), now + 10**9, 0,
                              Exit.HALT.code).encode())
    v.hlt()
    assert taken == [1]  # only the HLT had been sent when the handler ran
    assert [type(x) for x in d.sent] == [m.HaltIntercept, m.VpStats]
    assert stats_sent(d)[0].paths["interrupt"]["t"]["n"] == 1
