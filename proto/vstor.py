"""The VSTOR protocol (Hyper-V synthetic SCSI) as Linux's storvsc (drivers/scsi/
storvsc_drv.c) and OpenVMM's storvsp_protocol lay it out; shared by the guest's storvsc
and the root's storvsp.

A ``vstor_packet`` is operation u32, flags u32, status u32 (an NTSTATUS) and a 52-byte
union (from Windows 8 on: 64 bytes in all): the ``vmscsi_request``, the channel properties
or the protocol version.
"""

from __future__ import annotations

import enum
import struct

VSTOR_PACKET = struct.Struct("<III")  # operation, flags, status; then the 52-byte union
VSTOR_PACKET_SIZE = 64
REQUEST_COMPLETION_FLAG = 1


class VstorOperation(enum.IntEnum):
    COMPLETE_IO = 1
    REMOVE_DEVICE = 2
    EXECUTE_SRB = 3
    RESET_LUN = 4
    RESET_ADAPTER = 5
    RESET_BUS = 6
    BEGIN_INITIALIZATION = 7
    END_INITIALIZATION = 8
    QUERY_PROTOCOL_VERSION = 9
    QUERY_PROPERTIES = 10
    ENUMERATE_BUS = 11


# Protocol versions, major << 8 | minor (Linux VMSTOR_PROTO_VERSION_*).
VMSTOR_PROTO_VERSION_WIN8 = 0x0501
VMSTOR_PROTO_VERSION_BLUE = 0x0600
VMSTOR_PROTO_VERSION_WIN10 = 0x0602
SUPPORTED_VERSIONS = (VMSTOR_PROTO_VERSION_WIN8, VMSTOR_PROTO_VERSION_BLUE, VMSTOR_PROTO_VERSION_WIN10)
VERSION = struct.Struct("<HH")  # major_minor, revision
# storage_channel_properties: reserved, max_channel_cnt u16, reserved u16, flags,
# max_transfer_bytes, reserved u64.
PROPERTIES = struct.Struct("<IHHIIQ")

# vmscsi_request (Windows 8 size, 52 bytes): length u16, srb_status, scsi_status, port,
# path_id, target_id, lun, cdb_length, sense_info_length, data_in, reserved,
# data_transfer_length u32, cdb/sense [20], reserve u16, queue_tag, queue_action,
# srb_flags u32, time_out_value u32, queue_sort_key u32.
VMSCSI_REQUEST = struct.Struct("<HBBBBBBBBBBI20sHBBIII")
SENSE_BUFFER_SIZE = 20
CDB_MAX = 16

# data_in
WRITE_TYPE, READ_TYPE, UNKNOWN_TYPE = 0, 1, 2

# SRB status (Windows srb.h; OpenVMM scsi_defs)
SRB_STATUS_SUCCESS = 0x01
SRB_STATUS_ABORTED = 0x02
SRB_STATUS_ERROR = 0x04
SRB_STATUS_INVALID_REQUEST = 0x06
SRB_STATUS_DATA_OVERRUN = 0x12
SRB_STATUS_INVALID_LUN = 0x20
SRB_STATUS_AUTOSENSE_VALID = 0x80

# NTSTATUS
STATUS_SUCCESS = 0
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_REVISION_MISMATCH = 0xC0000059
STATUS_INVALID_DEVICE_STATE = 0xC0000184
STATUS_IO_DEVICE_ERROR = 0xC0000185

# SCSI
SCSI_GOOD, SCSI_CHECK_CONDITION = 0x00, 0x02
TEST_UNIT_READY = 0x00
INQUIRY = 0x12
READ_CAPACITY_10 = 0x25
READ_10, WRITE_10 = 0x28, 0x2A
SYNCHRONIZE_CACHE_10 = 0x35
READ_16, WRITE_16 = 0x88, 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
SERVICE_ACTION_IN_16 = 0x9E
SAI_READ_CAPACITY_16 = 0x10
REPORT_LUNS = 0xA0
# Sense keys and additional sense codes
ILLEGAL_REQUEST, MEDIUM_ERROR, HARDWARE_ERROR = 0x05, 0x03, 0x04
ASC_INVALID_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_INVALID_FIELD_IN_CDB = 0x20, 0x21, 0x24
ASC_WRITE_ERROR, ASC_UNRECOVERED_READ_ERROR = 0x0C, 0x11


def packet(op: int, status: int = 0, body: bytes = b"", flags: int = REQUEST_COMPLETION_FLAG) -> bytes:
    data = VSTOR_PACKET.pack(op, flags, status) + body
    return data + bytes(VSTOR_PACKET_SIZE - len(data))


def srb(cdb: bytes, data_in: int, length: int, lun: int = 0, target: int = 0, path: int = 0) -> bytes:
    """A vmscsi_request for ``cdb``."""
    return VMSCSI_REQUEST.pack(VMSCSI_REQUEST.size, 0, 0, 0, path, target, lun, len(cdb), SENSE_BUFFER_SIZE,
                               data_in, 0, length, cdb.ljust(20, b"\0"), 0, 0, 0,
                               0x40 if data_in == READ_TYPE else 0x80 if data_in == WRITE_TYPE else 0, 60, 0)


def fixed_sense(key: int, asc: int, ascq: int = 0) -> bytes:
    """Fixed-format sense data (SPC: response code 0x70), 18 bytes."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


def rw10(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)


def rw16(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", op, 0, lba, blocks, 0, 0)
