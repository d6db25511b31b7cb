"""Worker servicing in the hypervisor (hypervisor/servicing.py): the root-authorized
handover of a partition's device role to a new worker, and the accesses at the moment of
the pause — done by the old worker before its save, or by the new one after its restore;
never lost, never twice."""

from __future__ import annotations

import pytest

from proto import messages as m
from proto.status import HypervisorStatus
from tests.unit.hypervisor.fake_stack import COM1, REGS, ROOT, VGA, Stack, stamps, vp_id, worker_id

V10, V11 = vp_id(1, 0), vp_id(1, 1)
W1, NEW = worker_id(1), b"worker:1:new"


@pytest.fixture
def s(tmp_path) -> Stack:
    s = Stack(tmp_path)
    s.hello(ROOT, "root")
    assert s.partition() == 1
    s.send(W1, m.MemoryRequest(1)).one(W1, m.MemoryReply)  # the worker serves from now on
    return s


def service(s: Stack, action: str):
    return s.send(ROOT, m.ServiceRequest(1, action))


def io(s: Stack, vp: bytes, seq: int):
    return s.exit(vp, m.IoPortIntercept(seq, COM1, 1, False, 0, stamps(), REGS))


def start_new_worker(s: Stack, new: bytes = NEW) -> None:
    assert isinstance(s.hello(new, "worker", 1).one(new), m.HelloReply)
    assert s.send(new, m.InstallIntercept(((COM1, 8), (0x60, 1)), ((VGA, 0x8000),))).one(new, m.Ack)
    s.send(new, m.MemoryRequest(1)).one(new, m.MemoryReply)


def test_save_needs_a_paused_partition(s):
    assert service(s, "save").one(ROOT, m.ErrorReply).code == "OUT_OF_TURN"


def test_a_second_worker_hello_is_refused_unless_the_root_expects_one(s):
    assert s.hello(NEW, "worker", 1).one(NEW, m.ErrorReply).code == "CONFLICT"


def test_a_planned_handover_loses_no_access_and_does_none_twice(s):
    before = io(s, V10, 1).one(W1, m.PortNotify)  # forwarded before the pause
    s.send(ROOT, m.PartitionControl(1, "pause")).one(ROOT, m.Ack)
    save = service(s, "save").one(W1, m.DeviceSave)
    assert save.action == "save"
    # The worker answers in order: the earlier access first, then its save.
    s.send(W1, m.AccessComplete(before.ref, 0x41, stamps()))
    assert s.send(W1, m.WorkerQueryReply(save.ref, {"sequence": 1, "bytes": 10})).one(ROOT, m.WorkerQueryReply)
    held = io(s, V11, 2)  # after the save: held, the old worker sees nothing of it
    assert not held.to(W1)
    assert s.send(ROOT, m.InputRequest(1, "console", b"x")).one(ROOT, m.ErrorReply).code == "CONFLICT"
    service(s, "expect_worker").one(ROOT, m.Ack)
    assert service(s, "commit").one(ROOT, m.ErrorReply).code == "OUT_OF_TURN"  # not started yet
    start_new_worker(s)
    # The old connection is retired: nothing it sends reaches the partition.
    assert s.send(W1, m.AssertInterrupt(0x20, (1, 2))).one(W1, m.ErrorReply).code == "NOT_PERMITTED"
    sent = service(s, "commit")
    assert sent.one(ROOT, m.Ack)
    notify = sent.one(NEW, m.PortNotify)  # the held access, once, to the new worker
    assert not s.part(1).cpu.paused and s.part(1).worker == NEW and s.part(1).worker_handovers == 1
    assert s.part(1).port_owner[COM1] == NEW and s.part(1).mmio_owner(VGA) == NEW
    s.send(NEW, m.AccessComplete(notify.ref, 0x42, stamps()))
    assert not s.hv.forwarding.pending


def test_a_new_worker_with_other_ranges_is_refused(s):
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    s.hello(NEW, "worker", 1)
    err = s.send(NEW, m.InstallIntercept(((0x2F8, 8),), ())).one(NEW, m.ErrorReply)
    assert err.code == "CONFLICT"
    assert service(s, "commit").one(ROOT, m.ErrorReply).code == "OUT_OF_TURN"


def test_after_a_crash_the_uncompleted_access_goes_to_the_new_worker_under_its_ref(s):
    sent = io(s, V10, 1).one(W1, m.PortNotify)  # the worker dies without completing it
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    start_new_worker(s)
    again = service(s, "commit").one(NEW, m.PortNotify)
    assert again.ref == sent.ref and again.port == COM1
    resumed = s.send(NEW, m.AccessComplete(again.ref, 0x55, stamps())).to(V10)
    assert resumed and resumed[0].rax == 0x55


