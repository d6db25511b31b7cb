"""NVSP (the synthetic NIC's VMBus protocol) and the minimal RNDIS set on top of it, as
Linux's netvsc (drivers/net/hyperv/hyperv_net.h, rndis_filter.c) and OpenVMM's netvsp
(protocol.rs, rndisprot.rs) lay them out; shared by the guest's netvsc and the root's
netvsp.

An NVSP message is ``type`` u32 then its body, padded to the 6.1 wire size (40 bytes).
Frames travel as RNDIS PACKET messages: guest → host in a GPA-direct packet whose range is
the RNDIS message, with an NVSP SEND_RNDIS_PKT (section index 0xFFFFFFFF: not in a send
buffer), or — small messages, as Linux's netvsc sends them — copied into a section of the
guest's send buffer (a GPADL it named with SEND_SEND_BUF; the host says the section size)
and named by an in-band SEND_RNDIS_PKT with that section's index and the message's size;
host → guest copied into a section of the guest's receive buffer (a GPADL it
named with SEND_RECV_BUF) and announced by a transfer-page packet (page set 0xCAFE) with
the same NVSP message; the guest completes that transaction to give the section back.
RNDIS control messages (INITIALIZE, QUERY, SET) take the same two ways with channel type 1.
"""

from __future__ import annotations

import struct

NVSP_WIRE_SIZE = 40
NVSP_HEADER = struct.Struct("<I")
NVSP_MSG_TYPE_INIT = 1
NVSP_MSG_TYPE_INIT_COMPLETE = 2
NVSP_MSG1_TYPE_SEND_NDIS_VER = 100
NVSP_MSG1_TYPE_SEND_RECV_BUF = 101
NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE = 102
NVSP_MSG1_TYPE_SEND_SEND_BUF = 104
NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE = 105
NVSP_MSG1_TYPE_SEND_RNDIS_PKT = 107
NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE = 108
NVSP_MSG2_TYPE_SEND_NDIS_CONFIG = 125
NVSP_STAT_SUCCESS, NVSP_STAT_FAIL = 1, 2
NVSP_PROTOCOL_VERSION_61 = 0x00060001
NVSP_PROTOCOL_VERSION_6 = 0x00060000
NVSP_PROTOCOL_VERSION_5 = 0x00050000
SUPPORTED_VERSIONS = (NVSP_PROTOCOL_VERSION_5, NVSP_PROTOCOL_VERSION_6, NVSP_PROTOCOL_VERSION_61)
NETVSC_RECEIVE_BUFFER_ID = 0xCAFE
NETVSC_INVALID_INDEX = 0xFFFFFFFF
NETVSC_SEND_BUFFER_ID = 0
RNDIS_CHANNEL_DATA, RNDIS_CHANNEL_CONTROL = 0, 1

INIT = struct.Struct("<II")  # min, max protocol version
INIT_COMPLETE = struct.Struct("<III")  # negotiated (deprecated), max_mdl_chain_length, status
SEND_RECV_BUF = struct.Struct("<IHH")  # gpadl, id, reserved
RECV_BUF_COMPLETE = struct.Struct("<II")  # status, num_sections; then sections
RECV_SECTION = struct.Struct("<IIII")  # offset, sub_alloc_size, num_sub_allocs, end_offset
SEND_SEND_BUF = struct.Struct("<IHH")  # gpadl, id, reserved
SEND_BUF_COMPLETE = struct.Struct("<II")  # status, section_size
RNDIS_PKT = struct.Struct("<III")  # channel_type, send_buf_section_index, send_buf_section_size
STATUS = struct.Struct("<I")
# Transfer-page packet header after the descriptor: xfer_pageset_id u16, sender_owns u8,
# reserved u8, range_count u32; then ranges of byte_count u32, byte_offset u32.
XFER_PAGE_HEADER = struct.Struct("<HBBI")
XFER_RANGE = struct.Struct("<II")

# RNDIS
RNDIS_HEADER = struct.Struct("<II")  # message_type, message_length
RNDIS_MSG_PACKET = 1
RNDIS_MSG_INIT = 2
RNDIS_MSG_QUERY = 4
RNDIS_MSG_SET = 5
RNDIS_MSG_COMPLETION = 0x80000000
RNDIS_STATUS_SUCCESS = 0
RNDIS_STATUS_NOT_SUPPORTED = 0xC00000BB
RNDIS_STATUS_INVALID_DATA = 0xC0010015
RNDIS_PACKET = struct.Struct("<IIIIIIIII")  # data_offset, data_length, oob…, ppi…, vc_handle, reserved
INIT_REQUEST = struct.Struct("<IIII")  # request_id, major, minor, max_transfer_size
INIT_COMPLETE_BODY = struct.Struct("<IIIIIIIIIII")  # request_id, status, major, minor, flags, medium,
# max_packets_per_message, max_transfer_size, packet_alignment_factor, af_list_offset, af_list_size
QUERY_REQUEST = struct.Struct("<IIIII")  # request_id, oid, info_buffer_length, info_buffer_offset, vc_handle
QUERY_COMPLETE = struct.Struct("<IIII")  # request_id, status, info_buffer_length, info_buffer_offset
SET_REQUEST = QUERY_REQUEST
SET_COMPLETE = struct.Struct("<II")  # request_id, status
OID_GEN_MAXIMUM_FRAME_SIZE = 0x00010106
OID_GEN_CURRENT_PACKET_FILTER = 0x0001010E
OID_GEN_MEDIA_CONNECT_STATUS = 0x00010114
OID_802_3_PERMANENT_ADDRESS = 0x01010101
NDIS_PACKET_TYPE_DIRECTED, NDIS_PACKET_TYPE_BROADCAST = 0x1, 0x8
MTU = 1500
MAX_FRAME = MTU + 14


def nvsp(msg_type: int, body: bytes = b"") -> bytes:
    return (NVSP_HEADER.pack(msg_type) + body).ljust(NVSP_WIRE_SIZE, b"\0")


def rndis(msg_type: int, body: bytes) -> bytes:
    return RNDIS_HEADER.pack(msg_type, RNDIS_HEADER.size + len(body)) + body


def rndis_packet(frame: bytes) -> bytes:
    """An RNDIS PACKET message carrying ``frame`` right after its header (data_offset counts
    from the data_offset field, 8 bytes into the message)."""
    return rndis(RNDIS_MSG_PACKET, RNDIS_PACKET.pack(RNDIS_PACKET.size, len(frame), 0, 0, 0, 0, 0, 0, 0) + frame)


def parse_rndis_packet(msg: bytes) -> bytes | None:
    """The frame of an RNDIS PACKET message, or None when its offsets do not hold."""
    if len(msg) < RNDIS_HEADER.size + RNDIS_PACKET.size:
        return None
    mtype, mlen = RNDIS_HEADER.unpack_from(msg)
    off, n = RNDIS_PACKET.unpack_from(msg, RNDIS_HEADER.size)[:2]
    start = RNDIS_HEADER.size + off
    if mtype != RNDIS_MSG_PACKET or mlen > len(msg) or off < RNDIS_PACKET.size or start + n > mlen:
        return None
    return msg[start:start + n]
