"""The guest's VMBus and storvsc drivers against the real server and storvsp, in one
process: a stand-in VP whose hypercalls reach the server and whose SynIC (SIM slot 2, SIEF
flags, SINT 2 interrupts) is simulated here as the contract describes it."""

from __future__ import annotations

import struct
import threading
from collections import deque
from types import SimpleNamespace

import pytest

from proto import vmbus as vb
from proto.codes import HvMsr, HvPrivilege, HvStatus, HypercallCode
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from worker.devices.backends import MemoryDisk

from partitions import vmbus_disk
from partitions.drivers import synic
from partitions.drivers import vmbus as guest_vmbus
from root.vsp.server import VmbusServer
from root.vsp.storvsp import StorVsp
from tests.unit.vsp.support import FakeMemory


class SimVp:
    """One VP of partition 1 with just enough SynIC for the VMBus driver."""

    def __init__(self, server: VmbusServer, mem: FakeMemory) -> None:
        self.server, self.mem, self.index = server, mem, 0
        self.handlers, self.msrs, self.exits = {}, {}, 0
        self.counters = {}
        self.queue: deque[bytes] = deque()
        self.irq = False
        self.bus_lock = threading.Lock()
        self.hypercalls = {"post": 0, "signal": 0}

    # the hypervisor's side (the server's Hypervisor protocol)
    def post(self, partition, vp, sint, payload):
        self.queue.append(payload)
        self._deliver()
        return True

    def signal(self, partition, vp, sint, flag):
        sief = self.msrs[HvMsr.HV_X64_MSR_SIEFP] & ~0xFFF
        byte = sief + sint * 256 + flag // 8
        old = self.mem.read(byte, 1)[0]
        self.mem.write(byte, bytes([old | 1 << (flag % 8)]))
        if not old & 1 << (flag % 8):
            self.irq = True

    def map_gpas(self, partition, pfns):
        return all(p < self.mem.pages for p in pfns)

    def _deliver(self):
        simp = self.msrs[HvMsr.HV_X64_MSR_SIMP] & ~0xFFF
        slot = simp + 2 * 256
        if not self.queue:
            return
        if struct.unpack_from("<I", self.mem.read(slot, 4))[0]:
            self.mem.write(slot + 5, b"\x01")  # MessagePending
            return
        p = self.queue.popleft()
        self.mem.write(slot, struct.pack("<IBBHQ", 1, len(p), 1 if self.queue else 0, 0, 0) + p)
        self.irq = True

    # the guest's instructions
    def wrmsr(self, msr, value):
        self.exits += 1
        self.msrs[msr] = value
        if msr == HvMsr.HV_X64_MSR_EOM:
            self._deliver()

    def hypercall(self, code, data=b"", fast=False):
        self.exits += 1
        if code == HypercallCode.HvCallPostMessage:
            self.hypercalls["post"] += 1
            conn, _, mtype, size = HV_INPUT_POST_MESSAGE.unpack_from(data)
            self.server.on_message(1, 0, conn, data[16:16 + size])
        elif code == HypercallCode.HvCallSignalEvent:
            self.hypercalls["signal"] += 1
            conn, flag, _ = HV_INPUT_SIGNAL_EVENT.unpack_from(data)
            self.server.on_event(1, conn)
        return HvStatus.HV_STATUS_SUCCESS, 0, b""

    def read(self, gpa, size):
        return int.from_bytes(self.mem.read(gpa, size), "little")

    def write(self, gpa, size, value):
        if gpa >= 0xFEE00000:
            self.msrs["apic", gpa] = value  # MMIO: the local APIC
            return
        self.mem.write(gpa, value.to_bytes(size, "little"))

    def write_bytes(self, gpa, data):
        self.mem.write(gpa, data)

    def btr(self, gpa, bit):
        b = self.mem.read(gpa + bit // 8, 1)[0]
        self.mem.write(gpa + bit // 8, bytes([b & ~(1 << bit % 8) & 0xFF]))
        return bool(b & 1 << bit % 8)

    def set_handler(self, vector, fn):
        self.handlers[vector] = fn

    def sti(self):
        pass

    def hlt(self):
        self.exits += 1
        self.server.poll_busy()  # the VSP's loop runs while the VP is halted
        if not self.irq:
            raise AssertionError("HLT with nothing to wake the VP: the driver would sleep until a tick")
        self.irq = False
        vector = synic.SINT_VECTOR_BASE + vb.VMBUS_MESSAGE_SINT
        self.handlers[vector](self, vector)


def system(vp):
    sys = SimpleNamespace(name="t", timers={}, booted_generation=1, lines=[], synic=synic.SynicState(),
                          hv=SimpleNamespace(hypercalls=True, privileges=int(guest_vmbus.NEEDED)))
    sys.console = lambda v, line: sys.lines.append(line)
    return sys


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
    assert "vmbus: version 5.2" in sys.lines[0] and "64 MiB" in sys.lines[0]
    assert [("verified" in line) for line in sys.lines[1:]] == [True] * 4
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
