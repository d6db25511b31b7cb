"""The hypervisor's status, typed: what a ``status_reply`` carries.

The hypervisor builds a :class:`HypervisorStatus` and sends ``to_wire()``, a plain map of
maps and lists that msgpack carries (and that the root's tables, ``--json`` output and
tests read by key).  A reader that wants attributes rebuilds the objects with
``HypervisorStatus.from_wire(reply.status)``; ``from_wire`` accepts what msgpack gives back
(arrays as tuples) and ``to_wire(from_wire(d))`` encodes to the same bytes as ``d``.

Every class has ``to_wire()`` and ``from_wire(d)``; their fields are the wire keys, in wire
order.  Names in maps keyed by name (exits, counters, paths) are the ones
:mod:`proto.exits` and the components define; this module does not restrict them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto.errors import Refused
from proto.stats import PathStats

# -- the scheduler, the memory manager, the TLBs ------------------------------------------------


@dataclass(slots=True)
class LpStatus:
    """A logical processor."""

    index: int
    vp: tuple[int, int] | None  # (partition id, VP index) of the VP running on it
    busy_s: float  # time VPs ran on it, rounded to 0.1 ms

    def to_wire(self) -> dict:
        return {"index": self.index, "vp": list(self.vp) if self.vp is not None else None, "busy_s": self.busy_s}

    @classmethod
    def from_wire(cls, d: dict) -> "LpStatus":
        return cls(d["index"], tuple(d["vp"]) if d["vp"] is not None else None, d["busy_s"])


@dataclass(slots=True)
class SchedulerStatus:
    lps: list[LpStatus]
    running: int  # VPs on an LP now
    max_running: int  # the most ever at once
    ready: int  # VPs waiting for an LP
    quantum_ms: float
    grace_ms: float = 0.0  # how far past its quantum a VP may keep its LP
    forced_preemptions: int = 0  # LPs taken back from VPs that overran quantum + grace

    def to_wire(self) -> dict:
        return {"lps": [lp.to_wire() for lp in self.lps], "running": self.running,
                "max_running": self.max_running, "ready": self.ready, "quantum_ms": self.quantum_ms,
                "grace_ms": self.grace_ms, "forced_preemptions": self.forced_preemptions}

    @classmethod
    def from_wire(cls, d: dict) -> "SchedulerStatus":
        return cls([LpStatus.from_wire(lp) for lp in d["lps"]], d["running"], d["max_running"], d["ready"],
                   d["quantum_ms"], d.get("grace_ms", 0.0), d.get("forced_preemptions", 0))


@dataclass(slots=True)
class SlatStatus:
    """One partition's guest-physical map."""

    mapped: int  # GPA pages mapped
    owned: int  # host pages deposited to it
    slat: str  # the SLAT table's file

    def to_wire(self) -> dict:
        return {"mapped": self.mapped, "owned": self.owned, "slat": self.slat}

    @classmethod
    def from_wire(cls, d: dict) -> "SlatStatus":
        return cls(d["mapped"], d["owned"], d["slat"])


@dataclass(slots=True)
class MemoryStatus:
    pool_pages: int
    root_pages: int  # pool pages still the root's
    pool: str  # the directory of the partitions' RAM and SLAT files (the pool is host page numbers)
    partitions: dict[str, SlatStatus]  # by partition id (as text)
    counters: dict[str, int]  # deposited, withdrawn, mapped, unmapped, released, refused

    def to_wire(self) -> dict:
        return {"pool_pages": self.pool_pages, "root_pages": self.root_pages, "pool": self.pool,
                "partitions": {k: v.to_wire() for k, v in self.partitions.items()}, "counters": dict(self.counters)}

    @classmethod
    def from_wire(cls, d: dict) -> "MemoryStatus":
        return cls(d["pool_pages"], d["root_pages"], d["pool"],
                   {k: SlatStatus.from_wire(v) for k, v in d["partitions"].items()}, dict(d["counters"]))


@dataclass(slots=True)
class TlbLpStatus:
    """One LP's TLB."""

    lp: int
    fills: int
    flushes: dict[str, int]  # by kind: mov_cr3, invlpg, address_space, address_list
    cleared: int  # valid entries the flushes removed
    valid: dict[str, int]  # valid entries now, by partition id (as text)

    def to_wire(self) -> dict:
        return {"lp": self.lp, "fills": self.fills, "flushes": dict(self.flushes), "cleared": self.cleared,
                "valid": dict(self.valid)}

    @classmethod
    def from_wire(cls, d: dict) -> "TlbLpStatus":
        return cls(d["lp"], d["fills"], dict(d["flushes"]), d["cleared"], dict(d["valid"]))


