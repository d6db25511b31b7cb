"""The VMBus server's state machine, driven by channel messages as a guest posts them."""

from __future__ import annotations

import struct

from proto import vmbus as vb
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import VM_PKT_DATA_INBAND, WRITE_INDEX, encode_packet

from tests.unit.vsp.support import contact, open_channel, send, storage_bus, u32s


def connected(partitions=(1,)):
    server, hv, mems, disks = storage_bus(partitions)
    for p in partitions:
        contact(server, p)
        send(server, p, Msg.CHANNELMSG_REQUESTOFFERS)
    hv.take()
    return server, hv, mems, disks


def test_contact_version_response_and_offers():
    server, hv, mems, _ = storage_bus()
    contact(server, 1, vp=1)
    [(t, body)] = hv.take()
    assert t == Msg.CHANNELMSG_VERSION_RESPONSE
    supported, state, _, conn = vb.VERSION_RESPONSE.unpack_from(body)
    assert (supported, state, conn) == (1, 0, vb.VMBUS_MESSAGE_CONNECTION_ID_4)
    assert hv.posts == [] and server.partitions[1].target_vp == 1
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    posts = list(hv.posts)
    msgs = hv.take()
    assert [t for t, _ in msgs] == [Msg.CHANNELMSG_OFFERCHANNEL, Msg.CHANNELMSG_ALLOFFERS_DELIVERED]
    assert all(p[1] == 1 and p[2] == vb.VMBUS_MESSAGE_SINT for p in posts)  # to the contact's VP, SINT 2
    offer = vb.parse_offer(msgs[0][1])
    assert offer["if_type"] == vb.HV_SCSI_GUID
    assert offer["child_relid"] == 1 and offer["connection_id"] == vb.channel_connection_id(1)
    assert len(msgs[0][1]) == 188


def test_unsupported_versions_are_refused():
    server, hv, _, _ = storage_bus()
    for version in (0x00030000, 0x0000000D, 0x00090000):
        contact(server, 1, version=version)
        [(t, body)] = hv.take()
        assert t == Msg.CHANNELMSG_VERSION_RESPONSE and body[0] == 0
    assert server.partitions[1].version == 0
    assert server.partitions[1].errors["unsupported INITIATE_CONTACT"] == 3
    contact(server, 1, version=vb.VERSION_WIN10)  # 4.0: the answer carries the version
    [(t, body)] = hv.take()
    assert vb.VERSION_RESPONSE.unpack_from(body)[3] == vb.VERSION_WIN10


def test_messages_before_contact_and_offers_twice_are_counted_not_answered():
    server, hv, _, _ = storage_bus()
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    assert hv.posts == []
    assert server.partitions[1].errors == {"CHANNELMSG_REQUESTOFFERS before INITIATE_CONTACT": 1}
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    hv.take()
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    assert hv.posts == [] and server.partitions[1].errors["REQUESTOFFERS twice"] == 1


def test_junk_messages():
    server, hv, _, _ = connected()
    for payload in (b"", b"\x01\0\0", vb.encode(99), vb.encode(Msg.CHANNELMSG_GPADL_HEADER, b"\0" * 5),
                    vb.encode(Msg.CHANNELMSG_OPENCHANNEL, b"x"), vb.encode(Msg.CHANNELMSG_VERSION_RESPONSE)):
        server.on_message(1, 0, vb.VMBUS_MESSAGE_CONNECTION_ID_4, payload)
    server.on_message(1, 0, vb.channel_connection_id(1), vb.encode(Msg.CHANNELMSG_REQUESTOFFERS))
    assert hv.posts == []
    assert sum(server.partitions[1].errors.values()) == 7


def test_gpadl_header_body_created_and_teardown():
    server, hv, mems, _ = connected()
    pfns = list(range(40, 40 + 60))  # 60 pages: a header and two bodies
    msgs = vb.gpadl_messages(1, 7, pfns)
    assert len(msgs) == 3
    for m in msgs[:-1]:
        server.on_message(1, 0, 4, m)
    assert hv.posts == []  # not complete yet
    server.on_message(1, 0, 4, msgs[-1])
    [(t, body)] = hv.take()
    assert t == Msg.CHANNELMSG_GPADL_CREATED and u32s(body, 3) == (1, 7, 0)
    assert server.partitions[1].gpadls[7].pfns == pfns
    send(server, 1, Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(1, 7))
    [(t, body)] = hv.take()
    assert t == Msg.CHANNELMSG_GPADL_TORNDOWN and u32s(body, 1) == (7,)
    assert 7 not in server.partitions[1].gpadls


