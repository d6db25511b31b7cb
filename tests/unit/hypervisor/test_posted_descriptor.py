"""Posted interrupts through the VP's descriptor (hypervisor/posted.py): once a VP says it
reads it, an interrupt for it while it executes guest code is written there, not sent."""

from __future__ import annotations

import pytest

from proto import messages as m
from proto import posted
from hypervisor.posted import PostedDescriptors
from tests.unit.hypervisor.fake_stack import REGS, Stack, stamps, vp_id, worker_id

V10, V11 = vp_id(1, 0), vp_id(1, 1)


@pytest.fixture(autouse=True)
def descriptors_on(monkeypatch):
    monkeypatch.setenv("HVSTACK_POSTED_DESCRIPTOR", "1")  # (the default; set against the environment)
W1 = worker_id(1)


def descriptor(stack, partition: int, vp: int) -> posted.VpDescriptor:
    return posted.VpDescriptor(posted.posted_path(stack.hv.memory.dir, partition), vp)


def test_after_ready_an_interrupt_for_a_running_vp_goes_to_its_descriptor(two):
    assert not two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))  # no answer
    out = two.send(W1, m.AssertInterrupt(0x21, stamps(2)))
    assert not out.to(V10)  # no interrupt_notify
    d = descriptor(two, 1, 0)
    (interrupt, irq_stamps), = d.take()
    assert interrupt == 0x21 and len(irq_stamps) == 4  # device raise, worker send, hv in, hv inject
    assert two.vp(1).interrupts.injected == 1  # the hypervisor's state moved as for a message
    assert two.hv.counters["posted_interrupts"] == 1 and two.hv.counters["posted_descriptor"] == 1
    d.close()


def test_a_vp_that_did_not_say_ready_still_gets_messages(two):
    two.send(V11, m.PostedDescriptorReady(posted.LAYOUT))  # its sibling did
    out = two.send(W1, m.AssertInterrupt(0x21, stamps(2)))
    assert out.one(V10, m.InterruptNotify).interrupt == 0x21
    assert two.hv.counters["posted_descriptor"] == 0


def test_another_layout_is_refused_and_keeps_the_messages(two):
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT + 1))
    assert two.send(W1, m.AssertInterrupt(0x21, stamps(2))).one(V10, m.InterruptNotify)
    assert two.hv.counters["posted_descriptor_refused"] == 1


def test_only_a_vp_may_say_ready(two):
    assert two.send(W1, m.PostedDescriptorReady(posted.LAYOUT)).one(W1, m.ErrorReply).code == "NOT_PERMITTED"


def test_a_halted_vp_is_still_woken_by_its_resume(two):
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    assert not two.exit(V10, m.HaltIntercept(8, stamps(), REGS))
    assert two.send(W1, m.AssertInterrupt(0x20, stamps(2))).one(V10, m.VpResume).interrupt == 0x20
    d = descriptor(two, 1, 0)
    assert d.take() == []
    d.close()


def test_a_hlt_after_a_descriptor_post_completes_at_once(two):
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    two.send(W1, m.AssertInterrupt(0x21, stamps(2)))
    r = two.exit(V10, m.HaltIntercept(6, stamps(), REGS)).one(V10, m.VpResume)
    assert (r.seq, r.interrupt) == (6, 0)  # the VP finds 0x21 in its descriptor at this resume


def test_a_garbage_descriptor_does_not_reach_the_hypervisor(two):
    """The hypervisor reads nothing of the descriptor but a vector's PIR bit before it posts
    it: what the guest writes there costs the guest its own prompt delivery at most (a set
    bit: that interrupt goes by message), and nothing else."""
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    d = descriptor(two, 1, 0)
    d.buf[:posted.REGION_SIZE] = b"\xff" * posted.REGION_SIZE
    assert two.send(W1, m.AssertInterrupt(0x22, stamps(2))).one(V10, m.InterruptNotify).interrupt == 0x22
    assert two.hv.counters["posted_descriptor_busy"] == 1 and two.hv.counters["handler_errors"] == 0
    d.take()  # the guest's own bits, taken
    two.exit(V10, m.CpuidIntercept(two.seq(), 1, 0, stamps(), REGS))
    d.buf[:posted.REGION_SIZE] = b"\x00" * posted.DESCRIPTOR_SIZE + b"\xff" * (posted.REGION_SIZE - posted.DESCRIPTOR_SIZE)
    assert not two.send(W1, m.AssertInterrupt(0x23, stamps(2))).to(V10)  # a garbage side entry is written over
    assert [i & 0xFF for i, _ in d.take()] == [0x23]
    d.close()


def test_turned_off_there_is_no_file_and_ready_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HVSTACK_POSTED_DESCRIPTOR", "0")
    s = Stack(tmp_path)
    s.hello(b"root", "root")
    assert s.partition() == 1
    assert not (tmp_path / "pi-1.bin").exists()
    s.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    assert s.send(W1, m.AssertInterrupt(0x21, stamps(2))).one(V10, m.InterruptNotify)
    assert s.hv.counters["posted_descriptor_refused"] == 1


def test_a_deleted_partition_s_file_goes(tmp_path):
    p = PostedDescriptors(str(tmp_path), {})
    p.create(5)
    assert (tmp_path / "pi-5.bin").exists()
    p.forget(5)
    assert not (tmp_path / "pi-5.bin").exists()


