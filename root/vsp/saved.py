"""A partition's bus, saved from and restored into the VMBus server (issue 13): the
``vmbus`` section of its saved record (:mod:`proto.vmbus_state` says what it holds).

``save`` is asked for a paused partition.  It *quiesces* the partition's channels first, as
OpenVMM's VMBus devices do before they save: every request in a guest→host ring is read
and completed (storvsp's work is synchronous: after the drain no request is in flight, and
its completions are in the host→guest ring, or in the channel's backlog when the ring was
full — the backlog is saved), and a channel in poll mode leaves it, its ring's interrupt
mask cleared in guest memory, so that the guest of a restored bus signals again.  netvsp's
receive sections the guest has not given back are saved with their transaction ids.  Frames
the switch forwards to the partition after the save are not in the record (a network drops
them, as across any pause).

``restore`` puts a saved bus in place of a fresh one (the partition's VPs have not run yet):
the record must fit the bus offered here (its relids and device kinds), every created
GPADL's pages are checked by the hypervisor again (GpaMapRequest) and mapped, each open
channel is opened again over its GPADL's rings, which are in the restored guest memory,
and its VSP gets its own state back.  Anything wrong refuses the whole restore with
:class:`VmbusRestoreError`, the bus left as it was.  Then each open channel is drained once
(a request written before the save and never signalled would otherwise wait).
"""

from __future__ import annotations

import logging
import struct
import uuid

import msgpack

from proto import messages as m
from proto.errors import HvstackError
from proto.memory import UnmappedGpa
from proto.saved_state import SavedStateError
from proto.vmbus_ring import RingError
from proto.vmbus_state import check_vmbus

from root.vsp.channel import OpenChannel
from root.vsp.server import Gpadl, PartitionBus, VmbusServer

log = logging.getLogger("vsp")

QUIESCE_ROUNDS = 64  # drains of a channel before the save gives up on a guest that keeps writing


class VmbusRestoreError(HvstackError):
    """A saved bus that cannot be restored here; the message says why."""


def answer(server: VmbusServer, q: m.VspStateQuery) -> m.VspStateReply:
    """The VSP's reply to the hypervisor's relay of a root's request."""
    try:
        if q.action == "save":
            blob = msgpack.packb(save(server, q.partition), use_bin_type=True)
            if len(blob) > m.MAX_VMBUS_STATE_BYTES:
                raise VmbusRestoreError(f"partition {q.partition}'s bus state is {len(blob)} bytes, over a frame")
            log.info("partition %d: bus saved (%d bytes)", q.partition, len(blob))
            return m.VspStateReply(q.ref, q.partition, "", blob)
        try:
            state = msgpack.unpackb(q.state, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException):
            raise VmbusRestoreError("the saved bus is not msgpack") from None
        restore(server, q.partition, state)
        log.info("partition %d: bus restored", q.partition)
        return m.VspStateReply(q.ref, q.partition, "", b"")
    except VmbusRestoreError as e:
        log.warning("partition %d: bus %s refused: %s", q.partition, q.action, e)
        return m.VspStateReply(q.ref, q.partition, str(e)[:512], b"")


def device_kind(device) -> str:
    return type(device).__name__.lower()  # StorVsp → storvsp, NetVsp → netvsp


def save(server: VmbusServer, partition: int) -> dict:
    bus = server.partitions.get(partition)
    if bus is None:
        raise VmbusRestoreError(f"partition {partition} has no VMBus here")
    _quiesce(server, bus)
    return check_vmbus({
        "version": bus.version, "target_vp": bus.target_vp, "sint": bus.sint, "offers_sent": bus.offers_sent,
        "gpadls": [{"id": gid, "relid": g.relid, "expected": g.expected, "pfns": struct.pack(f"<{len(g.pfns)}Q", *g.pfns),
                    "created": g.created, "revoked": g.revoked} for gid, g in bus.gpadls.items()],
        "offers": [{"relid": o.relid, "device": device_kind(o.device), "instance": o.device.instance.bytes,
                    "rescinded": o.rescinded, "device_state": o.device.save() if o.channel is not None else {},
                    "channel": None if o.channel is None else {
                        "gpadl": o.channel.gpadl, "downstream": len(o.channel.to_host.view.pages),
                        "target_vp": o.channel.target_vp, "backlog": list(o.channel.backlog)}}
                   for o in bus.offers.values()],
    })


