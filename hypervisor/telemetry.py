"""Telemetry: trace events as exits happen, and the status the root reads.

Tracing costs nothing while nobody subscribes: every handler tests the subscriptions (a
dict, empty) before it builds an event.  A subscriber that does not keep up loses events,
not its subscription (a best-effort stream, ``Router.offer``); one that has gone is
forgotten.

Status is built on request from the live objects — partitions, VPs, the scheduler, the
memory manager, the TLBs, the dispatcher's counters — and from the round trips each VP
measured, added up from its ``vp_stats`` (each holds those since its last), merged per
partition.
"""

from __future__ import annotations

import logging
import os
import time
from time import perf_counter_ns

from proto import messages as m
from proto.codes import HvPartitionState
from proto.exits import Exit
from proto.checked_stats import CheckedPaths, path_stats
from proto.stats import MAX_WIRE_VALUE, PathStats, merge_paths, wire_count
from proto.status import (CpuStatus, HypercallStatus, HypervisorStatus, InterruptStatus, PartitionStatus, TlbStatus,
                          VpStatus)
from proto.tlb import ENTRIES as TLB_ENTRIES

from hypervisor.ratelog import RateLimitedLog
from hypervisor.synic import partition_status

log = logging.getLogger("hypervisor")

# What one VP's statistics may hold (they go into every status reply): its histograms'
# buckets in all (a real VP's are a few thousand), and counter names.
MAX_VP_STATS_BUCKETS = 16384
MAX_COUNTER_NAME = 64
PATH_NAMES = frozenset(e.value for e in Exit)


def path_name(v) -> str:
    """A vp_stats path: one of proto.exits' names."""
    if v not in PATH_NAMES:
        raise ValueError(f"no path {str(v)[:40]!r}")
    return v


def added_buckets(stats: dict[str, PathStats], delta: dict[str, PathStats], exact: bool = True) -> int:
    """The buckets ``delta`` would add to ``stats``; ValueError if a histogram of it is not
    one a VP could have measured (its buckets do not add up to its count) or the sums
    would no longer pack (every count and time stays below proto.stats.MAX_WIRE_VALUE, so
    that status, which adds up every VP's, still packs as u64).  Not ``exact``: at most
    that many (every bucket of ``delta`` counted as new), without looking them up."""
    added = 0
    for path, st in delta.items():
        mine = stats.get(path)
        have = (mine.total, *mine.stages) if mine is not None else ()
        for i, h in enumerate((st.total, *st.stages)):
            if sum(h.counts.values()) != h.n:
                raise ValueError(f"{path}: {h.n} round trips in buckets holding {sum(h.counts.values())}")
            if i >= len(have) or not exact:
                added += len(h.counts)
                if i >= len(have):
                    continue
            old = have[i]
            if old.n + h.n >= MAX_WIRE_VALUE or old.total + h.total >= MAX_WIRE_VALUE:
                raise ValueError(f"{path}: its histograms would count past {MAX_WIRE_VALUE}")
            if exact:
                # The delta's buckets that are new, looked up in the old ones (a set of the
                # delta's, in C): a difference of the two key views walked every old bucket.
                added += len(set(h.counts).difference(old.counts))
    return added


def bucket_count(stats: dict[str, PathStats], paths) -> int:
    """The buckets of ``stats``' histograms of ``paths``, in all."""
    count = 0
    for path in paths:
        st = stats.get(path)
        if st is not None:
            count += len(st.total.counts) + sum(len(h.counts) for h in st.stages)
    return count


def counter_name(v) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_COUNTER_NAME:
        raise ValueError(f"counter name {str(v)[:40]!r} is not a str of 1..{MAX_COUNTER_NAME} characters")
    return v


class Tracer:
    def __init__(self, router, counters: dict) -> None:
        self._router = router
        self._counters = counters
        self.tracers: dict[bytes, int] = {}  # identity → partition (0: all)

    def subscribe(self, identity: bytes, partition: int) -> None:
        self.tracers[identity] = partition

    def trace(self, part, vp, reason: str, write: bool, a: int, b: int, stamps: tuple) -> None:
        """One ``trace_event`` to every subscriber of ``part`` (callers test
        :attr:`tracers` first, so an untraced exit pays one truth test)."""
        event = None
        for identity, wanted in list(self.tracers.items()):
            if wanted and wanted != part.id:
                continue
            if event is None:
                event = m.TraceEvent(part.id, vp.index, reason, write, a & 0xFFFFFFFFFFFFFFFF, b, stamps).encode()
            sent = self._router.offer(identity, event)
            if sent == "full":
                self._counters["trace_dropped"] += 1  # a slow reader loses events, not its subscription
            elif sent == "gone":
                self.tracers.pop(identity, None)


