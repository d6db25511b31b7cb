"""The scheduler holds its LPs (issue 9): a VP that overruns its quantum by the grace period
loses its LP; `ctl stop` frees everything the partition held.  In-process, through the loop."""

from __future__ import annotations

from time import perf_counter_ns

from proto import messages as m
from hypervisor.scheduler import GRACE_NS, Scheduler, VpSched, VpState
from hypervisor.scheduler import CpuControls
from tests.unit.hypervisor.fake_stack import COM1, REGS, ROOT, Stack, stamps, vp_id, worker_id

V10, V11, V20 = vp_id(1, 0), vp_id(1, 1), vp_id(2, 0)
W1 = worker_id(1)


def one_lp(tmp_path) -> Stack:
    """One LP: partition 1's VP holds it, partition 2's VP waits for it."""
    s = Stack(tmp_path, lps=1)
    s.hello(ROOT, "root")
    s.partition(vps=1)
    s.partition(vps=1, start=False)
    assert not s.start(2, 0).to(V20)
    assert s.vp(1).state is VpState.RUNNING and s.vp(2).state is VpState.READY
    s.hv.dispatcher.sched.grace_ns = GRACE_NS  # these tests are about forced preemption
    return s


def test_a_vp_that_never_exits_loses_its_lp_after_its_quantum_and_the_grace(tmp_path):
    s = one_lp(tmp_path)
    hog = s.vp(1).sched
    assert not s.run().to(V20)  # within its quantum: it keeps the LP
    hog.quantum_end_ns = perf_counter_ns() - GRACE_NS  # its quantum and the grace are over
    out = s.run()  # the loop's timer: the overrun is due while a VP is ready
    assert isinstance(out.one(V20), m.HelloReply)
    assert hog.state is VpState.PREEMPTED and hog.executing and hog.forced == 1
    st = s.hv.status()
    assert st.scheduler.forced_preemptions == 1 and st.scheduler.lps[0].vp == (2, 0)
    assert st.partition(1).vps[0].state == "preempted" and st.partition(1).vps[0].sched.forced == 1


def test_a_preempted_vps_next_exit_is_accepted_and_waits_for_a_new_dispatch(tmp_path):
    s = one_lp(tmp_path)
    s.vp(1).sched.quantum_end_ns = 0
    s.run()
    out = s.exit(V10, m.CpuidIntercept(7, 0, 0, stamps(), REGS))
    assert not out  # accepted (no error), but no resume: the LP is V20's now
    assert s.vp(1).state is VpState.READY and s.vp(1).exits["cpuid"] == 1
    out = s.exit(V20, m.HaltIntercept(1, stamps(), REGS))  # the LP comes back
    assert out.one(V10, m.VpResume).seq == 7 and not out.to(V20)


def test_a_vp_running_within_its_quantum_is_never_preempted():
    sent = []
    sched = Scheduler(1, lambda s, lp, q: sent.append(s))
    a, b = VpSched((1, 0), CpuControls(), suspended=False), VpSched((2, 0), CpuControls(), suspended=False)
    now = perf_counter_ns()
    sched.make_ready(a, now)
    sched.make_ready(b, now)
    assert sent == [a] and sched.next_event_ns(now) == a.quantum_end_ns + GRACE_NS
    assert sched.preempt_overruns(a.quantum_end_ns + GRACE_NS - 1) == 0 and a.state is VpState.RUNNING
    assert sched.preempt_overruns(a.quantum_end_ns + GRACE_NS) == 1 and sent == [a, b]
    assert a.state is VpState.PREEMPTED and b.state is VpState.RUNNING
    assert a.run_ns == sched.quantum_ns + GRACE_NS  # its LP time ends when the LP is taken back


