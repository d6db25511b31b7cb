"""storvsp against a device object: initialisation, SCSI commands, GPA-direct data, queue
depth, hostile SRBs."""

from __future__ import annotations

import struct

import pytest

from proto import vmbus as vb
from proto import vstor as vs
from proto.memory import PAGE_SIZE
from proto.vmbus_ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
                              GpaRange, encode_gpa_direct, encode_packet)

from tests.unit.vsp.support import contact, open_channel, send, storage_bus

Op = vs.VstorOperation
CR = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED
DATA_PAGE = 64  # guest buffers from here


class Guest:
    def __init__(self, partitions=(1,), init=True):
        self.server, self.hv, self.mems, self.disks = storage_bus(partitions)
        self.ch = {}
        for p in partitions:
            contact(self.server, p)
            send(self.server, p, vb.ChannelMessage.CHANNELMSG_REQUESTOFFERS)
            self.ch[p] = open_channel(self.server, self.hv, p, self.mems[p])
        self.hv.take()
        self.tid = 0
        if init:
            for p in partitions:
                for op, body in ((Op.BEGIN_INITIALIZATION, b""),
                                 (Op.QUERY_PROTOCOL_VERSION, vs.VERSION.pack(vs.VMSTOR_PROTO_VERSION_WIN10, 0)),
                                 (Op.QUERY_PROPERTIES, b""), (Op.END_INITIALIZATION, b"")):
                    [(status, _)] = self.roundtrip(p, [self.inband(op, body)])
                    assert status == 0

    def inband(self, op, body=b""):
        self.tid += 1
        return encode_packet(VM_PKT_DATA_INBAND, vs.packet(op, 0, body), self.tid, CR)

    def srb(self, cdb, data_in=vs.UNKNOWN_TYPE, length=0, pages=None, lun=0):
        self.tid += 1
        pkt = vs.packet(Op.EXECUTE_SRB, 0, vs.srb(cdb, data_in, length, lun=lun))
        if pages is None:
            return encode_packet(VM_PKT_DATA_INBAND, pkt, self.tid, CR)
        return encode_gpa_direct(pkt, [pages], self.tid)

    def roundtrip(self, p, packets):
        """Write the packets, signal, read the completions: [(status, body)]."""
        signalled = self.ch[p].to_host.write(packets)
        if signalled:
            self.server.on_event(p, vb.channel_connection_id(1))
        got, _ = self.ch[p].to_guest.read()
        assert all(g.type == VM_PKT_COMP for g in got)
        return [(vs.VSTOR_PACKET.unpack_from(g.payload)[2], g.payload[12:]) for g in got]

    def srb_result(self, body):
        f = vs.VMSCSI_REQUEST.unpack_from(body)
        return {"srb_status": f[1], "scsi_status": f[2], "sense_len": f[8], "length": f[11], "sense": f[12]}


def buffer(n, page=DATA_PAGE, offset=0):
    pages = (offset + n + PAGE_SIZE - 1) // PAGE_SIZE
    return GpaRange(n, offset, tuple(range(page, page + pages)))


def test_initialisation_order_and_versions():
    g = Guest(init=False)
    [(status, _)] = g.roundtrip(1, [g.inband(Op.QUERY_PROPERTIES)])
    assert status == vs.STATUS_INVALID_DEVICE_STATE
    [(status, _)] = g.roundtrip(1, [g.inband(Op.BEGIN_INITIALIZATION)])
    assert status == 0
    [(status, body)] = g.roundtrip(1, [g.inband(Op.QUERY_PROTOCOL_VERSION, vs.VERSION.pack(0x0402, 0))])
    assert status == vs.STATUS_REVISION_MISMATCH
    [(status, body)] = g.roundtrip(1, [g.inband(Op.QUERY_PROTOCOL_VERSION, vs.VERSION.pack(0x0600, 0))])
    assert status == 0 and vs.VERSION.unpack_from(body)[0] == 0x0600
    [(status, body)] = g.roundtrip(1, [g.inband(Op.QUERY_PROPERTIES)])
    assert status == 0 and vs.PROPERTIES.unpack_from(body)[4] == 0x40000
    [(status, _)] = g.roundtrip(1, [g.srb(bytes(6))])
    assert status == vs.STATUS_INVALID_DEVICE_STATE  # not initialised yet
    [(status, _)] = g.roundtrip(1, [g.inband(Op.END_INITIALIZATION)])
    assert status == 0
    [(status, body)] = g.roundtrip(1, [g.srb(bytes(6))])  # TEST UNIT READY
    assert status == 0 and g.srb_result(body)["srb_status"] == vs.SRB_STATUS_SUCCESS