class Telemetry:
    def __init__(self, *, tracer: Tracer, outbox, counters: dict, session: str, started_ns: int, table,
                 sched, memory, tlb, hypercalls, peers, forwarding, transport_counters: dict | None = None) -> None:
        self._tracer = tracer
        self._outbox = outbox
        self._counters = counters
        self.session = session
        self.started_ns = started_ns
        self._table = table
        self._sched = sched
        self._memory = memory
        self._tlb = tlb
        self._hypercalls = hypercalls
        self._peers = peers
        self._forwarding = forwarding
        self._bad_stats_log = RateLimitedLog(log, 5)  # a VP's own process sends vp_stats: the guest's word
        # The transport's (handshakes refused, idle connections shut down, connections
        # open), kept by its gatekeeper thread: read, never written, here.
        self._transport_counters = transport_counters if transport_counters is not None else {}

    # -- messages ----------------------------------------------------------------------------

    def on_status_request(self, identity: bytes, peer, msg: m.StatusRequest, t_in: int) -> None:
        wire = self.status(msg.brief).to_wire()
        frame = m.StatusReply(wire).encode()  # encoded once (supervision asks 4 times a second)
        if len(frame) > m.MAX_FRAME_BYTES:
            # Too big for any receiver to decode (many VPs, or guests' outsized statistics):
            # the latency histograms go first, then the guests' counters, so that status
            # itself — what supervision and every command read — still answers.
            self._counters["status_trimmed"] += 1
            for part in wire["partitions"]:
                part["paths"] = {}
            frame = m.StatusReply(wire).encode()
            if len(frame) > m.MAX_FRAME_BYTES:
                for part in wire["partitions"]:
                    part["guest"] = {}
                    for vp in part["vps"]:
                        vp["guest"] = {}
                frame = m.StatusReply(wire).encode()
            log.warning("status reply over %d bytes: trimmed", m.MAX_FRAME_BYTES)
        self._outbox.send_frame(identity, frame)

    def on_vp_stats(self, identity: bytes, peer, msg: m.VpStats, t_in: int) -> None:
        """The round trips the VP measured since its last vp_stats, added to its histograms
        (each message carries only those: a few buckets, not thousands), and its counters."""
        vp = peer.vp
        try:
            # Every number is checked (proto.stats.wire_count), not converted: a string of
            # digits or a float would be stored as is and fail only when status is packed.
            paths = msg.paths
            if paths.__class__ is CheckedPaths:  # checked as from_wire checks, by the decoder
                delta = {path_name(path): path_stats(d) for path, d in paths.items()}
            else:
                delta = {path_name(path): PathStats.from_wire(d) for path, d in paths.items()}
            counters = {counter_name(k): wire_count(v) for k, v in msg.counters.items()}
            # The bound (every bucket of the delta new) decides while it is under the cap;
            # only near the cap are the delta's buckets looked up in the VP's (about a tenth
            # of a vp_stats' instructions), and then the exact count decides.
            if vp.stats_buckets + added_buckets(vp.stats, delta, exact=False) > MAX_VP_STATS_BUCKETS:
                buckets = vp.stats_buckets + added_buckets(vp.stats, delta)
                if buckets > MAX_VP_STATS_BUCKETS:
                    raise ValueError(f"{buckets} histogram buckets, at most {MAX_VP_STATS_BUCKETS}")
        except (ValueError, TypeError, AttributeError) as e:
            self._counters["malformed"] += 1
            self._bad_stats_log.warning("bad vp_stats from %s: %s", peer.name, str(e)[:200])
            return
        # The exact count, as the merge leaves it: the merged paths' buckets before and after.
        before = bucket_count(vp.stats, delta)
        merge_paths(vp.stats, delta)
        vp.stats_buckets += bucket_count(vp.stats, delta) - before
        vp.counters = counters

    # -- status ------------------------------------------------------------------------------

    def status(self, brief: bool = False) -> HypervisorStatus:
        """``brief``: without the latency histograms and the TLBs' walk (StatusRequest)."""
        now = perf_counter_ns()
        parts = []
        for part in self._table:
            paths: dict[str, PathStats] = {}
            guest: dict[str, int] = {}
            for vp in part.vps:
                if not brief:
                    merge_paths(paths, vp.stats)
                for k, v in vp.counters.items():
                    guest[k] = guest.get(k, 0) + v
            parts.append(PartitionStatus(
                id=part.id,
                state="paused" if part.cpu.paused and part.state is HvPartitionState.ACTIVE else part.state.value,
                privileges=part.privileges,
                recommendations=part.recommendations,
                spin_retry=part.spin_retry,
                worker=part.worker is not None,
                ranges=[tuple(r) for r in part.ranges],
                mmio=[(b, e - b) for b, e, _ in part.mmio],
                hypercalls_enabled=part.hypercalls_enabled,
                unclaimed_reads=part.unclaimed_reads,
                unclaimed_writes=part.unclaimed_writes,
                unmapped_gpa=part.unmapped_gpa,
                worker_timeouts=part.worker_timeouts,
                resets=part.resets,
                unresponsive=part.unresponsive,
                health_pauses=part.health_pauses,
                synic=partition_status(part),
                worker_handovers=part.worker_handovers,
                worker_rollbacks=part.worker_rollbacks,
                coalesced_mmio=dict(part.coalesced_mmio),
                cpu=CpuStatus(part.cpu.reserve, part.cpu.limit, part.cpu.weight),
                vps=[VpStatus(vp.index, vp.state.value, dict(vp.exits), vp.cr3, vp.faults, dict(vp.counters),
                              self._sched.vp_status(vp.sched, now), dict(vp.apic.counters),
                              InterruptStatus(vp.interrupts.asserted, vp.interrupts.injected,
                                              len(vp.interrupts.pending),
                                              {f"{k:#04x}": v for k, v in vp.interrupts.by_vector.items()}))
                     for vp in part.vps],
                guest=guest,
                paths=paths,
            ))
        return HypervisorStatus(
            pid=os.getpid(),
            session=self.session,
            uptime_s=(time.monotonic_ns() - self.started_ns) / 1e9,
            counters={**self._counters, **self._transport_counters},
            hypercalls=HypercallStatus({f"{k:#06x}": v for k, v in self._hypercalls.counts.items()},
                                       dict(self._hypercalls.failures)),
            peers=len(self._peers),
            pending=len(self._forwarding.pending),
            tracers=len(self._tracer.tracers),
            scheduler=self._sched.status(now),
            memory=self._memory.status(),
            tlb=self._tlb.status() if not brief else TlbStatus(TLB_ENTRIES, []),
            partitions=parts,
        )
