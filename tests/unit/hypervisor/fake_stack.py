"""A hypervisor driven in-process: its real loop, a fake socket, real frames (for the tests here).

:class:`FakeRouter` stands where ``proto.transport.Router`` does; what goes in and out of
it is encoded and decoded by ``proto.messages`` exactly as on the wire (locust's mocked RPC
that still serializes), so a test sees the frames a peer would.  When its inbox is empty
the loop stops, and :meth:`Stack.send` returns what the hypervisor sent meanwhile.
"""

from __future__ import annotations

from collections import deque

from proto import messages as m
from proto.auth import hello_proof, peer_token
from proto.codes import (
    HV_CHILD_ENLIGHTENED_PRIVILEGES,
    HvMsr,
    HvPartitionProperty as P,
    HvRecommendation,
    HvRegisterName as R,
    HvStatus,
    HypercallCode as C,
    control_value,
)
from proto.hvcall import (
    HV_GPA_PAGE_NUMBER,
    HV_INPUT_CREATE_VP,
    HV_INPUT_DEPOSIT_MEMORY,
    HV_INPUT_INITIALIZE_PARTITION,
    HV_INPUT_MAP_GPA_PAGES,
    HV_INPUT_SET_PARTITION_PROPERTY,
    HV_INPUT_SET_VP_REGISTERS,
    HV_OUTPUT_CREATE_PARTITION,
    HV_REGISTER_ASSOC,
    pack_rep,
)
from hypervisor.service import Hypervisor

SECRET = "unit-test-secret"
ROOT = b"root"
REGS = (m.RFLAGS_FIXED | m.RFLAGS_IF, 0x1000)  # the register block a VP exits with
COM1 = 0x3F8
VGA = 0xB8000
RAM_PAGES = 16  # guest RAM at GPA 0


class FakeRouter:
    endpoint = "inproc://hvstack-unit"

    def __init__(self) -> None:
        self.inbox: deque = deque()
        self.sent: list[tuple[bytes, bytes]] = []
        self.gone: set[bytes] = set()  # peers a send to fails (EHOSTUNREACH)
        self.full: set[bytes] = set()  # peers whose queue is full (best-effort sends drop)
        self.on_idle = None
        self.closed = False
        self.bound: list[bytes] = []  # identities a good hello was said on (Router.bind)
        self.dropped: list[bytes] = []  # connections that went, for Router.disconnected
        self.counters: dict[str, int] = {}  # the transport's, merged into status

    def bind(self, identity: bytes) -> None:
        self.bound.append(identity)

    def disconnected(self) -> list[bytes]:
        out, self.dropped = self.dropped, []
        return out

    def wait(self, timeout_ms: int) -> bool:
        if self.inbox:
            return True
        self.on_idle()
        return False

    def recv(self) -> list[bytes]:
        return list(self.inbox.popleft())

    def send(self, identity: bytes, frame: bytes) -> bool:
        if identity in self.gone:
            return False
        self.sent.append((identity, frame))
        return True

    def offer(self, identity: bytes, frame: bytes) -> str:
        if identity in self.gone:
            return "gone"
        if identity in self.full:
            return "full"
        self.sent.append((identity, frame))
        return "sent"

    def close(self) -> None:
        self.closed = True


class Sent(list):
    """What the hypervisor sent, decoded: ``[(identity, message), …]``."""

    def to(self, identity: bytes) -> list:
        return [msg for who, msg in self if who == identity]

    def one(self, identity: bytes, cls=None):
        msgs = [msg for msg in self.to(identity) if cls is None or isinstance(msg, cls)]
        assert len(msgs) == 1, f"expected one {cls.__name__ if cls else 'message'} to {identity!r}, got {self}"
        return msgs[0]