def _quiesce(server: VmbusServer, bus: PartitionBus) -> None:
    """Every request in the partition's rings completed, and poll mode left."""
    for o in bus.offers.values():
        key = (bus.id, o.relid)
        for _ in range(QUIESCE_ROUNDS):
            if o.channel is None:
                break
            server._drain(bus, o, polling=True)  # (a corrupt ring resets the channel: then it is closed)
            if key not in server.busy:
                break
        server.polling.pop(key, None)
        server.busy.discard(key)
        if o.channel is not None:
            o.channel.to_host.set_interrupt_mask(False)


def restore(server: VmbusServer, partition: int, state) -> None:
    bus = server.partitions.get(partition)
    if bus is None:
        raise VmbusRestoreError(f"partition {partition} has no VMBus here")
    try:
        state = check_vmbus(state)
    except SavedStateError as e:
        raise VmbusRestoreError(str(e)) from None
    if bus.version or bus.gpadls or any(o.channel is not None for o in bus.offers.values()):
        raise VmbusRestoreError(f"partition {partition}'s bus is in use: a saved bus replaces only a fresh one")
    saved = {o["relid"]: o for o in state["offers"]}
    here = {relid: device_kind(o.device) for relid, o in bus.offers.items()}
    if {r: o["device"] for r, o in saved.items()} != here:
        raise VmbusRestoreError(f"the saved offers {sorted((r, o['device']) for r, o in saved.items())} are not "
                                f"this partition's {sorted(here.items())}")
    gpadls = {}
    try:
        for g in state["gpadls"]:
            pfns = list(struct.unpack(f"<{len(g['pfns']) // 8}Q", g["pfns"]))
            if g["relid"] not in bus.offers:
                raise VmbusRestoreError(f"GPADL {g['id']:#x} is of channel {g['relid']}, which is not offered")
            gpadl = gpadls[g["id"]] = Gpadl(g["relid"], pfns, g["expected"], created=g["created"])
            if g["created"] and not g["revoked"]:
                if not all(p < (1 << 40) for p in pfns) or not server.hv.map_gpas(bus.id, pfns):
                    raise VmbusRestoreError(f"GPADL {g['id']:#x}: its pages are not the partition's")
                try:
                    gpadl.mapping = bus.mem.map(pfns)
                except (UnmappedGpa, OSError) as e:
                    raise VmbusRestoreError(f"GPADL {g['id']:#x}: {e}") from None
        _open_channels(server, bus, saved, gpadls)
    except BaseException:
        for o in bus.offers.values():
            if o.channel is not None:
                o.device.close()
                o.channel = None
        for g in gpadls.values():
            g.close()
        raise
    bus.gpadls = gpadls
    bus.version, bus.target_vp, bus.sint, bus.offers_sent = (state["version"], state["target_vp"], state["sint"],
                                                             state["offers_sent"])
    for relid, o in bus.offers.items():
        o.rescinded = saved[relid]["rescinded"]
        o.device.instance = uuid.UUID(bytes=saved[relid]["instance"])
    for o in bus.offers.values():
        if o.channel is not None:
            server._drain(bus, o)


def _open_channels(server: VmbusServer, bus: PartitionBus, saved: dict, gpadls: dict) -> None:
    for relid, o in bus.offers.items():
        ch = saved[relid]["channel"]
        if ch is None:
            continue
        g = gpadls[ch["gpadl"]]
        if not g.usable(relid) or not 2 <= ch["downstream"] <= len(g.pfns) - 2:
            raise VmbusRestoreError(f"channel {relid}: its GPADL {ch['gpadl']:#x} does not hold its rings")
        try:
            channel = OpenChannel.over(g.mapping, g.pfns, ch["downstream"], relid, ch["gpadl"], ch["target_vp"],
                                       server._signaller(bus.id, ch["target_vp"], relid), bus.suppress)
            channel.to_host.indices()
            channel.to_guest.indices()
        except RingError as e:
            raise VmbusRestoreError(f"channel {relid}: its rings: {e}") from None
        channel.find_gpadl = lambda gid, relid=relid: (
            gpadls[gid] if gid in gpadls and gpadls[gid].usable(relid) else None)
        channel.backlog = list(ch["backlog"])
        o.device.open(channel, bus.mem)
        o.channel = channel
        try:
            o.device.restore(saved[relid]["device_state"])
        except (KeyError, TypeError, ValueError, UnmappedGpa, OSError) as e:
            raise VmbusRestoreError(f"channel {relid}: its {device_kind(o.device)}'s state: "
                                    f"{type(e).__name__}: {e}") from None
