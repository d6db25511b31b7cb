"""Connections between child partitions and the root's VMBus server (the ``vsp`` peer), and
the two hypercalls that use them: HvCallPostMessage (0x005C) and HvCallSignalEvent (0x005D).

TLFS inter-partition communication: a *port* belongs to the partition that receives, a
*connection* to the one that sends.  Here every port is the root's — the ``vsp`` process,
the root partition's kernel-side VMBus — so a connection is named by (child partition,
connection id) and leads to the vsp (``SynicConnect``); guest → guest connections are not
built.  The vsp in turn posts messages and signals events into a child's SynIC through the
hypervisor (``SynicPost``, ``SynicSignal``), and asks which guest pages it may map for a
GPADL (``GpaMapRequest``).  Contract: ``SYNIC-CONTRACT`` (issue 10).

A partition's messages and events cannot crowd out another's: each partition has a budget
(a token bucket) of messages and events in flight to the vsp.  A guest beyond its message
budget gets HV_STATUS_INSUFFICIENT_BUFFERS (Linux retries it, ``vmbus_post_msg``); event
flags "never fail due to insufficient resources" (TLFS), so an event beyond the budget is
kept as one pending flag per connection and sent with the hypervisor's housekeeping.
"""

from __future__ import annotations

import logging
import time

from proto import messages as m
from proto.atomic import ATOMIC
from proto import synic_messages as sm
from proto.gpa_messages import MAX_UNMAPPED_RANGES, GpaUnmapped
from proto.codes import HvPartitionState, HvStatus
from proto.hvcall import HV_INPUT_POST_MESSAGE
from proto.memory import SLAT_INVALID, page_runs
from proto.synic_messages import HV_EVENT_FLAGS_PER_SINT, HV_MESSAGE_PAYLOAD_BYTES

log = logging.getLogger("hypervisor")
S = HvStatus

# A connection id is 24 bits (TLFS HV_CONNECTION_ID; the high 8 are RsvdZ).
CONNECTION_ID_LIMIT = 1 << 24
# Per partition: messages and events to the vsp, a burst of this many, refilled at this rate.
MESSAGE_BUDGET, MESSAGE_REFILL_PER_S = 64, 5000
EVENT_BUDGET, EVENT_REFILL_PER_S = 256, 20000
# A GPADL larger than this is refused (the vsp's rings and buffers are far smaller).
MAX_GPA_MAP_PAGES = 1 << 16