def test_gpadl_outside_the_partition_or_malformed_fails():
    server, hv, mems, _ = connected()
    cases = [
        vb.gpadl_messages(1, 1, [10, 11, 100000])[0],   # a page beyond the partition's RAM
        vb.gpadl_messages(9, 2, [10, 11])[0],           # no such channel
        vb.encode(Msg.CHANNELMSG_GPADL_HEADER, vb.GPADL_HEADER.pack(1, 3, 16, 2) + bytes(16)),  # two ranges
        vb.encode(Msg.CHANNELMSG_GPADL_HEADER, vb.GPADL_HEADER.pack(1, 4, 999, 1)
                  + vb.GPA_RANGE_HEAD.pack(8192, 0) + struct.pack("<2Q", 1, 2)),  # buflen lies
        vb.encode(Msg.CHANNELMSG_GPADL_HEADER, vb.GPADL_HEADER.pack(1, 5, 8 + 8 * 4097, 1)
                  + vb.GPA_RANGE_HEAD.pack(4097 * 4096, 0) + struct.pack("<Q", 1)),  # too big
    ]
    for m in cases:
        server.on_message(1, 0, 4, m)
    results = hv.take()
    assert [t for t, _ in results] == [Msg.CHANNELMSG_GPADL_CREATED] * 5
    assert all(u32s(b, 3)[2] == vb.STATUS_UNSUCCESSFUL for _, b in results)
    assert server.partitions[1].gpadls == {}
    # an id in use
    server.on_message(1, 0, 4, vb.gpadl_messages(1, 6, [10, 11])[0])
    server.on_message(1, 0, 4, vb.gpadl_messages(1, 6, [12, 13])[0])
    assert [u32s(b, 3)[2] for _, b in hv.take()] == [0, vb.STATUS_UNSUCCESSFUL]
    send(server, 1, Msg.CHANNELMSG_GPADL_BODY, vb.GPADL_BODY.pack(1, 6) + bytes(8))  # already complete
    send(server, 1, Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(1, 77))
    assert hv.posts == []


def test_open_close_and_open_twice():
    server, hv, mems, _ = connected()
    open_channel(server, hv, 1, mems[1])
    msgs = hv.take()
    assert [t for t, _ in msgs] == [Msg.CHANNELMSG_GPADL_CREATED, Msg.CHANNELMSG_OPENCHANNEL_RESULT]
    assert u32s(msgs[1][1], 3) == (1, 1, 0)
    assert server.status()[1]["channels"][1]["state"] == "open"
    send(server, 1, Msg.CHANNELMSG_OPENCHANNEL, vb.OPEN_CHANNEL.pack(1, 1, 0xE1E10, 0, 4, bytes(120)))
    [(t, body)] = hv.take()
    assert u32s(body, 3)[2] == vb.STATUS_UNSUCCESSFUL
    assert server.partitions[1].errors["OPENCHANNEL of an open channel"] == 1
    # the open channel's GPADL cannot be torn down under it
    send(server, 1, Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(1, 0xE1E10))
    assert hv.posts == []
    send(server, 1, Msg.CHANNELMSG_CLOSECHANNEL, vb.RELID.pack(1))
    assert server.status()[1]["channels"][1]["state"] == "offered"
    send(server, 1, Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(1, 0xE1E10))
    assert [t for t, _ in hv.take()] == [Msg.CHANNELMSG_GPADL_TORNDOWN]


def test_open_with_bad_split_or_foreign_gpadl():
    server, hv, mems, _ = connected()
    for m in vb.gpadl_messages(1, 5, list(range(20, 28))):
        server.on_message(1, 0, 4, m)
    hv.take()
    for relid, gpadl, downstream in ((1, 5, 1), (1, 5, 7), (1, 5, 0), (1, 99, 4), (2, 5, 4)):
        send(server, 1, Msg.CHANNELMSG_OPENCHANNEL, vb.OPEN_CHANNEL.pack(relid, 0, gpadl, 0, downstream, bytes(120)))
    results = hv.take()
    assert [u32s(b, 3)[2] for _, b in results] == [vb.STATUS_UNSUCCESSFUL] * 5


