"""The VMBus server: one instance in the root's kernel-side process, serving every child
partition, with state per partition (OpenVMM vm/devices/vmbus/vmbus_server; the numbers
and layouts are Linux's, proto/vmbus.py).

It is driven by what the hypervisor forwards — a guest's channel messages
(:meth:`VmbusServer.on_message`) and its channel signals (:meth:`VmbusServer.on_event`) —
and acts through a :class:`Hypervisor` (post a message into a VP's SIM slot, set an event
flag, check a GPADL's pages), so that a test drives it without processes.

A partition is hostile: every message is checked, and what is wrong is refused the way
Hyper-V answers it (a failed GPADL_CREATED or OPENCHANNEL_RESULT, no answer to what has
none), counted in the partition's ``errors`` and never raised.  A channel whose rings turn
out corrupt is closed and its offer rescinded; the partition's other channels and every
other partition go on.
"""

from __future__ import annotations

import logging
import struct
from time import perf_counter_ns
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from proto import vmbus as vb
from proto.memory import UnmappedGpa
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import RingCorrupt, RingError

from root.vsp.channel import OpenChannel

log = logging.getLogger("vsp")

MAX_GPADLS = 64  # per partition, created or being described
MAX_GPADL_PAGES = 4096  # 16 MiB per GPADL
MIN_RING_PAGES = 2  # a header page and a data page
POLL_MODE_QUEUE_DEPTH = 2  # a drain that found this many requests puts the channel in poll mode
POLL_WINDOW_NS = 10_000_000  # for this long after its last request (a loaded host takes ms to turn around)


class Hypervisor(Protocol):
    """What the server needs of the hypervisor (the SynIC messages of the contract)."""

    def post(self, partition: int, vp: int, sint: int, payload: bytes) -> bool: ...

    def signal(self, partition: int, vp: int, sint: int, flag: int) -> None: ...

    def map_gpas(self, partition: int, pfns: list[int]) -> bool: ...


class Device(Protocol):
    """A VSP behind one channel."""

    if_type: uuid.UUID
    instance: uuid.UUID

    def open(self, channel: OpenChannel, mem) -> None: ...

    def on_packets(self, channel: OpenChannel, packets: list) -> None: ...

    def close(self) -> None: ...


@dataclass
class Gpadl:
    relid: int
    pfns: list[int]
    expected: int
    created: bool = False
    mapping: object = None  # its pages mapped (root/vsp/memory.py) while it lives

    @property
    def revoked(self) -> bool:
        """The root unmapped one of its pages (gpa_unmapped): created, its mapping closed for
        good — every other way a GPADL closes also removes it from its bus."""
        return self.created and self.mapping is None

    def usable(self, relid: int) -> bool:
        """Created, still mapped, and the channel ``relid``'s."""
        return self.created and self.mapping is not None and self.relid == relid

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None


@dataclass
class Offer:
    relid: int
    device: Device
    channel: OpenChannel | None = None
    rescinded: bool = False

    @property
    def connection_id(self) -> int:
        return vb.channel_connection_id(self.relid)


