"""storvsp: the synthetic SCSI controller's provider, one per offered disk, in the root's
kernel-side process (OpenVMM vm/devices/storage/storvsp; protocol in proto/vstor.py).

The channel's first packets initialise it (BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION,
QUERY_PROPERTIES, END_INITIALIZATION, in that order; anything else then is
STATUS_INVALID_DEVICE_STATE).  Then EXECUTE_SRB carries one SCSI command, in-band when it
moves no data and as a GPA-direct packet whose page list describes the guest's buffer when
it does: the data goes straight between the image and those guest pages (each checked
against the partition's SLAT).  Every request asked to be completed gets a VM_PKT_COMP
with the same transaction id carrying the SRB back (status, sense, bytes moved); all
requests of one ring drain are completed with one ring write, so a queue of several
outstanding requests costs one signal each way.

The disk is a raw image, the ATA disk's format (so one image attaches either way), at
512-byte blocks; SYNCHRONIZE CACHE is fsync.
"""

from __future__ import annotations

import logging
import struct
import uuid
from dataclasses import dataclass, field
from time import perf_counter_ns

from proto import vstor as vs
from proto.memory import PAGE_SIZE, UnmappedGpa
from proto.vmbus import HV_SCSI_GUID
from proto.vmbus_ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT, encode_packet,
                              parse_gpa_ranges)

log = logging.getLogger("vsp.storvsp")

BLOCK = 512
MAX_TRANSFER_BYTES = 0x40000  # 256 KiB, as OpenVMM's storvsp says in QUERY_PROPERTIES
SRB_SIZE = vs.VMSCSI_REQUEST.size

# The initialisation states, in order.
BEGIN, VERSION, PROPERTIES, END, READY = range(5)


@dataclass
class StorStats:
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    requests: int = 0
    flush_ns: int = 0  # time in fsync (SYNCHRONIZE CACHE), part of the channel's work_ns
    errors: dict = field(default_factory=dict)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class Outcome(Exception):
    """A SCSI command that ends other than GOOD: its SRB status, and sense if any."""

    def __init__(self, srb_status: int, sense: bytes = b"", status: int = vs.STATUS_SUCCESS) -> None:
        super().__init__(srb_status)
        self.srb_status, self.sense, self.status = srb_status, sense, status


def check_condition(key: int, asc: int) -> Outcome:
    return Outcome(vs.SRB_STATUS_ERROR, vs.fixed_sense(key, asc))


