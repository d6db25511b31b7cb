"""The partition's coalesced MMIO ring (partitions/coalesced.py): stores to a coalesced
zone make no exit and go out as one batch just before the next exit, of any VP of the
partition, in order; a full ring goes out at once; other MMIO still exits."""

from __future__ import annotations

import threading

from proto import messages as m
from proto.coalesced_mmio_messages import COALESCED_MMIO_MAX
from proto.memory import UnmappedGpa
from partitions import vp as vpmod
from partitions.coalesced import CoalescedRing
from partitions.vp import Vp
from tests.unit.partitions.test_vp_preemption_point import Dealer

VGA = 0xB8000


class NoRam:
    """Nothing is RAM: every access is MMIO."""

    def is_mapped(self, gpa: int, size: int) -> bool:
        return False

    def read_int(self, gpa: int, size: int) -> int:
        raise UnmappedGpa(gpa)


class Answering(Dealer):
    """Answers a zones query with the VGA buffer and every exit with its resume."""

    def send(self, frame: bytes) -> None:
        msg = m.decode(frame)
        self.sent.append(msg)
        if isinstance(msg, m.CoalescedMmioQuery):
            self.inbox.append(m.CoalescedMmioZones(msg.seq, ((VGA, 0x8000),)).encode())
        elif hasattr(msg, "seq") and hasattr(msg, "stamps"):
            self.inbox.append(m.VpResume(msg.seq, 0, 0, 0, 0, 0, b"", (), 0, (), 0, 0, 0).encode())


def vps(n: int = 2):
    ring, dealers, out = CoalescedRing(), [], []
    for i in range(n):
        d = Answering()
        v = Vp(d, i, NoRam(), threading.Event(), coalesced=ring)
        v._quantum_end = vpmod.NEVER
        dealers.append(d)
        out.append(v)
    return ring, dealers, out


def kinds(d) -> list[str]:
    return [x.NAME for x in d.sent]


def test_stores_to_the_zone_make_no_exit_and_go_out_before_the_next_exit():
    ring, (d, _), (v, _) = vps()
    v.write_bytes(VGA, bytes(160))  # one 80-column row: 20 stores of 8 bytes
    assert kinds(d) == ["coalesced_mmio_query"]  # asked once; no exit
    assert v.counters["coalesced_mmio_writes"] == 20
    v.outb(0x3D4, 0x0E)
    assert kinds(d) == ["coalesced_mmio_query", "coalesced_mmio_batch", "io_port_intercept"]
    b = d.sent[1]
    assert b.vp == 0 and [w[0] for w in b.writes] == [VGA + 8 * i for i in range(20)]
    assert not ring.writes


def test_another_vps_exit_carries_the_partitions_stores_first():
    ring, (d0, d1), (v0, v1) = vps()
    v0.write(VGA, 2, 0x0741)
    v1.cpuid(1)
    assert kinds(d1)[-2:] == ["coalesced_mmio_batch", "cpuid_intercept"]
    assert d1.sent[-2].vp == 1 and d1.sent[-2].writes == ((VGA, 2, 0x0741),)


def test_a_read_of_the_zone_and_a_store_outside_it_still_exit_after_the_batch():
    ring, (d, _), (v, _) = vps()
    v.write(VGA, 4, 0x07420741)
    v.read(VGA, 4)
    v.write(0xA0000, 1, 1)
    assert kinds(d) == ["coalesced_mmio_query", "coalesced_mmio_batch", "mmio_intercept", "mmio_intercept"]


def test_a_full_ring_goes_out_at_once():
    ring, (d, _), (v, _) = vps()
    for i in range(COALESCED_MMIO_MAX + 3):
        v.write(VGA + 2 * i, 2, i)
    batches = [x for x in d.sent if isinstance(x, m.CoalescedMmioBatch)]
    assert [len(b.writes) for b in batches] == [COALESCED_MMIO_MAX] and len(ring.writes) == 3
    v.hlt()
    assert [len(b.writes) for b in d.sent if isinstance(b, m.CoalescedMmioBatch)] == [COALESCED_MMIO_MAX, 3]
    assert ring.sent_writes == COALESCED_MMIO_MAX + 3


def test_without_zones_every_store_exits():
    d = Dealer()
    d.send = lambda frame: (d.sent.append(m.decode(frame)), d.inbox.append(
        m.CoalescedMmioZones(m.decode(frame).seq, ()).encode() if m.decode(frame).NAME == "coalesced_mmio_query"
        else m.VpResume(m.decode(frame).seq, 0, 0, 0, 0, 0, b"", (), 0, (), 0, 0, 0).encode()))
    v = Vp(d, 0, NoRam(), threading.Event())
    v._quantum_end = vpmod.NEVER
    v.write(VGA, 2, 1)
    v.write(VGA, 2, 2)
    assert kinds(d) == ["coalesced_mmio_query", "mmio_intercept", "mmio_intercept"]


def test_a_refused_batch_is_counted_wherever_the_vp_reads_it_and_the_vp_goes_on():
    """A full ring goes out while the VP runs guest code, so its refusal may reach the VP at a
    preemption point as well as in an exit's wait: either way it is no answer to anything the
    VP waits for (an exit's wait once took it for its answer and the VP died)."""
    ring, (d, _), (v, _) = vps()
    refused = m.ErrorReply(m.CoalescedMmioBatch.TYPE, "OUT_OF_TURN", "not executing").encode()
    d.inbox.append(refused)
    v._next_check = 0
    v.preemption_point()  # read there: counted, not raised
    d.inbox.append(refused)
    v.cpuid(0)  # read while the exit waits for its resume: the exit still completes
    assert v.counters["coalesced_refused"] == 2
