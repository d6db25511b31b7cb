"""The vsp process's loop: the hypervisor's SynIC messages in, the VMBus server between,
SynicPost / SynicSignal / GpaMapRequest out (the SynIC contract, proto/synic_messages.py).

:class:`VspService` is handed an endpoint that has already said hello as the "vsp" peer
(``__main__`` connects it), so a test can drive it with a fake one.  Posts and signals are
sent without waiting for their results (the results are counted as they come back: a
hostile guest's unavailable SIM slot must not stall every other partition); only the GPADL
check waits for its reply, keeping whatever else arrives meanwhile for afterwards.

Every handled frame is guarded: an exception is a bug, logged as ``handler error:`` and
counted, and the loop goes on.  The server's figures (per partition and channel) go to
``vsp-status.json`` in the run directory now and then and at the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque

from proto import messages as m
from proto import synic_messages as sm
from proto.codes import HvStatus
from proto.errors import PeerTimeout, ProtocolError, Refused
from proto.gpa_messages import GpaUnmapped
from proto.memory import page_runs as page_ranges
from proto.vmbus import VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4, VMBUS_MESSAGE_TYPE

from root.vsp.events import EVENTS_FILE, EventLog, VmbusEvents
from root.vsp import saved
from root.vsp.server import VmbusServer

log = logging.getLogger("vsp")

IDLE_POLL_MS = 100
POLL_SLICE_MS = 1  # the TAP's inbox is looked at this often (ZeroMQ's poll counts in ms)
# A channel in poll mode is looked at this often.  ZeroMQ's poll counts in whole ms, which
# was most of a QD8 batch's turnaround (the guest halts until its completions come, and
# the VSP found its next requests up to 1 ms late): so then the loop looks at its socket
# without waiting and sleeps this long between looks.
POLL_SLICE_NS = 100_000
MAP_TIMEOUT_MS = 5000
STATUS_INTERVAL_S = 0.5
MAX_MAP_RANGES = sm.MAX_GPA_MAP_RANGES


class VspService:
    def __init__(self, dealer, status_path: str | None = None) -> None:
        self.dealer = dealer
        self.server = VmbusServer(self)
        self.status_path = status_path
        self.running = True
        self.handler_errors = 0
        self.results = {"post_failed": 0, "signal_failed": 0, "posts": 0, "signals": 0, "refused": 0,
                        "gpa_unmapped": 0}
        self._later: deque[bytes] = deque()
        self._next_status = 0.0
        self._next_poll = 0
        self.switch = None  # root.vsp.netvsp.VirtualSwitch, when a partition has a NIC
        self.external = None  # root.vsp.tap.ExternalPort: the switch's port to the host
        # What `trace` shows of VMBus: vsp-events.jsonl beside vsp-status.json (root/vsp/events.py).
        self.events = VmbusEvents(EventLog(os.path.join(os.path.dirname(status_path), EVENTS_FILE)
                                           if status_path else None), self)

    # -- the Hypervisor interface the server acts through -------------------------------------

    def post(self, partition: int, vp: int, sint: int, payload: bytes) -> bool:
        self.results["posts"] += 1
        self._guarded(self.events.posted, partition, payload)
        self.dealer.send(sm.SynicPost(partition, vp, sint, VMBUS_MESSAGE_TYPE, payload).encode())
        return True

    def signal(self, partition: int, vp: int, sint: int, flag: int) -> None:
        self.results["signals"] += 1
        self.dealer.send(sm.SynicSignal(partition, vp, sint, flag).encode())

    def map_gpas(self, partition: int, pfns: list[int]) -> bool:
        ranges = page_ranges(pfns)
        if len(ranges) > MAX_MAP_RANGES:
            return False
        reply = self._ask(sm.GpaMapRequest(partition, ranges, True),
                          lambda msg: isinstance(msg, sm.GpaMapReply) and msg.partition == partition)
        if reply is None:
            log.warning("no GpaMapReply for partition %d within %d ms: GPADL refused", partition, MAP_TIMEOUT_MS)
        return isinstance(reply, sm.GpaMapReply) and reply.status == HvStatus.HV_STATUS_SUCCESS

    def _ask(self, request: m.Message, answers) -> m.Message | None:
        """Send ``request`` and wait for the frame ``answers(msg)`` accepts, or an
        error_reply to it (returned as is); None after MAP_TIMEOUT_MS.  What else arrives
        meanwhile is kept, in order, for the loop."""
        self.dealer.send(request.encode())
        deadline = time.monotonic() + MAP_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            if not self.dealer.wait(IDLE_POLL_MS):
                continue
            raw = self.dealer.recv_ready()
            try:
                msg = m.decode(raw)
            except ProtocolError:
                continue
            if answers(msg) or (isinstance(msg, m.ErrorReply) and msg.ref_type == request.TYPE):
                return msg
            self._later.append(raw)
        return None

    # -- set-up -------------------------------------------------------------------------------

    def add_partition(self, partition: int, mem, devices: list, suppress: bool = True) -> None:
        """Offer ``devices`` to ``partition`` and connect its VMBus message connections
        (1 and 4) and each channel's event connection to us."""
        self.server.add_partition(partition, mem, devices, suppress)
        conns = [(c, "message") for c in (VMBUS_MESSAGE_CONNECTION_ID, VMBUS_MESSAGE_CONNECTION_ID_4)]
        conns += [(c, "event") for c in self.server.connection_ids(partition)]
        for conn, kind in conns:
            self._request(sm.SynicConnect(partition, conn, kind))

    def _request(self, msg: m.Message) -> None:
        """A set-up request answered by ``ack``."""
        reply = self._ask(msg, lambda r: isinstance(r, m.Ack) and r.ref_type == msg.TYPE)
        if reply is None:
            raise PeerTimeout(f"{msg.NAME}: no answer within {MAP_TIMEOUT_MS} ms")
        if isinstance(reply, m.ErrorReply):
            raise Refused(reply.code, f"{msg.NAME}: {reply.message}")

    # -- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while self.running:
                if self._later:
                    self.handle(self._later.popleft())
                elif self._wait():
                    self.handle(self.dealer.recv_ready())
                if self.external is not None and self.external.inbox:
                    # (the TAP's reader thread fills the inbox; the switch is this loop's)
                    for frame in self.external.frames():
                        self._guarded(self.switch.forward, self.external, frame)
                server = self.server
                if (server.busy or server.polling) and time.monotonic_ns() >= self._next_poll:
                    # (also between messages: other partitions' traffic must not starve them)
                    self._next_poll = time.monotonic_ns() + POLL_SLICE_NS
                    self._guarded(server.poll_busy)
                if time.monotonic() >= self._next_status:
                    self.write_status()
                    self._guarded(self.events.maybe_sample)
        finally:
            self._guarded(self.events.sample)
            self.events.log.close()
            self.write_status()

    def _wait(self) -> bool:
        """True when a message is ready: at once when a channel is busy, within a poll
        slice when one is in poll mode, else within the TAP's or the idle slice."""
        if self.server.busy:
            return self.dealer.wait(0)
        if self.server.polling:
            if self.dealer.wait(0):
                return True
            time.sleep(POLL_SLICE_NS / 1e9)
            return self.dealer.wait(0)
        return self.dealer.wait(POLL_SLICE_MS if self.external else IDLE_POLL_MS)

    def handle(self, raw: bytes) -> None:
        self._guarded(self._dispatch, raw)

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            self.handler_errors += 1
            log.exception("handler error: %s", getattr(fn, "__name__", fn))

    def _dispatch(self, raw: bytes) -> None:
        try:
            msg = m.decode(raw)
        except ProtocolError as e:
            log.warning("undecodable frame from the hypervisor: %s", e)
            return
        cls = msg.__class__
        if cls is sm.SynicEventToRoot:
            self.server.on_event(msg.partition, msg.connection_id)
        elif cls is sm.SynicMessageToRoot:
            if msg.message_type == VMBUS_MESSAGE_TYPE:
                was_open = self.events.closing_open_channel(msg.partition, msg.payload)
                self.server.on_message(msg.partition, msg.vp, msg.connection_id, msg.payload)
                self.events.received(msg.partition, msg.payload, was_open)
        elif cls is sm.SynicPostResult:
            if msg.status != HvStatus.HV_STATUS_SUCCESS:
                self.results["post_failed"] += 1
        elif cls is sm.SynicSignalResult:
            if msg.status != HvStatus.HV_STATUS_SUCCESS:
                self.results["signal_failed"] += 1
        elif cls is GpaUnmapped:
            self.results["gpa_unmapped"] += 1
            self.server.gpa_unmapped(msg.partition, msg.pages)
        elif cls is m.VspStateQuery:
            self.dealer.send(saved.answer(self.server, msg).encode())
        elif cls is m.ErrorReply:
            self.results["refused"] += 1
            log.info("hypervisor refused %d: %s %s", msg.ref_type, msg.code, msg.message)

    def status(self) -> dict:
        partitions = self.server.status()
        for pid, bus in self.server.partitions.items():  # ring sizes, for occupancy as a share (top)
            for o in bus.offers.values():
                if o.channel is not None:
                    partitions[pid]["channels"][o.relid].update(
                        to_host_size=o.channel.to_host.data_size, to_guest_size=o.channel.to_guest.data_size)
        return {"written_ns": time.perf_counter_ns(), "partitions": partitions, "hypervisor": dict(self.results),
                "handler_errors": self.handler_errors,
                "switch": self.switch.status() if self.switch is not None else None,
                "devices": {pid: {o.relid: getattr(o.device, "stats", None).__dict__
                                  for o in bus.offers.values() if hasattr(o.device, "stats")}
                            for pid, bus in self.server.partitions.items()}}

    def write_status(self) -> None:
        self._next_status = time.monotonic() + STATUS_INTERVAL_S
        if not self.status_path:
            return
        tmp = self.status_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.status(), f, default=str)
        os.replace(tmp, self.status_path)