@dataclass
class PartitionBus:
    """One partition's view of the bus."""

    id: int
    mem: object  # its memory as the VSP may map it (root/vsp/memory.py PartitionMemory)
    offers: dict[int, Offer]
    version: int = 0  # 0: not connected
    target_vp: int = 0
    sint: int = vb.VMBUS_MESSAGE_SINT
    offers_sent: bool = False
    gpadls: dict[int, Gpadl] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    suppress: bool = True  # False: signal after every ring write (the experiment)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class VmbusServer:
    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.partitions: dict[int, PartitionBus] = {}
        self.busy: set[tuple[int, int]] = set()  # (partition, relid) with packets still to drain
        self.polling: dict[tuple[int, int], int] = {}  # (partition, relid) in poll mode → until (ns)

    def add_partition(self, partition: int, mem, devices: list[Device], suppress: bool = True) -> None:
        """Offer ``devices`` to ``partition``, relids from 1 in this order; ``suppress``
        False makes its channels signal after every write (the experiment)."""
        offers = {i: Offer(i, d) for i, d in enumerate(devices, start=1)}
        self.partitions[partition] = PartitionBus(partition, mem, offers, suppress=suppress)

    def connection_ids(self, partition: int) -> list[int]:
        """The event connections whose port is ours (HvConnectPort in the root)."""
        return [o.connection_id for o in self.partitions[partition].offers.values()]

    # -- messages from a guest --------------------------------------------------------------

    def on_message(self, partition: int, vp: int, connection_id: int, payload: bytes) -> None:
        bus = self.partitions.get(partition)
        if bus is None:
            return  # the hypervisor routes only connections we made: a partition without a bus has none
        bus.messages += 1
        if connection_id not in (vb.VMBUS_MESSAGE_CONNECTION_ID, vb.VMBUS_MESSAGE_CONNECTION_ID_4):
            bus.error("message on a channel connection")
            return
        try:
            msgtype, body = vb.split(payload)
            handler = self._handlers.get(msgtype)
            if handler is None:
                bus.error(f"unexpected {msgtype.name}")
                return
            if msgtype != Msg.CHANNELMSG_INITIATE_CONTACT and not bus.version:
                bus.error(f"{msgtype.name} before INITIATE_CONTACT")
                return
            handler(self, bus, vp, body)
        except vb.BadChannelMessage as e:
            bus.error(str(e).split(":")[0])
            log.debug("partition %d: %s", partition, e)

    def _post(self, bus: PartitionBus, msg: bytes, vp: int | None = None) -> None:
        self.hv.post(bus.id, bus.target_vp if vp is None else vp, bus.sint, msg)

    def _initiate_contact(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        version, target_vcpu, sint_word, mon1, mon2 = vb.unpack(vb.INITIATE_CONTACT, body, "INITIATE_CONTACT")
        sint = sint_word & 0xFF if version >= vb.VERSION_WIN10_V5 else vb.VMBUS_MESSAGE_SINT
        if bus.version:
            self._unload(bus)  # the guest starts over (it rebooted): as after UNLOAD
        if version not in vb.SUPPORTED_VERSIONS or sint != vb.VMBUS_MESSAGE_SINT or bool(mon1) != bool(mon2):
            bus.error("unsupported INITIATE_CONTACT")
            self._post(bus, vb.encode(Msg.CHANNELMSG_VERSION_RESPONSE, vb.VERSION_RESPONSE.pack(0, 0, 0, 0)),
                       target_vcpu)
            return
        bus.version, bus.target_vp, bus.sint = version, target_vcpu, sint
        conn = vb.VMBUS_MESSAGE_CONNECTION_ID_4 if version >= vb.VERSION_WIN10_V5 else version
        self._post(bus, vb.encode(Msg.CHANNELMSG_VERSION_RESPONSE, vb.VERSION_RESPONSE.pack(1, 0, 0, conn)))

    def _request_offers(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        if bus.offers_sent:
            bus.error("REQUESTOFFERS twice")
            return
        bus.offers_sent = True
        for o in bus.offers.values():
            if not o.rescinded:
                self._post(bus, vb.offer(o.device.if_type, o.device.instance, o.relid, o.connection_id))
        self._post(bus, vb.encode(Msg.CHANNELMSG_ALLOFFERS_DELIVERED))

    def _gpadl_header(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        relid, gpadl, range_buflen, rangecount = vb.unpack(vb.GPADL_HEADER, body, "GPADL_HEADER")
        rest = body[vb.GPADL_HEADER.size:]

        def fail(reason: str) -> None:
            bus.error(reason)
            self._post(bus, vb.encode(Msg.CHANNELMSG_GPADL_CREATED,
                                      vb.GPADL_CREATED.pack(relid, gpadl, vb.STATUS_UNSUCCESSFUL)))

        if gpadl in bus.gpadls:
            return fail("GPADL id in use")
        if len(bus.gpadls) >= MAX_GPADLS:
            return fail("too many GPADLs")
        offer = bus.offers.get(relid)
        if offer is None or offer.rescinded:
            return fail("GPADL for an unknown channel")
        # One range (what Linux sends for rings and buffers): byte count, offset, PFNs.
        if rangecount != 1 or len(rest) < vb.GPA_RANGE_HEAD.size:
            return fail("GPADL with other than one range")
        byte_count, byte_offset = vb.GPA_RANGE_HEAD.unpack_from(rest)
        pages = (byte_offset + byte_count + 4095) // 4096
        if byte_offset >= 4096 or not 0 < pages <= MAX_GPADL_PAGES \
                or range_buflen != vb.GPA_RANGE_HEAD.size + 8 * pages:
            return fail("GPADL range does not match its pages")
        here = min(pages, (len(rest) - vb.GPA_RANGE_HEAD.size) // 8)
        pfns = list(struct.unpack_from(f"<{here}Q", rest, vb.GPA_RANGE_HEAD.size))
        bus.gpadls[gpadl] = Gpadl(relid, pfns, pages)
        self._gpadl_maybe_complete(bus, gpadl)

    def _gpadl_body(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        _, gpadl = vb.unpack(vb.GPADL_BODY, body, "GPADL_BODY")
        g = bus.gpadls.get(gpadl)
        if g is None or g.created:
            bus.error("GPADL_BODY for no GPADL being described")
            return
        rest = body[vb.GPADL_BODY.size:]
        n = min(len(rest) // 8, g.expected - len(g.pfns))
        g.pfns += struct.unpack_from(f"<{n}Q", rest)
        self._gpadl_maybe_complete(bus, gpadl)

    def _gpadl_maybe_complete(self, bus: PartitionBus, gpadl: int) -> None:
        g = bus.gpadls[gpadl]
        if len(g.pfns) < g.expected:
            return
        # The hypervisor says whether every page is RAM of this partition (GpaMapRequest).
        ok = all(p < (1 << 40) for p in g.pfns) and self.hv.map_gpas(bus.id, g.pfns)
        if ok:
            try:
                g.mapping = bus.mem.map(g.pfns)  # these pages and no others
                g.created = True
            except (UnmappedGpa, OSError):
                ok = False
        if not ok:
            del bus.gpadls[gpadl]
            bus.error("GPADL pages outside the partition")
        self._post(bus, vb.encode(Msg.CHANNELMSG_GPADL_CREATED, vb.GPADL_CREATED.pack(
            g.relid, gpadl, 0 if ok else vb.STATUS_UNSUCCESSFUL)))

    def _gpadl_teardown(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        _, gpadl = vb.unpack(vb.GPADL_TEARDOWN, body, "GPADL_TEARDOWN")
        if gpadl not in bus.gpadls:
            bus.error("GPADL_TEARDOWN of no GPADL")
            return
        if any(o.channel is not None and o.channel.gpadl == gpadl for o in bus.offers.values()):
            bus.error("GPADL_TEARDOWN of an open channel's rings")
            return
        bus.gpadls.pop(gpadl).close()
        self._post(bus, vb.encode(Msg.CHANNELMSG_GPADL_TORNDOWN, vb.GPADL_TORNDOWN.pack(gpadl)))

    def _open_channel(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        relid, openid, gpadl, target_vp, downstream, _ = vb.unpack(vb.OPEN_CHANNEL, body, "OPENCHANNEL")
        offer = bus.offers.get(relid)
        g = bus.gpadls.get(gpadl)
        reason = None
        if offer is None or offer.rescinded:
            reason = "OPENCHANNEL of an unknown channel"
        elif offer.channel is not None:
            reason = "OPENCHANNEL of an open channel"
        elif g is None or not g.usable(relid):
            reason = "OPENCHANNEL with no GPADL of the channel"
        elif not MIN_RING_PAGES <= downstream <= len(g.pfns) - MIN_RING_PAGES:
            reason = "OPENCHANNEL ring split outside the GPADL"
        if reason is None:
            try:
                ch = OpenChannel.over(g.mapping, g.pfns, downstream, relid, gpadl, target_vp,
                                      self._signaller(bus.id, target_vp, relid), bus.suppress)
                ch.find_gpadl = lambda gid, bus=bus, relid=relid: (
                    bus.gpadls[gid] if gid in bus.gpadls and bus.gpadls[gid].usable(relid) else None)
                offer.device.open(ch, bus.mem)
                offer.channel = ch
            except RingError as e:
                reason = f"OPENCHANNEL rings: {e}"
        if reason is not None:
            bus.error(reason.split(":")[0])
        status = 0 if reason is None else vb.STATUS_UNSUCCESSFUL
        self._post(bus, vb.encode(Msg.CHANNELMSG_OPENCHANNEL_RESULT, vb.OPEN_RESULT.pack(relid, openid, status)))

    def _signaller(self, partition: int, vp: int, relid: int):
        hv = self.hv
        return lambda: hv.signal(partition, vp, vb.VMBUS_MESSAGE_SINT, relid)

    def _close_channel(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        (relid,) = vb.unpack(vb.RELID, body, "CLOSECHANNEL")
        offer = bus.offers.get(relid)
        if offer is None or offer.channel is None:
            bus.error("CLOSECHANNEL of a channel not open")
            return
        self._close(bus, offer)

    def _close(self, bus: PartitionBus, offer: Offer) -> None:
        if offer.channel is not None:
            offer.device.close()
            offer.channel = None
        self.busy.discard((bus.id, offer.relid))
        self.polling.pop((bus.id, offer.relid), None)

    def _relid_released(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        (relid,) = vb.unpack(vb.RELID, body, "RELID_RELEASED")
        if relid not in bus.offers or not bus.offers[relid].rescinded:
            bus.error("RELID_RELEASED of a channel not rescinded")

    def _unload_message(self, bus: PartitionBus, vp: int, body: bytes) -> None:
        target = bus.target_vp
        self._unload(bus)
        self.hv.post(bus.id, target, bus.sint, vb.encode(Msg.CHANNELMSG_UNLOAD_RESPONSE))

    def _unload(self, bus: PartitionBus) -> None:
        """Back to before INITIATE_CONTACT: channels closed, GPADLs gone, offers to be sent again."""
        for o in bus.offers.values():
            self._close(bus, o)
        for g in bus.gpadls.values():
            g.close()
        bus.gpadls.clear()
        bus.version = 0
        bus.offers_sent = False

    _handlers = {
        Msg.CHANNELMSG_INITIATE_CONTACT: _initiate_contact,
        Msg.CHANNELMSG_REQUESTOFFERS: _request_offers,
        Msg.CHANNELMSG_GPADL_HEADER: _gpadl_header,
        Msg.CHANNELMSG_GPADL_BODY: _gpadl_body,
        Msg.CHANNELMSG_GPADL_TEARDOWN: _gpadl_teardown,
        Msg.CHANNELMSG_OPENCHANNEL: _open_channel,
        Msg.CHANNELMSG_CLOSECHANNEL: _close_channel,
        Msg.CHANNELMSG_RELID_RELEASED: _relid_released,
        Msg.CHANNELMSG_UNLOAD: _unload_message,
    }

    # -- channel signals --------------------------------------------------------------------

    def on_event(self, partition: int, connection_id: int) -> None:
        bus = self.partitions.get(partition)
        if bus is None:
            return
        offer = bus.offers.get(connection_id - vb.CHANNEL_CONNECTION_BASE)
        if offer is None or offer.channel is None:
            bus.error("signal for a channel not open")
            return
        offer.channel.stats.events_in += 1
        self._drain(bus, offer)

    def _drain(self, bus: PartitionBus, offer: Offer, polling: bool = False) -> None:
        try:
            self._drain_ring(bus, offer, polling)
        except (RingError, UnmappedGpa) as e:
            # A corrupt ring (or its pages unmapped since, or a guest that never reads its
            # completions): Hyper-V closes the channel; the guest is told by a rescind.
            self._reset(bus, offer, getattr(e, "reason", type(e).__name__), e)

    def _reset(self, bus: PartitionBus, offer: Offer, reason: str, detail) -> None:
        bus.error(f"channel reset: {reason}")
        log.warning("partition %d channel %d reset: %s", bus.id, offer.relid, detail)
        self._close(bus, offer)
        offer.rescinded = True
        self._post(bus, vb.encode(Msg.CHANNELMSG_RESCIND_CHANNELOFFER, vb.RELID.pack(offer.relid)))

    def gpa_unmapped(self, partition: int, ranges) -> None:
        """The root unmapped guest pages of ``partition`` (``ranges``: (first, count) runs;
        the hypervisor's gpa_unmapped).  Every GPADL over one of them is revoked: its
        mapping closed, so that nothing of this process reaches those pages again — not
        even after the root maps the addresses once more, to memory the guest did not
        describe —; a channel whose rings it holds is reset (rescinded), as for a corrupt
        ring; a device keeping a view of it (netvsp's receive buffer) finds it unmapped."""
        bus = self.partitions.get(partition)
        if bus is None:
            return
        for gid, g in bus.gpadls.items():
            if g.mapping is None or not any(first <= p < first + count for p in g.pfns for first, count in ranges):
                continue
            g.close()  # revoked: never mapped again
            bus.error("GPADL pages unmapped by the root")
            for o in bus.offers.values():
                if o.channel is not None and o.channel.gpadl == gid:
                    self._reset(bus, o, "ring pages unmapped by the root", f"GPADL {gid:#x}")

    def _drain_ring(self, bus: PartitionBus, offer: Offer, polling: bool) -> None:
        ch = offer.channel
        key = (bus.id, offer.relid)
        handled, more = ch.drain(lambda packets: offer.device.on_packets(ch, packets), keep_masked=polling)
        if more:
            self.busy.add(key)
        else:
            self.busy.discard(key)
        # Poll mode (OpenVMM's storvsp polls above a queue depth): after a drain that found
        # several requests outstanding, keep the ring masked and look again for a while,
        # so that the guest's next requests need no signal.
        now = perf_counter_ns()
        if handled >= POLL_MODE_QUEUE_DEPTH and bus.suppress:
            ch.to_host.set_interrupt_mask(True)
            self.polling[key] = now + POLL_WINDOW_NS
        elif polling and now >= self.polling.get(key, 0):
            self.polling.pop(key, None)
            ch.to_host.set_interrupt_mask(False)
            if not ch.to_host.is_empty():
                self._drain_ring(bus, offer, False)

    def poll_busy(self) -> None:
        """Come back to channels whose rings were not empty after a drain's rounds, and to
        channels in poll mode."""
        for key in list(self.busy) + [k for k in list(self.polling) if k not in self.busy]:
            partition, relid = key
            bus = self.partitions.get(partition)
            offer = bus.offers.get(relid) if bus else None
            if offer is None or offer.channel is None:
                self.busy.discard(key)
                self.polling.pop(key, None)
                continue
            self._drain(bus, offer, polling=key in self.polling)

    def remove_partition(self, partition: int) -> None:
        bus = self.partitions.pop(partition, None)
        if bus is not None:
            self._unload(bus)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        out = {}
        for pid, bus in self.partitions.items():
            chans = {}
            for o in bus.offers.values():
                c = {"device": type(o.device).__name__, "state": "rescinded" if o.rescinded else
                     ("open" if o.channel else "offered")}
                if o.channel is not None:
                    c.update(o.channel.stats.to_dict())
                    try:
                        c.update(o.channel.occupancy())
                    except RingCorrupt:
                        c["occupancy"] = "corrupt"
                chans[o.relid] = c
            out[pid] = {"version": bus.version, "messages": bus.messages, "gpadls": len(bus.gpadls),
                        "mapped_pages": getattr(bus.mem, "mapped_pages", None),
                        "errors": dict(bus.errors), "channels": chans}
        return out
