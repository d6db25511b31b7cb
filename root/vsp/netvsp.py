"""netvsp and the virtual switch, in the root's kernel-side process (OpenVMM
vm/devices/net/netvsp; protocol in proto/nvsp.py).

Every partition's synthetic NIC is a port on **one** :class:`VirtualSwitch`: it learns
which port each source MAC address is behind and forwards a frame to the port of its
destination, or floods it (broadcast, multicast, unknown destination) to every other port
whose packet filter takes it — the Hyper-V switch in miniature.  Frames are copied from
one partition's pages into the other's receive buffer; no partition ever sees another's
memory.

The NIC's bring-up is NVSP INIT (5.0–6.1), NDIS config and version, the receive buffer
(a GPADL of the guest's, cut into 2 KiB sections), then RNDIS INITIALIZE, QUERY (MAC
address, frame size, link), SET (packet filter).  Not built: a send buffer (frames come as
GPA-direct page lists).  The switch's port to the host is root/vsp/tap.py.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from dataclasses import dataclass, field

from proto import nvsp as nv
from proto.memory import UnmappedGpa
from proto.vmbus import HV_NIC_GUID
from proto.vmbus_ring import (VM_PKT_COMP, VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT,
                              VM_PKT_DATA_USING_XFER_PAGES, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
                              PagedView, RingCorrupt, RingError, encode_packet, parse_gpa_ranges)

log = logging.getLogger("vsp.netvsp")

SECTION = 2048  # a receive-buffer section: an RNDIS PACKET header and a full frame fit
MAX_RNDIS_MESSAGE = SECTION
MAX_RECV_PAGES = 1024
MAX_SEND_PAGES = 1024
SEND_SECTION = SECTION  # the send buffer's section size the host announces (Linux's default is 6144)
ICMP_STAMPS = 1024  # the last echo requests and replies the switch stamped (for benchmarks.vmbus: 512 pings)
GUEST_STAMPS = struct.Struct("<12Q")  # what partitions/vmbus_net.py puts first in an echo payload


@dataclass
class NetStats:
    tx_frames: int = 0
    rx_frames: int = 0
    rx_dropped: int = 0  # no free section in the receiver's buffer, or its filter said no
    errors: dict = field(default_factory=dict)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class VirtualSwitch:
    def __init__(self) -> None:
        self.ports: list[NetVsp] = []
        self.table: dict[bytes, NetVsp] = {}
        self.forwarded = self.flooded = 0
        # (source and destination IPv4 address, ICMP type, sequence) → (perf_counter_ns as
        # the sender's packets were handed to netvsp, as the receiver's port began to write
        # its ring — before the write index that publishes the frame —, as the switch had
        # written that ring and signalled it, then the guests' own stamps the echo payload
        # carries: partitions/vmbus_net.py): where a ping's time goes, for benchmarks.vmbus.
        self.icmp_stamps: dict[tuple[str, str, int, int], tuple[int, ...]] = {}
        self.t_written = 0  # a port's stamp as it began to write a frame into its guest's ring

    def stamp(self, frame: bytes, t_in: int) -> None:
        """Note an ICMP echo request or reply the switch just forwarded, with the guests'
        stamps its payload carries (numbers only; nothing else is read)."""
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
            return
        at = 14 + (frame[14] & 0xF) * 4
        if at + 8 + GUEST_STAMPS.size > len(frame) or frame[at] not in (0, 8):
            return
        if len(self.icmp_stamps) >= ICMP_STAMPS:
            del self.icmp_stamps[next(iter(self.icmp_stamps))]
        seq = struct.unpack_from(">H", frame, at + 6)[0]
        key = (".".join(map(str, frame[26:30])), ".".join(map(str, frame[30:34])), frame[at], seq)
        self.icmp_stamps[key] = (t_in, self.t_written, time.perf_counter_ns(),
                                 *GUEST_STAMPS.unpack_from(frame, at + 8))

    def attach(self, port) -> None:
        """A port: a partition's NetVsp, or the external port (root/vsp/tap.py): each has
        ``name`` and ``receive(frame, broadcast)``."""
        self.ports.append(port)

    def forward(self, src: "NetVsp", frame: bytes) -> None:
        dst_mac, src_mac = frame[:6], frame[6:12]
        if not src_mac[0] & 1:
            self.table[src_mac] = src  # learned
        dst = self.table.get(dst_mac) if not dst_mac[0] & 1 else None
        if dst is not None:
            if dst is not src:
                self.forwarded += 1
                dst.receive(frame, broadcast=False)
            return
        self.flooded += 1
        for port in self.ports:
            if port is not src:
                port.receive(frame, broadcast=bool(dst_mac[0] & 1))

    def status(self) -> dict:
        external = next((p.status() for p in self.ports if hasattr(p, "status")), None)
        return {"forwarded": self.forwarded, "flooded": self.flooded,
                "table": {mac.hex(":"): port.name for mac, port in self.table.items()},
                "icmp_stamps": [[*key, *t] for key, t in self.icmp_stamps.items()],
                **({"external": external} if external else {})}


class NetVsp:
    if_type = HV_NIC_GUID

    def __init__(self, switch: VirtualSwitch, mac: bytes, name: str, instance: uuid.UUID | None = None) -> None:
        self.switch, self.mac, self.name = switch, mac, name
        self.instance = instance or uuid.uuid4()
        self.stats = NetStats()
        self.channel = None
        self.mem = None
        self.t_in = 0
        self._reset()
        switch.attach(self)

    def _reset(self) -> None:
        self.version = 0
        self.recv: PagedView | None = None
        self.send_buf: PagedView | None = None  # the guest's send buffer (read only)
        self.send_sections = 0
        self.free: list[int] = []  # free receive sections (their offsets)
        self.pending: dict[int, int] = {}  # our transfer-page packet's transaction id → its section
        self.next_tid = 1
        self.packet_filter = 0
        self.recv_gpadl = self.send_gpadl = -1  # the buffers' GPADL ids (-1: none), for a save

    # -- the channel -----------------------------------------------------------------------

    def open(self, channel, mem) -> None:
        self.channel, self.mem = channel, mem
        self._reset()

    def close(self) -> None:
        self.channel = None
        self._reset()

    # -- saved state (root/vsp/saved.py) ----------------------------------------------------

    def save(self) -> dict:
        """The protocol state, the buffers' GPADLs, and the receive sections the guest has
        not given back (with the transfer-page packets' ids its completions will name)."""
        return {"version": self.version, "recv_gpadl": self.recv_gpadl, "send_gpadl": self.send_gpadl,
                "free": list(self.free), "pending": [[t, s] for t, s in self.pending.items()],
                "next_tid": self.next_tid, "packet_filter": self.packet_filter}

    def restore(self, d: dict) -> None:
        """After open() over the restored channel: ValueError (or KeyError, TypeError) names
        what does not fit."""
        ints = {k: d[k] for k in ("version", "recv_gpadl", "send_gpadl", "next_tid", "packet_filter")}
        if not all(type(v) is int and -1 <= v < 1 << 64 for v in ints.values()):
            raise ValueError(f"not integers: {ints}")
        if ints["version"] and ints["version"] not in nv.SUPPORTED_VERSIONS:
            raise ValueError(f"NVSP version {ints['version']:#x} is not one this VSP speaks")
        self.version, self.next_tid, self.packet_filter = ints["version"], ints["next_tid"], ints["packet_filter"]
        if ints["recv_gpadl"] >= 0:
            g = self.channel.find_gpadl(ints["recv_gpadl"])
            if g is None or not 0 < len(g.pfns) <= MAX_RECV_PAGES:
                raise ValueError(f"receive buffer GPADL {ints['recv_gpadl']:#x} is not one of the channel's")
            self.recv, self.recv_gpadl = PagedView(g.mapping, [pfn << 12 for pfn in g.pfns]), ints["recv_gpadl"]
            sections = set(range(0, self.recv.size // SECTION * SECTION, SECTION))
            free, pending = list(d["free"]), {t: s for t, s in d["pending"]}
            if not all(type(x) is int for x in (*free, *pending, *pending.values())) \
                    or sorted([*free, *pending.values()]) != sorted(sections):
                raise ValueError("the free and pending receive sections are not the buffer's sections, each once")
            self.free, self.pending = free, pending
        if ints["send_gpadl"] >= 0:
            g = self.channel.find_gpadl(ints["send_gpadl"])
            if g is None or not 0 < len(g.pfns) <= MAX_SEND_PAGES:
                raise ValueError(f"send buffer GPADL {ints['send_gpadl']:#x} is not one of the channel's")
            read_only = self.mem.map(g.pfns, writable=False)  # as _send_buffer maps it
            g.mapping.close()
            g.mapping = read_only
            self.send_buf, self.send_gpadl = PagedView(read_only, [pfn << 12 for pfn in g.pfns]), ints["send_gpadl"]
            self.send_sections = self.send_buf.size // SEND_SECTION

    def on_packets(self, channel, packets) -> None:
        self.t_in = time.perf_counter_ns()  # the batch's packets read from the ring (a stamp)
        out = []
        for p in packets:
            if p.type == VM_PKT_COMP:
                section = self.pending.pop(p.transaction_id, None)
                if section is None:
                    self.stats.error("completion of a transaction never sent")
                else:
                    self.free.append(section)
                continue
            if p.type not in (VM_PKT_DATA_INBAND, VM_PKT_DATA_USING_GPA_DIRECT) or len(p.payload) < 4:
                self.stats.error("packet type")
                continue
            reply = self._nvsp(p)
            if reply is not None and p.completion_requested:
                out.append(encode_packet(VM_PKT_COMP, reply, p.transaction_id))
        if out:
            channel.send(out)

    def _nvsp(self, p) -> bytes | None:
        (mtype,) = nv.NVSP_HEADER.unpack_from(p.payload)
        body = p.payload[4:].ljust(nv.NVSP_WIRE_SIZE, b"\0")  # a short message reads as zeros
        if mtype == nv.NVSP_MSG_TYPE_INIT:
            lo, hi = nv.INIT.unpack_from(body)
            ok = [v for v in nv.SUPPORTED_VERSIONS if lo <= v <= hi]
            self.version = max(ok) if ok else 0
            return nv.nvsp(nv.NVSP_MSG_TYPE_INIT_COMPLETE, nv.INIT_COMPLETE.pack(
                0, 0, nv.NVSP_STAT_SUCCESS if ok else nv.NVSP_STAT_FAIL))
        if not self.version:
            self.stats.error("NVSP before INIT")
            return None
        if mtype in (nv.NVSP_MSG1_TYPE_SEND_NDIS_VER, nv.NVSP_MSG2_TYPE_SEND_NDIS_CONFIG):
            return None
        if mtype == nv.NVSP_MSG1_TYPE_SEND_RECV_BUF:
            return self._recv_buffer(*nv.SEND_RECV_BUF.unpack_from(body)[:2])
        if mtype == nv.NVSP_MSG1_TYPE_SEND_SEND_BUF:
            return self._send_buffer(*nv.SEND_SEND_BUF.unpack_from(body)[:2])
        if mtype == nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT:
            status = self._send_rndis(p, *nv.RNDIS_PKT.unpack_from(body))
            return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT_COMPLETE, nv.STATUS.pack(status))
        self.stats.error("unsupported NVSP message")
        return None

    def _recv_buffer(self, gpadl: int, buf_id: int) -> bytes:
        g = self.channel.find_gpadl(gpadl) if self.channel else None
        if g is None or buf_id != nv.NETVSC_RECEIVE_BUFFER_ID or not 0 < len(g.pfns) <= MAX_RECV_PAGES \
                or self.recv is not None:
            self.stats.error("bad receive buffer")
            return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE, nv.RECV_BUF_COMPLETE.pack(nv.NVSP_STAT_FAIL, 0))
        self.recv = PagedView(g.mapping, [pfn << 12 for pfn in g.pfns])  # the GPADL's own mapping
        self.recv_gpadl = gpadl
        count = self.recv.size // SECTION
        self.free = [i * SECTION for i in range(count)]
        return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RECV_BUF_COMPLETE, nv.RECV_BUF_COMPLETE.pack(nv.NVSP_STAT_SUCCESS, 1)
                       + nv.RECV_SECTION.pack(0, SECTION, count, count * SECTION))

    def _send_buffer(self, gpadl: int, buf_id: int) -> bytes:
        """The guest's send buffer: a GPADL in SEND_SECTION sections, which this side only
        reads (Linux's netvsc copies small packets there instead of naming their pages)."""
        g = self.channel.find_gpadl(gpadl) if self.channel else None
        if g is None or buf_id != nv.NETVSC_SEND_BUFFER_ID or not 0 < len(g.pfns) <= MAX_SEND_PAGES \
                or self.send_buf is not None:
            self.stats.error("bad send buffer")
            return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE, nv.SEND_BUF_COMPLETE.pack(nv.NVSP_STAT_FAIL, 0))
        try:
            # This side only reads it: the GPADL is mapped again, read-only, in place of its
            # writable mapping (and still revoked with it if the root unmaps its pages).
            read_only = self.mem.map(g.pfns, writable=False)
        except (UnmappedGpa, OSError):
            self.stats.error("bad send buffer")
            return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE, nv.SEND_BUF_COMPLETE.pack(nv.NVSP_STAT_FAIL, 0))
        g.mapping.close()
        g.mapping = read_only
        self.send_buf = PagedView(read_only, [pfn << 12 for pfn in g.pfns])
        self.send_sections = self.send_buf.size // SEND_SECTION
        self.send_gpadl = gpadl
        return nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_SEND_BUF_COMPLETE,
                       nv.SEND_BUF_COMPLETE.pack(nv.NVSP_STAT_SUCCESS, SEND_SECTION))

    def _rndis_message(self, p, section: int, size: int) -> bytes | None:
        """The RNDIS message a SEND_RNDIS_PKT names: in a send-buffer section (in-band) or
        in the one range of a GPA-direct packet; None (counted) when it is neither."""
        if section != nv.NETVSC_INVALID_INDEX:
            if p.type != VM_PKT_DATA_INBAND or self.send_buf is None or section >= self.send_sections \
                    or not 0 < size <= SEND_SECTION:
                self.stats.error("bad send buffer section")
                return None
            try:
                return self.send_buf.read(section * SEND_SECTION, size)
            except (UnmappedGpa, RingCorrupt):
                self.stats.error("send buffer pages unmapped")
                return None
        if p.type != VM_PKT_DATA_USING_GPA_DIRECT:
            self.stats.error("RNDIS message neither in a page list nor in the send buffer")
            return None
        ranges = parse_gpa_ranges(p.header)  # RingCorrupt resets the channel
        if len(ranges) != 1 or ranges[0].byte_count > MAX_RNDIS_MESSAGE:
            self.stats.error("frame larger than the MTU")
            return None
        r = ranges[0]
        try:
            with self.mem.mapped(r.pfns, writable=False) as m:  # for this message alone, read-only
                return PagedView(m, [pfn << 12 for pfn in r.pfns]).read(r.byte_offset, r.byte_count)
        except (UnmappedGpa, RingCorrupt):
            self.stats.error("RNDIS pages outside the partition")
            return None

    def _send_rndis(self, p, channel_type: int, section: int, size: int) -> int:
        """A guest's RNDIS message: a frame for the switch or a control request."""
        msg = self._rndis_message(p, section, size)
        if msg is None:
            return nv.NVSP_STAT_FAIL
        if len(msg) < nv.RNDIS_HEADER.size:
            self.stats.error("short RNDIS message")
            return nv.NVSP_STAT_FAIL
        mtype, _ = nv.RNDIS_HEADER.unpack_from(msg)
        if mtype == nv.RNDIS_MSG_PACKET:
            frame = nv.parse_rndis_packet(msg)
            if frame is None or not 14 <= len(frame) <= nv.MAX_FRAME:
                self.stats.error("bad RNDIS packet or frame larger than the MTU")
                return nv.NVSP_STAT_FAIL
            self.stats.tx_frames += 1
            self.switch.t_written = 0
            self.switch.forward(self, frame)
            self.switch.stamp(frame, self.t_in)
            return nv.NVSP_STAT_SUCCESS
        reply = self._rndis_control(mtype, msg[nv.RNDIS_HEADER.size:])
        if reply is None:
            return nv.NVSP_STAT_FAIL
        self._indicate(reply, nv.RNDIS_CHANNEL_CONTROL)
        return nv.NVSP_STAT_SUCCESS

    def _rndis_control(self, mtype: int, body: bytes) -> bytes | None:
        done = nv.RNDIS_MSG_COMPLETION | mtype
        if mtype == nv.RNDIS_MSG_INIT and len(body) >= nv.INIT_REQUEST.size:
            req = nv.INIT_REQUEST.unpack_from(body)[0]
            return nv.rndis(done, nv.INIT_COMPLETE_BODY.pack(req, nv.RNDIS_STATUS_SUCCESS, 1, 0, 0, 0, 8,
                                                             MAX_RNDIS_MESSAGE, 3, 0, 0))
        if mtype == nv.RNDIS_MSG_QUERY and len(body) >= nv.QUERY_REQUEST.size:
            req, oid = nv.QUERY_REQUEST.unpack_from(body)[:2]
            value = {nv.OID_802_3_PERMANENT_ADDRESS: self.mac,
                     nv.OID_GEN_MAXIMUM_FRAME_SIZE: struct.pack("<I", nv.MTU),
                     nv.OID_GEN_MEDIA_CONNECT_STATUS: struct.pack("<I", 0)}.get(oid)
            status = nv.RNDIS_STATUS_SUCCESS if value is not None else nv.RNDIS_STATUS_NOT_SUPPORTED
            value = value or b""
            return nv.rndis(done, nv.QUERY_COMPLETE.pack(req, status, len(value), 16 if value else 0) + value)
        if mtype == nv.RNDIS_MSG_SET and len(body) >= nv.SET_REQUEST.size:
            req, oid, length, offset = nv.SET_REQUEST.unpack_from(body)[:4]
            status = nv.RNDIS_STATUS_NOT_SUPPORTED
            at = offset  # it counts from request_id, where ``body`` starts
            if oid == nv.OID_GEN_CURRENT_PACKET_FILTER and length == 4 and 0 <= at and at + 4 <= len(body):
                (self.packet_filter,) = struct.unpack_from("<I", body, at)
                status = nv.RNDIS_STATUS_SUCCESS
            return nv.rndis(done, nv.SET_COMPLETE.pack(req, status))
        self.stats.error("unsupported RNDIS message")
        return None

    # -- to the guest -------------------------------------------------------------------------

    def receive(self, frame: bytes, broadcast: bool) -> None:
        """A frame from the switch for this port."""
        want = nv.NDIS_PACKET_TYPE_BROADCAST if broadcast else nv.NDIS_PACKET_TYPE_DIRECTED
        if self.channel is None or not self.packet_filter & want:
            self.stats.rx_dropped += 1
            return
        if self._indicate(nv.rndis_packet(frame), nv.RNDIS_CHANNEL_DATA):
            self.stats.rx_frames += 1

    def _indicate(self, msg: bytes, channel_type: int) -> bool:
        """Copy an RNDIS message into a free receive section and announce it with a
        transfer-page packet; False (dropped) when the buffer is full or absent."""
        if self.recv is None or not self.free or len(msg) > SECTION:
            self.stats.rx_dropped += 1
            return False
        section = self.free.pop()
        try:
            self.recv.write(section, msg)
        except UnmappedGpa:
            self.stats.error("receive buffer pages unmapped")
            return False
        tid, self.next_tid = self.next_tid, self.next_tid + 1
        self.pending[tid] = section
        header = nv.XFER_PAGE_HEADER.pack(nv.NETVSC_RECEIVE_BUFFER_ID, 0, 0, 1) + nv.XFER_RANGE.pack(len(msg), section)
        body = nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT, nv.RNDIS_PKT.pack(channel_type, nv.NETVSC_INVALID_INDEX, 0))
        self.switch.t_written = time.perf_counter_ns()  # before the write index publishes it
        try:
            self.channel.send([encode_packet(VM_PKT_DATA_USING_XFER_PAGES, body, tid,
                                             VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, header)])
        except RingError as e:
            # This guest's ring is full (it does not read) or corrupt: its frame is dropped
            # here, in the sender's turn; its own next drain resets its channel if corrupt.
            self.stats.error(f"receive ring: {type(e).__name__}")
            del self.pending[tid]
            self.free.append(section)
            return False
        return True
