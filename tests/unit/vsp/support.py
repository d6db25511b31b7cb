"""An in-process VMBus for the server and storvsp tests: guest memory, a recording
hypervisor, and the guest's half of a channel (its GPADL and rings)."""

from __future__ import annotations

import struct
import threading
from collections import deque
from types import SimpleNamespace

from proto import vmbus as vb
from proto.codes import HvMsr, HvStatus, HypercallCode
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from proto.memory import PAGE_SIZE, UnmappedGpa
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import PagedView, Ring
from worker.devices.backends import MemoryDisk

from partitions.drivers import synic
from root.vsp.memory import PartitionMemory, ReadOnlyGpa
from root.vsp.server import VmbusServer
from root.vsp.storvsp import StorVsp


class FakeMemory:
    """Guest RAM of ``pages`` pages; anything past it is not mapped."""

    def __init__(self, pages: int = 256) -> None:
        self.b = bytearray(pages * PAGE_SIZE)
        self.pages = pages

    def _check(self, gpa: int, n: int) -> None:
        if gpa < 0 or gpa + n > len(self.b):
            raise UnmappedGpa(gpa)

    def read(self, gpa: int, n: int) -> bytes:
        self._check(gpa, n)
        return bytes(self.b[gpa:gpa + n])

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        self.b[gpa:gpa + len(data)] = data

    def check_runs(self, runs) -> None:
        for gpa, n in runs:
            self._check(gpa, n)

    def read_runs(self, runs) -> bytes:
        self.check_runs(runs)
        return b"".join(bytes(self.b[gpa:gpa + n]) for gpa, n in runs)

    def write_runs(self, runs, data) -> None:
        self.check_runs(runs)
        at = 0
        for gpa, n in runs:
            self.b[gpa:gpa + n] = data[at:at + n]
            at += n

    def fetch_and_u8(self, gpa: int, mask: int) -> int:
        self._check(gpa, 1)
        old = self.b[gpa]
        self.b[gpa] = old & mask
        return old

    # the VSP's view (root/vsp/memory.py's interface): only pages mapped, and only in range
    def map(self, pfns, writable: bool = True):
        for p in pfns:
            self._check(p * PAGE_SIZE, PAGE_SIZE)
        self.mapped_pages = getattr(self, "mapped_pages", 0) + len(set(pfns))
        return FakeMapping(self, pfns, writable)

    mapped = PartitionMemory.mapped  # the same context manager over this map()


class FakeMapping:
    def __init__(self, mem: FakeMemory, pfns, writable: bool = True) -> None:
        self.mem, self.pfns, self.writable = mem, set(pfns), writable

    def _check(self, gpa: int, n: int) -> None:
        for page in range(gpa // PAGE_SIZE, (gpa + max(n, 1) - 1) // PAGE_SIZE + 1):
            if page not in self.pfns:
                raise UnmappedGpa(page * PAGE_SIZE)

    def read(self, gpa: int, n: int) -> bytes:
        self._check(gpa, n)
        return self.mem.read(gpa, n)

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data))
        if not self.writable:
            raise ReadOnlyGpa(gpa)
        self.mem.write(gpa, data)

    def close(self) -> None:
        if self.pfns:
            self.mem.mapped_pages -= len(self.pfns)
        self.pfns = set()


class FakeHv:
    def __init__(self, mems: dict) -> None:
        self.mems = mems
        self.posts: list[tuple[int, int, int, bytes]] = []
        self.signals: list[tuple[int, int, int, int]] = []

    def post(self, partition, vp, sint, payload) -> bool:
        self.posts.append((partition, vp, sint, payload))
        return True

    def signal(self, partition, vp, sint, flag) -> None:
        self.signals.append((partition, vp, sint, flag))

    def map_gpas(self, partition, pfns) -> bool:
        return all(p < self.mems[partition].pages for p in pfns)

    def take(self, partition: int | None = None) -> list[tuple[Msg, bytes]]:
        out = [vb.split(p[3]) for p in self.posts if partition is None or p[0] == partition]
        self.posts = [p for p in self.posts if partition is not None and p[0] != partition]
        return out


