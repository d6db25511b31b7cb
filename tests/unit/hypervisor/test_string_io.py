"""REP INS/OUTS (``io_string_intercept``), in-process: one exit for many elements, the
worker's one completion, and what a hostile VP or worker gets for elements that do not add up.

Partition 1's worker claims COM1 (see conftest.py); port 0x80 is nobody's.
"""

from __future__ import annotations

from proto import messages as m
from proto.codes import X86Exception
from proto.exits import Exit
from hypervisor.scheduler import VpState
from tests.unit.hypervisor.fake_stack import COM1, REGS, stamps, vp_id, worker_id

V10, W1, W2 = vp_id(1, 0), worker_id(1), worker_id(2)


def test_rep_outsb_is_one_exit_and_one_notify_carrying_every_element_in_order(two):
    out = two.exit(V10, m.IoStringIntercept(7, COM1, 1, True, 5, b"hello", stamps(), REGS))
    notify = out.one(W1, m.PortStringNotify)
    assert (notify.vp, notify.port, notify.size, notify.write, notify.count, notify.data) == \
        (0, COM1, 1, True, 5, b"hello")
    assert not out.to(V10) and two.vp(1).state is VpState.INTERCEPT
    r = two.send(W1, m.StringAccessComplete(notify.ref, b"", notify.stamps + stamps(2))).one(V10, m.VpResume)
    assert (r.seq, r.fault, r.output, r.path) == (7, 0, b"", Exit.IO_STRING.code)
    assert len(r.stamps) == 7  # the emulated path's stamps, as a single IN/OUT's
    assert two.vp(1).exits[Exit.IO_STRING] == 1 and two.vp(1).exits[Exit.IO_PORT] == 0
    assert two.hv.forwarding.pending == {}


def test_rep_insw_gets_the_workers_elements_in_the_resumes_output(two):
    notify = two.exit(V10, m.IoStringIntercept(8, COM1, 2, False, 3, b"", stamps(), REGS)).one(W1, m.PortStringNotify)
    assert (notify.count, notify.data) == (3, b"")
    r = two.send(W1, m.StringAccessComplete(notify.ref, b"abcdef", stamps(4))).one(V10, m.VpResume)
    assert (r.output, r.fault) == (b"abcdef", 0)


def test_an_unclaimed_port_reads_all_ones_for_every_element_and_swallows_writes(two):
    r = two.exit(V10, m.IoStringIntercept(9, 0x80, 2, False, 4, b"", stamps(), REGS)).one(V10, m.VpResume)
    assert (r.output, r.path) == (b"\xff" * 8, Exit.IO_UNCLAIMED.code)
    r = two.exit(V10, m.IoStringIntercept(10, 0x80, 1, True, 3, b"xyz", stamps(), REGS)).one(V10, m.VpResume)
    assert (r.output, r.path) == (b"", Exit.IO_UNCLAIMED.code)
    assert (two.part(1).unclaimed_reads, two.part(1).unclaimed_writes) == (4, 3)


def test_elements_that_do_not_add_up_are_a_gp_fault_and_reach_no_worker(two):
    """No CPU makes these: a write whose data is not its count of elements, a read that
    brings data, nothing to move, more than a page."""
    for seq, (size, write, count, data) in enumerate([(1, True, 4, b"abc"), (2, True, 2, b"abcdef"),
                                                      (1, False, 2, b"ab"), (1, True, 0, b""),
                                                      (4, False, 1025, b"")], start=20):
        out = two.exit(V10, m.IoStringIntercept(seq, COM1, size, write, count, data, stamps(), REGS))
        r = out.one(V10, m.VpResume)
        assert (r.seq, r.fault) == (seq, int(X86Exception.GP)) and not out.to(W1)
    assert two.hv.forwarding.pending == {} and two.vp(1).state is VpState.RUNNING


def test_a_workers_answer_of_the_wrong_length_is_refused_and_the_access_stays_pending(two):
    notify = two.exit(V10, m.IoStringIntercept(11, COM1, 1, False, 4, b"", stamps(), REGS)).one(W1, m.PortStringNotify)
    out = two.send(W1, m.StringAccessComplete(notify.ref, b"abc", stamps(4)))
    assert out.one(W1, m.ErrorReply).code == "INVALID_FIELD" and not out.to(V10)
    assert notify.ref in two.hv.forwarding.pending
    # A plain access_complete does not complete a string access either, nor another worker's answer.
    assert two.send(W1, m.AccessComplete(notify.ref, 0x41, stamps(4))).one(W1, m.ErrorReply).code == "STALE"
    assert two.send(W2, m.StringAccessComplete(notify.ref, b"abcd", stamps(4))).one(W2, m.ErrorReply).code == "STALE"
    r = two.send(W1, m.StringAccessComplete(notify.ref, b"abcd", stamps(4))).one(V10, m.VpResume)
    assert r.output == b"abcd" and two.hv.forwarding.pending == {}


def test_a_string_access_answered_for_a_port_access_is_stale(two):
    notify = two.exit(V10, m.IoPortIntercept(12, COM1, 1, False, 0, stamps(), REGS)).one(W1, m.PortNotify)
    assert two.send(W1, m.StringAccessComplete(notify.ref, b"", stamps(4))).one(W1, m.ErrorReply).code == "STALE"
    assert two.send(W1, m.AccessComplete(notify.ref, 0x41, stamps(4))).one(V10, m.VpResume).rax == 0x41
