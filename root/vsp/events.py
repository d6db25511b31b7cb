"""The VSP process's trace events: what `trace` shows of VMBus beside the hypervisor's exits.

The VSP process appends one JSON object a line to ``vsp-events.jsonl`` in the run
directory (0600); `trace` follows that file (:class:`EventFollower`) alongside the
hypervisor's stream, so no hypervisor change and no new socket is needed.

What is written (``event``):

- exact, as they happen (the VSP sees them as it posts or receives the channel message):
  ``connected`` (VERSION_RESPONSE), ``offered``, ``opened`` / ``open refused``,
  ``closed`` (CLOSECHANNEL), ``rescinded`` (with the channel-reset reason), ``gpadl created``
  / ``gpadl refused``, ``gpadl torn down``, ``unloaded``;
- sampled every SAMPLE_S: ``refused`` (reason and how many since the last sample, from the
  server's and the devices' refusal counters), ``signals`` (per open channel: packets in/out,
  signals sent and suppressed, guest signals since the last sample, and ring occupancy
  now), ``mac learned`` (a MAC new to the switch's forwarding table, or moved to
  another port).

A guest controls how often most of these happen, so the file is bounded twice: a token
bucket (RATE events/s, BURST at once; what it refuses is counted and said in a ``dropped``
event when tokens return) and a size cap (at MAX_BYTES the file is renamed to
``vsp-events.jsonl.1``, replacing the previous one, and a new one begun: at most twice
MAX_BYTES on disk).  Stamps are ``perf_counter_ns`` (CLOCK_MONOTONIC), as the
hypervisor's trace stamps are, so the two streams share a time axis.
"""

from __future__ import annotations

import json
import logging
import os
import time

from proto import vmbus as vb
from proto.memory import UnmappedGpa
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import RingError

log = logging.getLogger("vsp")

EVENTS_FILE = "vsp-events.jsonl"
MAX_BYTES = 1 << 20
RATE = 200.0  # events per second, sustained
BURST = 1000
SAMPLE_S = 1.0
CLOSECHANNEL = vb.HEADER.pack(Msg.CHANNELMSG_CLOSECHANNEL, 0)[:4]
# The counters a ``signals`` event carries as differences since the last sample.
CHANNEL_COUNTERS = ("packets_in", "packets_out", "signals_out", "signals_suppressed", "events_in")


