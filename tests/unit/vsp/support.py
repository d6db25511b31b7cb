"""An in-process VMBus for the server and storvsp tests: guest memory, a recording
hypervisor, and the guest's half of a channel (its GPADL and rings)."""

from __future__ import annotations

import struct

from proto import vmbus as vb
from proto.memory import PAGE_SIZE, UnmappedGpa
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import PagedView, Ring
from worker.devices.backends import MemoryDisk

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
