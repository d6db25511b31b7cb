"""The guest's VMBus driver (Linux drivers/hv/vmbus_drv.c, connection.c, channel_mgmt.c in
miniature): SynIC set-up, the connect handshake, offers, GPADLs and channel opening.

Only where the partition is offered the SynIC (its CPUID privileges: the SynIC MSRs,
PostMessages, SignalEvents, and the hypercall page).  The SynIC driver
(partitions/drivers/synic.py) sets up the SIM and SIEF pages and SINT 2 and hands this
driver SINT 2's messages; the rings live in guest RAM above 2 MiB, which no other
workload touches.

Messages go to the root with HvCallPostMessage (retried on INSUFFICIENT_BUFFERS, as Linux's
``vmbus_post_msg`` does); a channel's ring writes signal the root with HvCallSignalEvent
(fast) only when the ring was empty and the root is not masking; the root's completions
come back through the ring with an event flag on SINT 2 (flag = relid) when the ring was
empty.  A waiting driver reads its ring and, when nothing is there, halts until the next
interrupt.
"""

from __future__ import annotations

import time
from collections import deque

from proto import vmbus as vb
from proto.codes import HvPrivilege, HvStatus, HypercallCode
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import PagedView, Ring

from partitions.drivers import synic
from partitions.vp import Vp

RING_AREA = 0x210000  # each channel's GPADL: RING_PAGES pages per direction
RING_PAGES = 16  # a header page and 60 KiB of data per direction
NEEDED = HvPrivilege.AccessSynicMsrs | HvPrivilege.PostMessages | HvPrivilege.SignalEvents
VERSIONS = (vb.VERSION_WIN10_V5_2, vb.VERSION_WIN10_V5, vb.VERSION_WIN10)  # tried in order
TIMEOUT_S = 10.0
POST_RETRIES = 100
FIRST_GPADL = 0xE1E10  # Linux's first GPADL handle


class VmbusError(Exception):
    pass


def offered(sys) -> bool:
    """Whether the partition may use VMBus: the SynIC and its two hypercalls are offered."""
    return bool(sys.hv.hypercalls and sys.hv.privileges & NEEDED == NEEDED)


class Channel:
    """An open channel as its driver uses it: rings, signal, and the counters the
    measurements need."""

    def __init__(self, bus: "Vmbus", relid: int, connection_id: int, to_host: Ring, to_guest: Ring) -> None:
        self.bus, self.relid, self.connection_id = bus, relid, connection_id
        self.to_host, self.to_guest = to_host, to_guest
        self.signals_sent = 0  # HvCallSignalEvent to the root
        self.writes = 0

    def send(self, vp: Vp, packets: list[bytes]) -> None:
        if self.to_host.write(packets):
            self.signals_sent += 1
            status, _, _ = vp.hypercall(HypercallCode.HvCallSignalEvent,
                                        HV_INPUT_SIGNAL_EVENT.pack(self.connection_id, 0, 0), fast=True)
            if status != HvStatus.HV_STATUS_SUCCESS:
                raise VmbusError(f"HvCallSignalEvent: {status.name}")
        self.writes += 1

    def receive(self, vp: Vp) -> list:
        packets, wake_writer = self.to_guest.read()
        if wake_writer:
            vp.hypercall(HypercallCode.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(self.connection_id, 0, 0),
                         fast=True)
        return packets