class Stack:
    def __init__(self, tmp_path, lps: int = 4, strict: bool = True) -> None:
        """``strict``: a handler error fails the test (re-raised); False only where a test
        checks that the loop survives one."""
        self.router = FakeRouter()
        self.hv = Hypervisor(self.router, SECRET, lps, str(tmp_path), 64, strict=strict)
        # The scheduler's clock is the wall clock: on a loaded host the test's own thread can
        # be off its core for longer than a quantum + grace (30 ms) between two steps, and a
        # forced preemption (RUNNING → PREEMPTED) nobody asked for would break a test about
        # something else (CI at 5684393: a posted-interrupt test found its VP preempted).
        # Forced preemption is tested on the Scheduler itself (test_scheduler_holds.py).
        self.hv.dispatcher.sched.grace_ns = 3600 * 10**9
        self.router.on_idle = self._idle
        self._seq = 0

    def _idle(self) -> None:
        self.hv.running = False

    def run(self) -> Sent:
        """Run the loop until every queued frame is handled."""
        self.hv.running = True
        self.hv.serve()
        out = Sent((who, m.decode(frame)) for who, frame in self.router.sent)
        self.router.sent.clear()
        return out

    def send(self, identity: bytes, msg: m.Message) -> Sent:
        self.router.inbox.append((identity, msg.encode()))
        return self.run()

    def raw(self, identity: bytes, *frames: bytes) -> Sent:
        self.router.inbox.append((identity, *frames))
        return self.run()

    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def hello(self, identity: bytes, role: str, partition: int = 0, vp: int = 0, token: str | None = None) -> Sent:
        """Hello, challenge, proof (with the right key unless ``token`` is given); what the
        proof got (or the hello, if it was refused)."""
        token = peer_token(SECRET, role, partition) if token is None else token
        hello = m.Hello(m.PROTOCOL_VERSION, role, partition, vp, 4242, "s", b"c" * 32)
        sent = self.send(identity, hello)
        challenges = [msg for msg in sent.to(identity) if isinstance(msg, m.HelloChallenge)]
        if not challenges:
            return sent
        mac = hello_proof(token, role, partition, vp, 4242, "s", hello.nonce, challenges[0].nonce)
        return self.send(identity, m.HelloProof(mac))

    def hypercall(self, code: int, data: bytes = b"", rep: int = 0) -> m.VpResume:
        """A root hypercall; the resume it gets."""
        return self.send(ROOT, m.HypercallIntercept(self.seq(), control_value(code, rep_count=rep), data,
                                                    (1,))).one(ROOT, m.VpResume)

    def ok(self, code: int, data: bytes = b"", rep: int = 0) -> bytes:
        r = self.hypercall(code, data, rep)
        assert r.rax & 0xFFFF == HvStatus.HV_STATUS_SUCCESS, HvStatus(r.rax & 0xFFFF).name
        return r.output

    def partition(self, vps: int = 2, privileges: int = int(HV_CHILD_ENLIGHTENED_PRIVILEGES),
                  recommendations: int = int(HvRecommendation.UseApicMsrs), worker: bool = True,
                  start: bool = True, connect: bool = True) -> int:
        """A partition by the TLFS host flow, with RAM at GPA 0, a worker claiming COM1 and
        VGA memory, and its VPs' threads bound; ``start``: the VPs started too (each has had
        its hello reply)."""
        (pid,) = HV_OUTPUT_CREATE_PARTITION.unpack(self.ok(C.HvCallCreatePartition, bytes(56)))
        for prop, value in ((P.HvPartitionPropertyPrivilegeFlags, privileges),
                            (P.HvPartitionPropertyEnlightenmentRecommendations, recommendations),
                            (P.HvPartitionPropertySpinRetryCount, 0xFFF),
                            (P.HvPartitionPropertyGpaPageCount, 256)):
            self.ok(C.HvCallSetPartitionProperty, HV_INPUT_SET_PARTITION_PROPERTY.pack(pid, prop, value))
        self.ok(C.HvCallInitializePartition, HV_INPUT_INITIALIZE_PARTITION.pack(pid))
        for i in range(vps):
            self.ok(C.HvCallCreateVp, HV_INPUT_CREATE_VP.pack(pid, i, 0, 0))
        pages = list(range((pid - 1) * RAM_PAGES, pid * RAM_PAGES))
        self.ok(C.HvCallDepositMemory, HV_INPUT_DEPOSIT_MEMORY.pack(pid) + pack_rep(HV_GPA_PAGE_NUMBER, pages),
                len(pages))
        self.ok(C.HvCallMapGpaPages, HV_INPUT_MAP_GPA_PAGES.pack(pid, 0, 0) + pack_rep(HV_GPA_PAGE_NUMBER, pages),
                len(pages))
        if worker:
            w = worker_id(pid)
            self.hello(w, "worker", pid)
            assert self.send(w, m.InstallIntercept(((COM1, 8), (0x60, 1)), ((VGA, 0x8000),))).one(w, m.Ack)
        for i in range(vps if connect else 0):
            assert not self.hello(vp_id(pid, i), "vp", pid, i)  # suspended: its hello reply waits
            if start:
                assert isinstance(self.start(pid, i).one(vp_id(pid, i)), m.HelloReply)
        return pid

    def start(self, pid: int, index: int, suspend: bool = False) -> Sent:
        """Clear (or set) the VP's HvRegisterExplicitSuspend, as the root starts a VP."""
        return self.hypercall_raw(C.HvCallSetVpRegisters, HV_INPUT_SET_VP_REGISTERS.pack(pid, index, 0)
                                  + HV_REGISTER_ASSOC.pack(R.HvRegisterExplicitSuspend, int(suspend), 0), rep=1)

    def hypercall_raw(self, code: int, data: bytes, rep: int = 0) -> Sent:
        return self.send(ROOT, m.HypercallIntercept(self.seq(), control_value(code, rep_count=rep), data, (1,)))

    def exit(self, vp: bytes, msg: m.Message) -> Sent:
        return self.send(vp, msg)

    def enable_hypercalls(self, vp: bytes) -> None:
        """The guest's side: identify itself, then turn the hypercall page on."""
        self.exit(vp, m.MsrIntercept(self.seq(), HvMsr.HV_X64_MSR_GUEST_OS_ID, True, 1 << 63, (1,), REGS))
        self.exit(vp, m.MsrIntercept(self.seq(), HvMsr.HV_X64_MSR_HYPERCALL, True, 0x9F001, (1,), REGS))

    def part(self, pid: int):
        return self.hv.table.get(pid)

    def vp(self, pid: int, index: int = 0):
        return self.hv.table.get(pid).vps[index]


def vp_id(pid: int, index: int = 0) -> bytes:
    return f"vp:{pid}:{index}".encode()


def worker_id(pid: int) -> bytes:
    return f"worker:{pid}".encode()


def stamps(n: int = 1) -> tuple:
    return tuple(range(1000, 1000 + n))
