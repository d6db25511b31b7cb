"""A VP with a posted-interrupt descriptor (proto/posted.py): it says so once, finds what
was posted there at its next preemption point (a memory load, no poll) or at its next
resume, and drops it at a reset."""

from __future__ import annotations

import mmap
import os
import threading
from time import perf_counter_ns

import pytest

from proto import messages as m
from proto import posted
from proto.exits import Exit
from partitions import vp as vpmod
from partitions.vp import Vp
from tests.unit.partitions.test_vp_preemption_point import Dealer, Ram


@pytest.fixture
def pi(tmp_path):
    path = posted.posted_path(tmp_path, 1)
    fd = posted.create(path)
    buf = mmap.mmap(fd, posted.FILE_SIZE)
    notifier = posted.Notifier(buf)
    yield path, notifier
    notifier.close()
    buf.close()
    os.close(fd)


def running_vp(path):
    d = Dealer()
    v = Vp(d, 0, Ram(), threading.Event(), posted=posted.VpDescriptor(path, 0))
    v._quantum_end = vpmod.NEVER
    taken = []
    v.set_handler(0x20, lambda vp, vector: taken.append(vector))
    v.if_flag = True
    return v, d, taken


def stamps4() -> tuple:
    now = perf_counter_ns()
    return (now - 3000, now - 2000, now - 1000, now)


def test_it_says_once_that_it_reads_its_descriptor(pi):
    v, d, _ = running_vp(pi[0])
    assert [type(x) for x in d.sent] == [m.PostedDescriptorReady] and d.sent[0].layout == posted.LAYOUT


def test_a_posted_vector_is_taken_at_the_next_check_without_a_poll(pi):
    path, buf = pi
    v, d, taken = running_vp(path)
    v._next_poll = perf_counter_ns() + 10**9  # not the connection's turn
    buf.post(0, 0x20, stamps4())
    v._next_check = 0
    v.read(0x100, 4)
    assert taken == [0x20] and d.polls == 0 and len(d.sent) == 1  # no exit, no poll
    assert v.paths[Exit.INTERRUPT].total.n == 1  # measured as a resume's would be
    assert v._next_check <= perf_counter_ns() + vpmod.POSTED_CHECK_NS


def test_with_interrupts_disabled_it_waits_for_sti(pi):
    path, buf = pi
    v, d, taken = running_vp(path)
    v.cli()
    buf.post(0, 0x20, ())
    v._next_check = 0
    v.pause()
    assert taken == []
    v.sti()
    assert taken == [0x20]


def test_one_posted_before_an_exit_is_taken_at_its_resume(pi):
    path, buf = pi
    v, d, taken = running_vp(path)
    buf.post(0, 0x20, stamps4())
    d.inbox.append(m.VpResume(1, 0, 0, 0, 0, 0, b"", (), 0, (), perf_counter_ns() + 10**9, 0,
                              Exit.HALT.code).encode())
    v.hlt()
    assert taken == [0x20]


def test_the_connection_is_still_polled_every_notify_interval(pi):
    """interrupt_notify (a VP beyond the side entry's stamps, say) and errors still arrive."""
    path, buf = pi
    v, d, taken = running_vp(path)
    d.inbox.append(m.InterruptNotify(0x20, stamps4()).encode())
    v._next_check = v._next_poll = 0
    v.read(0x100, 4)
    assert taken == [0x20] and d.polls >= 1 and v._next_poll > 0


def test_a_reset_drops_what_was_posted(pi):
    path, buf = pi
    v, d, taken = running_vp(path)
    buf.post(0, 0x20, ())
    v.power_on()
    v.set_handler(0x20, lambda vp, vector: taken.append(vector))
    v.if_flag = True
    v._next_check = 0
    v.read(0x100, 4)
    assert taken == []


def test_a_garbage_descriptor_only_runs_the_guest_s_own_handlers(pi):
    path, buf = pi
    v, d, taken = running_vp(path)
    v._posted.buf[:posted.REGION_SIZE] = b"\xff" * posted.REGION_SIZE
    v._next_check = 0
    v.read(0x100, 4)  # every vector "posted": the handler of 0x20 runs, the rest are counted
    assert taken == [0x20] and v.counters["unhandled_interrupts"] == 255
    v._next_check = 0
    v.read(0x100, 4)
    assert taken == [0x20]  # taken once: the bits are clear now