class Vmbus:
    def __init__(self) -> None:
        self.messages: deque[tuple[Msg, bytes]] = deque()
        self.interrupts = 0
        self.version = 0
        self.connection_id = vb.VMBUS_MESSAGE_CONNECTION_ID_4
        self.offers: list[dict] = []
        self.next_gpadl = FIRST_GPADL
        self.next_ring_gpa = RING_AREA
        self.rescinded: set[int] = set()
        self.channel_isrs: dict[int, object] = {}  # relid → fn(vp): its event flag was set

    # -- SynIC (partitions/drivers/synic.py sets it up and takes SINT 2's messages out) ------

    def init_synic(self, vp: Vp, sys) -> None:
        if not synic.setup(vp, sys):
            raise VmbusError("the SynIC is not offered")
        synic.on_message(sys, vb.VMBUS_MESSAGE_SINT, self._on_message)
        synic.on_events(sys, vb.VMBUS_MESSAGE_SINT, self._on_events)

    def _on_message(self, vp: Vp, message_type: int, payload: bytes) -> None:
        if message_type == vb.VMBUS_MESSAGE_TYPE:
            try:
                self.messages.append(vb.split(payload))
            except vb.BadChannelMessage:
                pass

    def _on_events(self, vp: Vp, sint: int) -> None:
        """SINT 2 fired: a channel whose driver handles its interrupt (netvsc's NAPI) has
        its flag tested and cleared here and its handler called; the others' drivers test
        and clear their own flags as they read their rings."""
        self.interrupts += 1
        for relid, fn in list(self.channel_isrs.items()):
            if self.clear_event(vp, relid):
                fn(vp)

    def on_channel_interrupt(self, relid: int, fn) -> None:
        """``fn(vp)`` from SINT 2's handler whenever channel ``relid``'s event flag is set."""
        self.channel_isrs[relid] = fn

    def clear_event(self, vp: Vp, relid: int) -> bool:
        """Test-and-clear the channel's event flag in SINT 2's block of the SIEF page:
        LOCK AND, since the hypervisor sets flags there from its own process (a plain
        read-modify-write could lose its signal, and the driver would sleep through it)."""
        byte = synic.siefp_gpa(vp) + vb.VMBUS_MESSAGE_SINT * 256 + relid // 8
        mask = 1 << (relid % 8)
        return bool(vp.mem.fetch_and_u8(byte, ~mask & 0xFF) & mask)

    # -- messages ------------------------------------------------------------------------------

    def post(self, vp: Vp, payload: bytes) -> None:
        data = HV_INPUT_POST_MESSAGE.pack(self.connection_id, 0, vb.VMBUS_MESSAGE_TYPE, len(payload)) + \
            payload.ljust(vb.HV_MESSAGE_PAYLOAD_BYTES, b"\0")
        delay = 0.0001
        for _ in range(POST_RETRIES):
            status, _, _ = vp.hypercall(HypercallCode.HvCallPostMessage, data)
            if status == HvStatus.HV_STATUS_SUCCESS:
                return
            if status != HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS:
                raise VmbusError(f"HvCallPostMessage: {status.name}")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        raise VmbusError("HvCallPostMessage: no buffers after retries")

    def wait_for(self, vp: Vp, *types: Msg, timeout: float = TIMEOUT_S) -> bytes:
        """The body of the next message of one of ``types``."""
        return self.wait_any(vp, *types, timeout=timeout)[1]

    def wait_any(self, vp: Vp, *types: Msg, timeout: float = TIMEOUT_S) -> tuple[Msg, bytes]:
        """The next message of one of ``types`` (others are kept; rescinds are noted)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (t, body) in enumerate(self.messages):
                if t in types:
                    del self.messages[i]
                    return t, body
                if t == Msg.CHANNELMSG_RESCIND_CHANNELOFFER:
                    self.rescinded.add(vb.unpack(vb.RELID, body, "rescind")[0])
            if time.monotonic() > deadline:
                raise VmbusError(f"no {'/'.join(t.name for t in types)} within {timeout} s")
            vp.sti()
            vp.hlt()

    # -- the bus ---------------------------------------------------------------------------------

    def connect(self, vp: Vp) -> int:
        """INITIATE_CONTACT, newest version first; REQUESTOFFERS; returns the version."""
        for version in VERSIONS:
            self.connection_id = (vb.VMBUS_MESSAGE_CONNECTION_ID_4 if version >= vb.VERSION_WIN10_V5
                                  else vb.VMBUS_MESSAGE_CONNECTION_ID)
            self.post(vp, vb.encode(Msg.CHANNELMSG_INITIATE_CONTACT,
                                    vb.INITIATE_CONTACT.pack(version, vp.index, vb.VMBUS_MESSAGE_SINT, 0, 0)))
            body = self.wait_for(vp, Msg.CHANNELMSG_VERSION_RESPONSE)
            supported, _, _, conn = vb.VERSION_RESPONSE.unpack_from(body)
            if supported:
                self.version = version
                if version >= vb.VERSION_WIN10_V5:
                    self.connection_id = conn
                break
        else:
            raise VmbusError("the host supports none of our VMBus versions")
        self.post(vp, vb.encode(Msg.CHANNELMSG_REQUESTOFFERS))
        self.offers = []
        while True:
            t, body = self.wait_any(vp, Msg.CHANNELMSG_OFFERCHANNEL, Msg.CHANNELMSG_ALLOFFERS_DELIVERED)
            if t == Msg.CHANNELMSG_ALLOFFERS_DELIVERED:
                return self.version
            self.offers.append(vb.parse_offer(body))

    def create_gpadl(self, vp: Vp, relid: int, pfns: list[int]) -> int:
        """GPADL_HEADER (+ BODY) over ``pfns`` for channel ``relid``; its id once created."""
        gpadl = self.next_gpadl
        self.next_gpadl += 1
        for m in vb.gpadl_messages(relid, gpadl, pfns):
            self.post(vp, m)
        _, _, status = vb.GPADL_CREATED.unpack_from(self.wait_for(vp, Msg.CHANNELMSG_GPADL_CREATED))
        if status:
            raise VmbusError(f"GPADL refused: {status:#x}")
        return gpadl

    def open(self, vp: Vp, offer: dict, ring_pages: int = RING_PAGES, suppress: bool = True,
             at: int | None = None) -> Channel:
        """A GPADL over two rings' pages, then OPENCHANNEL.  ``suppress`` False: signal
        after every ring write (the experiment).  ``at``: the rings' pages (a channel
        opened again where it was), else the next free ones."""
        relid = offer["child_relid"]
        base = self.next_ring_gpa if at is None else at
        if at is None:
            self.next_ring_gpa += 2 * ring_pages * 4096
        pfns = [(base >> 12) + i for i in range(2 * ring_pages)]
        to_host = Ring(PagedView(vp.mem, [p << 12 for p in pfns[:ring_pages]]), suppress)
        to_guest = Ring(PagedView(vp.mem, [p << 12 for p in pfns[ring_pages:]]), suppress)
        to_host.init()
        to_guest.init()
        gpadl = self.create_gpadl(vp, relid, pfns)
        self.post(vp, vb.encode(Msg.CHANNELMSG_OPENCHANNEL,
                                vb.OPEN_CHANNEL.pack(relid, relid, gpadl, vp.index, ring_pages, bytes(120))))
        _, _, status = vb.OPEN_RESULT.unpack_from(self.wait_for(vp, Msg.CHANNELMSG_OPENCHANNEL_RESULT))
        if status:
            raise VmbusError(f"OPENCHANNEL refused: {status:#x}")
        ch = self.channel_at(vp, relid, offer["connection_id"], base, ring_pages, suppress)
        ch.gpadl = gpadl
        return ch

    def close_channel(self, vp: Vp, relid: int, gpadls: list[int]) -> None:
        """CLOSECHANNEL, then each GPADL torn down (GPADL_TEARDOWN → TORNDOWN), as Linux's
        ``vmbus_close`` does."""
        self.post(vp, vb.encode(Msg.CHANNELMSG_CLOSECHANNEL, vb.RELID.pack(relid)))
        for gpadl in gpadls:
            self.post(vp, vb.encode(Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(relid, gpadl)))
            self.wait_for(vp, Msg.CHANNELMSG_GPADL_TORNDOWN)

    def channel_at(self, vp: Vp, relid: int, connection_id: int, ring_gpa: int, ring_pages: int,
                   suppress: bool = True) -> Channel:
        """The driver's view of an open channel whose rings are at ``ring_gpa`` (``open``, or
        a resumed kernel's: the rings' state is in its memory, the root's in its saved bus)."""
        pages = [ring_gpa + i * 4096 for i in range(2 * ring_pages)]
        ch = Channel(self, relid, connection_id, Ring(PagedView(vp.mem, pages[:ring_pages]), suppress),
                     Ring(PagedView(vp.mem, pages[ring_pages:]), suppress))
        ch.ring_gpa, ch.ring_pages, ch.suppress = ring_gpa, ring_pages, suppress
        return ch