def contact(server: VmbusServer, partition: int, version=vb.VERSION_WIN10_V5, vp=0):
    body = vb.INITIATE_CONTACT.pack(version, vp, vb.VMBUS_MESSAGE_SINT, 0, 0)
    server.on_message(partition, vp, vb.VMBUS_MESSAGE_CONNECTION_ID_4,
                      vb.encode(Msg.CHANNELMSG_INITIATE_CONTACT, body))


def send(server, partition, msgtype, body=b""):
    server.on_message(partition, 0, vb.VMBUS_MESSAGE_CONNECTION_ID_4, vb.encode(msgtype, body))


class GuestChannel:
    """The guest's side of one channel: ring pages at ``base_page``, its GPADL, its rings."""

    def __init__(self, mem: FakeMemory, base_page: int, ring_pages: int = 4) -> None:
        self.pfns = list(range(base_page, base_page + 2 * ring_pages))
        self.offset = ring_pages
        self.to_host = Ring(PagedView(mem, [p * PAGE_SIZE for p in self.pfns[:ring_pages]]))
        self.to_guest = Ring(PagedView(mem, [p * PAGE_SIZE for p in self.pfns[ring_pages:]]))
        self.to_host.init()
        self.to_guest.init()


def open_channel(server, hv, partition, mem, relid=1, gpadl=0xE1E10, base_page=16, ring_pages=4):
    ch = GuestChannel(mem, base_page, ring_pages)
    for msg in vb.gpadl_messages(relid, gpadl, ch.pfns):
        server.on_message(partition, 0, vb.VMBUS_MESSAGE_CONNECTION_ID_4, msg)
    send(server, partition, Msg.CHANNELMSG_OPENCHANNEL,
         vb.OPEN_CHANNEL.pack(relid, relid, gpadl, 0, ch.offset, bytes(120)))
    return ch


def storage_bus(partitions=(1,), disk_bytes=1 << 20):
    mems = {p: FakeMemory() for p in partitions}
    hv = FakeHv(mems)
    server = VmbusServer(hv)
    disks = {}
    for p in partitions:
        disks[p] = MemoryDisk(disk_bytes)
        server.add_partition(p, mems[p], [StorVsp(disks[p])])
    return server, hv, mems, disks


def u32s(body: bytes, n: int) -> tuple:
    return struct.unpack_from(f"<{n}I", body)


# -- a guest in the same process: the real guest drivers against the real server -------------


class SimVp:
    """VP 0 of a partition with just enough SynIC for the VMBus driver; it is also the
    server's Hypervisor for its partition (see Hypervisors)."""

    def __init__(self, server, mem: FakeMemory, partition: int = 1) -> None:
        self.server, self.mem, self.index, self.partition = server, mem, 0, partition
        self.on_idle = None  # what else runs while this VP is halted (another partition's guest)
        self.ticks = False  # True: a HLT with nothing pending ends at a timer tick (else it is a bug)
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
            self.server.on_message(self.partition, 0, conn, data[16:16 + size])
        elif code == HypercallCode.HvCallSignalEvent:
            self.hypercalls["signal"] += 1
            conn, flag, _ = HV_INPUT_SIGNAL_EVENT.unpack_from(data)
            self.server.on_event(self.partition, conn)
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

    def pause(self):
        self.server.poll_busy()  # (the VSP's loop runs while the VP spins)

    def hlt(self):
        self.exits += 1
        self.server.poll_busy()  # the VSP's loop runs while the VP is halted
        if self.on_idle is not None:
            self.on_idle()
        if not self.irq and self.ticks:
            return  # the timer tick woke it
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



class Hypervisors:
    """The server's Hypervisor for several SimVps: each call goes to its partition's."""

    def __init__(self, vps: dict) -> None:
        self.vps = vps

    def post(self, partition, vp, sint, payload):
        return self.vps[partition].post(partition, vp, sint, payload)

    def signal(self, partition, vp, sint, flag):
        self.vps[partition].signal(partition, vp, sint, flag)

    def map_gpas(self, partition, pfns):
        return self.vps[partition].map_gpas(partition, pfns)


def guest_system(privileges: int):
    sys = SimpleNamespace(name="t", timers={}, booted_generation=1, lines=[], synic=synic.SynicState(),
                          hv=SimpleNamespace(hypercalls=True, privileges=privileges))
    sys.console = lambda v, line: sys.lines.append(line)
    return sys
