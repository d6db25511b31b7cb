"""One open VMBus channel on the root's side: its two rings in the guest's GPADL, the
device (VSP) behind it, and the signal rules between them.

The guest→host ring is at page 0 of the GPADL, the host→guest ring at
``downstream_ringbuffer_pageoffset`` (Linux ``vmbus_open``).  On the guest's signal the
channel drains its ring with the interrupt mask set (no signals while it is reading
anyway), hands the packets to the device, clears the mask and looks again, as Linux's and
OpenVMM's readers do.  What the device sends goes into the host→guest ring; what does not
fit waits here until the guest has read (it asks for the space with pending_send_sz, the
guest's read signals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns

from proto.vmbus_ring import PagedView, Ring, RingFull

MAX_BACKLOG = 1024  # packets the device may have waiting for room in the host→guest ring
DRAIN_ROUNDS = 64  # a guest that keeps writing as fast as we read gets its turn later


@dataclass
class ChannelStats:
    packets_in: int = 0  # guest → host
    packets_out: int = 0  # host → guest
    events_in: int = 0  # the guest's signals (HvCallSignalEvent) for this channel
    signals_out: int = 0  # our signals to the guest
    signals_suppressed: int = 0  # host→guest writes that needed no signal
    ring_full: int = 0  # writes that found the host→guest ring full
    drains: int = 0  # times the guest→host ring was drained
    work_ns: int = 0  # time spent reading the ring, in the device and writing completions

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class OpenChannel:
    relid: int
    gpadl: int
    target_vp: int
    to_host: Ring
    to_guest: Ring
    signal: object  # callable(): set the guest's event flag for this channel
    stats: ChannelStats = field(default_factory=ChannelStats)
    backlog: list = field(default_factory=list)
    find_gpadl: object = None  # callable(gpadl id) → a created GPADL of this channel (server.Gpadl), or None

    @classmethod
    def over(cls, mem, pfns: list[int], downstream_offset: int, relid: int, gpadl: int, target_vp: int,
             signal, suppress: bool = True) -> "OpenChannel":
        pages = [pfn << 12 for pfn in pfns]
        return cls(relid, gpadl, target_vp,
                   Ring(PagedView(mem, pages[:downstream_offset]), suppress),
                   Ring(PagedView(mem, pages[downstream_offset:]), suppress), signal)

    def send(self, packets: list[bytes]) -> None:
        """Packets to the guest, in order after any that are waiting for room.  A ring
        that stays full beyond MAX_BACKLOG is a guest that does not read: RingFull."""
        if self.backlog:
            self.backlog.extend(packets)
            self.flush()
            if len(self.backlog) > MAX_BACKLOG:
                raise RingFull(f"the guest has not read {len(self.backlog)} completions")
            return
        self._write(packets)

    def _write(self, packets: list[bytes]) -> None:
        try:
            signal = self.to_guest.write(packets)
        except RingFull:
            self.stats.ring_full += 1
            # One at a time then, as room allows.
            for i, p in enumerate(packets):
                try:
                    signal = self.to_guest.write([p])
                except RingFull:
                    self.backlog.extend(packets[i:])
                    return
                self._count_write(1, signal)
            return
        self._count_write(len(packets), signal)

    def _count_write(self, n: int, signal: bool) -> None:
        self.stats.packets_out += n
        if signal:
            self.stats.signals_out += 1
            self.signal()
        else:
            self.stats.signals_suppressed += 1

    def flush(self) -> None:
        """Write what waited for room, as much as fits now."""
        while self.backlog:
            try:
                signal = self.to_guest.write(self.backlog[:1])
            except RingFull:
                return
            self.backlog.pop(0)
            self._count_write(1, signal)

    def drain(self, handle, keep_masked: bool = False) -> tuple[int, bool]:
        """The guest signalled (or we come back): read every packet (``handle(packets)``
        each batch) until the ring is empty; returns (packets handled, more left).  The
        interrupt mask is set while reading and cleared at the end (then the ring is
        looked at once more, as Linux's reader does) — unless ``keep_masked`` (poll mode:
        the guest need not signal while we are still looking).  ``more`` is True when
        DRAIN_ROUNDS were not enough: the caller comes back (the guest will not signal a
        ring that is not empty).  RingCorrupt propagates."""
        t0 = perf_counter_ns()
        try:
            return self._drain(handle, keep_masked)
        finally:
            self.stats.drains += 1
            self.stats.work_ns += perf_counter_ns() - t0

    def _drain(self, handle, keep_masked: bool) -> tuple[int, bool]:
        if self.backlog:
            self.flush()
        ring = self.to_host
        handled = 0
        for _ in range(DRAIN_ROUNDS):
            ring.set_interrupt_mask(True)
            packets, wake_writer = ring.read()
            if wake_writer:
                self.stats.signals_out += 1
                self.signal()
            if packets:
                self.stats.packets_in += len(packets)
                handled += len(packets)
                handle(packets)
                continue
            if keep_masked:
                return handled, False
            ring.set_interrupt_mask(False)
            if ring.is_empty():
                return handled, False
        ring.set_interrupt_mask(False)
        return handled, True

    def occupancy(self) -> dict:
        return {"to_host_bytes": self.to_host.bytes_used(), "to_guest_bytes": self.to_guest.bytes_used(),
                "backlog": len(self.backlog)}
