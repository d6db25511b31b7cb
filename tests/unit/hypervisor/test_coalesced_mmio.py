"""Coalesced MMIO in the hypervisor (hypervisor/coalesced_mmio.py): a worker's zones, a VP's
query, and batches — good ones forwarded unchanged, hostile ones refused whole with a typed
error and nothing else affected."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.coalesced_mmio_messages import COALESCED_MMIO_MAX
from proto.errors import InvalidField
from hypervisor.coalesced_mmio import CoalescedMmioRefused, check_batch
from tests.unit.hypervisor.fake_stack import COM1, REGS, VGA, stamps, vp_id, worker_id

V10, V11, V20 = vp_id(1, 0), vp_id(1, 1), vp_id(2, 0)
W1, W2 = worker_id(1), worker_id(2)
ZONE = ((VGA, 0x8000),)


@pytest.fixture
def zoned(two):
    """Partition 1's worker registered the VGA buffer as coalesced; partition 2's did not."""
    assert two.send(W1, m.CoalescedMmioRegister(ZONE)).one(W1, m.Ack)
    return two


def batch(vp: int = 0, *writes) -> m.CoalescedMmioBatch:
    return m.CoalescedMmioBatch(vp, writes or ((VGA, 8, 0x0720072007200720), (VGA + 8, 2, 0x0741)))


def test_a_vp_learns_its_partitions_zones_and_none_before_they_are_registered(two):
    assert two.send(V10, m.CoalescedMmioQuery(5)).one(V10, m.CoalescedMmioZones).zones == ()
    two.send(W1, m.CoalescedMmioRegister(ZONE)).one(W1, m.Ack)
    reply = two.send(V11, m.CoalescedMmioQuery(6)).one(V11, m.CoalescedMmioZones)
    assert (reply.seq, reply.zones) == (6, ZONE)
    assert two.send(V20, m.CoalescedMmioQuery(7)).one(V20, m.CoalescedMmioZones).zones == ()


def test_a_good_batch_goes_to_the_worker_unchanged_and_is_counted(zoned):
    sent = zoned.send(V10, batch())
    assert sent.one(W1, m.CoalescedMmioBatch) == batch() and not sent.to(V10)
    counts = zoned.hv.status().partition(1).coalesced_mmio
    assert (counts["writes"], counts["batches"], counts["refused"]) == (2, 1, 0)


def test_the_batch_reaches_the_worker_before_the_exit_that_follows_it(zoned):
    zoned.router.inbox.append((V10, batch().encode()))
    zoned.router.inbox.append((V10, m.IoPortIntercept(9, COM1, 1, True, 0x41, stamps(), REGS).encode()))
    to_worker = zoned.run().to(W1)
    assert [type(x) for x in to_worker] == [m.CoalescedMmioBatch, m.PortNotify]


@pytest.mark.parametrize("writes, code", [
    (((VGA - 2, 4, 0),), "NOT_PERMITTED"),  # straddles the zone's start
    (((VGA + 0x7FFC, 8, 0),), "NOT_PERMITTED"),  # runs past its end
    (((0xFEE000B0, 4, 0),), "NOT_PERMITTED"),  # the local APIC's EOI register
    (((0, 8, 0),), "NOT_PERMITTED"),  # guest RAM
    (((VGA, 8, 0), (0x3F8, 1, 0x41)), "NOT_PERMITTED"),  # one bad write spoils the batch
], ids=["straddles", "past-end", "apic", "ram", "one-bad"])
def test_a_write_outside_the_zones_refuses_the_whole_batch(zoned, writes, code):
    sent = zoned.send(V10, batch(0, *writes))
    err = sent.one(V10, m.ErrorReply)
    assert (err.code, err.ref_type) == (code, m.CoalescedMmioBatch.TYPE)
    assert not sent.to(W1)  # nothing of it reaches the worker
    assert zoned.hv.status().partition(1).coalesced_mmio["refused"] == 1
    # Nothing else affected: the VP still exits and is resumed, good batches still go.
    assert zoned.send(V10, batch()).one(W1, m.CoalescedMmioBatch)
    notify = zoned.exit(V10, m.IoPortIntercept(11, COM1, 1, True, 0x41, stamps(), REGS)).one(W1, m.PortNotify)
    r = zoned.send(W1, m.AccessComplete(notify.ref, 0, notify.stamps + stamps(2))).one(V10, m.VpResume)
    assert r.seq == 11 and zoned.hv.counters["handler_errors"] == 0


def test_a_batch_naming_another_vp_or_a_partition_without_zones_is_refused(zoned):
    sent = zoned.send(V10, batch(1))
    assert sent.one(V10, m.ErrorReply).code == "UNKNOWN_VP" and not sent.to(W1)
    sent = zoned.send(V20, batch(0))
    assert sent.one(V20, m.ErrorReply).code == "OUT_OF_TURN" and not sent.to(W2)  # partition 2 has none


@pytest.mark.parametrize("writes", [
    [[VGA, 3, 0]],  # not an MMIO size
    [[VGA, 1, 256]],  # value wider than the store
    [[VGA, 8, -1]],
    [[VGA, 8]],  # not a triple
    [["0xb8000", 8, 0]],
    [[(1 << 52) - 4, 8, 0]],  # past guest-physical space
    [[VGA, 8, 0]] * (COALESCED_MMIO_MAX + 1),  # longer than the ring
], ids=["size", "wide", "negative", "pair", "string", "gpa", "too-many"])
def test_a_malformed_batch_is_refused_by_its_field_check(two, writes):
    with pytest.raises(InvalidField, match="writes"):
        m.decode(msgpack.packb([m.CoalescedMmioBatch.TYPE, 0, writes]))
    sent = two.raw(V10, msgpack.packb([m.CoalescedMmioBatch.TYPE, 0, writes]))
    assert sent.one(V10, m.ErrorReply).code == "INVALID_FIELD" and not sent.to(worker_id(1))


def test_only_a_vp_sends_batches_and_only_a_worker_registers_zones(two):
    assert two.send(W1, batch()).one(W1, m.ErrorReply).code == "NOT_PERMITTED"
    assert two.send(V10, m.CoalescedMmioRegister(ZONE)).one(V10, m.ErrorReply).code == "NOT_PERMITTED"


def test_a_worker_may_register_only_inside_its_claimed_mmio_and_once(two):
    err = two.send(W1, m.CoalescedMmioRegister(((0xA0000, 0x20000),))).one(W1, m.ErrorReply)
    assert err.code == "NOT_PERMITTED"
    assert two.send(W1, m.CoalescedMmioRegister(((VGA, 0x1000),))).one(W1, m.Ack)
    assert two.send(W1, m.CoalescedMmioRegister(((VGA, 0x1000),))).one(W1, m.Ack)  # the same again: a successor
    assert two.send(W1, m.CoalescedMmioRegister(ZONE)).one(W1, m.ErrorReply).code == "CONFLICT"
    assert two.part(1).coalesced_zones == [(VGA, VGA + 0x1000)]


def test_check_batch_is_a_typed_refusal():
    with pytest.raises(CoalescedMmioRefused) as e:
        check_batch([(VGA, VGA + 0x8000)], [(VGA + 0x7FFF, 2, 0)])
    assert e.value.code == "NOT_PERMITTED"
    check_batch([(VGA, VGA + 0x8000)], [(VGA + 0x7FFE, 2, 0), (VGA, 1, 0)])


def test_a_vp_waiting_in_an_exit_or_halted_may_not_send_a_batch(zoned):
    zoned.exit(V10, m.IoPortIntercept(21, COM1, 1, True, 0x41, stamps(), REGS)).one(W1, m.PortNotify)
    sent = zoned.send(V10, batch())  # its exit is not complete: it executes nothing
    assert sent.one(V10, m.ErrorReply).code == "OUT_OF_TURN" and not sent.to(W1)
    zoned.exit(V11, m.HaltIntercept(22, stamps(), REGS))
    sent = zoned.send(V11, batch(1))
    assert sent.one(V11, m.ErrorReply).code == "OUT_OF_TURN" and not sent.to(W1)
    assert zoned.hv.status().partition(1).coalesced_mmio["refused"] == 2


def test_a_batch_while_the_partition_has_no_worker_is_lost_without_an_error(zoned):
    """Between a worker's death and its successor's hello the guest did nothing wrong: an
    error back would reach a VP waiting for its exit's answer (one died of it after a worker
    restart). The stores are counted undelivered."""
    zoned.part(1).worker = None
    sent = zoned.send(V10, batch())
    assert not sent.to(V10) and not sent.to(W1)
    counts = zoned.hv.status().partition(1).coalesced_mmio
    assert (counts["undelivered"], counts["refused"]) == (1, 0)
