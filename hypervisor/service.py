"""The hypervisor's event loop: one ROUTER, one thread, one handler per message type.

Peers bind at ``hello``: the ZeroMQ routing identity is tied to (role, partition, vp), and
from then on a message's partition comes from who sent it, never from its body.  A frame
that is not a message, or a message from a peer that has not said hello, gets an
``error_reply`` and a counter; nothing a peer sends can stop the loop.

The measured paths, as DESIGN.md draws them:

* emulated port I/O — ``io_port_intercept`` (VP) → ``port_notify`` (worker) →
  ``access_complete`` (worker) → ``vp_resume`` (VP): four hops, eight stamps;
* hypervisor-handled intercepts (CPUID, synthetic MSRs) and hypercalls — intercept →
  ``vp_resume``: two hops, four stamps.

Each hop appends ``perf_counter_ns()`` to the message's stamps: on arrival, right after the
frame is read, and on departure, right before it is sent.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from time import perf_counter_ns

from proto import messages as m
from proto.auth import token_matches
from proto.codes import HV_ROOT_PRIVILEGES, HvPartitionState, HypercallCode, X86Exception
from proto.errors import ProtocolError
from proto.exits import NO_PATH, Exit
from proto.stats import PathStats
from proto.transport import Router

from hypervisor import cpuid, msrs
from hypervisor.apic import APIC_BASE, APIC_PAGE, Apic
from hypervisor.memory import MemoryManager
from hypervisor.registers import VpRegisters
from proto.memory import PAGE_SHIFT, SLAT_INVALID
from hypervisor.hypercalls import Caller, Hypercalls
from hypervisor.partitions import Partition, PartitionTable, VirtualProcessor
from hypervisor.scheduler import Scheduler, VpSched, VpState
from hypervisor.tlb import Tlbs

log = logging.getLogger("hypervisor")

# A worker that has not completed an intercept by then is presumed hung or dead: the VP
# gets all-ones (a read) as Xen's null handler gives, and the timeout is counted.
WORKER_TIMEOUT_NS = 2_000_000_000
HOUSEKEEPING_INTERVAL_MS = 100
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
NO_FAULT = int(X86Exception.NONE)
# Messages from a VP that mean it left guest mode.
EXITS = frozenset((m.IoPortIntercept, m.MmioIntercept, m.CpuidIntercept, m.MsrIntercept,
                   m.HypercallIntercept, m.HaltIntercept, m.QuantumExit, m.Cr3Intercept, m.InvlpgIntercept))


@dataclass(slots=True)
class Peer:
    identity: bytes
    role: str
    name: str
    partition: Partition | None
    vp: VirtualProcessor | None
    pid: int
    messages: int = 0


@dataclass(slots=True)
class Pending:
    """An intercept forwarded to a worker, waiting for its ``access_complete``."""

    origin: bytes  # who gets the vp_resume: the VP thread, or a root peer for `io`
    seq: int
    partition: Partition
    vp: VirtualProcessor
    reason: Exit  # Exit.IO_PORT or Exit.MMIO
    addr: int
    size: int
    write: bool
    value: int
    deadline_ns: int


@dataclass(slots=True)
class PendingQuery:
    """A root's question forwarded to a worker."""

    origin: bytes
    partition: Partition
    deadline_ns: int


