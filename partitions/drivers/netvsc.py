"""netvsc: the guest's synthetic NIC driver (Linux drivers/net/hyperv/netvsc.c and
rndis_filter.c in miniature) over an open VMBus channel; protocol in proto/nvsp.py.

Bring-up: NVSP INIT (6.1), NDIS config and version, the receive buffer (a GPADL of
RECV_PAGES pages), RNDIS INITIALIZE, QUERY of the MAC address, SET of the packet filter
(directed and broadcast).  A frame goes out as an RNDIS PACKET in one of TX_SLOTS pages,
named by a GPA-direct packet (a page is reused once its send has completed), or — what
fits a section, as Linux's netvsc does for small packets — copied into a section of the
send buffer (a GPADL of SEND_PAGES pages given with SEND_SEND_BUF) and named by an in-band
packet, the section free again at its completion; frames come in through receive-buffer
sections announced by transfer-page packets, each completed to hand the section back.

Receiving is Linux's NAPI: the VMBus interrupt (SINT 2, the channel's event flag) calls
:meth:`Netvsc.on_interrupt`, which polls at once — the ring's ``interrupt_mask`` set so
that the host does not signal while the ring is drained, frames handed to ``rx_handler``,
then the mask cleared and the ring looked at once more (a packet that came in between
would otherwise wait for the next signal, which the host sends only on empty → non-empty).
The Python guest kernel delivers an interrupt at the end of any exit with IF set, so the
handler may run while the workload is inside this driver (between a transmit page taken
and its packet written, or halted waiting for a completion): the driver is then ``busy``
and the interrupt only schedules the poll, which runs as the workload leaves the driver
(as ``local_bh_enable`` runs a pending softirq).  From the interrupt a send never waits: a
frame that finds no free send-buffer section (or transmit page) goes into a backlog sent
at the next poll.
"""

from __future__ import annotations

import struct
import time
from contextlib import contextmanager

from proto import nvsp as nv
from proto.vmbus_ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_XFER_PAGES,
                              VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, GpaRange, encode_gpa_direct,
                              encode_packet)

from partitions.drivers.vmbus import Channel, Vmbus
from partitions.vp import Vp

RECV_AREA = 0x380000
RECV_PAGES = 16
TX_AREA = RECV_AREA + RECV_PAGES * 4096
TX_SLOTS = 8
SEND_AREA = TX_AREA + TX_SLOTS * 4096  # the send buffer (NVSP SEND_SEND_BUF), SEND_PAGES pages
SEND_PAGES = 8
TIMEOUT_S = 10.0


class NetError(Exception):
    pass


