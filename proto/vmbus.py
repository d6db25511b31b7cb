"""VMBus channel-management messages, as Linux (include/linux/hyperv.h, drivers/hv/
channel_mgmt.c, connection.c) and OpenVMM (vm/devices/vmbus/vmbus_core) lay them out.

They travel as SynIC messages of message type 1 (:data:`VMBUS_MESSAGE_TYPE`), the payload
(at most 240 bytes) being ``{msgtype u32, padding u32}`` then the body.  The guest posts them
with HvCallPostMessage to connection 4 (protocol 5.0 and up; 1 before); the root posts its
own to the guest's SINT 2 on the VP the guest named in INITIATE_CONTACT.

Used by both sides (the guest's VMBus driver and the root's VMBus server), so here: pure
code, nothing of ours imported but the error tree.
"""

from __future__ import annotations

import enum
import struct
import uuid

from proto.errors import HvstackError

VMBUS_MESSAGE_TYPE = 1
VMBUS_MESSAGE_SINT = 2
VMBUS_MESSAGE_CONNECTION_ID = 1  # protocols before 5.0
VMBUS_MESSAGE_CONNECTION_ID_4 = 4  # 5.0 and up ("multiclient")
HV_MESSAGE_PAYLOAD_BYTES = 240
# The channel's event connection id as OpenVMM forms it: relid | sint << 12 (VTL 0).
CHANNEL_CONNECTION_BASE = VMBUS_MESSAGE_SINT << 12


def channel_connection_id(relid: int) -> int:
    return relid | CHANNEL_CONNECTION_BASE


class ChannelMessage(enum.IntEnum):
    CHANNELMSG_OFFERCHANNEL = 1
    CHANNELMSG_RESCIND_CHANNELOFFER = 2
    CHANNELMSG_REQUESTOFFERS = 3
    CHANNELMSG_ALLOFFERS_DELIVERED = 4
    CHANNELMSG_OPENCHANNEL = 5
    CHANNELMSG_OPENCHANNEL_RESULT = 6
    CHANNELMSG_CLOSECHANNEL = 7
    CHANNELMSG_GPADL_HEADER = 8
    CHANNELMSG_GPADL_BODY = 9
    CHANNELMSG_GPADL_CREATED = 10
    CHANNELMSG_GPADL_TEARDOWN = 11
    CHANNELMSG_GPADL_TORNDOWN = 12
    CHANNELMSG_RELID_RELEASED = 13
    CHANNELMSG_INITIATE_CONTACT = 14
    CHANNELMSG_VERSION_RESPONSE = 15
    CHANNELMSG_UNLOAD = 16
    CHANNELMSG_UNLOAD_RESPONSE = 17


# Protocol versions, (major << 16) | minor (Linux VERSION_*; OpenVMM Version).
VERSION_WIN10 = 0x00040000
VERSION_WIN10_V4_1 = 0x00040001
VERSION_WIN10_V5 = 0x00050000
VERSION_WIN10_V5_1 = 0x00050001
VERSION_WIN10_V5_2 = 0x00050002
VERSION_WIN10_V5_3 = 0x00050003
SUPPORTED_VERSIONS = (VERSION_WIN10, VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN10_V5_1,
                      VERSION_WIN10_V5_2, VERSION_WIN10_V5_3)

# Device classes (OpenVMM guid constants; Linux HV_SCSI_GUID, HV_NIC_GUID).
HV_SCSI_GUID = uuid.UUID("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f")
HV_NIC_GUID = uuid.UUID("f8615163-df3e-46c5-913f-f2d2f965ed0e")