def test_after_a_crash_a_resent_interrupt_is_taken_once_whether_or_not_it_had_arrived(s):
    """The dead worker took two vectors (INTA) and saved them; the first reached the
    hypervisor, the second died with it in ZeroMQ's queue.  Its successor sends both again:
    the one that arrived is dropped, the lost one delivered — once (a resend of it after a
    second death is dropped in turn)."""
    from hypervisor.scheduler import VpState

    assert not s.exit(V10, m.HaltIntercept(5, stamps(), REGS))  # the guest waits for an interrupt
    woke = s.send(W1, m.AssertInterrupt(0x20, stamps(2), 7)).one(V10, m.VpResume)
    assert woke.interrupt == 0x20 and s.part(1).interrupt_seq == 7
    assert not s.exit(V10, m.HaltIntercept(6, stamps(), REGS))
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    start_new_worker(s)  # it serves from here, and resends first: before the root's commit
    assert not s.send(NEW, m.AssertInterrupt(0x20, stamps(2), 7, True)).to(V10)  # it had arrived
    assert s.hv.counters["interrupts_resent_dropped"] == 1
    assert not s.send(NEW, m.AssertInterrupt(0x2E, stamps(2), 8, True)).to(V10)  # paused: it waits
    assert s.hv.counters["interrupts_resent"] == 1
    lost = service(s, "commit").one(V10, m.VpResume)
    assert (lost.seq, lost.interrupt) == (6, 0x2E)
    assert not s.exit(V10, m.HaltIntercept(7, stamps(), REGS))
    assert not s.send(NEW, m.AssertInterrupt(0x2E, stamps(2), 8, True)).to(V10)
    assert s.hv.counters["interrupts_resent_dropped"] == 2
    # The successor's own interrupts go on from there; unnumbered ones are always taken.
    assert s.send(NEW, m.AssertInterrupt(0x20, stamps(2), 9)).one(V10, m.VpResume).interrupt == 0x20
    assert not s.exit(V10, m.HaltIntercept(8, stamps(), REGS))
    assert s.send(NEW, m.AssertInterrupt(0x21, stamps(2))).one(V10, m.VpResume).interrupt == 0x21
    assert s.part(1).interrupt_seq == 9


def test_a_numbered_reset_request_is_done_once_whether_resent_or_redone(s):
    """A restarted worker sends its predecessor's last reset again (resent), or pulses the
    line again with the same seq when it had to redo the access: the hypervisor resets
    the partition only for a seq above every one it has taken."""
    s.send(W1, m.ResetRequest("i8042 CPU reset", 3)).one(W1, m.DeviceReset)
    assert s.part(1).interrupt_seq == 3
    assert not s.send(W1, m.ResetRequest("i8042 CPU reset", 3, True)).to(W1)  # it had arrived
    assert not s.send(W1, m.ResetRequest("i8042 CPU reset", 2)).to(W1)  # redone: the same seq or older
    assert s.hv.counters["resets_dropped"] == 2 and s.hv.counters["resets_resent"] == 0
    s.send(W1, m.ResetRequest("i8042 CPU reset", 4, True)).one(W1, m.DeviceReset)  # lost with its worker
    assert s.hv.counters["resets_resent"] == 1
    assert not s.send(W1, m.AssertInterrupt(0x20, stamps(2), 4, True)).to(V10)  # one count for both pins
    s.send(W1, m.ResetRequest("i8042 CPU reset")).one(W1, m.DeviceReset)  # unnumbered: always done


def test_a_new_worker_gets_the_partition_reset_count_in_its_place_among_the_accesses(s):
    """A worker that died before taking a device_reset leaves a successor restored to the
    state before it: the commit sends the count (a worker takes each reset once) after the
    accesses whose exits came before the reset and before the others, and nothing for a
    partition never reset."""
    sent = io(s, V10, 1).one(W1, m.PortNotify)
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    start_new_worker(s)
    assert [type(x) for x in service(s, "commit").to(NEW)] == [m.PortNotify]  # never reset: no catch-up
    s.send(NEW, m.AccessComplete(sent.ref, 0x55, stamps()))
    before = io(s, V11, 1).one(NEW, m.PortNotify)  # pending at the worker when the reset comes
    s.send(NEW, m.ResetRequest("i8042 CPU reset", 1)).one(NEW, m.DeviceReset)
    assert s.part(1).resets == 1
    after = io(s, V10, 2).one(NEW, m.PortNotify)  # the rebooted guest's (its VP had not heard yet)
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    start_new_worker(s, b"worker-3")  # (the second handover: the dead worker took neither)
    got = service(s, "commit").to(b"worker-3")
    assert [(type(x), getattr(x, "ref", None), getattr(x, "resets", None)) for x in got] == [
        (m.PortNotify, before.ref, None), (m.DeviceReset, None, 1), (m.PortNotify, after.ref, None)]


