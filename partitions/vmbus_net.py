"""``vmbus_net``: the synthetic NIC with a tiny IP layer — ARP and ICMP echo, enough for
partitions to ping each other through the root's virtual switch.

The partition's address is 10.0.0.N where N is the last byte of the MAC address the host
gave it (00:15:5d:00:00:ID, Hyper-V's prefix and the partition's id).  VP 0 answers ARP
requests and echo requests from its SINT's interrupt (netvsc's NAPI poll) and whenever it
runs, and every PING_INTERVAL_S pings the next of 10.0.0.1–10.0.0.MAX_PEER that answers
ARP, printing a round trip on the console once a second.
"""

from __future__ import annotations

import struct
import time

from proto.vmbus import HV_NIC_GUID

from partitions.drivers.netvsc import NetError, Netvsc, bring_up
from partitions.drivers.vmbus import VmbusError
from partitions import vmbus_resume
from partitions.vmbus_disk import vmbus_bus
from partitions.vp import Vp

BROADCAST = b"\xff" * 6
ETH_ARP, ETH_IP = 0x0806, 0x0800
ETH_STREAM = 0x88B5  # IEEE's "local experimental" EtherType: the streaming frames
STREAM_S = 2.0
STREAM_FRAME = 1024
ARP = struct.Struct(">HHBBH6s4s6s4s")
IP = struct.Struct(">BBHHHBBH4s4s")
ICMP = struct.Struct(">BBHHH")
MAX_PEER = 4
PING_INTERVAL_S = 0.05
ARP_TIMEOUT_S, PING_TIMEOUT_S = 0.3, 1.0
DEAD_PEER_S = 30.0  # an address that did not answer ARP is tried again after this long (a partition that
# comes up later announces itself with a gratuitous ARP, which makes it a peer at once)
# The echo payload carries the ping's stamps (perf_counter_ns, CLOCK_MONOTONIC, which every
# process on the host shares), for the VSP's switch to note as it forwards the frame (not
# the console: a line is an exit per character, which would keep the VP from answering):
# [0] the sender's as it hands the request to netvsc; [1:7] the answerer's: the interrupt
# that polled its ring (the hypervisor's stamps as it received the VSP's SynicSignal and as
# it injected the SINT's vector into the VP, the VP's as it took it; zeros when no
# interrupt did: the workload polled), then as its poll found the request in the ring (the
# read that saw the host's write index), had the request, hands the reply to netvsc;
# [7:12] the same five of the sender's for the previous ping's reply, which only the next
# request can carry.
STAMPS = struct.Struct("<12Q")
PAYLOAD = bytes(range(STAMPS.size + 8))
PRINT_INTERVAL_S = 1.0  # a console line per second, not per ping: every character is an exit


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Stack:
    def __init__(self, nic: Netvsc) -> None:
        self.nic = nic
        self.ip = bytes([10, 0, 0, nic.mac[5]])
        self.arp: dict[bytes, bytes] = {}
        self.replies: dict[tuple[int, int], tuple] = {}  # (id, seq) → our five stamps of the reply
        self.previous = (0,) * 5  # those of the last ping (else zeros)
        nic.rx_handler = self.receive
        self.seq = 0
        self.answered = 0
        self.streamed = 0  # streaming frames received

    def eth(self, dst: bytes, ethertype: int, payload: bytes) -> bytes:
        return dst + self.nic.mac + struct.pack(">H", ethertype) + payload

    def handle(self, vp: Vp) -> int:
        """Every frame received so far (the workload's poll; the interrupt's is netvsc's
        NAPI, which calls :meth:`receive` itself)."""
        return self.nic.napi_poll(vp)

    def receive(self, vp: Vp, frames: list[bytes], wake: tuple, began: int, taken: int) -> None:
        """Frames from netvsc's poll: ARP and echo requests answered, replies noted.
        ``wake``: the stamps of the interrupt that polled (hypervisor received the signal,
        injected the vector; the VP took it), empty when the workload polled."""
        irq = tuple(wake[-3:]) if len(wake) >= 3 else (0, 0, 0)
        for f in frames:
            if len(f) < 14:
                continue
            (etype,) = struct.unpack_from(">H", f, 12)
            if etype == ETH_STREAM:
                self.streamed += 1
                continue
            if etype == ETH_ARP and len(f) >= 14 + ARP.size:
                _, _, _, _, op, sha, spa, _, tpa = ARP.unpack_from(f, 14)
                self.arp[spa] = sha
                if op == 1 and tpa == self.ip:
                    self.nic.send(vp, self.eth(sha, ETH_ARP, ARP.pack(1, ETH_IP, 6, 4, 2, self.nic.mac, self.ip,
                                                                       sha, spa)))
            elif etype == ETH_IP and len(f) >= 14 + IP.size + ICMP.size:
                ihl = (f[14] & 0xF) * 4
                src, dst, proto = f[26:30], f[30:34], f[23]
                if dst != self.ip or proto != 1:
                    continue
                icmp = f[14 + ihl:]
                kind, _, _, ident, seq = ICMP.unpack_from(icmp)
                if kind == 8:
                    self.answered += 1
                    data = icmp[8:]
                    if len(data) >= STAMPS.size:  # our stamps, beside the sender's
                        ours = STAMPS.pack(0, *irq, began, taken, time.perf_counter_ns(), 0, 0, 0, 0, 0)
                        data = data[:8] + ours[8:56] + data[56:]
                    self.nic.send(vp, self.eth(f[6:12], ETH_IP, self.ip_packet(src, self.icmp(0, ident, seq, data))))
                elif kind == 0:
                    self.replies[(ident, seq)] = (*irq, began, taken)

    @staticmethod
    def icmp(kind: int, ident: int, seq: int, payload: bytes) -> bytes:
        body = ICMP.pack(kind, 0, 0, ident, seq) + payload
        return ICMP.pack(kind, 0, checksum(body), ident, seq) + payload

    def ip_packet(self, dst: bytes, payload: bytes) -> bytes:
        head = IP.pack(0x45, 0, IP.size + len(payload), self.seq & 0xFFFF, 0, 64, 1, 0, self.ip, dst)
        return IP.pack(0x45, 0, IP.size + len(payload), self.seq & 0xFFFF, 0, 64, 1, checksum(head), self.ip,
                       dst) + payload

    def _until(self, vp: Vp, done, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.handle(vp)
            got = done()
            if got:
                return got
            if self.nic.ch.to_guest.is_empty():
                vp.sti()
                vp.hlt()
        return None

    def resolve(self, vp: Vp, ip: bytes) -> bytes | None:
        if ip not in self.arp:
            self.nic.send(vp, self.eth(BROADCAST, ETH_ARP, ARP.pack(1, ETH_IP, 6, 4, 1, self.nic.mac, self.ip,
                                                                     bytes(6), ip)))
            self._until(vp, lambda: self.arp.get(ip), ARP_TIMEOUT_S)
        return self.arp.get(ip)

    def ping(self, vp: Vp, ip: bytes) -> float | None:
        """One echo request to ``ip``; the round trip in seconds, or None."""
        mac = self.resolve(vp, ip)
        if mac is None:
            return None
        self.seq += 1
        key = (0x4856, self.seq & 0xFFFF)
        t0 = time.perf_counter_ns()
        previous, self.previous = self.previous, (0,) * 5
        payload = STAMPS.pack(t0, 0, 0, 0, 0, 0, 0, *previous) + PAYLOAD[STAMPS.size:]
        self.nic.send(vp, self.eth(mac, ETH_IP, self.ip_packet(ip, self.icmp(8, *key, payload))))
        got = self._until(vp, lambda: self.replies.pop(key, None), PING_TIMEOUT_S)
        if got is None:
            return None
        self.previous = got
        return (got[4] - t0) / 1e9


def wl_vmbus_net(vp: Vp, sys) -> int:
    if vp.index != 0:
        return 0
    st = sys.timers.get("vmbus_net_state")
    if st is None or st[0] != sys.booted_generation:
        st = (sys.booted_generation, _bring_up(vp, sys), {})
        sys.timers["vmbus_net_state"] = st
    stack, dead = st[1], st[2]
    if stack is None:
        return 0
    try:
        n = stack.handle(vp)
        if stack.streamed:
            vp.counters["vmbus_stream_rx"] = stack.streamed
        now = time.monotonic()
        if now - sys.timers.get("vmbus_net", 0.0) < PING_INTERVAL_S:
            return n
        sys.timers["vmbus_net"] = now
        # (a peer heard from since — its gratuitous ARP at bring-up — is alive again)
        peers = [bytes([10, 0, 0, i]) for i in range(1, MAX_PEER + 1)
                 if i != stack.ip[3] and (dead.get(i, 0.0) < now or bytes([10, 0, 0, i]) in stack.arp)]
        if not peers:
            return n
        at = sys.timers.get("vmbus_net_peer", 0) % len(peers)
        sys.timers["vmbus_net_peer"] = at + 1
        ip = peers[at]
        rtt = stack.ping(vp, ip)
    except (NetError, VmbusError) as e:
        sys.console(vp, f"[{sys.name}] vmbus_net: {e}")
        sys.timers["vmbus_net_state"] = (sys.booted_generation, None, {})
        return 0
    if rtt is None:
        if ip in stack.arp:
            sys.console(vp, f"[{sys.name}] vmbus_net: ping {'.'.join(map(str, ip))}: no reply in {PING_TIMEOUT_S} s")
        dead[ip[3]] = now + DEAD_PEER_S
        return n
    c = vp.counters
    c["vmbus_pings"] = c.get("vmbus_pings", 0) + 1
    c["vmbus_ping_ns"] = c.get("vmbus_ping_ns", 0) + int(rtt * 1e9)
    c["vmbus_ping_min_ns"] = min(c.get("vmbus_ping_min_ns", 1 << 62), int(rtt * 1e9))
    c["vmbus_ping_max_ns"] = max(c.get("vmbus_ping_max_ns", 0), int(rtt * 1e9))
    # One line a second (the pings of that second), not one a ping: a line is an exit per
    # character, during which this partition answers nobody but from its interrupt.
    since = c.get("vmbus_ping_printed", 0)
    if now - sys.timers.get("vmbus_net_printed", 0.0) >= PRINT_INTERVAL_S:
        sys.timers["vmbus_net_printed"] = now
        c["vmbus_ping_printed"] = c["vmbus_pings"]
        sys.console(vp, f"[{sys.name}] vmbus_net: ping {'.'.join(map(str, ip))}: {len(PAYLOAD) + 8} bytes, "
                        f"{rtt * 1e3:.2f} ms ({c['vmbus_pings'] - since} pings since the last line; "
                        f"{stack.answered} echo requests answered)")
    return n + 1


def wl_vmbus_net_stream(vp: Vp, sys) -> int:
    """Once a peer is known (VP 0, with ``vmbus_net``): STREAM_S seconds of back-to-back
    1 KiB frames to it, as fast as the transmit pages come back; the peer counts them
    (``vmbus_stream_rx`` in its VP's counters)."""
    st = sys.timers.get("vmbus_net_state")
    if vp.index != 0 or st is None or st[1] is None or sys.timers.get("vmbus_stream_done"):
        return 0
    stack = st[1]
    peers = [mac for ip, mac in stack.arp.items() if ip != stack.ip]
    if not peers:
        return 0
    sys.timers["vmbus_stream_done"] = 1
    frame = stack.eth(peers[0], ETH_STREAM, bytes(STREAM_FRAME - 14))
    sent, t0 = 0, time.perf_counter_ns()
    try:
        while time.perf_counter_ns() - t0 < STREAM_S * 1e9:
            for _ in range(64):
                stack.nic.send(vp, frame)
            sent += 64
            stack.handle(vp)  # (the receive side's acknowledgements and our completions)
    except (NetError, VmbusError) as e:
        sys.console(vp, f"[{sys.name}] vmbus_net_stream: {e}")
        return 0
    ns = time.perf_counter_ns() - t0
    vp.counters.update(vmbus_stream_sent=sent, vmbus_stream_ns=ns)
    sys.console(vp, f"[{sys.name}] vmbus_net_stream: {sent} frames of {STREAM_FRAME} bytes in {ns / 1e9:.2f} s: "
                    f"{sent / ns * 1e9:.0f} frames/s sent")
    return sent


def _bring_up(vp: Vp, sys) -> Stack | None:
    bus = vmbus_bus(vp, sys)
    if bus is None:
        return None
    nics = [o for o in bus.offers if o["if_type"] == HV_NIC_GUID]
    if not nics:
        sys.console(vp, f"[{sys.name}] vmbus_net: no synthetic NIC offered")
        return None
    try:
        at = vmbus_resume.reset_nic(vp, sys, bus)  # a resumed kernel's netvsc starts its channel over
        nic = bring_up(vp, bus, nics[0], at=at)
        vmbus_resume.remember_nic(sys, nic)
    except (NetError, VmbusError) as e:
        sys.console(vp, f"[{sys.name}] vmbus_net: {e}")
        return None
    stack = Stack(nic)
    # A gratuitous ARP: the partitions up already learn this one (and stop waiting for it).
    nic.send(vp, stack.eth(BROADCAST, ETH_ARP, ARP.pack(1, ETH_IP, 6, 4, 1, nic.mac, stack.ip, bytes(6), stack.ip)))
    sys.console(vp, f"[{sys.name}] vmbus_net: NIC {nic.mac.hex(':')} on channel {nic.ch.relid}, "
                    f"address {'.'.join(map(str, stack.ip))}")
    return stack