def test_write_then_read_back_by_gpa_direct_unaligned_buffer():
    g = Guest()
    mem = g.mems[1]
    data = bytes(range(256)) * 256  # 64 KiB
    src = buffer(len(data), DATA_PAGE, offset=100)
    mem.write(DATA_PAGE * PAGE_SIZE + 100, data)
    [(status, body)] = g.roundtrip(1, [g.srb(vs.rw10(vs.WRITE_10, 8, 128), vs.WRITE_TYPE, len(data), src)])
    assert status == 0 and g.srb_result(body)["length"] == len(data)
    assert bytes(g.disks[1].data[8 * 512:8 * 512 + len(data)]) == data
    dst = buffer(len(data), DATA_PAGE + 40)
    [(status, body)] = g.roundtrip(1, [g.srb(vs.rw16(vs.READ_16, 8, 128), vs.READ_TYPE, len(data), dst)])
    assert status == 0 and g.srb_result(body)["srb_status"] == vs.SRB_STATUS_SUCCESS
    assert mem.read((DATA_PAGE + 40) * PAGE_SIZE, len(data)) == data
    [(status, _)] = g.roundtrip(1, [g.srb(bytes([vs.SYNCHRONIZE_CACHE_10]) + bytes(9))])
    assert status == 0 and g.disks[1].flushes == 1
    st = g.server.partitions[1].offers[1].device.stats
    assert (st.reads, st.writes, st.flushes, st.bytes_written) == (1, 1, 1, len(data))


def test_queue_depth_eight_one_signal_each_way():
    g = Guest()
    g.hv.signals.clear()
    reqs = [g.srb(vs.rw10(vs.WRITE_10, i * 8, 8), vs.WRITE_TYPE, 4096, buffer(4096, DATA_PAGE + i))
            for i in range(8)]
    results = g.roundtrip(1, reqs)
    assert len(results) == 8 and all(s == 0 for s, _ in results)
    assert len(g.hv.signals) == 1  # eight completions, one signal
    assert g.hv.signals[0] == (1, 0, vb.VMBUS_MESSAGE_SINT, 1)