@dataclass(slots=True)
class TlbStatus:
    entries: int  # per LP
    lps: list[TlbLpStatus]

    def to_wire(self) -> dict:
        return {"entries": self.entries, "lps": [lp.to_wire() for lp in self.lps]}

    @classmethod
    def from_wire(cls, d: dict) -> "TlbStatus":
        return cls(d["entries"], [TlbLpStatus.from_wire(lp) for lp in d["lps"]])


@dataclass(slots=True)
class HypercallStatus:
    calls: dict[str, int]  # by call code, as "0x0008"
    failures: dict[str, int]  # by HV_STATUS name

    def to_wire(self) -> dict:
        return {"calls": dict(self.calls), "failures": dict(self.failures)}

    @classmethod
    def from_wire(cls, d: dict) -> "HypercallStatus":
        return cls(dict(d["calls"]), dict(d["failures"]))


# -- partitions and their VPs --------------------------------------------------------------------


@dataclass(slots=True)
class CpuStatus:
    """A partition's CPU controls: reserve and limit in thousandths of a percent of an LP."""

    reserve: int
    limit: int
    weight: int

    def to_wire(self) -> dict:
        return {"reserve": self.reserve, "limit": self.limit, "weight": self.weight}

    @classmethod
    def from_wire(cls, d: dict) -> "CpuStatus":
        return cls(d["reserve"], d["limit"], d["weight"])


@dataclass(slots=True)
class VpSchedStatus:
    """A VP as the scheduler sees it."""

    state: str  # blocked | ready | running | halted | preempted
    lp: int | None  # the LP it runs on, while running
    run_s: float
    wait_s: float  # ready, waiting for an LP
    dispatches: int
    preemptions: int  # quantum ends
    yields: int  # long-spin-wait notifications
    forced: int = 0  # its LP taken back at quantum + grace (it never reached a preemption point)

    def to_wire(self) -> dict:
        return {"state": self.state, "lp": self.lp, "run_s": self.run_s, "wait_s": self.wait_s,
                "dispatches": self.dispatches, "preemptions": self.preemptions, "yields": self.yields,
                "forced": self.forced}

    @classmethod
    def from_wire(cls, d: dict) -> "VpSchedStatus":
        return cls(d["state"], d["lp"], d["run_s"], d["wait_s"], d["dispatches"], d["preemptions"], d["yields"],
                   d.get("forced", 0))


@dataclass(slots=True)
class InterruptStatus:
    """A VP's interrupts from the PIC (ExtINT)."""

    asserted: int
    injected: int
    pending: int
    by_vector: dict[str, int]  # injected, by vector as "0x20"

    def to_wire(self) -> dict:
        return {"asserted": self.asserted, "injected": self.injected, "pending": self.pending,
                "by_vector": dict(self.by_vector)}

    @classmethod
    def from_wire(cls, d: dict) -> "InterruptStatus":
        return cls(d["asserted"], d["injected"], d["pending"], dict(d["by_vector"]))


@dataclass(slots=True)
class VpStatus:
    index: int
    state: str  # created | ready | running | intercept | halted | preempted
    exits: dict[str, int]  # by proto.exits.Exit name
    cr3: int
    faults: int  # exceptions injected instead of completing an instruction
    guest: dict[str, int]  # the guest's own counters, as its last vp_stats gave them
    sched: VpSchedStatus | None  # None (on the wire: {}) until its thread said hello
    apic: dict[str, int]  # the local APIC's counters
    interrupts: InterruptStatus

    def to_wire(self) -> dict:
        return {"index": self.index, "state": self.state, "exits": dict(self.exits), "cr3": self.cr3,
                "faults": self.faults, "guest": dict(self.guest),
                "sched": self.sched.to_wire() if self.sched is not None else {},
                "apic": dict(self.apic), "interrupts": self.interrupts.to_wire()}

    @classmethod
    def from_wire(cls, d: dict) -> "VpStatus":
        return cls(d["index"], d["state"], dict(d["exits"]), d["cr3"], d["faults"], dict(d["guest"]),
                   VpSchedStatus.from_wire(d["sched"]) if d["sched"] else None, dict(d["apic"]),
                   InterruptStatus.from_wire(d["interrupts"]))