def test_event_drains_and_corrupt_ring_resets_only_that_partition():
    server, hv, mems, _ = connected(partitions=(1, 2))
    ch1 = open_channel(server, hv, 1, mems[1])
    ch2 = open_channel(server, hv, 2, mems[2])
    hv.take()
    # partition 1 writes a bad write index; partition 2 a good (if meaningless) packet
    ch1.to_host.view.write(WRITE_INDEX, struct.pack("<I", 0x123))
    ch2.to_host.write([encode_packet(VM_PKT_DATA_INBAND, bytes(64), 1)])
    server.on_event(1, vb.channel_connection_id(1))
    server.on_event(2, vb.channel_connection_id(1))
    st = server.status()
    assert st[1]["channels"][1]["state"] == "rescinded"
    assert any(k.startswith("channel reset") for k in st[1]["errors"])
    assert st[2]["channels"][1]["state"] == "open" and st[2]["channels"][1]["packets_in"] == 1
    msgs = hv.take(1)
    assert [t for t, _ in msgs] == [Msg.CHANNELMSG_RESCIND_CHANNELOFFER]
    # signals for a channel that is not open are counted
    server.on_event(1, vb.channel_connection_id(1))
    server.on_event(1, vb.channel_connection_id(5))
    assert server.status()[1]["errors"]["signal for a channel not open"] == 2
    send(server, 1, Msg.CHANNELMSG_RELID_RELEASED, vb.RELID.pack(1))
    assert "RELID_RELEASED of a channel not rescinded" not in server.status()[1]["errors"]


def test_unload_and_contact_again():
    server, hv, mems, _ = connected()
    open_channel(server, hv, 1, mems[1])
    hv.take()
    send(server, 1, Msg.CHANNELMSG_UNLOAD)
    assert [t for t, _ in hv.take()] == [Msg.CHANNELMSG_UNLOAD_RESPONSE]
    bus = server.partitions[1]
    assert bus.version == 0 and bus.gpadls == {} and bus.offers[1].channel is None
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    assert Msg.CHANNELMSG_OFFERCHANNEL in [t for t, _ in hv.take()]
    # a second contact without unload (the guest rebooted) starts over as well
    open_channel(server, hv, 1, mems[1])
    contact(server, 1)
    assert server.partitions[1].offers[1].channel is None


def test_random_junk_never_raises():
    """Channel messages of every type with random bodies, random ring bytes, well-framed
    packets with random payloads, signals: every one is refused or served, none raises (a
    raise would be a handler error)."""
    import random

    from proto.vmbus_ring import HEADER_SIZE, PACKET_TYPES, RingError

    rng = random.Random(10)
    server, hv, mems, _ = connected(partitions=(1,))
    gpadl = 0x100
    ch = open_channel(server, hv, 1, mems[1], gpadl=gpadl)
    for i in range(3000):
        bus = server.partitions[1]
        if not bus.version or bus.offers[1].rescinded:
            server.add_partition(1, mems[1], [type(bus.offers[1].device)(bus.offers[1].device.disk)])
            contact(server, 1)
            send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
            gpadl += 1
            ch = open_channel(server, hv, 1, mems[1], gpadl=gpadl)
        kind = rng.random()
        if kind < 0.3:
            msgtype = rng.choice(list(Msg) + [0, 99])
            body = rng.randbytes(rng.randrange(0, 232))
            if rng.random() < 0.5:  # plausible relids and GPADL ids
                body = struct.pack("<II", rng.choice((1, 2, 0)), rng.choice((gpadl, 5, 0))) + body[8:]
            server.on_message(1, 0, rng.choice((1, 4, 4, 4, 0x2001)), struct.pack("<II", msgtype, 0) + body)
        elif kind < 0.4:
            ch.to_host.view.write(rng.randrange(0, HEADER_SIZE + 4096 - 16), rng.randbytes(16))
            server.on_event(1, vb.channel_connection_id(rng.choice((1, 1, 2))))
        elif kind < 0.9:
            header = b""
            ptype = rng.choice(PACKET_TYPES)
            if ptype == 9 and rng.random() < 0.7:
                pages = rng.randrange(1, 4)
                header = struct.pack("<II", 0, 1) + struct.pack("<II", rng.randrange(1, pages * 4096),
                                                                rng.randrange(0, 64)) \
                    + struct.pack(f"<{pages}Q", *(rng.choice((70, 71, 72, 1 << 20)) for _ in range(pages)))
            payload = rng.randbytes(rng.randrange(0, 80))
            if rng.random() < 0.5:
                payload = struct.pack("<III", rng.randrange(1, 12), 1, 0) + payload
            try:
                ch.to_host.write([encode_packet(ptype, payload, i, rng.randrange(0, 2), header.ljust(
                    (len(header) + 7) & ~7, b"\0"))])
            except RingError:
                pass
            server.on_event(1, vb.channel_connection_id(1))
        else:
            server.poll_busy()
    assert sum(server.partitions[1].offers[1].device.stats.errors.values()) > 10
