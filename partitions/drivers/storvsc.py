"""storvsc: the guest's synthetic SCSI driver (Linux drivers/scsi/storvsc_drv.c in
miniature) over an open VMBus channel.

Initialisation is BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION (Windows 10's, then Blue's,
then Windows 8's), QUERY_PROPERTIES, END_INITIALIZATION.  A request is an EXECUTE_SRB: in
band when it moves no data, else a GPA-direct packet whose one range is the buffer's pages.
Several requests go into the ring with one write (one signal at most), and the driver
waits for their completions together: the queue depth.
"""

from __future__ import annotations

import time

from proto import vstor as vs
from proto.vmbus_ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
                              GpaRange, encode_gpa_direct, encode_packet)

from partitions.drivers.vmbus import Channel, VmbusError
from partitions.vp import Vp

BLOCK = 512
TIMEOUT_S = 10.0
# Before halting for its completions the driver polls the ring this long with the ring's
# interrupt mask set (Linux's blk-mq io_poll, NAPI's masking): a QD8 batch's completions
# come ≈ 1 ms after it is written, and then neither the root's signal (a message to the
# hypervisor, often hundreds of µs of the VSP's time on a loaded host) nor the halted
# VP's wake-up is needed.
SPIN_NS = 2_000_000
Op = vs.VstorOperation


class ScsiError(Exception):
    pass