class EventLog:
    """An append-only, rate-limited, size-capped JSON-lines file; ``path`` None: off."""

    def __init__(self, path: str | None, max_bytes: int = MAX_BYTES, rate: float = RATE, burst: int = BURST,
                 clock=time.monotonic) -> None:
        self.path, self.max_bytes, self.rate, self.burst, self.clock = path, max_bytes, rate, burst, clock
        self.tokens = float(burst)
        self.last = clock()
        self.dropped = 0  # refused by the rate limit since the last ``dropped`` event
        self.dropped_total = 0
        self.written = 0
        self.fd: int | None = None
        self.size = 0

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size

    def emit(self, event: str, partition: int, **fields) -> bool:
        """Append one event; False when the rate limit refused it (it is counted)."""
        if self.path is None:
            return False
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1 + (1 if self.dropped else 0):
            self.dropped += 1
            self.dropped_total += 1
            return False
        self.tokens -= 1
        try:
            if self.dropped:
                self.tokens -= 1
                self._write({"ns": time.perf_counter_ns(), "partition": 0, "event": "dropped", "count": self.dropped})
                self.dropped = 0
            self._write({"ns": time.perf_counter_ns(), "partition": partition, "event": event, **fields})
        except OSError as e:  # (a full disk, say): the VSP goes on without its events
            log.warning("events file %s: %s; no more VMBus trace events", self.path, e)
            self.close()
            self.path = None
            return False
        return True

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        if self.fd is None:
            self._open()
        if self.size and self.size + len(line) > self.max_bytes:
            fd, self.fd = self.fd, None
            os.close(fd)
            os.replace(self.path, self.path + ".1")
            self._open()
        os.write(self.fd, line)
        self.size += len(line)
        self.written += 1

    def close(self) -> None:
        """At the end: what the rate limit dropped since its last ``dropped`` event is said."""
        if self.dropped and self.path is not None:
            try:
                self._write({"ns": time.perf_counter_ns(), "partition": 0, "event": "dropped", "count": self.dropped})
            except OSError:
                pass
            self.dropped = 0
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class VmbusEvents:
    """Turns what the VSP service sees into events: the channel messages it posts and
    receives (exact), and samples of the server's counters (every SAMPLE_S)."""

    def __init__(self, log_: EventLog, service) -> None:
        self.log = log_
        self.service = service  # its ``server`` (VmbusServer) and ``switch`` (VirtualSwitch or None)
        self.next_sample = 0.0
        self.errors: dict[tuple, int] = {}  # (partition, relid or 0, reason) → count last sampled
        self.counters: dict[tuple[int, int], dict] = {}  # (partition, relid) → CHANNEL_COUNTERS last sampled
        self.macs: dict[str, str] = {}

    def _device(self, partition: int, relid: int) -> str | None:
        bus = self.service.server.partitions.get(partition)
        offer = bus.offers.get(relid) if bus else None
        return type(offer.device).__name__ if offer else None

    def posted(self, partition: int, payload: bytes) -> None:
        """A channel message the server posts to a guest."""
        try:
            msgtype, body = vb.split(payload)
        except vb.BadChannelMessage:
            return
        if msgtype == Msg.CHANNELMSG_VERSION_RESPONSE and len(body) >= vb.VERSION_RESPONSE.size:
            supported = body[0]
            bus = self.service.server.partitions.get(partition)
            version = bus.version if bus else 0
            self.log.emit("connected" if supported else "contact refused", partition,
                          **({"version": f"{version >> 16}.{version & 0xFFFF}"} if supported else {}))
        elif msgtype == Msg.CHANNELMSG_OFFERCHANNEL and len(body) >= vb.OFFER.size:
            relid = vb.OFFER.unpack_from(body)[8]
            self.log.emit("offered", partition, relid=relid, device=self._device(partition, relid))
        elif msgtype == Msg.CHANNELMSG_OPENCHANNEL_RESULT and len(body) >= vb.OPEN_RESULT.size:
            relid, _, status = vb.OPEN_RESULT.unpack_from(body)
            if status:
                self.sample_errors()  # the reason first
            self.log.emit("opened" if status == 0 else "open refused", partition, relid=relid,
                          device=self._device(partition, relid), **({"status": f"{status:#x}"} if status else {}))
        elif msgtype == Msg.CHANNELMSG_GPADL_CREATED and len(body) >= vb.GPADL_CREATED.size:
            relid, gpadl, status = vb.GPADL_CREATED.unpack_from(body)
            if status:
                self.sample_errors()  # the reason first
            bus = self.service.server.partitions.get(partition)
            g = bus.gpadls.get(gpadl) if bus else None
            self.log.emit("gpadl created" if status == 0 else "gpadl refused", partition, relid=relid,
                          gpadl=f"{gpadl:#x}", **({"pages": len(g.pfns)} if g is not None and status == 0
                                                  else {"status": f"{status:#x}"}))
        elif msgtype == Msg.CHANNELMSG_GPADL_TORNDOWN and len(body) >= vb.GPADL_TORNDOWN.size:
            (gpadl,) = vb.GPADL_TORNDOWN.unpack_from(body)
            self.log.emit("gpadl torn down", partition, gpadl=f"{gpadl:#x}")
        elif msgtype == Msg.CHANNELMSG_RESCIND_CHANNELOFFER and len(body) >= vb.RELID.size:
            (relid,) = vb.RELID.unpack_from(body)
            self.sample_errors()  # the reset's reason first
            self.log.emit("rescinded", partition, relid=relid, device=self._device(partition, relid))
            self.counters.pop((partition, relid), None)
        elif msgtype == Msg.CHANNELMSG_UNLOAD_RESPONSE:
            self.log.emit("unloaded", partition)  # (its channels closed with it)
            self.counters = {k: v for k, v in self.counters.items() if k[0] != partition}

    def closing_open_channel(self, partition: int, payload: bytes) -> bool:
        """Before the server handles a guest's message: is it a CLOSECHANNEL of an open
        channel (then :meth:`received` says ``closed``)?"""
        if payload[:4] != CLOSECHANNEL or len(payload) < vb.HEADER.size + vb.RELID.size:
            return False
        (relid,) = vb.RELID.unpack_from(payload, vb.HEADER.size)
        bus = self.service.server.partitions.get(partition)
        offer = bus.offers.get(relid) if bus else None
        return offer is not None and offer.channel is not None

    def received(self, partition: int, payload: bytes, was_open: bool) -> None:
        """A guest's channel message, after the server handled it; ``was_open``: what
        :meth:`closing_open_channel` said before."""
        if was_open:
            (relid,) = vb.RELID.unpack_from(payload, vb.HEADER.size)
            self.log.emit("closed", partition, relid=relid, device=self._device(partition, relid))
            self.counters.pop((partition, relid), None)

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if now >= self.next_sample:
            self.next_sample = now + SAMPLE_S
            self.sample()

    def sample(self) -> None:
        self.sample_errors()
        self._sample_channels()
        self._sample_switch()

    def sample_errors(self) -> None:
        """A ``refused`` event per reason whose count grew since the last sample."""
        for pid, bus in self.service.server.partitions.items():
            found = [((pid, 0, r), n) for r, n in bus.errors.items()]
            for o in bus.offers.values():
                stats = getattr(o.device, "stats", None)
                for r, n in (getattr(stats, "errors", None) or {}).items():
                    found.append(((pid, o.relid, r), n))
            for key, n in found:
                before = self.errors.get(key, 0)
                if n != before:
                    self.errors[key] = n
                    if n > before:
                        fields = {"relid": key[1], "device": self._device(pid, key[1])} if key[1] else {}
                        self.log.emit("refused", pid, reason=key[2], count=n - before, **fields)

    def _sample_channels(self) -> None:
        for pid, bus in self.service.server.partitions.items():
            for o in bus.offers.values():
                ch = o.channel
                if ch is None:
                    continue
                now = {k: getattr(ch.stats, k) for k in CHANNEL_COUNTERS}
                before = self.counters.get((pid, o.relid))
                if before is None or any(now[k] < before[k] for k in CHANNEL_COUNTERS):
                    before = dict.fromkeys(CHANNEL_COUNTERS, 0)  # (new, or reopened since: counted from 0)
                self.counters[(pid, o.relid)] = now
                delta = {k: now[k] - before[k] for k in CHANNEL_COUNTERS}
                if not any(delta.values()):
                    continue
                try:
                    occupancy = {"to_host_bytes": ch.to_host.bytes_used(), "to_guest_bytes": ch.to_guest.bytes_used()}
                except (RingError, UnmappedGpa, OSError, ValueError):
                    occupancy = {"occupancy": "corrupt"}
                self.log.emit("signals", pid, relid=o.relid, device=type(o.device).__name__, **delta, **occupancy)

    def _sample_switch(self) -> None:
        switch = self.service.switch
        if switch is None:
            return
        port_partition = {id(o.device): pid for pid, bus in self.service.server.partitions.items()
                          for o in bus.offers.values()}
        for mac, port in list(switch.table.items()):
            text, name = mac.hex(":"), getattr(port, "name", "?")
            if self.macs.get(text) != name:
                moved = text in self.macs
                self.macs[text] = name
                self.log.emit("mac moved" if moved else "mac learned", port_partition.get(id(port), 0),
                              mac=text, port=name, table_size=len(switch.table))


class EventFollower:
    """``tail -F`` of the events file for `trace`: new lines since it started (or since the
    file appeared), across the VSP's renames at MAX_BYTES."""

    def __init__(self, path, from_start: bool = False) -> None:
        self.path = str(path)
        self.f = None
        self.partial = b""
        self.bad_lines = 0
        self._open(from_start)

    def _open(self, from_start: bool) -> None:
        try:
            self.f = open(self.path, "rb")
        except OSError:
            self.f = None
            return
        if not from_start:
            self.f.seek(0, os.SEEK_END)

    def poll(self) -> list[dict]:
        if self.f is None:
            self._open(True)  # it appeared after we started: everything in it is new
            if self.f is None:
                return []
        out = self._read()
        try:
            renamed = os.stat(self.path).st_ino != os.fstat(self.f.fileno()).st_ino
        except OSError:
            renamed = True
        if renamed:
            self.f.close()
            self.partial = b""
            self._open(True)
            if self.f is not None:
                out += self._read()
        return out

    def _read(self) -> list[dict]:
        data = self.partial + self.f.read()
        *lines, self.partial = data.split(b"\n")
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("event"), str) and isinstance(rec.get("partition"), int):
                out.append(rec)
            else:
                self.bad_lines += 1
        return out

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
