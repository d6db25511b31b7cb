"""The guest's VMBus and storvsc drivers against the real server and storvsp, in one
process: a stand-in VP whose hypercalls reach the server and whose SynIC (SIM slot 2, SIEF
flags, SINT 2 interrupts) is simulated here as the contract describes it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from proto.codes import HvPrivilege
from worker.devices.backends import MemoryDisk

from partitions import vmbus_disk
from partitions.drivers import storvsc
from partitions.drivers import vmbus as guest_vmbus
from root.vsp.server import VmbusServer
from root.vsp.storvsp import StorVsp
from tests.unit.vsp.support import FakeMemory, SimVp, guest_system


def system(vp):
    return guest_system(int(guest_vmbus.NEEDED))


@pytest.fixture
def stack():
    mem = FakeMemory(pages=2048)  # 8 MiB
    server = VmbusServer(None)
    vp = SimVp(server, mem)
    server.hv = vp
    disk = MemoryDisk(64 << 20)
    server.add_partition(1, mem, [StorVsp(disk)])
    return vp, server, disk


def test_bring_up_and_verified_rounds(stack):
    vp, server, disk = stack
    sys = system(vp)
    for rnd in range(4):
        sys.timers["vmbus_disk"] = 0.0
        assert vmbus_disk.wl_vmbus_disk(vp, sys) == vmbus_disk.QUEUE_DEPTH
    assert "vmbus: version 5.2, 1 offer(s)" in sys.lines[0] and "64 MiB" in sys.lines[1]
    assert [("verified" in line) for line in sys.lines[2:]] == [True] * 4
    assert server.status()[1]["errors"] == {}
    st = server.partitions[1].offers[1].device.stats
    assert st.flushes == 4 and st.writes == 32 and st.reads == 32
    # the data is on the image: round 2 wrote 64 KiB patterns sequentially
    assert b"t vmbus round 000002" in bytes(disk.data[:8 << 20])


def test_bench_phases_signal_rarely(stack):
    vp, server, _ = stack
    sys = system(vp)
    vmbus_disk.wl_vmbus_diskbench(vp, sys)
    c = vp.counters
    assert c["vmbus_qd8_requests"] == vmbus_disk.BENCH_QD8
    # one guest signal per batch of 8 and one host interrupt per batch: 0.25 per request
    per_request = (c["vmbus_qd8_guest_signals"] + c["vmbus_qd8_host_interrupts"]) / c["vmbus_qd8_requests"]
    assert per_request <= 0.26
    assert c["vmbus_qd1_guest_signals"] >= vmbus_disk.BENCH_QD1
    assert "MB/s" in sys.lines[-1] or "ATA" in sys.lines[-1]


@pytest.mark.parametrize("spin_ns", [storvsc.SPIN_NS, 0])
def test_storvsc_polls_its_ring_masked_before_halting(stack, monkeypatch, spin_ns):
    """In poll mode the VSP handles a batch without a signal; the driver, looking at its
    ring with interrupt_mask set, finds the completions without halting and without the
    VSP's signal (only the first batch, before poll mode, is signalled both ways).  With
    no time to poll it halts for the interrupt as before.  The mask is clear afterwards."""
    monkeypatch.setattr(storvsc, "SPIN_NS", spin_ns)
    vp, server, _ = stack
    vmbus_disk.wl_vmbus_diskbench(vp, system(vp))
    c = vp.counters
    if spin_ns:
        assert c["vmbus_qd8_halts"] == 0 and c["vmbus_qd8_host_interrupts"] <= 1
    else:
        assert c["vmbus_qd8_halts"] >= vmbus_disk.BENCH_QD8 // vmbus_disk.QUEUE_DEPTH
    ch = server.partitions[1].offers[1].channel
    assert ch.to_guest.interrupt_mask == 0


def test_suppression_off_signals_every_write(stack):
    vp, server, _ = stack
    server.partitions[1].suppress = False
    sys = system(vp)
    sys.vmbus_config = {"signal_suppression": False}
    vmbus_disk.wl_vmbus_diskbench(vp, sys)
    c = vp.counters
    assert c["vmbus_qd8_guest_signals"] == vmbus_disk.BENCH_QD8 // vmbus_disk.QUEUE_DEPTH + 1  # + the flush


def test_not_offered_says_so():
    sys = SimpleNamespace(name="t", timers={}, booted_generation=1, lines=[],
                          hv=SimpleNamespace(hypercalls=True, privileges=int(HvPrivilege.AccessSynicMsrs)))
    sys.console = lambda v, line: sys.lines.append(line)
    vp = SimpleNamespace(index=0)
    assert vmbus_disk.wl_vmbus_disk(vp, sys) == 0
    assert "not offered" in sys.lines[0]