def test_a_save_carries_what_was_posted_and_not_yet_taken_as_pending(two):
    """The hypervisor put the vector in service when it posted it; a partition saved before
    its VP took it must have it pending in the record, or the restored guest never gets it
    (and, for an APIC vector, never EOIs it)."""
    import msgpack
    from tests.unit.hypervisor.fake_stack import ROOT
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    two.send(W1, m.AssertInterrupt(0x21, stamps(2)))
    assert two.send(ROOT, m.PartitionControl(1, "pause")).one(ROOT, m.Ack)
    for vp in (V10, V11):  # each VP's next exit holds it off its LP; VP 0 has not looked yet
        two.exit(vp, m.CpuidIntercept(two.seq(), 1, 0, stamps(), REGS))
    state = msgpack.unpackb(two.send(ROOT, m.PartitionSaveRequest(1)).one(ROOT, m.PartitionState).state)
    assert [vp["pending"] for vp in state["vps"]] == [[0x21], []]
    d = descriptor(two, 1, 0)
    assert [i & 0xFF for i, _ in d.take()] == [0x21]  # read for the save, not taken from the VP
    d.close()


def test_a_vector_acknowledged_again_before_the_vp_took_the_first_goes_by_message(two):
    """The lost interrupt CI saw with the descriptors on (three guests stalled for good with an
    interrupt in service): the worker's PIC acknowledges IRQ 0 (vector 0x20) again before
    the VP has taken the first 0x20 from its descriptor — IRQ 4's handler, running with
    IRQ 0 posted and not yet taken, ends with a non-specific EOI, which ends IRQ 0 (the
    highest in service), and the next tick is acknowledged.  Posted onto the untaken PIR
    bit, the two were one: one handler run, one EOI, and an ISR bit held for good.  The
    second goes by message; the VP takes both."""
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    assert not two.send(W1, m.AssertInterrupt(0x20, stamps(2))).to(V10)  # the descriptor
    second = two.send(W1, m.AssertInterrupt(0x20, stamps(2))).one(V10, m.InterruptNotify)
    assert second.interrupt == 0x20
    d = descriptor(two, 1, 0)
    assert [i for i, _ in d.take()] == [0x20]
    assert two.vp(1).interrupts.injected == 2  # two in service, two on their way
    c = two.hv.counters
    assert (c["posted_interrupts"], c["posted_descriptor"], c["posted_descriptor_busy"]) == (2, 1, 1)
    # Taken, the bit is free: the next 0x20 goes through the descriptor again.
    two.exit(V10, m.CpuidIntercept(two.seq(), 1, 0, stamps(), REGS))  # a new run (POSTED_MAX per run)
    assert not two.send(W1, m.AssertInterrupt(0x20, stamps(2))).to(V10)
    assert [i for i, _ in d.take()] == [0x20]
    d.close()


def test_the_pic_interleaving_that_stalled_ci_ends_with_nothing_in_service(two):
    """The whole interleaving, with the worker's own PIC model doing the INTAs and EOIs and
    the guest's kernel's handlers (each ends with a non-specific EOI, partitions/kernel.py):
    every interrupt acknowledged reaches a handler, so the PIC ends with nothing in service
    and COM1's next IRQ 4 comes through.  Before the fix the second tick merged into the
    first's PIR bit and IRQ 4 stayed in service for good."""
    from tests.unit.devices.support import RecordingIrqLine
    from tests.unit.devices.test_pic8259 import NON_SPECIFIC_EOI, init_pair, lower_irq, raise_irq, wr
    from worker.devices.pic8259 import Pic8259, Pic8259Config

    pic = Pic8259(Pic8259Config(), RecordingIrqLine())
    init_pair(pic)  # vectors 0x20-0x2F, as the guest kernel programs them
    two.send(V10, m.PostedDescriptorReady(posted.LAYOUT))
    d = descriptor(two, 1, 0)

    def worker_raises(irq: int) -> list:
        """The device's edge, the worker's INTA and assert_interrupt: what VP 0 is sent."""
        raise_irq(pic, irq)
        vector = pic.acknowledge()
        lower_irq(pic, irq)
        return [msg.interrupt for msg in two.send(W1, m.AssertInterrupt(vector, stamps(2))).to(V10)]

    def handler_ends() -> None:
        wr(pic, 0x20, NON_SPECIFIC_EOI)  # pic.eoi(vp, irq): the guest names no level

    messages = worker_raises(4)  # COM1: posted, VP 0 takes it and runs on_serial (IF clear)
    assert [i for i, _ in d.take()] == [0x24]
    messages += worker_raises(0)  # a tick while on_serial runs: posted, not yet taken
    handler_ends()  # on_serial's EOI ends IRQ 0, the highest in service, not IRQ 4
    messages += worker_raises(0)  # the next tick, before VP 0 looked at its descriptor
    taken = [i for i, _ in d.take()] + messages
    assert sorted(taken) == [0x20, 0x20]  # two ticks in service, two on_tick runs
    for _ in taken:
        handler_ends()
    assert pic.master.isr == 0
    two.exit(V10, m.CpuidIntercept(two.seq(), 1, 0, stamps(), REGS))  # a new run
    assert worker_raises(4) == [] and [i for i, _ in d.take()] == [0x24]  # COM1 goes on
    d.close()