def test_a_ready_vp_waiting_for_its_limit_wakes_the_scheduler_at_the_window_end():
    """next_event_ns looks for such a VP only while some partition is capped
    (CpuControls.capped) and when the window would end before a running VP's quantum."""
    from hypervisor.scheduler import FULL, WINDOW_NS

    sched = Scheduler(1, lambda s, lp, q: None)
    hog = VpSched((1, 0), CpuControls(), suspended=False)
    capped = VpSched((2, 0), CpuControls(limit=FULL // 2), suspended=False)
    now = sched.window_start = perf_counter_ns()  # a window begins
    sched.make_ready(hog, now)
    capped.window_id, capped.window_ns = sched.window_id, WINDOW_NS  # its half used up
    sched.make_ready(capped, now)
    assert CpuControls.capped >= 1 and capped.state is VpState.READY
    assert sched.next_event_ns(now) == hog.quantum_end_ns + GRACE_NS  # that comes first
    sched.exited(hog, now)  # the LP is free, the capped VP still may not run
    sched.dispatch(now)
    assert capped.state is VpState.READY and sched.next_event_ns(now) == sched.window_start + WINDOW_NS
    capped.controls.limit = FULL  # uncapped: nothing to wait for
    assert sched.next_event_ns(now) is None
    before = CpuControls.capped
    capped.controls.limit = 1
    assert CpuControls.capped == before + 1 and sched.next_event_ns(now) == sched.window_start + WINDOW_NS
    capped.controls.limit = FULL


def test_executing_guest_code_is_running_or_preempted():
    assert {st for st in VpState if st.executing} == {VpState.RUNNING, VpState.PREEMPTED}


# -- ctl stop ---------------------------------------------------------------------------------


def test_stop_frees_the_lps_of_vps_that_never_exit_at_once(tmp_path):
    """Issue 9: `ctl stop` of a partition whose VPs never exit reported success but never
    freed its LPs: the rest of the run stayed at 0 exits/s."""
    s = one_lp(tmp_path)
    out = s.send(ROOT, m.PartitionControl(1, "stop"))
    assert out.one(ROOT, m.Ack) and isinstance(out.one(V20), m.HelloReply)  # no grace to wait for
    assert s.hv.status().scheduler.lps[0].vp == (2, 0)
    assert not s.exit(V10, m.CpuidIntercept(8, 0, 0, stamps(), REGS)).to(V10)  # a late exit waits for nothing
    assert s.vp(1).sched not in s.hv.sched.ready


def test_stop_drops_the_partitions_forwards_and_timers(tmp_path):
    s = Stack(tmp_path, lps=2)
    s.hello(ROOT, "root")
    s.partition(vps=2)
    s.exit(V10, m.IoPortIntercept(9, COM1, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    s.send(ROOT, m.ExecuteRequest(77, 1, 1, "inb", COM1, 0, b"")).one(W1, m.PortNotify)
    s.exit(V11, m.MmioIntercept(10, 0xFEE00380, 4, True, 200_000_000, stamps(), REGS))  # the APIC timer's count
    assert s.hv.interrupts.next_timer_ns is not None
    out = s.send(ROOT, m.PartitionControl(1, "stop"))
    assert out.one(ROOT, m.ErrorReply).code == "CONFLICT"  # the root's io learns it will never complete
    assert not s.hv.forwarding.pending and s.hv.interrupts.next_timer_ns is None
    assert not any(q.partition.id == 1 for q in s.hv.forwarding.pings.values())
    assert s.hv.status().scheduler.running == 0


def test_an_apic_write_finds_the_next_timer_without_walking_every_vp(tmp_path, monkeypatch):
    """Issue 12: every APIC write (each EOI among them) walked every VP of every partition
    for the next timer deadline; now only a write that moved the earliest deadline does."""
    s = Stack(tmp_path, lps=2)
    s.hello(ROOT, "root")
    s.partition(vps=2)
    walks = []
    walk = s.hv.interrupts.timers_changed
    monkeypatch.setattr(s.hv.interrupts, "timers_changed", lambda: (walks.append(1), walk()))
    count = 0xFEE00380  # the timer's initial count register
    s.exit(V10, m.MmioIntercept(10, count, 4, True, 400_000_000, stamps(), REGS))
    late = s.vp(1, 0).apic.timer_deadline_ns
    assert s.hv.interrupts.next_timer_ns == late and not walks
    s.exit(V11, m.MmioIntercept(11, count, 4, True, 100_000_000, stamps(), REGS))
    early = s.vp(1, 1).apic.timer_deadline_ns
    assert early < late and s.hv.interrupts.next_timer_ns == early and not walks
    s.exit(V11, m.MmioIntercept(12, 0xFEE000B0, 4, True, 0, stamps(), REGS))  # an EOI: nothing moved
    s.exit(V10, m.MmioIntercept(13, count, 4, True, 300_000_000, stamps(), REGS))  # later than the earliest
    assert s.hv.interrupts.next_timer_ns == early and not walks
    s.exit(V11, m.MmioIntercept(14, count, 4, True, 0, stamps(), REGS))  # the earliest stops: look again
    assert walks and s.hv.interrupts.next_timer_ns == s.vp(1, 0).apic.timer_deadline_ns
