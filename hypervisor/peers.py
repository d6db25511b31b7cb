"""Peers: who is on the other end of each ZeroMQ routing identity.

Every connection opens with ``hello``: a role (root, worker, vp, vsp), a partition and VP, and a
client nonce.  The hypervisor answers ``hello_challenge`` with a fresh nonce for this
connection; the peer's ``hello_proof`` shows it holds the key derived from the run's secret
for that role and partition (``proto.auth``), bound to both nonces, so a hello captured on
one connection proves nothing on another; the ``hello_reply`` proves in turn that the
hypervisor holds the secret (``proto.auth.reply_proof``).  Each challenge is answered once, within
:data:`HELLO_DEADLINE_S`; at most :data:`MAX_PENDING_HELLOS` wait at a time (the oldest
is dropped).  The hypervisor binds the routing identity to (role, partition, vp) then, for
the connection's life; from
then on a message's partition comes from who sent it, never from its body.  One worker per
partition, one thread per VP, for the partition's life: a second hello for either is
refused, so nobody can take over a running partition's devices or VPs.  A refusal is an
``error_reply``, a log line and a counter.

A VP's hello reply is its first dispatch: it waits for a logical processor like any
resume, and for the root to clear HvRegisterExplicitSuspend (TLFS host flow).

When a peer's connection goes (the transport tells the loop, ``Router.disconnected``) the
peer is forgotten, with its trace subscription and console watching.  A worker's or VP's
place in its partition stays taken: the root sees the process die and ends the run (or
stops the partition), as before; only the table entry goes.  Refusals are logged at a
bounded rate (``proto.loglimit``): a flood of bad hellos costs a counter, not a disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from time import perf_counter_ns

from proto import messages as m
from proto.auth import NONCE_BYTES, new_nonce, peer_token, proof_matches, reply_proof
from proto.codes import HvPartitionState
from proto.loglimit import LimitedLog

from hypervisor.partitions import Partition, VirtualProcessor

log = logging.getLogger("hypervisor")

HELLO_DEADLINE_S = 10.0  # from challenge to proof
MAX_PENDING_HELLOS = 256


@dataclass(slots=True)
class PendingHello:
    hello: m.Hello
    nonce: bytes  # the server nonce this connection was challenged with
    deadline: float  # time.monotonic()


@dataclass(slots=True)
class Peer:
    identity: bytes
    role: str
    name: str
    partition: Partition | None
    vp: VirtualProcessor | None
    pid: int


class Peers:
    def __init__(self, *, secret: str, session: str, table, sched, outbox, counters: dict, memory, tlb,
                 bind=None, synic_ports=None) -> None:
        """``bind(identity)``: tells the transport a good hello came on the connection
        (``Router.bind``), so that it is no longer counted as idle."""
        self._secret = secret
        self._bind = bind
        self.refusals = LimitedLog(log)
        self._session = session
        self._table = table
        self._sched = sched
        self._outbox = outbox
        self._counters = counters
        self._memory = memory
        self._tlb = tlb
        self._synic_ports = synic_ports  # the vsp peer's ports (issue 10): one vsp per run
        self.by_identity: dict[bytes, Peer] = {}
        self._pending: dict[bytes, PendingHello] = {}  # challenged, not yet proved

    def __len__(self) -> int:
        return len(self.by_identity)

    def _refuse(self, identity: bytes, msg: m.Message, hello: m.Hello | None, code: str, why: str) -> None:
        self._counters["refused_hellos"] += 1
        who = f"pid {hello.pid} as {hello.role}" if hello is not None else "a peer that said no hello"
        self.refusals.warning("refused hello from %s: %s", who, why)
        self._outbox.error(identity, msg.TYPE, code, why)

    def on_hello(self, identity: bytes, peer: Peer | None, msg: m.Hello, t_in: int) -> None:
        """Step one: challenge the connection with a nonce of its own."""
        if msg.version != m.PROTOCOL_VERSION:
            return self._refuse(identity, msg, msg, "VERSION_MISMATCH",
                                f"protocol {msg.version}, this hypervisor speaks {m.PROTOCOL_VERSION}")
        if peer is not None:
            return self._refuse(identity, msg, msg, "CONFLICT", f"this connection is already bound as {peer.name}")
        if len(msg.nonce) != NONCE_BYTES:
            return self._refuse(identity, msg, msg, "INVALID_FIELD",
                                f"a client nonce of {len(msg.nonce)} bytes, not {NONCE_BYTES}")
        self._pending.pop(identity, None)
        while len(self._pending) >= MAX_PENDING_HELLOS:
            del self._pending[next(iter(self._pending))]
        nonce = new_nonce()
        self._pending[identity] = PendingHello(msg, nonce, time.monotonic() + HELLO_DEADLINE_S)
        self._outbox.send(identity, m.HelloChallenge(nonce))

    def on_hello_proof(self, identity: bytes, peer: Peer | None, proof: m.HelloProof, t_in: int) -> None:
        """Step two: the proof of the key, bound to both nonces; then bind the connection."""
        pending = self._pending.pop(identity, None)
        msg = pending.hello if pending is not None else None
        if peer is not None:
            return self._refuse(identity, proof, msg, "CONFLICT", f"this connection is already bound as {peer.name}")
        if pending is None:
            return self._refuse(identity, proof, None, "NOT_AUTHENTICATED",
                                "no hello challenge to answer on this connection")
        if time.monotonic() > pending.deadline:
            return self._refuse(identity, proof, msg, "NOT_AUTHENTICATED", "the hello challenge expired")
        if not proof_matches(self._secret, msg.role, msg.partition, msg.vp, msg.pid, msg.session,
                             msg.nonce, pending.nonce, proof.mac):
            return self._refuse(identity, proof, msg, "NOT_AUTHENTICATED",
                                f"bad proof for {msg.role} of partition {msg.partition}")

        def refuse(code: str, why: str) -> None:
            self._refuse(identity, proof, msg, code, why)

        part, vp = None, None
        if msg.role == "root":
            name = f"root:{msg.pid}"
        elif msg.role == "vsp":
            # The root's VMBus server: root-side, of no partition (its key is for partition 0).
            if msg.partition != 0 or self._synic_ports is None:
                return refuse("NOT_PERMITTED", "a vsp is of no partition (0)")
            if not self._synic_ports.vsp_bound(identity):
                return refuse("CONFLICT", "this run already has a vsp")
            name = f"vsp:{msg.pid}"
        else:
            part = self._table.get(msg.partition)
            if part is None or part.state in (HvPartitionState.FINALIZED, HvPartitionState.DELETED):
                return refuse("UNKNOWN_PARTITION", f"no partition {msg.partition}")
            if msg.role == "worker":
                if part.worker is not None:
                    if not part.replacement_expected:
                        return refuse("CONFLICT", f"partition {part.id} already has a worker")
                    self._retire(part)  # the root asked for a replacement (servicing.py)
                part.worker = identity
                name = f"worker:{part.id}"
            else:
                if msg.vp >= len(part.vps):
                    return refuse("UNKNOWN_VP", f"partition {part.id} has no VP {msg.vp}")
                vp = part.vps[msg.vp]
                if vp.peer is not None:
                    return refuse("CONFLICT", f"VP {msg.vp} of partition {part.id} is already running")
                vp.peer = identity
                part.state = HvPartitionState.ACTIVE
                name = f"vp:{part.id}:{vp.index}"
        self.by_identity[identity] = Peer(identity, msg.role, name, part, vp, msg.pid)
        if self._bind is not None:
            self._bind(identity)
        log.info("hello from %s (pid %d)", name, msg.pid)
        # Mutual: the reply proves this hypervisor holds the secret (the peer checks it).
        mac = reply_proof(peer_token(self._secret, msg.role, msg.partition), msg.role, msg.partition, msg.vp,
                          msg.pid, msg.session, msg.nonce, pending.nonce, name, self._session)
        reply = m.HelloReply(name, self._session, mac)
        if vp is None:
            self._outbox.send(identity, reply)
            return
        # A VP starts executing when it is first dispatched: its hello reply waits for an LP.
        vp.next_frame = reply.encode()
        self._sched.make_ready(vp.sched, perf_counter_ns())

    def _retire(self, part: Partition) -> None:
        """Worker servicing: the partition's worker is replaced by the one saying hello now.
        The old connection stays bound but under a role no route takes, so nothing it sends
        (a late completion, an interrupt) reaches the partition any more."""
        old = self.by_identity.get(part.worker)
        if old is not None:
            old.role, old.name = "retired", f"retired-worker:{part.id}"
        part.previous_worker = part.worker  # until the commit: an abort gives it back
        part.worker = None
        part.worker_started = False
        part.replacement_expected = False
        part.reinstall = True
        part.worker_handovers += 1
        log.info("partition %d: its worker is replaced (handover #%d)", part.id, part.worker_handovers)

    def forget(self, identity: bytes) -> None:
        """The peer's connection has gone: its entry, its unanswered challenge and its
        streams go too."""
        self._pending.pop(identity, None)
        peer = self.by_identity.pop(identity, None)
        self._outbox.forget(identity)
        if peer is not None:
            if peer.role == "vsp" and self._synic_ports is not None:
                self._synic_ports.vsp_gone(identity)
            self._counters["peers_disconnected"] += 1
            log.info("%s (pid %d) disconnected", peer.name, peer.pid)

    def on_memory_request(self, identity: bytes, peer: Peer, msg: m.MemoryRequest, t_in: int) -> None:
        """Where the partition's memory is: only a peer's own partition's is handed out
        (the binding made at hello decides which that is); asking for another's is
        refused and counted."""
        if msg.partition != peer.partition.id:
            self._counters["isolation_refusals"] += 1
            log.warning("%s asked for partition %d's memory: refused", peer.name, msg.partition)
            return self._outbox.error(identity, msg.TYPE, "NOT_PERMITTED",
                                      f"{peer.name} may not map partition {msg.partition}'s memory")
        slat = self._memory.slats.get(peer.partition.id)
        if slat is None:
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", "the partition has no memory yet")
        self._outbox.send(identity, m.MemoryReply(str(slat.ram_path), str(slat.path),
                                                  self._tlb.paths_of(peer.partition.id)))
        if peer.role == "worker":
            # Its last request of its start-up: from now on it serves (and may be pinged).
            peer.partition.worker_started = True