HEADER = struct.Struct("<II")  # msgtype, padding
INITIATE_CONTACT = struct.Struct("<IIQQQ")  # version, target_vcpu, interrupt page | msg_sint…, monitor 1, 2
VERSION_RESPONSE = struct.Struct("<BBHI")  # supported, connection_state, pad, msg_conn_id | version
# Offer: if_type, if_instance (16 each), 16 reserved, chn_flags u16, mmio_megabytes u16,
# user data [120], sub_channel_index u16, reserved u16, child_relid u32, monitorid u8,
# monitor_allocated u8, is_dedicated_interrupt u16, connection_id u32: 188 bytes.
OFFER = struct.Struct("<16s16s16sHH120sHHIBBHI")
GPADL_HEADER = struct.Struct("<IIHH")  # child_relid, gpadl, range_buflen, rangecount
GPA_RANGE_HEAD = struct.Struct("<II")  # byte_count, byte_offset (then PFNs)
GPADL_BODY = struct.Struct("<II")  # msgnumber, gpadl (then PFNs)
GPADL_CREATED = struct.Struct("<III")  # child_relid, gpadl, creation_status
GPADL_TEARDOWN = struct.Struct("<II")  # child_relid, gpadl
GPADL_TORNDOWN = struct.Struct("<I")  # gpadl
OPEN_CHANNEL = struct.Struct("<IIIII120s")  # relid, openid, gpadl, target_vp, downstream page offset, user data
OPEN_RESULT = struct.Struct("<III")  # relid, openid, status
RELID = struct.Struct("<I")  # CLOSECHANNEL, RESCIND_CHANNELOFFER, RELID_RELEASED
# PFNs per message: the header's first range head takes 8 of the 240 − 8 − 12 bytes.
GPADL_HEADER_MAX_PFNS = (HV_MESSAGE_PAYLOAD_BYTES - HEADER.size - GPADL_HEADER.size - GPA_RANGE_HEAD.size) // 8
GPADL_BODY_MAX_PFNS = (HV_MESSAGE_PAYLOAD_BYTES - HEADER.size - GPADL_BODY.size) // 8
STATUS_UNSUCCESSFUL = 0xC0000001  # an NTSTATUS: creation_status / open status ≠ 0 is failure


class BadChannelMessage(HvstackError):
    """A channel message that cannot be parsed (too short, unknown type)."""


def encode(msgtype: int, body: bytes = b"") -> bytes:
    data = HEADER.pack(msgtype, 0) + body
    if len(data) > HV_MESSAGE_PAYLOAD_BYTES:
        raise ValueError(f"channel message of {len(data)} bytes, at most {HV_MESSAGE_PAYLOAD_BYTES}")
    return data


def split(payload: bytes) -> tuple[ChannelMessage, bytes]:
    """A message payload → (its type, its body)."""
    if len(payload) < HEADER.size:
        raise BadChannelMessage(f"{len(payload)} bytes, less than a channel message header")
    msgtype, _ = HEADER.unpack_from(payload)
    try:
        return ChannelMessage(msgtype), payload[HEADER.size:]
    except ValueError:
        raise BadChannelMessage(f"unknown channel message type {msgtype}") from None


def unpack(layout: struct.Struct, body: bytes, what: str) -> tuple:
    if len(body) < layout.size:
        raise BadChannelMessage(f"{what}: {len(body)} bytes, needs {layout.size}")
    return layout.unpack_from(body)


def offer(if_type: uuid.UUID, if_instance: uuid.UUID, relid: int, connection_id: int) -> bytes:
    body = OFFER.pack(if_type.bytes_le, if_instance.bytes_le, bytes(16), 0, 0, bytes(120), 0, 0,
                      relid, 0, 0, 1, connection_id)
    return encode(ChannelMessage.CHANNELMSG_OFFERCHANNEL, body)


def parse_offer(body: bytes) -> dict:
    (if_type, if_instance, _, _, _, _, sub, _, relid, _, _, dedicated, conn) = unpack(OFFER, body, "offer")
    return {"if_type": uuid.UUID(bytes_le=if_type), "if_instance": uuid.UUID(bytes_le=if_instance),
            "subchannel_index": sub, "child_relid": relid, "dedicated": bool(dedicated & 1),
            "connection_id": conn}


def gpadl_messages(relid: int, gpadl: int, pfns: list[int]) -> list[bytes]:
    """A GPADL of one range covering ``pfns`` whole pages: the header message and as many
    body messages as the PFNs need (Linux ``create_gpadl_header``)."""
    first = pfns[:GPADL_HEADER_MAX_PFNS]
    rng = GPA_RANGE_HEAD.pack(len(pfns) * 4096, 0)
    head = GPADL_HEADER.pack(relid, gpadl, GPA_RANGE_HEAD.size + 8 * len(pfns), 1) + rng
    out = [encode(ChannelMessage.CHANNELMSG_GPADL_HEADER, head + struct.pack(f"<{len(first)}Q", *first))]
    rest = pfns[GPADL_HEADER_MAX_PFNS:]
    n = 0
    while rest:
        chunk, rest = rest[:GPADL_BODY_MAX_PFNS], rest[GPADL_BODY_MAX_PFNS:]
        n += 1
        out.append(encode(ChannelMessage.CHANNELMSG_GPADL_BODY,
                          GPADL_BODY.pack(n, gpadl) + struct.pack(f"<{len(chunk)}Q", *chunk)))
    return out
