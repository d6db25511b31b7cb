"""The hypervisor's event loop: one ROUTER, one thread, one handler per message type.

Peers bind at ``hello``: the ZeroMQ routing identity is tied to (role, partition, vp), and
from then on a message's partition comes from who sent it, never from its body.  A frame
that is not a message, or a message from a peer that has not said hello, gets an
``error_reply`` and a counter; nothing a peer sends can stop the loop.

The measured paths, as DESIGN.md draws them:

* emulated port I/O — ``io_port_intercept`` (VP) → ``io_notify`` (worker) →
  ``io_complete`` (worker) → ``vp_resume`` (VP): four hops, eight stamps;
* hypervisor-handled intercepts (CPUID, synthetic MSRs) and hypercalls — intercept →
  ``vp_resume``: two hops, four stamps.

Each hop appends ``perf_counter_ns()`` to the message's stamps: on arrival, right after the
frame is read, and on departure, right before it is sent.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from time import perf_counter_ns

from proto import messages as m
from proto.auth import token_matches
from proto.codes import HV_ROOT_PRIVILEGES, HvPartitionState, X86Exception
from proto.errors import ProtocolError
from proto.stats import PathStats
from proto.transport import Router

from hypervisor import cpuid, msrs
from hypervisor.hypercalls import Caller, Hypercalls
from hypervisor.partitions import Partition, PartitionTable, Vp, VpState

log = logging.getLogger("hypervisor")

# A worker that has not completed an intercept by then is presumed hung or dead: the VP
# gets all-ones (a read) as Xen's null handler gives, and the timeout is counted.
WORKER_TIMEOUT_NS = 2_000_000_000
HOUSEKEEPING_INTERVAL_MS = 100
ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
NO_FAULT = int(X86Exception.NONE)


@dataclass(slots=True)
class Peer:
    identity: bytes
    role: str
    name: str
    partition: Partition | None
    vp: Vp | None
    pid: int
    messages: int = 0


@dataclass(slots=True)
class Pending:
    """An intercept forwarded to a worker, waiting for its ``io_complete``."""

    origin: bytes  # who gets the vp_resume: the VP thread, or a root peer for `io`
    seq: int
    partition: Partition
    vp: Vp
    size: int
    write: bool
    deadline_ns: int


class Hypervisor:
    def __init__(self, endpoint: str, secret: str) -> None:
        self.router = Router(endpoint)
        self.endpoint = self.router.endpoint
        self.secret = secret
        self.session = os.urandom(8).hex()
        self.started_ns = time.monotonic_ns()
        self.table = PartitionTable()
        self.hypercalls = Hypercalls(self.table)
        self.peers: dict[bytes, Peer] = {}
        self.pending: dict[int, Pending] = {}
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
        }
        self._handlers = {
            m.Hello: self.on_hello,
            m.IoPortIntercept: self.on_io_port_intercept,
            m.CpuidIntercept: self.on_cpuid_intercept,
            m.MsrIntercept: self.on_msr_intercept,
            m.HypercallIntercept: self.on_hypercall_intercept,
            m.HaltIntercept: self.on_halt_intercept,
            m.VpStats: self.on_vp_stats,
            m.InstallIntercept: self.on_install_intercept,
            m.IoComplete: self.on_io_complete,
            m.ConsoleOutput: self.on_console_output,
            m.StatusRequest: self.on_status_request,
            m.IoRequest: self.on_io_request,
            m.ConsoleSubscribe: self.on_console_subscribe,
            m.ConsolePush: self.on_console_push,
        }
        # Which roles may send what (hello is open to all).
        self._allowed = {
            m.IoPortIntercept: ("vp",),
            m.CpuidIntercept: ("vp",),
            m.MsrIntercept: ("vp",),
            m.HypercallIntercept: ("vp", "root"),
            m.HaltIntercept: ("vp",),
            m.VpStats: ("vp",),
            m.InstallIntercept: ("worker",),
            m.IoComplete: ("worker",),
            m.ConsoleOutput: ("worker",),
            m.StatusRequest: ("root",),
            m.IoRequest: ("root",),
            m.ConsoleSubscribe: ("root",),
            m.ConsolePush: ("root",),
        }

    # -- the loop -----------------------------------------------------------------------

    def serve(self) -> None:
        log.info("hypervisor listening on %s", self.endpoint)
        router, handlers, allowed, peers = self.router, self._handlers, self._allowed, self.peers
        next_housekeeping = time.monotonic_ns()
        while self.running:
            if not router.wait(HOUSEKEEPING_INTERVAL_MS):
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
            handler = handlers.get(kind)
            if handler is None:
                self.counters["not_permitted"] += 1
                self._error(identity, msg.TYPE, "NOT_PERMITTED", f"{msg.NAME} is not a request")
                continue
            handler(identity, peer, msg, t_in)
            if time.monotonic_ns() >= next_housekeeping:
                next_housekeeping = self._housekeeping()
        self.router.close()

    def _housekeeping(self) -> int:
        now = time.monotonic_ns()
        expired = [ref for ref, p in self.pending.items() if p.deadline_ns <= now]
        for ref in expired:
            p = self.pending.pop(ref)
            p.partition.worker_timeouts += 1
            log.warning("partition %d: worker did not complete intercept %d in time", p.partition.id, ref)
            value = 0 if p.write else ALL_ONES[p.size]
            self._resume(p.origin, p.vp, p.seq, (), value)
        return now + HOUSEKEEPING_INTERVAL_MS * 1_000_000

    def _send(self, identity: bytes, msg: m.Message) -> None:
        if not self.router.send(identity, msg.encode()):
            self.counters["unroutable_replies"] += 1
            self._forget(identity)

    def _error(self, identity: bytes, ref_type: int, code: str, text: str) -> None:
        log.debug("error to %s: %s %s", identity.hex(), code, text)
        self._send(identity, m.ErrorReply(ref_type, code, text[:512]))

    def _forget(self, identity: bytes) -> None:
        for part in self.table:
            part.console_watchers.discard(identity)

    def _resume(self, origin: bytes, vp: Vp, seq: int, stamps: tuple, rax: int, rbx: int = 0,
                rcx: int = 0, rdx: int = 0, fault: int = NO_FAULT, output: bytes = b"") -> None:
        if vp.peer == origin and vp.state is VpState.INTERCEPT:
            vp.state = VpState.RUNNING
        if fault:
            vp.faults += 1
        self._send(origin, m.VpResume(seq, fault, rax, rbx, rcx, rdx, output, stamps))

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
                vp.state = VpState.RUNNING
                part.state = HvPartitionState.ACTIVE
                name = f"vp:{part.id}:{vp.index}"
        self.peers[identity] = Peer(identity, msg.role, name, part, vp, msg.pid)
        log.info("hello from %s (pid %d)", name, msg.pid)
        self._send(identity, m.HelloReply(name, self.session))

    # -- intercepts from VPs -------------------------------------------------------------

    def on_io_port_intercept(self, identity: bytes, peer: Peer, msg: m.IoPortIntercept, t_in: int) -> None:
        self._io_port(identity, peer.partition, peer.vp, msg.seq, msg.port, msg.size, msg.write,
                      msg.value, msg.stamps + (t_in,))

    def _io_port(self, origin: bytes, part: Partition, vp: Vp, seq: int, port: int, size: int,
                 write: bool, value: int, stamps: tuple) -> None:
        owner = part.port_owner.get(port)
        if owner is None:
            # Nothing claims the port: reads float high, writes go nowhere (Xen's
            # null_handler, and what an ISA bus does).
            vp.exits["unclaimed_io"] += 1
            if write:
                part.unclaimed_writes += 1
            else:
                part.unclaimed_reads += 1
            self._resume(origin, vp, seq, stamps + (perf_counter_ns(),), 0 if write else ALL_ONES[size])
            return
        vp.exits["io_port"] += 1
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        self.pending[ref] = Pending(origin, seq, part, vp, size, write, time.monotonic_ns() + WORKER_TIMEOUT_NS)
        if vp.peer == origin:
            vp.state = VpState.INTERCEPT
        notify = m.IoNotify(ref, vp.index, port, size, write, value, stamps + (perf_counter_ns(),))
        if not self.router.send(owner, notify.encode()):
            # The worker is gone: complete now rather than leave the VP waiting.
            self.pending.pop(ref)
            part.worker_timeouts += 1
            self._resume(origin, vp, seq, (), 0 if write else ALL_ONES[size])

    def on_cpuid_intercept(self, identity: bytes, peer: Peer, msg: m.CpuidIntercept, t_in: int) -> None:
        vp = peer.vp
        vp.exits["cpuid"] += 1
        eax, ebx, ecx, edx = cpuid.cpuid(peer.partition, vp.index, msg.leaf, msg.subleaf)
        self._resume(identity, vp, msg.seq, msg.stamps + (t_in, perf_counter_ns()), eax, ebx, ecx, edx)

    def on_msr_intercept(self, identity: bytes, peer: Peer, msg: m.MsrIntercept, t_in: int) -> None:
        vp = peer.vp
        vp.exits["msr"] += 1
        fault, value = self._msr(peer.partition, vp, msg.msr, msg.write, msg.value)
        self._resume(identity, vp, msg.seq, msg.stamps + (t_in, perf_counter_ns()),
                     value & 0xFFFFFFFF, 0, 0, value >> 32, fault)

    @staticmethod
    def _msr(part: Partition, vp: Vp, msr: int, write: bool, value: int) -> tuple[int, int]:
        if write:
            return msrs.wrmsr(part, vp.index, msr, value), 0
        return msrs.rdmsr(part, vp.index, msr)

    def on_hypercall_intercept(self, identity: bytes, peer: Peer, msg: m.HypercallIntercept, t_in: int) -> None:
        if peer.role == "root":
            caller = Caller(None, None, HV_ROOT_PRIVILEGES)
            result, output = self.hypercalls.dispatch(caller, msg.control, msg.input)
            self._send(identity, m.VpResume(msg.seq, NO_FAULT, result, 0, 0, 0, output,
                                            msg.stamps + (t_in, perf_counter_ns())))
            return
        vp = peer.vp
        vp.exits["hypercall"] += 1
        result, output, fault = self._hypercall(peer.partition, vp, msg.control, msg.input)
        self._resume(identity, vp, msg.seq, msg.stamps + (t_in, perf_counter_ns()), result,
                     fault=fault, output=output)

    def _hypercall(self, part: Partition, vp: Vp, control: int, data: bytes) -> tuple[int, bytes, int]:
        if not part.hypercalls_enabled:
            # No hypercall page: the VMCALL is an undefined instruction to the guest.
            return 0, b"", int(X86Exception.UD)
        result, output = self.hypercalls.dispatch(Caller(part, vp, part.privileges), control, data)
        return result, output, NO_FAULT

    def on_halt_intercept(self, identity: bytes, peer: Peer, msg: m.HaltIntercept, t_in: int) -> None:
        # Nothing raises interrupts yet, so a halted VP waits until its partition ends.
        vp = peer.vp
        vp.exits["halt"] += 1
        vp.state = VpState.HALTED
        vp.halt_seq = msg.seq

    def on_vp_stats(self, identity: bytes, peer: Peer, msg: m.VpStats, t_in: int) -> None:
        try:
            peer.vp.stats = {str(path): PathStats.from_wire(d) for path, d in msg.paths.items()}
        except ValueError as e:
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
        part.port_owner = claimed
        part.ranges = list(msg.ranges)
        log.info("partition %d: worker claims %s", part.id,
                 ", ".join(f"{b:#x}+{c}" for b, c in msg.ranges))
        self._send(identity, m.Ack(msg.TYPE))

    def on_io_complete(self, identity: bytes, peer: Peer, msg: m.IoComplete, t_in: int) -> None:
        p = self.pending.pop(msg.ref, None)
        if p is None or p.partition is not peer.partition:
            if p is not None:  # another partition's request: not this worker's to complete
                self.pending[msg.ref] = p
            self.counters["stale_completions"] += 1
            return self._error(identity, msg.TYPE, "STALE", f"no pending intercept {msg.ref}")
        value = msg.value & ALL_ONES[p.size]
        self._resume(p.origin, p.vp, p.seq, msg.stamps + (t_in, perf_counter_ns()), value)

    def on_console_output(self, identity: bytes, peer: Peer, msg: m.ConsoleOutput, t_in: int) -> None:
        part = peer.partition
        if not part.console_watchers:
            return
        frame = m.ConsoleData(part.id, msg.data).encode()
        for watcher in list(part.console_watchers):
            if not self.router.send(watcher, frame):
                part.console_watchers.discard(watcher)

    # -- root ----------------------------------------------------------------------------

    def _target(self, identity: bytes, msg, partition_id: int) -> Partition | None:
        part = self.table.get(partition_id)
        if part is None:
            self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {partition_id}")
        return part

    def on_io_request(self, identity: bytes, peer: Peer, msg: m.IoRequest, t_in: int) -> None:
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
        elif op == "cpuid":
            if msg.a > 0xFFFFFFFF or msg.b > 0xFFFFFFFF:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", "CPUID leaf and subleaf are 32-bit")
            regs = cpuid.cpuid(part, vp.index, msg.a, msg.b)
            self._resume(identity, vp, msg.seq, stamps + (perf_counter_ns(),), *regs)
        elif op in ("rdmsr", "wrmsr"):
            if msg.a > 0xFFFFFFFF:
                return self._error(identity, msg.TYPE, "INVALID_FIELD", "MSR numbers are 32-bit")
            fault, value = self._msr(part, vp, msg.a, op == "wrmsr", msg.b)
            self._resume(identity, vp, msg.seq, stamps + (perf_counter_ns(),),
                         value & 0xFFFFFFFF, 0, 0, value >> 32, fault)
        else:  # hypercall: executed with the partition's privileges, as its VP would
            result, output, fault = self._hypercall(part, vp, msg.a, msg.input)
            self._resume(identity, vp, msg.seq, stamps + (perf_counter_ns(),), result, fault=fault, output=output)

    def on_console_subscribe(self, identity: bytes, peer: Peer, msg: m.ConsoleSubscribe, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is not None:
            part.console_watchers.add(identity)
            self._send(identity, m.Ack(msg.TYPE))

    def on_console_push(self, identity: bytes, peer: Peer, msg: m.ConsolePush, t_in: int) -> None:
        part = self._target(identity, msg, msg.partition)
        if part is None:
            return
        if part.worker is None or not self.router.send(part.worker, m.ConsoleInput(msg.data).encode()):
            return self._error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"partition {part.id} has no worker")
        self._send(identity, m.Ack(msg.TYPE))

    def on_status_request(self, identity: bytes, peer: Peer, msg: m.StatusRequest, t_in: int) -> None:
        self._send(identity, m.StatusReply(self.status()))

    def status(self) -> dict:
        parts = []
        for part in self.table:
            paths: dict[str, PathStats] = {}
            for vp in part.vps:
                for name, st in vp.stats.items():
                    paths.setdefault(name, PathStats()).merge(st)
            parts.append({
                "id": part.id,
                "state": part.state.value,
                "privileges": part.privileges,
                "recommendations": part.recommendations,
                "spin_retry": part.spin_retry,
                "worker": part.worker is not None,
                "ranges": [list(r) for r in part.ranges],
                "hypercalls_enabled": part.hypercalls_enabled,
                "unclaimed_reads": part.unclaimed_reads,
                "unclaimed_writes": part.unclaimed_writes,
                "worker_timeouts": part.worker_timeouts,
                "vps": [{"index": vp.index, "state": vp.state.value, "exits": dict(vp.exits),
                         "faults": vp.faults} for vp in part.vps],
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
            "partitions": parts,
        }