@dataclass(slots=True)
class PartitionStatus:
    id: int
    state: str  # an HvPartitionState value, or "paused"
    privileges: int  # HV_PARTITION_PRIVILEGE_MASK
    recommendations: int  # CPUID 0x40000004 EAX
    spin_retry: int  # CPUID 0x40000004 EBX
    worker: bool  # its worker said hello
    ranges: list[tuple[int, int]]  # the ports its worker claims: (base, count)
    mmio: list[tuple[int, int]]  # the MMIO its worker claims: (gpa, length)
    hypercalls_enabled: bool
    unclaimed_reads: int
    unclaimed_writes: int
    unmapped_gpa: int
    worker_timeouts: int
    resets: int
    cpu: CpuStatus
    vps: list[VpStatus]
    guest: dict[str, int]  # its VPs' guest counters, summed
    paths: dict[str, PathStats]  # its VPs' latency histograms, merged, by path name
    # Its worker stopped answering: the partition was paused and its device accesses wait
    # for the worker (none is completed in its place); cleared when the worker answers.
    unresponsive: bool = False
    health_pauses: int = 0  # times it was paused for that
    # Its SynIC and synthetic timers, summed over its VPs (hypervisor/synic.py): messages
    # posted and delivered, slots found busy, event flags signalled, EOMs, messages queued
    # now, timer expiries and missed ticks.
    synic: dict[str, int] = field(default_factory=dict)
    # Worker servicing (hypervisor/servicing.py): handovers to a new worker taken, and
    # handovers rolled back to the previous worker by an abort.
    worker_handovers: int = 0
    worker_rollbacks: int = 0
    # Coalesced MMIO (hypervisor/coalesced_mmio.py): writes and batches forwarded, batches
    # refused, batches its worker was gone for.
    coalesced_mmio: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "privileges": self.privileges,
            "recommendations": self.recommendations,
            "spin_retry": self.spin_retry,
            "worker": self.worker,
            "ranges": [list(r) for r in self.ranges],
            "mmio": [list(r) for r in self.mmio],
            "hypercalls_enabled": self.hypercalls_enabled,
            "unclaimed_reads": self.unclaimed_reads,
            "unclaimed_writes": self.unclaimed_writes,
            "unmapped_gpa": self.unmapped_gpa,
            "worker_timeouts": self.worker_timeouts,
            "resets": self.resets,
            "cpu": self.cpu.to_wire(),
            "vps": [vp.to_wire() for vp in self.vps],
            "guest": dict(self.guest),
            "paths": {name: st.to_wire() for name, st in self.paths.items()},
            "unresponsive": self.unresponsive,
            "health_pauses": self.health_pauses,
            "synic": dict(self.synic),
            "worker_handovers": self.worker_handovers,
            "worker_rollbacks": self.worker_rollbacks,
            "coalesced_mmio": dict(self.coalesced_mmio),
        }

    @classmethod
    def from_wire(cls, d: dict) -> "PartitionStatus":
        return cls(d["id"], d["state"], d["privileges"], d["recommendations"], d["spin_retry"], d["worker"],
                   [tuple(r) for r in d["ranges"]], [tuple(r) for r in d["mmio"]], d["hypercalls_enabled"],
                   d["unclaimed_reads"], d["unclaimed_writes"], d["unmapped_gpa"], d["worker_timeouts"],
                   d["resets"], CpuStatus.from_wire(d["cpu"]), [VpStatus.from_wire(vp) for vp in d["vps"]],
                   dict(d["guest"]), {name: PathStats.from_wire(st) for name, st in d["paths"].items()},
                   d.get("unresponsive", False), d.get("health_pauses", 0), dict(d.get("synic", {})),
                   d.get("worker_handovers", 0), d.get("worker_rollbacks", 0),
                   dict(d.get("coalesced_mmio", {})))


# -- the whole -------------------------------------------------------------------------------