class Hypervisor:
    def __init__(self, endpoint: str, secret: str, lps: int = 2, memory_dir: str | None = None,
                 pool_pages: int = 4096) -> None:
        self.router = Router(endpoint)
        self.endpoint = self.router.endpoint
        self.secret = secret
        self.session = os.urandom(8).hex()
        self.started_ns = time.monotonic_ns()
        self.table = PartitionTable()
        self.sched = Scheduler(lps, self._dispatch)
        self.next_timer_ns: int | None = None  # the earliest local APIC timer deadline
        self.memory = MemoryManager(memory_dir or tempfile.mkdtemp(prefix="hvmem"), pool_pages)
        self.tlb = Tlbs(str(self.memory.dir), lps)
        self.hypercalls = Hypercalls(self.table, self.memory, self.tlb, VpRegisters(self.sched))
        self.peers: dict[bytes, Peer] = {}
        self.pending: dict[int, Pending] = {}
        self.queries: dict[int, PendingQuery] = {}
        self.tracers: dict[bytes, int] = {}  # identity → partition (0: all)
        self._next_ref = 1
        self.running = True
        self.counters = {
            "messages": 0,
            "malformed": 0,
            "not_authenticated": 0,
            "refused_hellos": 0,
            "not_permitted": 0,
            "stale_completions": 0,
            "unroutable_replies": 0,
            "isolation_refusals": 0,
            "trace_dropped": 0,
            "ipis_ignored": 0,
        }
        self._handlers = {
            m.Hello: self.on_hello,
            m.IoPortIntercept: self.on_io_port_intercept,
            m.CpuidIntercept: self.on_cpuid_intercept,
            m.MsrIntercept: self.on_msr_intercept,
            m.HypercallIntercept: self.on_hypercall_intercept,
            m.HaltIntercept: self.on_halt_intercept,
            m.QuantumExit: self.on_quantum_exit,
            m.Cr3Intercept: self.on_cr3_intercept,
            m.InvlpgIntercept: self.on_invlpg_intercept,
            m.VpStats: self.on_vp_stats,
            m.InstallIntercept: self.on_install_intercept,
            m.AccessComplete: self.on_access_complete,
            m.ConsoleOutput: self.on_console_output,
            m.StatusRequest: self.on_status_request,
            m.ExecuteRequest: self.on_execute_request,
            m.ConsoleSubscribe: self.on_console_subscribe,
            m.InputRequest: self.on_input_request,
            m.MmioIntercept: self.on_mmio_intercept,
            m.AssertInterrupt: self.on_assert_interrupt,
            m.ResetRequest: self.on_reset_request,
            m.WorkerQueryRequest: self.on_worker_query_request,
            m.WorkerQueryReply: self.on_worker_query_reply,
            m.TraceSubscribe: self.on_trace_subscribe,
            m.PartitionControl: self.on_partition_control,
            m.MemoryRequest: self.on_memory_request,
        }
        # Which roles may send what (hello is open to all).
        self._allowed = {
            m.IoPortIntercept: ("vp",),
            m.CpuidIntercept: ("vp",),
            m.MsrIntercept: ("vp",),
            m.HypercallIntercept: ("vp", "root"),
            m.HaltIntercept: ("vp",),
            m.QuantumExit: ("vp",),
            m.Cr3Intercept: ("vp",),
            m.InvlpgIntercept: ("vp",),
            m.VpStats: ("vp",),
            m.InstallIntercept: ("worker",),
            m.AccessComplete: ("worker",),
            m.ConsoleOutput: ("worker",),
            m.StatusRequest: ("root",),
            m.ExecuteRequest: ("root",),
            m.ConsoleSubscribe: ("root",),
            m.InputRequest: ("root",),
            m.MmioIntercept: ("vp",),
            m.AssertInterrupt: ("worker",),
            m.ResetRequest: ("worker",),
            m.WorkerQueryRequest: ("root",),
            m.WorkerQueryReply: ("worker",),
            m.TraceSubscribe: ("root",),
            m.PartitionControl: ("root",),
            m.MemoryRequest: ("worker", "vp"),
        }

    # -- the loop -----------------------------------------------------------------------

    def serve(self) -> None:
        log.info("hypervisor listening on %s", self.endpoint)
        router, handlers, allowed, peers = self.router, self._handlers, self._allowed, self.peers
        next_housekeeping = time.monotonic_ns()
        while self.running:
            timeout = HOUSEKEEPING_INTERVAL_MS
            wake = self.sched.next_event_ns(perf_counter_ns()) if self.sched.ready else None
            if self.next_timer_ns is not None and (wake is None or self.next_timer_ns < wake):
                wake = self.next_timer_ns
            if wake is not None:
                timeout = max(0, min(timeout, -(-(wake - perf_counter_ns()) // 1_000_000)))
            if not router.wait(timeout):
                if wake is not None:
                    now = perf_counter_ns()
                    if self.next_timer_ns is not None and now >= self.next_timer_ns:
                        self._fire_timers(now)
                    self.sched.tick(now)
                if time.monotonic_ns() >= next_housekeeping:
                    next_housekeeping = self._housekeeping()
                continue
            frames = router.recv()
            t_in = perf_counter_ns()
            self.counters["messages"] += 1
            identity = frames[0]
            if len(frames) != 2:
                self._error(identity, 0, "MALFORMED", f"expected one message frame, got {len(frames) - 1}")
                self.counters["malformed"] += 1
                continue
            try:
                msg = m.decode(frames[1])
            except ProtocolError as e:
                self.counters["malformed"] += 1
                self._error(identity, 0, e.code, str(e))
                continue
            peer = peers.get(identity)
            kind = type(msg)
            if peer is None and kind is not m.Hello:
                self.counters["not_authenticated"] += 1
                self._error(identity, msg.TYPE, "NOT_AUTHENTICATED", "say hello first")
                continue
            if peer is not None:
                peer.messages += 1
                roles = allowed.get(kind)
                if roles is None or peer.role not in roles:
                    self.counters["not_permitted"] += 1
                    self._error(identity, msg.TYPE, "NOT_PERMITTED", f"a {peer.role} may not send {msg.NAME}")
                    continue
            if kind in EXITS and peer is not None and peer.vp is not None:
                self._left_guest(peer.vp, msg, t_in)
            handler = handlers.get(kind)
            if handler is None:
                self.counters["not_permitted"] += 1
                self._error(identity, msg.TYPE, "NOT_PERMITTED", f"{msg.NAME} is not a request")
                continue
            handler(identity, peer, msg, t_in)
            if self.next_timer_ns is not None and perf_counter_ns() >= self.next_timer_ns:
                self._fire_timers(perf_counter_ns())
            if time.monotonic_ns() >= next_housekeeping:
                next_housekeeping = self._housekeeping()
        self.router.close()

    def _left_guest(self, vp: VirtualProcessor, msg: m.Message, t_in: int) -> None:
        """Any exit: save the VP's register block (the hypervisor's copy is the one that
        counts while the VP is off its LP) and give its logical processor back."""
        if msg.regs:
            vp.rflags, vp.cr3 = msg.regs
            if vp.regs_written:
                # The root wrote registers while the VP ran: they win over what it saved.
                for attr, value in vp.regs_written.items():
                    setattr(vp, attr, value)
                vp.regs_written.clear()
        # Run time ends when the guest exited (its first stamp), not when the exit arrived:
        # the transport is not guest execution.
        self.sched.exited(vp.sched, msg.stamps[0] if msg.stamps else t_in,
                          preempted=msg.__class__ is m.QuantumExit)

    def _housekeeping(self) -> int:
        now = time.monotonic_ns()
        expired = [ref for ref, p in self.pending.items() if p.deadline_ns <= now]
        for ref in expired:
            p = self.pending.pop(ref)
            p.partition.worker_timeouts += 1
            log.warning("partition %d: worker did not complete intercept %d in time", p.partition.id, ref)
            self._resume(p.origin, p.partition, p.vp, p.seq, (), 0 if p.write else ALL_ONES[p.size])
        self.sched.tick(perf_counter_ns())
        for ref in [r for r, q in self.queries.items() if q.deadline_ns <= now]:
            q = self.queries.pop(ref)
            self._error(q.origin, m.WorkerQueryRequest.TYPE, "STALE", "the worker did not answer in time")
        return now + HOUSEKEEPING_INTERVAL_MS * 1_000_000

    def _send(self, identity: bytes, msg: m.Message) -> bool:
        if self.router.send(identity, msg.encode()):
            return True
        self.counters["unroutable_replies"] += 1
        self._forget(identity)
        return False

    def _error(self, identity: bytes, ref_type: int, code: str, text: str) -> None:
        log.debug("error to %s: %s %s", identity.hex(), code, text)
        self._send(identity, m.ErrorReply(ref_type, code, text[:512]))

    def _forget(self, identity: bytes) -> None:
        self.tracers.pop(identity, None)
        for part in self.table:
            part.console_watchers.discard(identity)

    def _next(self) -> int:
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        return ref

    def _resume(self, origin: bytes, part: Partition, vp: VirtualProcessor, seq: int, stamps: tuple, rax: int,
                rbx: int = 0, rcx: int = 0, rdx: int = 0, fault: int = NO_FAULT, output: bytes = b"",
                to_back: bool = False, path: int = NO_PATH) -> None:
        """Complete an exit.  ``stamps`` end with the hypervisor's arrival stamp; the
        departure stamp is added when the resume is actually sent.  A VP's own thread
        gets its resume when the scheduler dispatches it on a logical processor (that is
        also when a pending reset or interrupt is delivered); a root peer acting for the
        VP (`io`) gets it at once."""
        if vp.peer != origin:
            if fault:
                vp.faults += 1
            self._send(origin, m.VpResume(seq, fault, rax, rbx, rcx, rdx, output,
                                          stamps + (perf_counter_ns(),), 0, (), 0, 0, path))
            return
        vp.next_resume = (seq, stamps, rax, rbx, rcx, rdx, fault, output, path)
        self.sched.make_ready(vp.sched, perf_counter_ns(), to_back=to_back)

    def _dispatch(self, s: VpSched, lp: int, quantum_ns: int) -> None:
        """The scheduler put the VP on an LP: send what it is waiting for."""
        vp: VirtualProcessor = s.owner
        part: Partition = vp.partition
        if vp.next_frame is not None:
            frame, vp.next_frame = vp.next_frame, None
            self.router.send(vp.peer, frame)
            return
        seq, stamps, rax, rbx, rcx, rdx, fault, output, path = vp.next_resume
        vp.next_resume = None
        interrupt, irq_stamps = 0, ()
        if vp.reset_pending:
            vp.reset_pending = False
            fault, rax = m.FAULT_RESET, part.resets  # RAX: which reset this is
        elif not fault and (vp.interrupts or vp.apic.irr):
            interrupt, irq_stamps = self._next_interrupt(vp)
            if interrupt and self.tracers:
                self._trace(part, vp, Exit.INTERRUPT, False, interrupt & 0xFF, 0, irq_stamps)
        if fault and fault != m.FAULT_RESET:
            vp.faults += 1
        now = perf_counter_ns()
        # The quantum is counted from the dispatch, so the VP's run ends on time however
        # long the resume takes to reach it (one host, one CLOCK_MONOTONIC).
        frame = m.VpResume(seq, fault, rax, rbx, rcx, rdx, output, stamps + (now,),
                           interrupt, irq_stamps, now + quantum_ns, lp, path, (vp.rflags, vp.cr3)).encode()
        if not self.router.send(vp.peer, frame):
            self.counters["unroutable_replies"] += 1
            self.sched.exited(s, perf_counter_ns())
            self.sched.remove(s)

    def _next_interrupt(self, vp: VirtualProcessor) -> tuple[int, tuple]:
        """What to inject now: the local APIC's highest deliverable vector if it outranks
        what the PIC has queued (ExtINT), else the PIC's."""
        vector = vp.apic.deliverable()
        if vector is not None and not (vp.interrupts and max(v for v, _ in vp.interrupts.pending) > vector):
            no_eoi = vp.apic.inject(vector)
            fired = vp.apic.fired_ns.pop(vector, None)
            irq_stamps = (fired, perf_counter_ns()) if fired else ()
            return vector | (m.INTERRUPT_NO_EOI if no_eoi else 0), irq_stamps
        if vp.interrupts:
            vector, irq_stamps = vp.interrupts.take()
            return vector, irq_stamps + (perf_counter_ns(),)
        return 0, ()

    def _timers_changed(self, now: int) -> None:
        deadlines = [vp.apic.timer_deadline_ns for part in self.table for vp in part.vps
                     if vp.apic.timer_deadline_ns is not None]
        self.next_timer_ns = min(deadlines) if deadlines else None

    def _fire_timers(self, now: int) -> None:
        """APIC timers whose deadline passed: the interrupt waits in the IRR, a halted VP
        wakes for it."""
        for part in self.table:
            for vp in part.vps:
                if vp.apic.poll(now):
                    vp.apic.fired_ns[vp.apic.lvt_timer & 0xFF] = now
                    if vp.state is VpState.HALTED:
                        self._wake(part, vp)
        self._timers_changed(now)

    def _trace(self, part: Partition, vp: VirtualProcessor, reason: str, write: bool, a: int, b: int, stamps: tuple) -> None:
        event = None
        for identity, wanted in list(self.tracers.items()):
            if wanted and wanted != part.id:
                continue
            if event is None:
                event = m.TraceEvent(part.id, vp.index, reason, write, a & 0xFFFFFFFFFFFFFFFF, b, stamps).encode()
            sent = self.router.offer(identity, event)
            if sent == "full":
                self.counters["trace_dropped"] += 1  # a slow reader loses events, not its subscription
            elif sent == "gone":
                self.tracers.pop(identity, None)

    # -- hello ----------------------------------------------------------------------------

    def on_hello(self, identity: bytes, peer: Peer | None, msg: m.Hello, t_in: int) -> None:
        def refuse(code: str, why: str) -> None:
            self.counters["refused_hellos"] += 1
            log.warning("refused hello from pid %d as %s: %s", msg.pid, msg.role, why)
            self._error(identity, msg.TYPE, code, why)

        if msg.version != m.PROTOCOL_VERSION:
            return refuse("VERSION_MISMATCH", f"protocol {msg.version}, this hypervisor speaks {m.PROTOCOL_VERSION}")
        if peer is not None:
            return refuse("CONFLICT", f"this connection is already bound as {peer.name}")
        if not token_matches(self.secret, msg.role, msg.partition, msg.token):
            return refuse("NOT_AUTHENTICATED", f"bad token for {msg.role} of partition {msg.partition}")
        part, vp = None, None
        if msg.role == "root":
            name = f"root:{msg.pid}"
        else:
            part = self.table.get(msg.partition)
            if part is None or part.state in (HvPartitionState.FINALIZED, HvPartitionState.DELETED):
                return refuse("UNKNOWN_PARTITION", f"no partition {msg.partition}")
            if msg.role == "worker":
                # One worker per partition, for the partition's life: a second hello is
                # refused, so nobody can take over a running partition's devices.
                if part.worker is not None:
                    return refuse("CONFLICT", f"partition {part.id} already has a worker")
                part.worker = identity
                name = f"worker:{part.id}"
            else:
                if msg.vp >= len(part.vps):
                    return refuse("UNKNOWN_VP", f"partition {part.id} has no VP {msg.vp}")
                vp = part.vps[msg.vp]
                if vp.peer is not None:
                    return refuse("CONFLICT", f"VP {msg.vp} of partition {part.id} is already running")
                vp.peer = identity
                vp.partition = part
                part.state = HvPartitionState.ACTIVE
                name = f"vp:{part.id}:{vp.index}"
        self.peers[identity] = Peer(identity, msg.role, name, part, vp, msg.pid)
        log.info("hello from %s (pid %d)", name, msg.pid)
        reply = m.HelloReply(name, self.session)
        if vp is None:
            self._send(identity, reply)
            return
        # A VP starts executing when it is first dispatched: its hello reply waits for an LP.
        vp.next_frame = reply.encode()
        self.sched.make_ready(vp.sched, perf_counter_ns())

    # -- intercepts from VPs -------------------------------------------------------------

    def on_io_port_intercept(self, identity: bytes, peer: Peer, msg: m.IoPortIntercept, t_in: int) -> None:
        self._io_port(identity, peer.partition, peer.vp, msg.seq, msg.port, msg.size, msg.write,
                      msg.value, msg.stamps + (t_in,))

    def _io_port(self, origin: bytes, part: Partition, vp: VirtualProcessor, seq: int, port: int, size: int,
                 write: bool, value: int, stamps: tuple) -> None:
        owner = part.port_owner.get(port)
        if owner is None:
            # Nothing claims the port: reads float high, writes go nowhere (Xen's
            # null_handler, and what an ISA bus does).
            vp.exits[Exit.IO_UNCLAIMED] += 1
            if write:
                part.unclaimed_writes += 1
            else:
                part.unclaimed_reads += 1
            result = 0 if write else ALL_ONES[size]
            if self.tracers:
                self._trace(part, vp, Exit.IO_UNCLAIMED, write, port, value if write else result, stamps)
            self._resume(origin, part, vp, seq, stamps, result, path=Exit.IO_UNCLAIMED.code)
            return
        vp.exits[Exit.IO_PORT] += 1
        self._forward(origin, part, vp, seq, owner, Exit.IO_PORT, port, size, write, value, stamps)

    def _forward(self, origin: bytes, part: Partition, vp: VirtualProcessor, seq: int, owner: bytes, reason: str,
                 addr: int, size: int, write: bool, value: int, stamps: tuple) -> None:
        """Suspend the VP and notify the worker that owns ``addr`` (a port or a GPA)."""
        ref = self._next()
        self.pending[ref] = Pending(origin, seq, part, vp, reason, addr, size, write, value,
                                    time.monotonic_ns() + WORKER_TIMEOUT_NS)
        if reason is Exit.IO_PORT:
            notify = m.PortNotify(ref, vp.index, addr, size, write, value, stamps + (perf_counter_ns(),))
        else:
            notify = m.MmioNotify(ref, vp.index, addr, size, write, value, stamps + (perf_counter_ns(),))
        if not self.router.send(owner, notify.encode()):
            # The worker is gone: complete now rather than leave the VP waiting.
            self.pending.pop(ref)
            part.worker_timeouts += 1
            self._resume(origin, part, vp, seq, (), 0 if write else ALL_ONES[size])

    def on_mmio_intercept(self, identity: bytes, peer: Peer, msg: m.MmioIntercept, t_in: int) -> None:
        self._mmio(identity, peer.partition, peer.vp, msg.seq, msg.gpa, msg.size, msg.write, msg.value,
                   msg.stamps + (t_in,))

    def _mmio(self, origin: bytes, part: Partition, vp: VirtualProcessor, seq: int, gpa: int, size: int, write: bool,
              value: int, stamps: tuple) -> None:
        if APIC_BASE <= gpa < APIC_BASE + APIC_PAGE:
            # The local APIC is the hypervisor's: two hops, no worker.
            vp.exits[Exit.APIC] += 1
            now = perf_counter_ns()
            if write:
                vp.apic.write(gpa - APIC_BASE, value, now)
                self._timers_changed(now)
                self._send_ipi(part, vp)
                result = 0
            else:
                result = vp.apic.read(gpa - APIC_BASE, now) & ALL_ONES[size]
            if self.tracers:
                self._trace(part, vp, Exit.APIC, write, gpa, value if write else result, stamps)
            self._resume(origin, part, vp, seq, stamps, result, path=Exit.APIC.code)
            return
        owner = part.mmio_owner(gpa)
        if owner is None:
            if origin != vp.peer and self._root_ram_access(origin, part, vp, seq, gpa, size, write, value, stamps):
                return
            # HvMessageTypeUnmappedGpa: no RAM and no device claims the address.  The
            # guest takes a #GP, and it is counted.
            vp.exits[Exit.UNMAPPED_GPA] += 1
            part.unmapped_gpa += 1
            if self.tracers:
                self._trace(part, vp, Exit.UNMAPPED_GPA, write, gpa, value, stamps)
            self._resume(origin, part, vp, seq, stamps, 0, fault=int(X86Exception.GP), path=Exit.UNMAPPED_GPA.code)
            return
        vp.exits[Exit.MMIO] += 1
        self._forward(origin, part, vp, seq, owner, Exit.MMIO, gpa, size, write, value, stamps)

    def _root_ram_access(self, origin: bytes, part: Partition, vp: VirtualProcessor, seq: int, gpa: int, size: int,
                         write: bool, value: int, stamps: tuple) -> bool:
        """`io readX/writeX` on guest RAM: the root reads and writes it through the
        partition's SLAT, as a VMM's debugger would.  False when ``gpa`` is not RAM."""
        slat = self.memory.slats.get(part.id)
        page = gpa >> PAGE_SHIFT
        if slat is None or page >= len(slat.entries) or slat.entries[page] == SLAT_INVALID \
                or ((gpa + size - 1) >> PAGE_SHIFT) != page:
            return False
        off = (slat.entries[page] << PAGE_SHIFT) | (gpa & 0xFFF)
        pool = self.memory.pool()
        if write:
            pool[off:off + size] = value.to_bytes(size, "little")
            result = 0
        else:
            result = int.from_bytes(pool[off:off + size], "little")
        self._resume(origin, part, vp, seq, stamps, result)
        return True

    def on_memory_request(self, identity: bytes, peer: Peer, msg: m.MemoryRequest, t_in: int) -> None:
        if msg.partition != peer.partition.id:
            self.counters["isolation_refusals"] += 1
            log.warning("%s asked for partition %d's memory: refused", peer.name, msg.partition)
            return self._error(identity, msg.TYPE, "NOT_PERMITTED",
                               f"{peer.name} may not map partition {msg.partition}'s memory")
        slat = self.memory.slats.get(peer.partition.id)
        if slat is None:
            return self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", "the partition has no memory yet")
        self._send(identity, m.MemoryReply(str(self.memory.pool_path), str(slat.path), self.tlb.paths))

    def on_cpuid_intercept(self, identity: bytes, peer: Peer, msg: m.CpuidIntercept, t_in: int) -> None:
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.CPUID] += 1
        eax, ebx, ecx, edx = cpuid.cpuid(part, vp.index, msg.leaf, msg.subleaf)
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(part, vp, Exit.CPUID, False, msg.leaf, msg.subleaf, stamps)
        self._resume(identity, part, vp, msg.seq, stamps, eax, ebx, ecx, edx, path=Exit.CPUID.code)

    def on_msr_intercept(self, identity: bytes, peer: Peer, msg: m.MsrIntercept, t_in: int) -> None:
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.MSR] += 1
        fault, value = self._msr(part, vp, msg.msr, msg.write, msg.value)
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(part, vp, Exit.MSR, msg.write, msg.msr, msg.value if msg.write else value, stamps)
        self._resume(identity, part, vp, msg.seq, stamps, value & 0xFFFFFFFF, 0, 0, value >> 32, fault,
                     path=Exit.MSR.code)

    def _msr(self, part: Partition, vp: VirtualProcessor, msr: int, write: bool, value: int) -> tuple[int, int]:
        if write:
            fault = msrs.wrmsr(part, vp, msr, value)
            self._send_ipi(part, vp)
            return fault, 0
        return msrs.rdmsr(part, vp, msr)

    def _send_ipi(self, part: Partition, source: VirtualProcessor) -> None:
        """An ICR write: deliver the fixed-mode IPI to its destination VPs' local APICs (the
        APIC ID is the VP index), waking them if they sleep in HLT."""
        ipi = source.apic.take_ipi()
        if ipi is None:
            return
        low, high = ipi
        vector, mode, shorthand = low & 0xFF, (low >> 8) & 7, (low >> 18) & 3
        if mode != 0 or vector < 16:
            self.counters["ipis_ignored"] += 1  # INIT/SIPI/NMI/SMI, or an illegal vector
            return
        dest = high >> 24
        targets = {0: [vp for vp in part.vps if vp.index == dest], 1: [source],
                   2: list(part.vps), 3: [vp for vp in part.vps if vp is not source]}[shorthand]
        for vp in targets:
            vp.apic.accept(vector)
            if vp.state is VpState.HALTED:
                self._wake(part, vp)

    def on_hypercall_intercept(self, identity: bytes, peer: Peer, msg: m.HypercallIntercept, t_in: int) -> None:
        if peer.role == "root":
            caller = Caller(None, None, HV_ROOT_PRIVILEGES)
            result, output = self.hypercalls.dispatch(caller, msg.control, msg.input)
            self._send(identity, m.VpResume(msg.seq, NO_FAULT, result, 0, 0, 0, output,
                                            msg.stamps + (t_in, perf_counter_ns()), 0, (), 0, 0, NO_PATH))
            return
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.HYPERCALL] += 1
        result, output, fault = self._hypercall(part, vp, msg.control, msg.input)
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(part, vp, Exit.HYPERCALL, False, msg.control, result, stamps)
        # HvCallNotifyLongSpinWait: the VP yields its LP to the others (the lock holder
        # among them, if it was preempted).
        spin_wait = (msg.control & 0xFFFF) == HypercallCode.HvCallNotifyLongSpinWait and (result & 0xFFFF) == 0
        if spin_wait:
            vp.sched.yields += 1
        self._resume(identity, part, vp, msg.seq, stamps, result, fault=fault, output=output, to_back=spin_wait,
                     path=Exit.HYPERCALL.code)

    def _hypercall(self, part: Partition, vp: VirtualProcessor, control: int, data: bytes) -> tuple[int, bytes, int]:
        if not part.hypercalls_enabled:
            # No hypercall page: the VMCALL is an undefined instruction to the guest.
            return 0, b"", int(X86Exception.UD)
        result, output = self.hypercalls.dispatch(Caller(part, vp, part.privileges), control, data)
        return result, output, NO_FAULT

    def on_halt_intercept(self, identity: bytes, peer: Peer, msg: m.HaltIntercept, t_in: int) -> None:
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.HALT] += 1
        if self.tracers:
            self._trace(part, vp, Exit.HALT, False, 0, 0, msg.stamps + (t_in,))
        if vp.interrupts or vp.reset_pending or vp.apic.deliverable() is not None:
            # Something is already waiting: HLT completes at once.
            self._resume(identity, part, vp, msg.seq, msg.stamps + (t_in,), 0)
            return
        vp.halt_seq = msg.seq
        self.sched.halted(vp.sched, t_in)

    def on_quantum_exit(self, identity: bytes, peer: Peer, msg: m.QuantumExit, t_in: int) -> None:
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.QUANTUM] += 1
        self._resume(identity, part, vp, msg.seq, msg.stamps + (t_in,), 0, path=Exit.QUANTUM.code)

    def on_cr3_intercept(self, identity: bytes, peer: Peer, msg: m.Cr3Intercept, t_in: int) -> None:
        """MOV CR3: the TLB of the LP the VP ran on is flushed, whoever's entries it holds.
        (Before the resume: no other VP has been given that LP yet.)"""
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.CR3] += 1
        vp.cr3 = msg.value
        self.tlb.flush_lp(vp.sched.lp, "mov_cr3")
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(part, vp, Exit.CR3, True, msg.value, vp.sched.lp, stamps)
        self._resume(identity, part, vp, msg.seq, stamps, 0, path=Exit.CR3.code)

    def on_invlpg_intercept(self, identity: bytes, peer: Peer, msg: m.InvlpgIntercept, t_in: int) -> None:
        vp, part = peer.vp, peer.partition
        vp.exits[Exit.INVLPG] += 1
        self.tlb.flush_lp(vp.sched.lp, "invlpg")
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(part, vp, Exit.INVLPG, False, msg.gva, vp.sched.lp, stamps)
        self._resume(identity, part, vp, msg.seq, stamps, 0, path=Exit.INVLPG.code)

    def _wake(self, part: Partition, vp: VirtualProcessor) -> None:
        """End a HLT: the VP resumes, taking what is pending (an interrupt, a reset)."""
        if vp.state is VpState.HALTED and vp.peer is not None:
            seq, vp.halt_seq = vp.halt_seq, None
            self._resume(vp.peer, part, vp, seq, (), 0)

    def on_vp_stats(self, identity: bytes, peer: Peer, msg: m.VpStats, t_in: int) -> None:
        try:
            peer.vp.stats = {str(path): PathStats.from_wire(d) for path, d in msg.paths.items()}
            peer.vp.counters = {str(k): int(v) for k, v in msg.counters.items()}
        except (ValueError, TypeError, AttributeError) as e:
            self.counters["malformed"] += 1
            log.warning("bad vp_stats from %s: %s", peer.name, e)

    # -- worker --------------------------------------------------------------------------

    def on_install_intercept(self, identity: bytes, peer: Peer, msg: m.InstallIntercept, t_in: int) -> None:
        part = peer.partition
        claimed = {}
        for base, count in msg.ranges:
            for port in range(base, base + count):
                if port in claimed:
                    return self._error(identity, msg.TYPE, "CONFLICT", f"port {port:#x} claimed twice")
                claimed[port] = identity
        mmio = sorted((gpa, gpa + length, identity) for gpa, length in msg.mmio)
        for (_, end, _), (start, _, _) in zip(mmio, mmio[1:]):
            if start < end:
                return self._error(identity, msg.TYPE, "CONFLICT", f"MMIO range at {start:#x} overlaps")
        part.port_owner = claimed
        part.ranges = list(msg.ranges)
        part.mmio = mmio
        log.info("partition %d: worker claims ports %s; MMIO %s", part.id,
                 ", ".join(f"{b:#x}+{c}" for b, c in msg.ranges) or "none",
                 ", ".join(f"{g:#x}+{n:#x}" for g, n in msg.mmio) or "none")
        self._send(identity, m.Ack(msg.TYPE))

    def on_access_complete(self, identity: bytes, peer: Peer, msg: m.AccessComplete, t_in: int) -> None:
        p = self.pending.pop(msg.ref, None)
        if p is None or p.partition is not peer.partition:
            if p is not None:  # another partition's request: not this worker's to complete
                self.pending[msg.ref] = p
            self.counters["stale_completions"] += 1
            return self._error(identity, msg.TYPE, "STALE", f"no pending intercept {msg.ref}")
        value = 0 if p.write else msg.value & ALL_ONES[p.size]
        stamps = msg.stamps + (t_in,)
        if self.tracers:
            self._trace(p.partition, p.vp, p.reason, p.write, p.addr, p.value if p.write else value, stamps)
        self._resume(p.origin, p.partition, p.vp, p.seq, stamps, value, path=p.reason.code)

    def on_assert_interrupt(self, identity: bytes, peer: Peer, msg: m.AssertInterrupt, t_in: int) -> None:
        part = peer.partition
        if not part.vps:
            return
        # ExtINT from the PIC goes to the boot processor (virtual-wire mode, LINT0).
        vp = part.vps[0]
        vp.interrupts.post(msg.vector, msg.stamps + (t_in,))
        self._wake(part, vp)

    def on_reset_request(self, identity: bytes, peer: Peer, msg: m.ResetRequest, t_in: int) -> None:
        log.info("partition %d: reset requested by its chipset (%s)", peer.partition.id, msg.reason)
        self._reset(peer.partition)

    def _reset(self, part: Partition) -> None:
        """A partition reset: every VP starts over at its reset vector (the next time it is
        resumed, or at once if halted), the partition-wide MSRs return to their reset
        values, and the worker puts its devices back to power-on."""
        part.resets += 1
        part.guest_os_id = 0
        part.hypercall_msr = 0
        for vp in part.vps:
            vp.interrupts.clear()
            vp.cr3 = 0
            vp.rflags = m.RFLAGS_FIXED  # INIT: interrupts disabled
            vp.regs_written.clear()
            vp.apic = Apic(vp.index)  # INIT: the local APIC to its power-on state
            vp.assist_page = 0
            vp.reset_pending = vp.peer is not None
            self._wake(part, vp)
        if part.worker is not None:
            self._send(part.worker, m.DeviceReset())

    def on_worker_query_reply(self, identity: bytes, peer: Peer, msg: m.WorkerQueryReply, t_in: int) -> None:
        q = self.queries.pop(msg.ref, None)
        if q is None or q.partition is not peer.partition:
            if q is not None:
                self.queries[msg.ref] = q
            self.counters["stale_completions"] += 1
            return
        self._send(q.origin, msg)

    def on_console_output(self, identity: bytes, peer: Peer, msg: m.ConsoleOutput, t_in: int) -> None:
        part = peer.partition
        if not part.console_watchers:
            return
        frame = m.ConsoleData(part.id, msg.data).encode()
        for watcher in list(part.console_watchers):
            if self.router.offer(watcher, frame) == "gone":
                part.console_watchers.discard(watcher)

    # -- root ----------------------------------------------------------------------------

    def _target(self, identity: bytes, msg, partition_id: int) -> Partition | None:
        part = self.table.get(partition_id)
        if part is None:
            self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {partition_id}")
        return part

    def on_execute_request(self, identity: bytes, peer: Peer, msg: m.ExecuteRequest, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is None:
            return
        if msg.vp >= len(part.vps):
            return self._error(identity, msg.TYPE, "UNKNOWN_VP", f"partition {part.id} has no VP {msg.vp}")
        vp = part.vps[msg.vp]
        stamps = (t_in,)
        op = msg.op
        if op in ("inb", "inw", "inl", "outb", "outw", "outl"):
            size = {"b": 1, "w": 2, "l": 4}[op[-1]]
            if msg.a > 0xFFFF:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", f"port {msg.a:#x} is outside 0..0xffff")
            write = op.startswith("out")
            if write and msg.b > ALL_ONES[size]:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", f"{msg.b:#x} does not fit {op}")
            self._io_port(identity, part, vp, msg.seq, msg.a, size, write, msg.b if write else 0, stamps)
        elif op in ("readb", "readw", "readl", "readq", "writeb", "writew", "writel", "writeq"):
            size = {"b": 1, "w": 2, "l": 4, "q": 8}[op[-1]]
            write = op.startswith("write")
            if write and msg.b > ALL_ONES[size]:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", f"{msg.b:#x} does not fit {op}")
            if msg.a + size > 1 << 52:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", f"GPA {msg.a:#x} is beyond 52 bits")
            self._mmio(identity, part, vp, msg.seq, msg.a, size, write, msg.b if write else 0, stamps)
        elif op == "cpuid":
            if msg.a > 0xFFFFFFFF or msg.b > 0xFFFFFFFF:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", "CPUID leaf and subleaf are 32-bit")
            regs = cpuid.cpuid(part, vp.index, msg.a, msg.b)
            self._resume(identity, part, vp, msg.seq, stamps, *regs)
        elif op in ("rdmsr", "wrmsr"):
            if msg.a > 0xFFFFFFFF:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", "MSR numbers are 32-bit")
            fault, value = self._msr(part, vp, msg.a, op == "wrmsr", msg.b)
            self._resume(identity, part, vp, msg.seq, stamps, value & 0xFFFFFFFF, 0, 0, value >> 32, fault)
        else:  # hypercall: executed with the partition's privileges, as its VP would
            result, output, fault = self._hypercall(part, vp, msg.a, msg.input)
            self._resume(identity, part, vp, msg.seq, stamps, result, fault=fault, output=output)

    def on_console_subscribe(self, identity: bytes, peer: Peer, msg: m.ConsoleSubscribe, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is not None:
            part.console_watchers.add(identity)
            self._send(identity, m.Ack(msg.TYPE))

    def _worker_of(self, identity: bytes, msg, part: Partition) -> bytes | None:
        if part.worker is None:
            self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id} has no worker")
        return part.worker

    def on_input_request(self, identity: bytes, peer: Peer, msg: m.InputRequest, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        worker = part and self._worker_of(identity, msg, part)
        if worker is None:
            return
        if not self.router.send(worker, m.DeviceInput(msg.device, msg.data).encode()):
            return self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id}'s worker is gone")
        self._send(identity, m.Ack(msg.TYPE))

    def on_worker_query_request(self, identity: bytes, peer: Peer, msg: m.WorkerQueryRequest, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        worker = part and self._worker_of(identity, msg, part)
        if worker is None:
            return
        ref = self._next()
        self.queries[ref] = PendingQuery(identity, part, time.monotonic_ns() + WORKER_TIMEOUT_NS)
        if not self.router.send(worker, m.WorkerQuery(ref, msg.query).encode()):
            self.queries.pop(ref)
            self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id}'s worker is gone")

    def on_trace_subscribe(self, identity: bytes, peer: Peer, msg: m.TraceSubscribe, t_in: int) -> None:
        if msg.partition and self._target(identity, msg, msg.partition) is None:
            return
        self.tracers[identity] = msg.partition
        self._send(identity, m.Ack(msg.TYPE))

    def on_partition_control(self, identity: bytes, peer: Peer, msg: m.PartitionControl, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is None:
            return
        if part.state is HvPartitionState.FINALIZED:
            return self._error(identity, msg.TYPE, "CONFLICT", f"partition {part.id} is stopped")
        if msg.action == "pause":
            self.sched.pause(part.cpu, True)
        elif msg.action == "resume":
            self.sched.pause(part.cpu, False)
        elif msg.action == "reset":
            self._reset(part)
        else:  # stop: the VPs are never dispatched again; the root ends the processes
            self.sched.pause(part.cpu, True)
            part.state = HvPartitionState.FINALIZED
            released = self.memory.release(part.id)
            log.info("partition %d: %d pages back to the pool", part.id, released)
        log.info("partition %d: %s", part.id, msg.action)
        self._send(identity, m.Ack(msg.TYPE))

    def on_status_request(self, identity: bytes, peer: Peer, msg: m.StatusRequest, t_in: int) -> None:
        self._send(identity, m.StatusReply(self.status()))

    def status(self) -> dict:
        now = perf_counter_ns()
        parts = []
        for part in self.table:
            paths: dict[str, PathStats] = {}
            guest: dict[str, int] = {}
            for vp in part.vps:
                for name, st in vp.stats.items():
                    paths.setdefault(name, PathStats()).merge(st)
                for k, v in vp.counters.items():
                    guest[k] = guest.get(k, 0) + v
            parts.append({
                "id": part.id,
                "state": "paused" if part.cpu.paused and part.state is HvPartitionState.ACTIVE else part.state.value,
                "privileges": part.privileges,
                "recommendations": part.recommendations,
                "spin_retry": part.spin_retry,
                "worker": part.worker is not None,
                "ranges": [list(r) for r in part.ranges],
                "mmio": [[b, e - b] for b, e, _ in part.mmio],
                "hypercalls_enabled": part.hypercalls_enabled,
                "unclaimed_reads": part.unclaimed_reads,
                "unclaimed_writes": part.unclaimed_writes,
                "unmapped_gpa": part.unmapped_gpa,
                "worker_timeouts": part.worker_timeouts,
                "resets": part.resets,
                "cpu": {"reserve": part.cpu.reserve, "limit": part.cpu.limit, "weight": part.cpu.weight},
                "vps": [{"index": vp.index, "state": vp.state.value, "exits": dict(vp.exits), "cr3": vp.cr3,
                         "faults": vp.faults, "guest": dict(vp.counters),
                         "sched": _sched_status(vp.sched, now),
                         "apic": dict(vp.apic.counters),
                         "interrupts": {"asserted": vp.interrupts.asserted, "injected": vp.interrupts.injected,
                                        "pending": len(vp.interrupts.pending),
                                        "by_vector": {f"{k:#04x}": v for k, v in vp.interrupts.by_vector.items()}}}
                        for vp in part.vps],
                "guest": guest,
                "paths": {name: st.to_wire() for name, st in paths.items()},
            })
        return {
            "pid": os.getpid(),
            "session": self.session,
            "uptime_s": (time.monotonic_ns() - self.started_ns) / 1e9,
            "counters": dict(self.counters),
            "hypercalls": {"calls": {f"{k:#06x}": v for k, v in self.hypercalls.counts.items()},
                           "failures": dict(self.hypercalls.failures)},
            "peers": len(self.peers),
            "pending": len(self.pending),
            "tracers": len(self.tracers),
            "scheduler": self.sched.status(now),
            "memory": self.memory.status(),
            "tlb": self.tlb.status(),
            "partitions": parts,
        }


def _sched_status(s: VpSched, now: int) -> dict:
    if s.state is VpState.CREATED:
        return {}
    running = now - s.since_ns if s.state is VpState.RUNNING else 0
    waiting = now - s.since_ns if s.state is VpState.READY else 0
    return {"state": s.state.sched, "lp": s.lp if s.state is VpState.RUNNING else None, "run_s": (s.run_ns + running) / 1e9,
            "wait_s": (s.wait_ns + waiting) / 1e9, "dispatches": s.dispatches,
            "preemptions": s.preemptions, "yields": s.yields}