class _Bucket:
    __slots__ = ("tokens", "capacity", "rate", "t")

    def __init__(self, capacity: int, rate: int) -> None:
        self.tokens, self.capacity, self.rate, self.t = float(capacity), capacity, rate, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SynicPorts:
    def __init__(self, *, table, synic, memory, outbox, counters: dict) -> None:
        self._table = table
        self._synic = synic
        self._memory = memory
        self._outbox = outbox
        self.vsp: bytes | None = None  # the bound vsp peer's identity
        self.connections: dict[tuple[int, int], str] = {}  # (partition, connection id) → kind
        self._buckets: dict[int, tuple[_Bucket, _Bucket]] = {}
        self._deferred: set[tuple[int, int, int, int]] = set()  # (partition, vp, connection, flag)
        # Guest pages the vsp was allowed to map (gpa_map_request), per partition: when the
        # root unmaps one, the vsp is told (gpa_unmapped), so that it lets go of it.
        self._granted: dict[int, set[int]] = {}
        self.counters = counters
        for k in ("synic_messages_to_root", "synic_events_to_root", "synic_events_deferred",
                  "synic_posts_from_root", "synic_signals_from_root", "synic_refused", "gpa_unmaps_to_vsp"):
            counters.setdefault(k, 0)
        # 0: libatomic is missing, and event flags are set and cleared by plain
        # read-modify-writes, which race between the hypervisor and the guest (proto.atomic).
        counters["synic_flags_atomic"] = int(ATOMIC)
        if not ATOMIC:
            log.warning("libatomic not found: SynIC event flags are not atomic across processes")

    # -- the vsp peer ----------------------------------------------------------------------------

    def vsp_bound(self, identity: bytes) -> bool:
        """A vsp said a good hello; False if another is bound (one per run)."""
        if self.vsp is not None and self.vsp != identity:
            return False
        self.vsp = identity
        return True

    def vsp_gone(self, identity: bytes) -> None:
        """Its connection went: its ports go with it; the guests' connections to them are
        unknown from now on (INVALID_CONNECTION_ID) until a new vsp connects them."""
        if identity == self.vsp:
            self.vsp = None
            self.connections.clear()
            self._deferred.clear()
            self._granted.clear()

    def partition_gone(self, partition_id: int) -> None:
        for key in [k for k in self.connections if k[0] == partition_id]:
            del self.connections[key]
        self._buckets.pop(partition_id, None)
        self._granted.pop(partition_id, None)
        self._deferred = {d for d in self._deferred if d[0] != partition_id}

    def _part(self, partition_id: int):
        part = self._table.get(partition_id)
        if part is None or part.state in (HvPartitionState.FINALIZED, HvPartitionState.DELETED):
            return None
        return part

    def _refuse(self, identity: bytes, msg, code: str, why: str) -> None:
        self.counters["synic_refused"] += 1
        self._outbox.error(identity, msg.TYPE, code, why)

    # -- from the vsp ----------------------------------------------------------------------------

    def on_connect(self, identity: bytes, peer, msg: sm.SynicConnect, t_in: int) -> None:
        if self._part(msg.partition) is None:
            return self._refuse(identity, msg, "UNKNOWN_PARTITION", f"no partition {msg.partition}")
        if msg.connection_id >= CONNECTION_ID_LIMIT or msg.connection_id == 0:
            return self._refuse(identity, msg, "INVALID_FIELD",
                                f"connection id {msg.connection_id:#x} is not 1..0xFFFFFF")
        key = (msg.partition, msg.connection_id)
        if self.connections.get(key, msg.kind) != msg.kind:
            return self._refuse(identity, msg, "CONFLICT",
                                f"connection {msg.connection_id:#x} of partition {msg.partition} carries "
                                f"{self.connections[key]}s")
        self.connections[key] = msg.kind
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def on_disconnect(self, identity: bytes, peer, msg: sm.SynicDisconnect, t_in: int) -> None:
        if self.connections.pop((msg.partition, msg.connection_id), None) is None:
            return self._refuse(identity, msg, "UNKNOWN_PARTITION" if self._part(msg.partition) is None else "STALE",
                                f"partition {msg.partition} has no connection {msg.connection_id:#x}")
        self._outbox.send(identity, m.Ack(msg.TYPE))

    def _target(self, msg):
        """(partition, VP) a post or signal names, or (None, status)."""
        part = self._part(msg.partition)
        if part is None:
            return None, S.HV_STATUS_INVALID_PARTITION_ID
        if msg.vp >= len(part.vps):
            return None, S.HV_STATUS_INVALID_VP_INDEX
        return (part, part.vps[msg.vp]), S.HV_STATUS_SUCCESS

    def on_post(self, identity: bytes, peer, msg: sm.SynicPost, t_in: int) -> None:
        target, status = self._target(msg)
        if target is not None:
            part, vp = target
            # Root messages are not hypervisor messages: MessageType's high bit is the
            # hypervisor's (TLFS), as for a guest's HvCallPostMessage.
            if msg.message_type >> 31:
                status = S.HV_STATUS_INVALID_PARAMETER
            else:
                status = self._synic.post(part, vp, msg.sint, msg.message_type, msg.payload, t_in)
                self.counters["synic_posts_from_root"] += 1
        if status != S.HV_STATUS_SUCCESS:
            self.counters["synic_refused"] += 1
        self._outbox.send(identity, sm.SynicPostResult(msg.partition, status))

    def on_signal(self, identity: bytes, peer, msg: sm.SynicSignal, t_in: int) -> None:
        target, status = self._target(msg)
        if target is not None:
            status = self._synic.signal(*target, msg.sint, msg.flag_number, t_in)
            self.counters["synic_signals_from_root"] += 1
        if status != S.HV_STATUS_SUCCESS:
            self.counters["synic_refused"] += 1
        self._outbox.send(identity, sm.SynicSignalResult(msg.partition, status))

    def on_gpa_map(self, identity: bytes, peer, msg: sm.GpaMapRequest, t_in: int) -> None:
        """Every page must be RAM the partition's SLAT maps (not MMIO, not unmapped, not
        beyond its space); then the vsp may map exactly those pages of its RAM file."""
        status = self._check_pages(msg.partition, msg.pages)
        if status != S.HV_STATUS_SUCCESS:
            self.counters["synic_refused"] += 1
            return self._outbox.send(identity, sm.GpaMapReply(msg.partition, status, "", ()))
        slat = self._memory.slats[msg.partition]
        granted = self._granted.setdefault(msg.partition, set())
        for first, count in msg.pages:
            granted.update(range(first, first + count))
        # The RAM file is indexed by guest page number: a guest page is the same page of the file.
        self._outbox.send(identity, sm.GpaMapReply(msg.partition, S.HV_STATUS_SUCCESS, str(slat.ram_path),
                                                   msg.pages))

    def gpa_unmapped(self, partition_id: int, first: int, count: int) -> None:
        """The root unmapped guest pages ``first``…``first + count - 1`` of the partition
        (HvCallUnmapGpaPages): the ones the vsp was granted go in a ``gpa_unmapped``, so
        that it revokes what it holds over them before the root can map the addresses to
        something else (proto/gpa_messages.py)."""
        granted = self._granted.get(partition_id)
        if not granted or self.vsp is None:
            return
        if count > len(granted):
            gone = sorted(p for p in granted if first <= p < first + count)
        else:
            gone = [p for p in range(first, first + count) if p in granted]
        if not gone:
            return
        granted.difference_update(gone)
        runs = page_runs(gone)
        for i in range(0, len(runs), MAX_UNMAPPED_RANGES):
            self.counters["gpa_unmaps_to_vsp"] += 1
            self._outbox.send(self.vsp, GpaUnmapped(partition_id, runs[i:i + MAX_UNMAPPED_RANGES]))

    def _check_pages(self, partition_id: int, pages) -> int:
        if self._part(partition_id) is None:
            return S.HV_STATUS_INVALID_PARTITION_ID
        slat = self._memory.slats.get(partition_id)
        if slat is None or not pages or sum(n for _, n in pages) > MAX_GPA_MAP_PAGES:
            return S.HV_STATUS_INVALID_PARAMETER
        entries = slat.entries
        for first, count in pages:
            if first + count > len(entries):
                return S.HV_STATUS_INVALID_PARAMETER
            for page in range(first, first + count):
                if entries[page] == SLAT_INVALID:
                    return S.HV_STATUS_INVALID_PARAMETER
        return S.HV_STATUS_SUCCESS

    # -- the hypercalls ----------------------------------------------------------------------------

    def _buckets_of(self, partition_id: int) -> tuple[_Bucket, _Bucket]:
        b = self._buckets.get(partition_id)
        if b is None:
            b = self._buckets[partition_id] = (_Bucket(MESSAGE_BUDGET, MESSAGE_REFILL_PER_S),
                                               _Bucket(EVENT_BUDGET, EVENT_REFILL_PER_S))
        return b

    def post_message(self, part, vp, hc, args: tuple, data: bytes) -> int:
        """HvCallPostMessage: ConnectionId u32, RsvdZ u32, MessageType u32, PayloadSize u32,
        Message[240].  The checks in the TLFS's order of its error list."""
        connection_id, reserved, message_type, size = args
        if hc.fast or reserved or connection_id >= CONNECTION_ID_LIMIT:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT
        if message_type == 0 or message_type >> 31 or size > HV_MESSAGE_PAYLOAD_BYTES:
            return S.HV_STATUS_INVALID_PARAMETER
        if len(data) < HV_INPUT_POST_MESSAGE.size + size:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT
        if self.connections.get((part.id, connection_id)) != "message" or self.vsp is None:
            return S.HV_STATUS_INVALID_CONNECTION_ID
        if not self._buckets_of(part.id)[0].take():
            return S.HV_STATUS_INSUFFICIENT_BUFFERS
        payload = data[HV_INPUT_POST_MESSAGE.size:HV_INPUT_POST_MESSAGE.size + size]
        if not self._outbox.send(self.vsp, sm.SynicMessageToRoot(part.id, vp.index, connection_id, message_type,
                                                                 payload)):
            return S.HV_STATUS_INSUFFICIENT_BUFFERS
        self.counters["synic_messages_to_root"] += 1
        return S.HV_STATUS_SUCCESS

    def signal_event(self, part, vp, hc, args: tuple, data: bytes) -> int:
        """HvCallSignalEvent (memory or fast): ConnectionId u32, FlagNumber u16, RsvdZ u16."""
        connection_id, flag, reserved = args
        if reserved or connection_id >= CONNECTION_ID_LIMIT:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT
        if self.connections.get((part.id, connection_id)) != "event" or self.vsp is None:
            return S.HV_STATUS_INVALID_CONNECTION_ID
        if flag >= HV_EVENT_FLAGS_PER_SINT:
            return S.HV_STATUS_INVALID_PARAMETER
        event = (part.id, vp.index, connection_id, flag)
        if event in self._deferred or not self._buckets_of(part.id)[1].take() or not self._send_event(event):
            self._deferred.add(event)  # one pending flag: sent with the housekeeping
            self.counters["synic_events_deferred"] += 1
        return S.HV_STATUS_SUCCESS

    def _send_event(self, event: tuple[int, int, int, int]) -> bool:
        if self.vsp is None or not self._outbox.send(self.vsp, sm.SynicEventToRoot(*event)):
            return False
        self.counters["synic_events_to_root"] += 1
        return True

    def housekeeping(self) -> None:
        """Send the events that were over a partition's budget (one per flag)."""
        if self._deferred and self.vsp is not None:
            deferred, self._deferred = self._deferred, set()
            for event in deferred:
                if (event[0], event[2]) in self.connections and not self._send_event(event):
                    self._deferred.add(event)


# -- the SPECS rows' handlers (hypervisor/hypercalls.py): the dispatcher checked privilege,
# reserved control bits, rep count and the fixed block's presence ------------------------------

def hv_post_message(calls, caller, hc, args, data):
    ports = calls.synic_ports
    if ports is None or caller.partition is None or caller.vp is None:
        return S.HV_STATUS_INVALID_CONNECTION_ID, b""
    return ports.post_message(caller.partition, caller.vp, hc, args, data), b""


def hv_signal_event(calls, caller, hc, args, data):
    ports = calls.synic_ports
    if ports is None or caller.partition is None or caller.vp is None:
        return S.HV_STATUS_INVALID_CONNECTION_ID, b""
    return ports.signal_event(caller.partition, caller.vp, hc, args, data), b""
