"""The partition table: partitions, their VPs and the state each is in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from proto.codes import HV_SPIN_RETRY_NEVER, HvPartitionState
from proto.messages import RFLAGS_FIXED
from proto.exits import EXITS
from proto.stats import PathStats

from hypervisor.apic import Apic
from hypervisor.interrupts import InterruptQueue
from hypervisor.irq_log import IrqLog
from hypervisor.scheduler import CpuControls, VpSched, VpState
from hypervisor.synic import SynicVp

# The partition ID of the root; children are numbered from 1 (HV_PARTITION_ID_SELF is not
# a real ID, so 0 is never handed out to a child).
ROOT_PARTITION_ID = 0
# What an HV_VP_SET can name (64 banks of 64: VP indices 0..4095), reported in CPUID
# 0x40000005 EAX.  A topology asks for far fewer (root/topology.py: MAX_VPS).
MAX_VPS_PER_PARTITION = 4096


@dataclass(eq=False)
class VirtualProcessor:
    """The hypervisor's record of one VP (the guest side's is ``partitions.vp.Vp``)."""

    index: int
    partition: "Partition | None" = None
    peer: bytes | None = None  # ZeroMQ identity of the VP thread, once bound
    exits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXITS, 0))
    faults: int = 0
    halt_seq: int | None = None  # the HLT intercept waiting for a wake-up
    interrupts: InterruptQueue = field(default_factory=InterruptQueue)
    reset_pending: bool = False  # deliver a reset (INIT) at the VP's next resume
    awaiting_sipi: bool = False  # an INIT IPI reset it: the next startup IPI starts it
    sipi: int = 0  # 0x100 | the startup IPI's vector, sent with the reset (0: none)
    # Its run state, suspension and LP, as the scheduler keeps them (the one copy).
    sched: VpSched | None = None
    next_frame: bytes | None = None  # what the VP waits for, sent when it is dispatched…
    next_resume: tuple | None = None  # …or the resume to build then
    stats: dict[str, PathStats] = field(default_factory=dict)  # every vp_stats' round trips, added up
    stats_buckets: int = 0  # the buckets of ``stats``' histograms in all (bounded: MAX_VP_STATS_BUCKETS)
    counters: dict[str, int] = field(default_factory=dict)  # last vp_stats, guest-side counts
    apic: Apic | None = None
    assist_page: int = 0  # HV_X64_MSR_VP_ASSIST_PAGE as last written
    # The register block (proto.messages.REGS), saved at every exit and restored at every
    # dispatch: RFLAGS, and CR3 (also loaded by an intercepted MOV CR3 or
    # HvCallSwitchVirtualAddressSpace).
    rflags: int = RFLAGS_FIXED
    cr3: int = 0
    regs_written: dict = field(default_factory=dict)  # root writes not yet seen by the running VP
    synic: SynicVp = field(default_factory=SynicVp)  # its SynIC registers and message queues (synic.py)
    delivered: IrqLog = field(default_factory=IrqLog)  # vectors injected, for `io irqs_apic`
    caller: object = None  # hypercalls.VpCaller: the VP as its hypercalls' caller (made at its first)
    exit_context: object = None  # intercepts.ExitContext of its last exit, reused for the next (service.py)

    def __post_init__(self) -> None:
        if self.apic is None:
            self.apic = Apic(self.index)
        if self.sched is None:
            part = self.partition
            self.sched = VpSched((part.id if part else 0, self.index), part.cpu if part else CpuControls(), self)

    @property
    def state(self) -> VpState:
        return self.sched.state

    def init(self) -> None:
        """INIT (a partition reset): what the hypervisor keeps of the VP goes back to its
        power-on values — no pending interrupts, interrupts disabled, CR3 0, the local APIC
        and the VP assist page as after power-on."""
        self.interrupts.clear()
        self.awaiting_sipi, self.sipi = False, 0  # an INIT IPI sets the first again (interrupts.py)
        self.cr3 = 0
        self.rflags = RFLAGS_FIXED
        self.regs_written.clear()
        self.apic = Apic(self.index)
        self.assist_page = 0
        self.synic = SynicVp()


@dataclass
class Partition:
    id: int
    state: HvPartitionState = HvPartitionState.CREATED
    privileges: int = 0
    recommendations: int = 0
    spin_retry: int = HV_SPIN_RETRY_NEVER
    gpa_pages: int = 0  # the guest-physical space, in pages (sizes the SLAT table)
    created_ns: int = field(default_factory=time.monotonic_ns)
    vps: list[VirtualProcessor] = field(default_factory=list)
    worker: bytes | None = None
    worker_started: bool = False  # its worker has mapped the memory: it serves requests now
    port_owner: dict[int, bytes] = field(default_factory=dict)
    intercepts_installed: bool = False  # its worker's install_intercept was taken (once)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    mmio: list[tuple[int, int, bytes]] = field(default_factory=list)  # (gpa, end, owner)
    cpu: CpuControls = field(default_factory=CpuControls)  # its share of the LPs, and its pause
    resets: int = 0
    reset_ns: int = 0  # when the last reset was (perf_counter_ns): servicing orders resends by it
    # Partition-wide synthetic MSRs (TLFS: GUEST_OS_ID and HYPERCALL are per partition).
    guest_os_id: int = 0
    hypercall_msr: int = 0
    reference_tsc: int = 0  # HV_X64_MSR_REFERENCE_TSC (tsc_page.py)
    tsc_sequence: int = 0  # the TscSequence last published in its page
    console_watchers: set[bytes] = field(default_factory=set)
    unclaimed_reads: int = 0
    unclaimed_writes: int = 0
    unmapped_gpa: int = 0
    worker_timeouts: int = 0  # accesses (and health checks) its worker did not answer in time
    # Its worker stopped answering (forwarding.py): the partition was paused, and its VPs'
    # accesses wait for the worker.  Cleared when the worker answers again.
    unresponsive: bool = False
    health_pauses: int = 0  # times it was paused for that
    pic_output: IrqLog = field(default_factory=IrqLog)  # vectors its PIC raised, for `io irqs_pic`
    clock_offset_ns: int = 0  # what `io clock_step` added to its clocks
    # Worker servicing (hypervisor/servicing.py): while ``servicing``, new device accesses
    # wait in ``held`` instead of going to a worker; ``replacement_expected``: the root
    # said the next worker hello replaces the current worker; ``reinstall``: that new
    # worker may claim the same ranges again.
    servicing: bool = False
    held: list = field(default_factory=list)  # [(ExitContext, Exit)]
    replacement_expected: bool = False
    reinstall: bool = False
    worker_handovers: int = 0
    # The worker a handover retired, until the handover is committed: an abort after the
    # new worker's hello gives the partition back to it (servicing.py).
    previous_worker: bytes | None = None
    worker_rollbacks: int = 0
    # The highest ``seq`` of an assert_interrupt or reset_request taken from its workers (one
    # count for the CPU's pins): a successor's resends at or below it had arrived before its
    # predecessor died (new_event).
    interrupt_seq: int = 0
    # Coalesced MMIO (coalesced_mmio.py): the zones its worker registered, as (start, end),
    # and what came in batches: writes, batches, batches refused, batches its worker missed.
    coalesced_zones: list = field(default_factory=list)
    coalesced_mmio: dict = field(default_factory=lambda: dict.fromkeys(("writes", "batches", "refused", "undelivered"), 0))

    def reset(self) -> None:
        """The partition-wide part of a reset: the synthetic MSRs to their reset values
        (the hypercall page off), counted."""
        self.resets += 1
        self.reset_ns = time.perf_counter_ns()
        self.guest_os_id = 0
        self.hypercall_msr = 0
        self.reference_tsc = 0

    def new_event(self, seq: int) -> bool:
        """A numbered event of its devices (an interrupt taken, a reset requested): True, and
        ``seq`` the highest taken, if it is above every one taken so far; False if one at or
        above it came already (a restarted worker's resend of what had arrived)."""
        if seq > self.interrupt_seq:
            self.interrupt_seq = seq
            return True
        return False

    @property
    def hypercalls_enabled(self) -> bool:
        return bool(self.hypercall_msr & 1)

    def mmio_owner(self, gpa: int) -> bytes | None:
        for base, end, owner in self.mmio:
            if base <= gpa < end:
                return owner
        return None

    def reference_time_100ns(self) -> int:
        return (time.monotonic_ns() + self.clock_offset_ns - self.created_ns) // 100


class PartitionTable:
    """Partitions by ID.  IDs are never reused within one hypervisor's life."""

    def __init__(self) -> None:
        self._parts: dict[int, Partition] = {}
        self._next_id = 1

    def create(self) -> Partition:
        part = Partition(self._next_id)
        self._parts[part.id] = part
        self._next_id += 1
        return part

    def get(self, partition_id: int) -> Partition | None:
        return self._parts.get(partition_id)

    def delete(self, partition_id: int) -> None:
        part = self._parts.pop(partition_id)
        part.state = HvPartitionState.DELETED

    def __iter__(self):
        return iter(list(self._parts.values()))

    def __len__(self) -> int:
        return len(self._parts)