def test_inquiry_capacity_report_luns():
    g = Guest()
    mem = g.mems[1]
    out = buffer(64, DATA_PAGE)
    [(s, body)] = g.roundtrip(1, [g.srb(bytes([vs.INQUIRY, 0, 0, 0, 36, 0]), vs.READ_TYPE, 36, out)])
    assert s == 0 and g.srb_result(body)["length"] == 36
    inq = mem.read(DATA_PAGE * PAGE_SIZE, 36)
    assert inq[0] == 0 and inq[8:16] == b"Msft    "
    [(s, body)] = g.roundtrip(1, [g.srb(bytes([vs.READ_CAPACITY_10]) + bytes(9), vs.READ_TYPE, 8, out)])
    assert struct.unpack(">II", mem.read(DATA_PAGE * PAGE_SIZE, 8)) == ((1 << 20) // 512 - 1, 512)
    cdb16 = bytes([vs.SERVICE_ACTION_IN_16, vs.SAI_READ_CAPACITY_16]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    [(s, body)] = g.roundtrip(1, [g.srb(cdb16, vs.READ_TYPE, 32, out)])
    assert struct.unpack_from(">QI", mem.read(DATA_PAGE * PAGE_SIZE, 12)) == ((1 << 20) // 512 - 1, 512)
    [(s, body)] = g.roundtrip(1, [g.srb(bytes([vs.REPORT_LUNS]) + bytes(11), vs.READ_TYPE, 16, out)])
    assert mem.read(DATA_PAGE * PAGE_SIZE, 16) == struct.pack(">II", 8, 0) + bytes(8)


def test_errors_with_sense():
    g = Guest()
    [(s, body)] = g.roundtrip(1, [g.srb(bytes([0xEE]) + bytes(9))])
    r = g.srb_result(body)
    assert r["scsi_status"] == vs.SCSI_CHECK_CONDITION
    assert r["srb_status"] == vs.SRB_STATUS_ERROR | vs.SRB_STATUS_AUTOSENSE_VALID
    assert r["sense"][2] == vs.ILLEGAL_REQUEST and r["sense"][12] == vs.ASC_INVALID_OPCODE
    blocks = (1 << 20) // 512
    [(s, body)] = g.roundtrip(1, [g.srb(vs.rw10(vs.READ_10, blocks - 1, 2), vs.READ_TYPE, 1024, buffer(1024))])
    assert g.srb_result(body)["sense"][12] == vs.ASC_LBA_OUT_OF_RANGE
    [(s, body)] = g.roundtrip(1, [g.srb(bytes(6), lun=3)])
    assert g.srb_result(body)["srb_status"] == vs.SRB_STATUS_INVALID_LUN
    g.disks[1].fail = "flush"
    [(s, body)] = g.roundtrip(1, [g.srb(bytes([vs.SYNCHRONIZE_CACHE_10]) + bytes(9))])
    assert g.srb_result(body)["scsi_status"] == vs.SCSI_CHECK_CONDITION


@pytest.mark.parametrize("case", ["srb longer than pages", "transfer longer than srb", "pages outside",
                                  "no pages"])
def test_hostile_srbs_are_refused_and_the_channel_goes_on(case):
    g = Guest()
    if case == "srb longer than pages":
        pkt = g.srb(vs.rw10(vs.WRITE_10, 0, 128), vs.WRITE_TYPE, 65536, buffer(4096))
    elif case == "transfer longer than srb":
        pkt = g.srb(vs.rw10(vs.WRITE_10, 0, 128), vs.WRITE_TYPE, 4096, buffer(4096))
    elif case == "pages outside":
        pkt = g.srb(vs.rw10(vs.READ_10, 0, 8), vs.READ_TYPE, 4096, GpaRange(4096, 0, (1 << 30,)))
    else:
        pkt = g.srb(vs.rw10(vs.WRITE_10, 0, 8), vs.WRITE_TYPE, 4096)
    [(status, body)] = g.roundtrip(1, [pkt])
    assert status != 0 and g.srb_result(body)["srb_status"] != vs.SRB_STATUS_SUCCESS
    assert g.disks[1].data[:4096] == bytes(4096)
    assert g.server.partitions[1].offers[1].device.stats.errors
    [(status, _)] = g.roundtrip(1, [g.srb(bytes(6))])  # still serving
    assert status == 0


@pytest.mark.parametrize("pfns", [(252, 253, 254, 255, 256), (250, 251, 300, 301)])
@pytest.mark.parametrize("op", [vs.WRITE_10, vs.READ_10])
def test_a_page_run_crossing_out_of_the_partition_is_refused_whole(op, pfns):
    """Pages that follow each other are one pread/pwrite: a run that goes on past the
    partition's memory (256 pages here), or a later run outside it, is refused before any
    byte moves — nothing of the image written, nothing of the guest's pages."""
    g = Guest()
    mem = g.mems[1]
    g.disks[1].data[:len(pfns) * PAGE_SIZE] = b"d" * (len(pfns) * PAGE_SIZE)
    mem.write(250 * PAGE_SIZE, b"g" * (6 * PAGE_SIZE))
    n = len(pfns) * PAGE_SIZE
    data_in = vs.WRITE_TYPE if op == vs.WRITE_10 else vs.READ_TYPE
    [(status, body)] = g.roundtrip(1, [g.srb(vs.rw10(op, 0, n // 512), data_in, n, GpaRange(n, 0, pfns))])
    assert status != 0 and g.srb_result(body)["srb_status"] != vs.SRB_STATUS_SUCCESS
    assert g.srb_result(body)["length"] == 0
    assert bytes(g.disks[1].data[:n]) == b"d" * n
    assert mem.read(250 * PAGE_SIZE, 6 * PAGE_SIZE) == b"g" * (6 * PAGE_SIZE)
    assert g.server.partitions[1].offers[1].device.stats.errors == {"data pages outside the partition": 1}


def test_malformed_gpa_header_resets_the_channel_other_partition_unaffected():
    g = Guest(partitions=(1, 2))
    bad = bytearray(g.srb(vs.rw10(vs.READ_10, 0, 8), vs.READ_TYPE, 4096, buffer(4096)))
    struct.pack_into("<I", bad, 20, 500)  # range count
    g.ch[1].to_host.write([bytes(bad)])
    g.server.on_event(1, vb.channel_connection_id(1))
    assert g.server.status()[1]["channels"][1]["state"] == "rescinded"
    [(status, _)] = g.roundtrip(2, [g.srb(bytes(6))])
    assert status == 0
    assert g.server.status()[2]["channels"][1]["state"] == "open"


def test_completion_not_requested_gets_none():
    g = Guest()
    g.tid += 1
    pkt = encode_packet(VM_PKT_DATA_INBAND, vs.packet(Op.EXECUTE_SRB, 0, vs.srb(bytes(6), 2, 0)), g.tid, 0)
    assert g.roundtrip(1, [pkt]) == []


def test_poll_mode_after_a_deep_queue_then_signals_again(monkeypatch):
    from root.vsp import server as server_mod

    g = Guest()
    reqs = lambda: [g.srb(bytes(6)) for _ in range(4)]  # noqa: E731
    assert len(g.roundtrip(1, reqs())) == 4
    key = (1, 1)
    assert key in g.server.polling and g.ch[1].to_host.interrupt_mask == 1
    # the guest's next requests need no signal: the VSP is still looking
    assert g.ch[1].to_host.write(reqs()) is False
    g.server.poll_busy()
    got, _ = g.ch[1].to_guest.read()
    assert len(got) == 4
    # the window ends: unmasked, and a request signals again
    g.server.polling[key] = 0
    monkeypatch.setattr(server_mod, "POLL_MODE_QUEUE_DEPTH", 99)
    g.server.poll_busy()
    assert key not in g.server.polling and g.ch[1].to_host.interrupt_mask == 0
    assert g.ch[1].to_host.write([g.srb(bytes(6))]) is True


def test_no_poll_mode_at_queue_depth_one():
    g = Guest()
    g.roundtrip(1, [g.srb(bytes(6))])
    assert g.server.polling == {} and g.ch[1].to_host.interrupt_mask == 0