class StorVsp:
    if_type = HV_SCSI_GUID

    def __init__(self, disk, instance: uuid.UUID | None = None) -> None:
        self.disk = disk  # a DiskImage (worker/devices/backends.py's protocol)
        self.instance = instance or uuid.uuid4()
        self.blocks = disk.size // BLOCK
        self.state = BEGIN
        self.version = 0
        self.mem = None
        self.stats = StorStats()

    # -- the channel ------------------------------------------------------------------------

    def open(self, channel, mem) -> None:
        self.mem = mem
        self.state = BEGIN

    def close(self) -> None:
        self.state = BEGIN

    # -- saved state (root/vsp/saved.py): requests are never in flight at a save ------------

    def save(self) -> dict:
        return {"state": self.state, "version": self.version}

    def restore(self, d: dict) -> None:
        state, version = d["state"], d["version"]
        if type(state) is not int or not BEGIN <= state <= READY:
            raise ValueError(f"state {state!r} is not one of the initialisation states {BEGIN}..{READY}")
        if type(version) is not int or not 0 <= version <= 0xFFFF or (state > VERSION) != bool(version):
            raise ValueError(f"protocol version {version!r} does not fit state {state}")
        self.state, self.version = state, version

    def on_packets(self, channel, packets) -> None:
        out = []
        for p in packets:
            reply = self._packet(p)
            if reply is not None and p.completion_requested:
                out.append(encode_packet(VM_PKT_COMP, reply, p.transaction_id))
        if out:
            channel.send(out)

    def _packet(self, p) -> bytes | None:
        if p.type not in (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT):
            self.stats.error("packet type")
            return None
        if len(p.payload) < vs.VSTOR_PACKET.size:
            self.stats.error("short vstor packet")
            return None
        op, _, _ = vs.VSTOR_PACKET.unpack_from(p.payload)
        body = p.payload[vs.VSTOR_PACKET.size:]
        if op == vs.VstorOperation.EXECUTE_SRB:
            if self.state != READY:
                return self._reply(vs.STATUS_INVALID_DEVICE_STATE)
            return self._execute(p, body)
        step = {vs.VstorOperation.BEGIN_INITIALIZATION: BEGIN, vs.VstorOperation.QUERY_PROTOCOL_VERSION: VERSION,
                vs.VstorOperation.QUERY_PROPERTIES: PROPERTIES, vs.VstorOperation.END_INITIALIZATION: END}.get(op)
        if step is None:
            self.stats.error("unsupported operation")
            return self._reply(vs.STATUS_INVALID_DEVICE_REQUEST)
        if step != self.state:
            self.stats.error("operation out of order")
            return self._reply(vs.STATUS_INVALID_DEVICE_STATE)
        if step == VERSION:
            if len(body) < vs.VERSION.size:
                return self._reply(vs.STATUS_INVALID_PARAMETER)
            version, revision = vs.VERSION.unpack_from(body)
            if version not in vs.SUPPORTED_VERSIONS:
                return self._reply(vs.STATUS_REVISION_MISMATCH, vs.VERSION.pack(version, revision))
            self.version = version
            self.state = PROPERTIES
            return self._reply(vs.STATUS_SUCCESS, vs.VERSION.pack(version, revision))
        self.state += 1
        if step == PROPERTIES:
            return self._reply(vs.STATUS_SUCCESS, vs.PROPERTIES.pack(0, 1, 0, 0, MAX_TRANSFER_BYTES, 0))
        return self._reply(vs.STATUS_SUCCESS)

    @staticmethod
    def _reply(status: int, body: bytes = b"") -> bytes:
        return vs.packet(vs.VstorOperation.COMPLETE_IO, status, body, flags=0)

    # -- SRBs -------------------------------------------------------------------------------

    def _execute(self, p, body: bytes) -> bytes:
        self.stats.requests += 1
        if len(body) < SRB_SIZE:
            self.stats.error("short SRB")
            return self._reply(vs.STATUS_INVALID_PARAMETER)
        (length, _, _, port, path, target, lun, cdb_len, sense_len, data_in, _, xfer, cdb_sense, reserve,
         tag, action, srb_flags, timeout, sort_key) = vs.VMSCSI_REQUEST.unpack_from(body)
        cdb = cdb_sense[:min(cdb_len, vs.CDB_MAX)]
        moved, data = 0, b""
        try:
            if path or target or lun:
                raise Outcome(vs.SRB_STATUS_INVALID_LUN, status=vs.STATUS_SUCCESS)
            if not cdb:
                raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_INVALID_OPCODE)
            pages = None
            if p.type == VM_PKT_DATA_USING_GPA_DIRECT:
                ranges = parse_gpa_ranges(p.header)  # RingCorrupt: the channel is reset
                if len(ranges) != 1:
                    raise Outcome(vs.SRB_STATUS_INVALID_REQUEST, status=vs.STATUS_INVALID_PARAMETER)
                pages = ranges[0]
            if xfer > MAX_TRANSFER_BYTES or (xfer and (pages is None or xfer > pages.byte_count)):
                self.stats.error("SRB longer than its page list")
                raise Outcome(vs.SRB_STATUS_INVALID_REQUEST, status=vs.STATUS_INVALID_PARAMETER)
            moved, data = self._command(cdb, xfer, pages)
            srb_status, scsi_status, sense = vs.SRB_STATUS_SUCCESS, vs.SCSI_GOOD, b""
            status = vs.STATUS_SUCCESS
        except Outcome as o:
            srb_status, sense, status = o.srb_status, o.sense, o.status
            scsi_status = vs.SCSI_CHECK_CONDITION if sense else vs.SCSI_GOOD
            if sense:
                srb_status |= vs.SRB_STATUS_AUTOSENSE_VALID
        except UnmappedGpa:
            self.stats.error("data pages outside the partition")
            srb_status, scsi_status, sense, status = vs.SRB_STATUS_ERROR, vs.SCSI_GOOD, b"", vs.STATUS_INVALID_PARAMETER
        if data and pages is not None:
            try:
                self._scatter(pages, data[:xfer])
                moved = min(len(data), xfer)
            except UnmappedGpa:
                self.stats.error("data pages outside the partition")
                srb_status, status, moved = vs.SRB_STATUS_ERROR, vs.STATUS_INVALID_PARAMETER, 0
        srb = vs.VMSCSI_REQUEST.pack(length, srb_status, scsi_status, port, path, target, lun, cdb_len,
                                     len(sense), data_in, 0, moved, sense.ljust(20, b"\0")[:20] if sense else cdb_sense,
                                     reserve, tag, action, srb_flags, timeout, sort_key)
        return self._reply(status, srb)

    def _command(self, cdb: bytes, xfer: int, pages) -> tuple[int, bytes]:
        """Carry out ``cdb``: (bytes written from the guest, bytes to give it)."""
        op = cdb[0]
        if op in (vs.READ_10, vs.WRITE_10, vs.READ_16, vs.WRITE_16):
            if op in (vs.READ_10, vs.WRITE_10):
                if len(cdb) < 10:
                    raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_INVALID_FIELD_IN_CDB)
                lba, count = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
            else:
                if len(cdb) < 16:
                    raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_INVALID_FIELD_IN_CDB)
                lba, count = struct.unpack_from(">QI", cdb, 2)
            if lba + count > self.blocks:
                raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_LBA_OUT_OF_RANGE)
            n = count * BLOCK
            if n > xfer:
                self.stats.error("transfer longer than the SRB's data length")
                raise Outcome(vs.SRB_STATUS_DATA_OVERRUN, status=vs.STATUS_INVALID_PARAMETER)
            if op in (vs.READ_10, vs.READ_16):
                buf = bytearray(n)
                try:
                    self.disk.read(lba * BLOCK, buf)
                except OSError as e:
                    log.warning("read of the image failed: %s", e)
                    raise check_condition(vs.MEDIUM_ERROR, vs.ASC_UNRECOVERED_READ_ERROR) from None
                self.stats.reads += 1
                self.stats.bytes_read += n
                return 0, bytes(buf)
            data = self._gather(pages, n) if n else b""
            try:
                self.disk.write(lba * BLOCK, data)
            except OSError as e:
                log.warning("write of the image failed: %s", e)
                raise check_condition(vs.MEDIUM_ERROR, vs.ASC_WRITE_ERROR) from None
            self.stats.writes += 1
            self.stats.bytes_written += n
            return n, b""
        if op in (vs.SYNCHRONIZE_CACHE_10, vs.SYNCHRONIZE_CACHE_16):
            t0 = perf_counter_ns()
            try:
                self.disk.flush()
            except OSError as e:
                log.warning("fsync of the image failed: %s", e)
                raise check_condition(vs.HARDWARE_ERROR, vs.ASC_WRITE_ERROR) from None
            finally:
                self.stats.flush_ns += perf_counter_ns() - t0
            self.stats.flushes += 1
            return 0, b""
        if op == vs.TEST_UNIT_READY:
            return 0, b""
        if op == vs.INQUIRY:
            return 0, self._inquiry(cdb)
        if op == vs.READ_CAPACITY_10:
            return 0, struct.pack(">II", min(self.blocks - 1, 0xFFFFFFFF), BLOCK)
        if op == vs.SERVICE_ACTION_IN_16 and len(cdb) > 1 and cdb[1] & 0x1F == vs.SAI_READ_CAPACITY_16:
            return 0, struct.pack(">QI", self.blocks - 1, BLOCK).ljust(32, b"\0")
        if op == vs.REPORT_LUNS:
            return 0, struct.pack(">II", 8, 0) + bytes(8)  # one LUN: 0
        raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_INVALID_OPCODE)

    def _inquiry(self, cdb: bytes) -> bytes:
        evpd, page = (cdb[1] & 1, cdb[2]) if len(cdb) >= 3 else (0, 0)
        if not evpd:
            # Direct-access device, SPC-3, response format 2, 36 bytes.
            return bytes([0, 0, 5, 2, 31, 0, 0, 0x02]) + b"Msft    " + b"Virtual Disk    " + b"1.0 "
        if page == 0x00:
            return bytes([0, 0, 0, 2, 0x00, 0x80])
        if page == 0x80:
            serial = self.instance.hex[:16].encode()
            return bytes([0, 0x80, 0, len(serial)]) + serial
        raise check_condition(vs.ILLEGAL_REQUEST, vs.ASC_INVALID_FIELD_IN_CDB)

    # -- guest pages ----------------------------------------------------------------------------

    @staticmethod
    def _pieces(pages, n: int) -> list[tuple[int, int]]:
        """(guest-physical address, length) of the first ``n`` bytes of a GPA range, each run
        of pages that follow each other in guest-physical memory (and so in the RAM file,
        which is indexed by it) one piece: one pread or pwrite each."""
        out: list[tuple[int, int]] = []
        pfns, off, i = pages.pfns, pages.byte_offset, 0
        while n > 0 and i < len(pfns):
            j = i + 1
            while j < len(pfns) and pfns[j] == pfns[j - 1] + 1:
                j += 1
            step = min(n, (j - i) * PAGE_SIZE - off)
            out.append(((pfns[i] << 12) + off, step))
            n -= step
            off, i = 0, j
        return out

    def _gather(self, pages, n: int) -> bytes:
        """The request's pages, read for it alone, a run of pages at a time: no mapping to
        make and unmake per request.  Every page is checked against the SLAT before any is
        read (UnmappedGpa where one is not the partition's RAM: the request is refused whole)."""
        return self.mem.read_runs(self._pieces(pages, n))

    def _scatter(self, pages, data: bytes) -> None:
        """``data`` into the request's pages, all checked before the first write: nothing is
        written for a refused request."""
        self.mem.write_runs(self._pieces(pages, len(data)), data)