class Storvsc:
    def __init__(self, channel: Channel) -> None:
        self.ch = channel
        self.tid = 0
        self.done: dict[int, bytes] = {}  # transaction id → completion payload
        self.version = 0
        self.blocks = 0
        self.max_transfer = 0
        # Where a request's time goes, guest side: writing the ring (and signalling), and
        # waiting for completions (halted, or reading the ring).
        self.submit_ns = self.wait_ns = self.halts = 0

    def _next(self) -> int:
        self.tid = (self.tid + 1) & 0xFFFFFFFFFFFFFFFF or 1
        return self.tid

    def _control(self, vp: Vp, op: int, body: bytes = b"") -> tuple[int, bytes]:
        tid = self._next()
        self.ch.send(vp, [encode_packet(VM_PKT_DATA_INBAND, vs.packet(op, 0, body), tid,
                                        VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)])
        reply = self.wait(vp, [tid])[0]
        return vs.VSTOR_PACKET.unpack_from(reply)[2], reply[vs.VSTOR_PACKET.size:]

    def init(self, vp: Vp) -> None:
        status, _ = self._control(vp, Op.BEGIN_INITIALIZATION)
        if status:
            raise ScsiError(f"BEGIN_INITIALIZATION: {status:#x}")
        for version in (vs.VMSTOR_PROTO_VERSION_WIN10, vs.VMSTOR_PROTO_VERSION_BLUE, vs.VMSTOR_PROTO_VERSION_WIN8):
            status, _ = self._control(vp, Op.QUERY_PROTOCOL_VERSION, vs.VERSION.pack(version, 0))
            if status == vs.STATUS_SUCCESS:
                self.version = version
                break
        else:
            raise ScsiError("the host speaks none of our VSTOR versions")
        status, body = self._control(vp, Op.QUERY_PROPERTIES)
        if status:
            raise ScsiError(f"QUERY_PROPERTIES: {status:#x}")
        self.max_transfer = vs.PROPERTIES.unpack_from(body)[4]
        status, _ = self._control(vp, Op.END_INITIALIZATION)
        if status:
            raise ScsiError(f"END_INITIALIZATION: {status:#x}")

    # -- requests -------------------------------------------------------------------------------

    def srb_packet(self, cdb: bytes, data_in: int, length: int, buf_gpa: int = 0) -> tuple[int, bytes]:
        tid = self._next()
        pkt = vs.packet(Op.EXECUTE_SRB, 0, vs.srb(cdb, data_in, length))
        if not length:
            return tid, encode_packet(VM_PKT_DATA_INBAND, pkt, tid, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)
        off = buf_gpa & 0xFFF
        pages = (off + length + 4095) // 4096
        rng = GpaRange(length, off, tuple((buf_gpa >> 12) + i for i in range(pages)))
        return tid, encode_gpa_direct(pkt, [rng], tid)

    def submit(self, vp: Vp, packets: list[bytes]) -> None:
        t0 = time.perf_counter_ns()
        self.ch.send(vp, packets)
        self.submit_ns += time.perf_counter_ns() - t0

    def wait(self, vp: Vp, tids: list[int], timeout: float = TIMEOUT_S) -> list[bytes]:
        """The completions of ``tids``, in that order: read the ring; halt until the root's
        signal when nothing is there."""
        t0 = time.perf_counter_ns()
        try:
            return self._wait(vp, tids, timeout)
        finally:
            self.wait_ns += time.perf_counter_ns() - t0

    def _wait(self, vp: Vp, tids: list[int], timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            # The event flag is cleared before the ring is read (Linux vmbus_chan_sched):
            # a completion written after this read finds it clear, so its signal interrupts.
            self.ch.bus.clear_event(vp, self.ch.relid)
            for p in self.ch.receive(vp):
                if p.type == VM_PKT_COMP:
                    self.done[p.transaction_id] = p.payload
            if all(t in self.done for t in tids):
                return [self.done.pop(t) for t in tids]
            if self.ch.relid in self.ch.bus.rescinded:
                raise VmbusError("the channel was rescinded")
            if time.monotonic() > deadline:
                raise ScsiError(f"{sum(t not in self.done for t in tids)} requests not completed in {timeout} s")
            if self.ch.to_guest.is_empty() and not self._spin(vp):
                self.halts += 1
                vp.sti()
                vp.hlt()

    def _spin(self, vp: Vp) -> bool:
        """True when something came into the ring within SPIN_NS (each look a PAUSE: a
        preemption point, where the VP's quantum and interrupts are noticed).  The ring is
        masked meanwhile, so the root does not signal; unmasked again before giving up,
        and looked at once more (a completion written just before would not signal)."""
        end = time.perf_counter_ns() + SPIN_NS
        ring = self.ch.to_guest
        ring.set_interrupt_mask(True)
        try:
            while time.perf_counter_ns() < end:
                vp.pause()
                if not ring.is_empty():
                    return True
        finally:
            ring.set_interrupt_mask(False)
        return not ring.is_empty()

    @staticmethod
    def check(reply: bytes, what: str) -> int:
        """The bytes moved by a completed SRB, or ScsiError."""
        status = vs.VSTOR_PACKET.unpack_from(reply)[2]
        f = vs.VMSCSI_REQUEST.unpack_from(reply, vs.VSTOR_PACKET.size)
        srb_status, scsi_status, moved = f[1], f[2], f[11]
        if status or (srb_status & 0x3F) != vs.SRB_STATUS_SUCCESS or scsi_status:
            sense = f[12]
            raise ScsiError(f"{what}: status {status:#x} srb {srb_status:#x} scsi {scsi_status:#x} "
                            f"sense key {sense[2] & 0xF:#x} asc {sense[12]:#x}" if scsi_status else
                            f"{what}: status {status:#x} srb {srb_status:#x}")
        return moved

    def command(self, vp: Vp, cdb: bytes, data_in: int = vs.UNKNOWN_TYPE, length: int = 0, buf_gpa: int = 0) -> int:
        tid, pkt = self.srb_packet(cdb, data_in, length, buf_gpa)
        self.submit(vp, [pkt])
        return self.check(self.wait(vp, [tid])[0], f"SCSI {cdb[0]:#04x}")

    def read_capacity(self, vp: Vp, buf_gpa: int) -> int:
        self.command(vp, bytes([vs.SERVICE_ACTION_IN_16, vs.SAI_READ_CAPACITY_16]) + bytes(8)
                     + (32).to_bytes(4, "big") + bytes(2), vs.READ_TYPE, 32, buf_gpa)
        last = int.from_bytes(vp.mem.read(buf_gpa, 8), "big")
        self.blocks = last + 1
        return self.blocks

    def rw_packets(self, write: bool, requests: list[tuple[int, int, int]]) -> tuple[list[int], list[bytes]]:
        """(lba, bytes, buffer gpa) each → WRITE(16)/READ(16) packets."""
        tids, pkts = [], []
        for lba, nbytes, gpa in requests:
            op = vs.WRITE_16 if write else vs.READ_16
            tid, pkt = self.srb_packet(vs.rw16(op, lba, nbytes // BLOCK), vs.WRITE_TYPE if write else vs.READ_TYPE,
                                       nbytes, gpa)
            tids.append(tid)
            pkts.append(pkt)
        return tids, pkts

    def rw(self, vp: Vp, write: bool, requests: list[tuple[int, int, int]]) -> None:
        """Requests at once (queue depth = their number), then every completion."""
        tids, pkts = self.rw_packets(write, requests)
        self.submit(vp, pkts)
        for reply in self.wait(vp, tids):
            self.check(reply, "WRITE(16)" if write else "READ(16)")

    def flush(self, vp: Vp) -> None:
        self.command(vp, bytes([vs.SYNCHRONIZE_CACHE_10]) + bytes(9))