class Netvsc:
    def __init__(self, bus: Vmbus, channel: Channel) -> None:
        self.bus, self.ch = bus, channel
        self.tid = 0
        self.done: dict[int, bytes] = {}  # our requests' completions
        self.control: dict[int, bytes] = {}  # RNDIS control completions by request id
        self.frames: list[bytes] = []
        self.mac = b""
        self.tx_slot = 0
        self.slot_tid: list[int | None] = [None] * TX_SLOTS  # the send each transmit page is out for
        self.stats = {"tx": 0, "rx": 0, "napi_polls": 0, "napi_deferred": 0, "tx_backlogged": 0}
        # NAPI: frames go to rx_handler(vp, frames, wake, began, taken) — ``wake``, the
        # stamps of the interrupt that polled (empty when the workload did), ``began`` as
        # the ring was found holding packets, ``taken`` as they were read.
        self.rx_handler = None
        self.busy = 0  # the workload (or the poll) is inside the driver
        self.in_irq = False  # the poll runs from the interrupt: no send may wait
        self.napi_scheduled = False
        self.tx_backlog: list[bytes] = []  # RNDIS messages the interrupt could not send yet
        self.began = 0  # perf_counter_ns as the last poll found packets in the ring
        self.acks: list[bytes] = []  # completions of received transfer-page packets, not yet sent
        # The send buffer: free sections, and the section each send in flight holds.
        self.section_size = 0  # 0: no send buffer (the host refused it): frames go by page list
        self.send_free: list[int] = []
        self.section_of: dict[int, int] = {}  # transaction id → its section
        self.gpadls: list[int] = []  # the receive and send buffers' (a close tears them down)

    def _next(self) -> int:
        self.tid += 1
        return self.tid

    # -- the ring ---------------------------------------------------------------------------

    @contextmanager
    def entered(self, vp: Vp):
        """The driver is in use: an interrupt meanwhile only schedules the poll, which runs
        as the outermost user leaves."""
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
        if not self.busy and (self.napi_scheduled or self.frames and self.rx_handler is not None):
            self.napi_poll(vp)

    def on_interrupt(self, vp: Vp) -> None:
        """The channel's event flag was set (the VMBus driver's SINT 2 handler): poll now,
        or, when the interrupted code is inside the driver, as it leaves."""
        if self.busy:
            self.napi_scheduled = True
            self.stats["napi_deferred"] += 1
            return
        self.in_irq = True
        try:
            self.napi_poll(vp, getattr(vp, "irq_stamps", ()))
        finally:
            self.in_irq = False

    def napi_poll(self, vp: Vp, wake: tuple = ()) -> int:
        """Drain the ring with the host's signals masked, hand the frames up, unmask and
        look again; the number of frames handed up."""
        n = 0
        with self.entered(vp):
            self.napi_scheduled = False
            self.stats["napi_polls"] += 1
            while True:
                self.ch.to_guest.set_interrupt_mask(True)
                n += self._napi_pass(vp, wake)
                self.ch.to_guest.set_interrupt_mask(False)
                if self.ch.to_guest.is_empty() and not (self.frames and self.rx_handler is not None):
                    break  # (else a packet came in while masked: nobody signalled it)
        return n

    def _napi_pass(self, vp: Vp, wake: tuple) -> int:
        self.began = 0
        self.poll(vp, ack=False)
        if self.tx_backlog:
            backlog, self.tx_backlog = self.tx_backlog, []
            for msg in backlog:
                self.send_rndis(vp, msg)
        if self.rx_handler is None:
            return 0  # (bring-up: the frames wait for the stack)
        frames = self.take()
        if frames:
            self.rx_handler(vp, frames, wake, self.began or time.perf_counter_ns(), time.perf_counter_ns())
        # The sections back after the replies (their contents were copied out): a reply's
        # ring write signals the host, and the acknowledgements behind it need no signal
        # of their own — one exit fewer before the reply leaves.
        self._ack(vp)
        return len(frames)

    def poll(self, vp: Vp, ack: bool = True) -> None:
        """Take what the ring holds: completions, received frames and RNDIS replies; give
        the receive sections back in one write (``ack`` False: at the caller's next
        :meth:`_ack`)."""
        self.bus.clear_event(vp, self.ch.relid)
        acks = self.acks
        packets = self.ch.receive(vp)
        if packets and not self.began:
            # (after the read that found them: the host wrote them before this stamp)
            self.began = time.perf_counter_ns()
        for p in packets:
            if p.type == VM_PKT_COMP:
                section = self.section_of.pop(p.transaction_id, None)
                if section is not None:
                    self.send_free.append(section)  # that send's section is ours again
                else:
                    self.done[p.transaction_id] = p.payload
            elif p.type == VM_PKT_DATA_USING_XFER_PAGES:
                self._received(vp, p)
                acks.append(encode_packet(VM_PKT_COMP, b"", p.transaction_id))
        if ack:
            self._ack(vp)

    def _ack(self, vp: Vp) -> None:
        if self.acks:
            acks, self.acks = self.acks, []
            self.ch.send(vp, acks)

    def _received(self, vp: Vp, p) -> None:
        if len(p.header) < nv.XFER_PAGE_HEADER.size + nv.XFER_RANGE.size:
            return
        _, _, _, count = nv.XFER_PAGE_HEADER.unpack_from(p.header)
        for i in range(min(count, (len(p.header) - nv.XFER_PAGE_HEADER.size) // nv.XFER_RANGE.size)):
            n, off = nv.XFER_RANGE.unpack_from(p.header, nv.XFER_PAGE_HEADER.size + i * nv.XFER_RANGE.size)
            if off + n > RECV_PAGES * 4096 or n < nv.RNDIS_HEADER.size:
                continue
            msg = vp.mem.read(RECV_AREA + off, n)
            mtype, _ = nv.RNDIS_HEADER.unpack_from(msg)
            if mtype == nv.RNDIS_MSG_PACKET:
                frame = nv.parse_rndis_packet(msg)
                if frame is not None:
                    self.stats["rx"] += 1
                    self.frames.append(frame)
            elif mtype & nv.RNDIS_MSG_COMPLETION and len(msg) >= 12:
                self.control[struct.unpack_from("<I", msg, 8)[0]] = msg

    def _wait(self, vp: Vp, ready, what: str, timeout: float = TIMEOUT_S):
        with self.entered(vp):
            return self._wait_busy(vp, ready, what, timeout)

    def _wait_busy(self, vp: Vp, ready, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            self.poll(vp)
            got = ready()
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise NetError(f"no {what} within {timeout} s")
            if self.ch.to_guest.is_empty():
                vp.sti()
                vp.hlt()

    def request(self, vp: Vp, msg_type: int, body: bytes = b"") -> bytes:
        tid = self._next()
        self.ch.send(vp, [encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(msg_type, body), tid,
                                        VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)])
        return self._wait(vp, lambda: self.done.pop(tid, None), f"completion of NVSP {msg_type}")

    def send_rndis(self, vp: Vp, msg: bytes, channel_type: int = nv.RNDIS_CHANNEL_DATA, wait: bool = False) -> None:
        """An RNDIS message out, in the next transmit page."""
        if len(msg) > 4096:
            raise NetError(f"RNDIS message of {len(msg)} bytes")
        with self.entered(vp):
            self._send_rndis(vp, msg, channel_type, wait)

    def _send_rndis(self, vp: Vp, msg: bytes, channel_type: int, wait: bool) -> None:
        if not wait and 0 < len(msg) <= self.section_size:
            self._send_section(vp, msg, channel_type)
            return
        slot = self.tx_slot
        previous = self.slot_tid[slot]
        if previous is not None and previous in self.done:
            del self.done[previous]
            previous = None
        if previous is not None and self.in_irq:
            # The interrupt does not wait for the host: the next poll sends it.
            self.tx_backlog.append(msg)
            self.stats["tx_backlogged"] += 1
            return
        self.tx_slot = (slot + 1) % TX_SLOTS
        if previous is not None:  # the host may still be reading that page: wait until it is done
            self._wait(vp, lambda: self.done.pop(previous, None), "a transmit page back")
        gpa = TX_AREA + slot * 4096
        vp.mem.write(gpa, msg)
        tid = self._next()
        self.slot_tid[slot] = None if wait else tid
        self.ch.send(vp, [encode_gpa_direct(nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT,
                                                    nv.RNDIS_PKT.pack(channel_type, nv.NETVSC_INVALID_INDEX, 0)),
                                            [GpaRange(len(msg), 0, (gpa >> 12,))], tid)])
        if wait:
            reply = self._wait(vp, lambda: self.done.pop(tid, None), "RNDIS send completion")
            if nv.STATUS.unpack_from(reply, 4)[0] != nv.NVSP_STAT_SUCCESS:
                raise NetError("the host refused an RNDIS message")

    def _send_section(self, vp: Vp, msg: bytes, channel_type: int) -> None:
        """A small message copied into a free section of the send buffer and named by an
        in-band packet (no page list for the host to map); its completion frees the section."""
        if not self.send_free:
            self.poll(vp)  # completions may be waiting
        if not self.send_free:
            if self.in_irq:
                self.tx_backlog.append(msg)
                self.stats["tx_backlogged"] += 1
                return
            self._wait(vp, lambda: True if self.send_free else None, "a send-buffer section back")
        section = self.send_free.pop()
        vp.mem.write(SEND_AREA + section * self.section_size, msg)
        tid = self._next()
        self.section_of[tid] = section
        self.ch.send(vp, [encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT,
                                                                    nv.RNDIS_PKT.pack(channel_type, section, len(msg))),
                                        tid, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)])

    def _rndis_request(self, vp: Vp, mtype: int, body: bytes) -> bytes:
        req = self._next()
        self.send_rndis(vp, nv.rndis(mtype, struct.pack("<I", req) + body), nv.RNDIS_CHANNEL_CONTROL, wait=True)
        return self._wait(vp, lambda: self.control.pop(req, None), f"RNDIS reply to {mtype}")

    # -- bring-up ---------------------------------------------------------------------------------

    def init(self, vp: Vp) -> None:
        reply = self.request(vp, nv.NVSP_MSG_TYPE_INIT, nv.INIT.pack(nv.NVSP_PROTOCOL_VERSION_61,
                                                                   nv.NVSP_PROTOCOL_VERSION_61))
        if nv.INIT_COMPLETE.unpack_from(reply, 4)[2] != nv.NVSP_STAT_SUCCESS:
            raise NetError("NVSP 6.1 refused")
        self.ch.send(vp, [encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(nv.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG,
                                                                    struct.pack("<IIQ", nv.MTU + 14, 0, 0)))])
        self.ch.send(vp, [encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_NDIS_VER,
                                                                    struct.pack("<II", 6, 30)))])
        vp.mem.write(RECV_AREA, bytes(RECV_PAGES * 4096))
        gpadl = self.bus.create_gpadl(vp, self.ch.relid, [(RECV_AREA >> 12) + i for i in range(RECV_PAGES)])
        self.gpadls.append(gpadl)
        reply = self.request(vp, nv.NVSP_MSG1_TYPE_SEND_RECV_BUF,
                             nv.SEND_RECV_BUF.pack(gpadl, nv.NETVSC_RECEIVE_BUFFER_ID, 0))
        if nv.RECV_BUF_COMPLETE.unpack_from(reply, 4)[0] != nv.NVSP_STAT_SUCCESS:
            raise NetError("receive buffer refused")
        gpadl = self.bus.create_gpadl(vp, self.ch.relid, [(SEND_AREA >> 12) + i for i in range(SEND_PAGES)])
        self.gpadls.append(gpadl)
        reply = self.request(vp, nv.NVSP_MSG1_TYPE_SEND_SEND_BUF,
                             nv.SEND_SEND_BUF.pack(gpadl, nv.NETVSC_SEND_BUFFER_ID, 0))
        status, size = nv.SEND_BUF_COMPLETE.unpack_from(reply, 4)
        if status == nv.NVSP_STAT_SUCCESS and 0 < size <= SEND_PAGES * 4096:
            self.section_size = size
            self.send_free = list(range(SEND_PAGES * 4096 // size))[::-1]
        self._rndis_request(vp, nv.RNDIS_MSG_INIT, struct.pack("<III", 1, 0, 0x4000))
        reply = self._rndis_request(vp, nv.RNDIS_MSG_QUERY, struct.pack("<IIII", nv.OID_802_3_PERMANENT_ADDRESS,
                                                                         0, 0, 0))
        _, _, _, status, length, offset = struct.unpack_from("<IIIIII", reply)
        if status or length != 6:
            raise NetError(f"no MAC address (status {status:#x})")
        self.mac = reply[8 + offset:8 + offset + 6]
        reply = self._rndis_request(vp, nv.RNDIS_MSG_SET, struct.pack(
            "<IIIII", nv.OID_GEN_CURRENT_PACKET_FILTER, 4, 20, 0,
            nv.NDIS_PACKET_TYPE_DIRECTED | nv.NDIS_PACKET_TYPE_BROADCAST))
        if struct.unpack_from("<I", reply, 12)[0]:
            raise NetError("packet filter refused")

    def send(self, vp: Vp, frame: bytes) -> None:
        self.stats["tx"] += 1
        self.send_rndis(vp, nv.rndis_packet(frame))

    def take(self) -> list[bytes]:
        frames, self.frames = self.frames, []
        return frames


def bring_up(vp: Vp, bus: Vmbus, offer: dict, at: int | None = None) -> Netvsc:
    nic = Netvsc(bus, bus.open(vp, offer, at=at))
    nic.init(vp)
    bus.on_channel_interrupt(nic.ch.relid, nic.on_interrupt)
    return nic
