"""The guest's VMBus driver (Linux drivers/hv/vmbus_drv.c, connection.c, channel_mgmt.c in
miniature): SynIC set-up, the connect handshake, offers, GPADLs and channel opening.

Only where the partition is offered the SynIC (its CPUID privileges: the SynIC MSRs,
PostMessages, SignalEvents, and the hypercall page).  The SIM and SIEF pages and the
rings live in guest RAM above 2 MiB, which no other workload touches.  SINT 2 (VMBus's)
interrupts with AutoEOI, so its handler costs no EOI exit: it copies the message out of
its slot, frees the slot and writes EOM only when another message is pending.

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
from proto.codes import HvMsr, HvPrivilege, HvStatus, HypercallCode
from proto.hvcall import HV_INPUT_POST_MESSAGE, HV_INPUT_SIGNAL_EVENT
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import PagedView, Ring

from partitions.vp import Vp

SIMP_GPA = 0x200000
SIEF_GPA = 0x201000
RING_AREA = 0x210000  # each channel's GPADL: RING_PAGES pages per direction
RING_PAGES = 16  # a header page and 60 KiB of data per direction
SINT_VECTOR = 0xE2
APIC_BASE, APIC_SVR = 0xFEE00000, 0xF0
SINT_AUTO_EOI = 1 << 17
HV_X64_MSR_SINT0 = 0x40000090
MESSAGE_SLOT = 256
HV_MESSAGE_FLAG_PENDING = 1
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

    # -- SynIC ----------------------------------------------------------------------------------

    def init_synic(self, vp: Vp) -> None:
        """The SIM and SIEF pages, SINT 2 (AutoEOI) and SCONTROL; the local APIC software-
        enabled, since SINTs arrive through it."""
        vp.set_handler(SINT_VECTOR, self.on_interrupt)
        vp.write(APIC_BASE + APIC_SVR, 4, 0x1FF)
        vp.write_bytes(SIMP_GPA, bytes(4096))
        vp.write_bytes(SIEF_GPA, bytes(4096))
        vp.wrmsr(HvMsr.HV_X64_MSR_SIMP, SIMP_GPA | 1)
        vp.wrmsr(HvMsr.HV_X64_MSR_SIEFP, SIEF_GPA | 1)
        vp.wrmsr(HV_X64_MSR_SINT0 + vb.VMBUS_MESSAGE_SINT, SINT_VECTOR | SINT_AUTO_EOI)
        vp.wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 1)

    def on_interrupt(self, vp: Vp, vector: int) -> None:
        """SINT 2: take the message out of its slot (and any the EOM brings); the event
        flags are the channels' business (their drivers read their rings)."""
        self.interrupts += 1
        slot = SIMP_GPA + vb.VMBUS_MESSAGE_SINT * MESSAGE_SLOT
        for _ in range(16):
            mtype = vp.read(slot, 4)
            if mtype == 0:
                return
            header = vp.mem.read(slot, 16)
            size = min(header[4], vb.HV_MESSAGE_PAYLOAD_BYTES)
            payload = vp.mem.read(slot + 16, size)
            vp.write(slot, 4, 0)  # free the slot (a barrier follows on hardware)
            if mtype == vb.VMBUS_MESSAGE_TYPE:
                try:
                    self.messages.append(vb.split(payload))
                except vb.BadChannelMessage:
                    pass
            if not header[5] & HV_MESSAGE_FLAG_PENDING:
                return
            vp.wrmsr(HvMsr.HV_X64_MSR_EOM, 0)

    def clear_event(self, vp: Vp, relid: int) -> bool:
        """Test-and-clear the channel's event flag in SINT 2's block of the SIEF page."""
        return vp.btr(SIEF_GPA + vb.VMBUS_MESSAGE_SINT * 256, relid)

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

    def open(self, vp: Vp, offer: dict, ring_pages: int = RING_PAGES, suppress: bool = True) -> Channel:
        """A GPADL over two rings' pages, then OPENCHANNEL.  ``suppress`` False: signal
        after every ring write (the experiment)."""
        relid = offer["child_relid"]
        base = self.next_ring_gpa
        self.next_ring_gpa += 2 * ring_pages * 4096
        pfns = [(base >> 12) + i for i in range(2 * ring_pages)]
        to_host = Ring(PagedView(vp.mem, [p << 12 for p in pfns[:ring_pages]]), suppress)
        to_guest = Ring(PagedView(vp.mem, [p << 12 for p in pfns[ring_pages:]]), suppress)
        to_host.init()
        to_guest.init()
        gpadl = self.next_gpadl
        self.next_gpadl += 1
        for m in vb.gpadl_messages(relid, gpadl, pfns):
            self.post(vp, m)
        _, _, status = vb.GPADL_CREATED.unpack_from(self.wait_for(vp, Msg.CHANNELMSG_GPADL_CREATED))
        if status:
            raise VmbusError(f"GPADL refused: {status:#x}")
        self.post(vp, vb.encode(Msg.CHANNELMSG_OPENCHANNEL,
                                vb.OPEN_CHANNEL.pack(relid, relid, gpadl, vp.index, ring_pages, bytes(120))))
        _, _, status = vb.OPEN_RESULT.unpack_from(self.wait_for(vp, Msg.CHANNELMSG_OPENCHANNEL_RESULT))
        if status:
            raise VmbusError(f"OPENCHANNEL refused: {status:#x}")
        return Channel(self, relid, offer["connection_id"], to_host, to_guest)