def test_abort_thaws_the_old_worker_and_gives_it_the_held_accesses(s):
    s.send(ROOT, m.PartitionControl(1, "pause"))
    save = service(s, "save").one(W1, m.DeviceSave)
    s.send(W1, m.WorkerQueryReply(save.ref, {"sequence": 1}))
    assert not io(s, V10, 1).to(W1)
    sent = service(s, "abort")
    assert sent.one(ROOT, m.Ack)
    assert any(isinstance(x, m.DeviceSave) and x.action == "thaw" for x in sent.to(W1))
    assert sent.one(W1, m.PortNotify)


def test_an_abort_after_the_new_workers_hello_gives_the_partition_back_to_the_old_worker(s):
    """The rollback gap: the new worker said hello (the old one retired), then the service
    failed — abort must hand the partition back to the old worker, thawed, with its ranges."""
    s.send(ROOT, m.PartitionControl(1, "pause")).one(ROOT, m.Ack)
    save = service(s, "save").one(W1, m.DeviceSave)
    assert s.send(W1, m.WorkerQueryReply(save.ref, {"sequence": 1, "bytes": 10})).one(ROOT, m.WorkerQueryReply)
    held = io(s, V10, 1)
    assert not held.to(W1)
    service(s, "expect_worker").one(ROOT, m.Ack)
    assert isinstance(s.hello(NEW, "worker", 1).one(NEW), m.HelloReply)  # then it dies
    assert s.part(1).worker == NEW and s.part(1).previous_worker == W1
    sent = service(s, "abort")
    assert sent.one(ROOT, m.Ack)
    thaw = sent.one(W1, m.DeviceSave)
    assert thaw.action == "thaw"
    notify = sent.one(W1, m.PortNotify)  # the held access goes to the old worker, once
    # The thaw's answer goes nowhere: the root had its ack (a stray reply would be taken
    # for the answer to its next request).
    assert not s.send(W1, m.WorkerQueryReply(thaw.ref, {"thawed": 1})).to(ROOT)
    part = s.part(1)
    assert part.worker == W1 and part.previous_worker is None and part.worker_rollbacks == 1
    assert part.port_owner[COM1] == W1 and part.mmio_owner(VGA) == W1
    s.send(W1, m.AccessComplete(notify.ref, 0x41, stamps()))  # the old worker is heard again
    assert not s.hv.forwarding.pending
    # The new worker's connection is retired: nothing it sends reaches the partition.
    assert s.send(NEW, m.AssertInterrupt(0x20, (1, 2))).one(NEW, m.ErrorReply).code == "NOT_PERMITTED"
    # The hypervisor's status counts both.
    reply = s.send(ROOT, m.StatusRequest()).one(ROOT, m.StatusReply)
    status = HypervisorStatus.from_wire(reply.status).partition(1)
    assert (status.worker_handovers, status.worker_rollbacks) == (1, 1)


def test_string_accesses_cross_a_handover_whole_resent_and_held(s):
    """A REP OUTSB the dead worker never completed goes to the new one under its ref with
    its bytes; a REP INSB made during the handover is held, then sent once, whole."""
    outs = s.exit(V10, m.IoStringIntercept(1, COM1, 1, True, 3, b"abc", stamps(), REGS)).one(W1, m.PortStringNotify)
    s.send(ROOT, m.PartitionControl(1, "pause"))
    service(s, "expect_worker").one(ROOT, m.Ack)
    held = s.exit(V11, m.IoStringIntercept(2, COM1, 1, False, 4, b"", stamps(), REGS))
    assert not held.to(W1)
    start_new_worker(s)
    sent = service(s, "commit")
    again, ins = [msg for msg in sent.to(NEW) if isinstance(msg, m.PortStringNotify)]
    assert (again.ref, again.count, again.data) == (outs.ref, 3, b"abc")
    assert (ins.write, ins.count, ins.data) == (False, 4, b"")
    assert s.send(NEW, m.StringAccessComplete(again.ref, b"", stamps())).one(V10, m.VpResume).output == b""
    assert s.send(NEW, m.StringAccessComplete(ins.ref, b"wxyz", stamps())).one(V11, m.VpResume).output == b"wxyz"
    assert not s.hv.forwarding.pending