@dataclass(slots=True)
class HypervisorStatus:
    """What ``status_reply.status`` carries.  (Not ``HvStatus``: that name is the TLFS
    hypercall status code, :class:`proto.codes.HvStatus`.)"""

    pid: int
    session: str  # the hypervisor process's incarnation
    uptime_s: float
    counters: dict[str, int]  # the loop's: messages, malformed, refusals, …
    hypercalls: HypercallStatus
    peers: int
    pending: int  # accesses waiting for a worker
    tracers: int  # trace subscribers
    scheduler: SchedulerStatus
    memory: MemoryStatus
    tlb: TlbStatus
    partitions: list[PartitionStatus]

    def to_wire(self) -> dict:
        return {
            "pid": self.pid,
            "session": self.session,
            "uptime_s": self.uptime_s,
            "counters": dict(self.counters),
            "hypercalls": self.hypercalls.to_wire(),
            "peers": self.peers,
            "pending": self.pending,
            "tracers": self.tracers,
            "scheduler": self.scheduler.to_wire(),
            "memory": self.memory.to_wire(),
            "tlb": self.tlb.to_wire(),
            "partitions": [p.to_wire() for p in self.partitions],
        }

    @classmethod
    def from_wire(cls, d: dict) -> "HypervisorStatus":
        return cls(d["pid"], d["session"], d["uptime_s"], dict(d["counters"]),
                   HypercallStatus.from_wire(d["hypercalls"]), d["peers"], d["pending"], d["tracers"],
                   SchedulerStatus.from_wire(d["scheduler"]), MemoryStatus.from_wire(d["memory"]),
                   TlbStatus.from_wire(d["tlb"]),
                   [PartitionStatus.from_wire(p) for p in d["partitions"]])

    def partition(self, partition_id: int) -> PartitionStatus | None:
        """The partition with ``partition_id``, if there is one."""
        return next((p for p in self.partitions if p.id == partition_id), None)


__all__ = [
    "HypervisorStatus",
    "HypercallStatus",
    "SchedulerStatus",
    "LpStatus",
    "MemoryStatus",
    "SlatStatus",
    "TlbStatus",
    "TlbLpStatus",
    "PartitionStatus",
    "CpuStatus",
    "VpStatus",
    "VpSchedStatus",
    "InterruptStatus",
]


# -- a worker's answers to the root's questions (``worker_query_reply``) ------------------------


@dataclass(slots=True)
class ScreenSnapshot:
    """``screen``: the VGA text page as the guest left it."""

    text: str  # the page rendered, rows joined by newlines
    lines: list[str]  # the rows, trailing blanks trimmed
    cursor: tuple[int, int, bool]  # row, column, visible

    def to_wire(self) -> dict:
        return {"text": self.text, "lines": list(self.lines), "cursor": list(self.cursor)}

    @classmethod
    def from_wire(cls, d: dict) -> "ScreenSnapshot":
        row, col, visible = d["cursor"]
        return cls(d["text"], list(d["lines"]), (row, col, bool(visible)))


@dataclass(slots=True)
class DeviceCounters:
    """``devices``: each device's counters, by device name (``port_bus`` and ``mmio_bus``
    are the buses' own: accesses refused for their range or width)."""

    devices: dict[str, dict[str, int | float | str | bool]]

    def to_wire(self) -> dict:
        return {name: dict(counters) for name, counters in self.devices.items()}

    @classmethod
    def from_wire(cls, d: dict) -> "DeviceCounters":
        return cls({str(name): dict(counters) for name, counters in d.items()})

    def get(self, device: str, counter: str):
        """One counter of one device; None if either is not there."""
        return self.devices.get(device, {}).get(counter)


# A worker that cannot answer a question (a screen without a VGA) says why in this key.
QUERY_ERROR = "error"
QUERY_RESULTS = {"screen": ScreenSnapshot, "devices": DeviceCounters}


def query_result(query: str, d: dict) -> ScreenSnapshot | DeviceCounters:
    """A ``worker_query_reply``'s result, typed; :class:`~proto.errors.Refused` (code
    ``NO_DEVICE``) when the worker said it has nothing to answer with."""
    if QUERY_ERROR in d:
        raise Refused("NO_DEVICE", str(d[QUERY_ERROR]))
    try:
        return QUERY_RESULTS[query].from_wire(d)
    except (KeyError, TypeError, ValueError) as e:
        raise Refused("MALFORMED", f"the worker's {query} answer is not one: {e}") from e
