"""The floor: a pure-pyzmq relay with the stack's sockets, payload sizes and hop counts.

Three roles, as in the stack: a client DEALER (the VP), a relay ROUTER (the hypervisor) and
an echo DEALER (the worker); a second echo, ``irqecho``, plays the worker raising an
interrupt: it stamps its frame as it sends it, and the relay passes the frame on unchanged to
the waiting client, which measures the one-way worker → hv → VP time.  The relay does nothing but route: a frame from a "4-hop"
client goes to the echo peer and the echo's answer back to the client (VP → hv → worker →
hv → VP); a frame from a "2-hop" client is answered by the relay itself (VP → hv → VP).
Each hop sends a pre-built frame of the size the stack's message on that hop has, so the
difference between the stack and this floor is the stack's own work: decoding, checking,
dispatching, stamping and encoding.

    python -m benchmarks.floor relay ENDPOINT
    python -m benchmarks.floor echo ENDPOINT
    python -m benchmarks.floor irqecho ENDPOINT
"""

from __future__ import annotations

import sys
import time
from time import perf_counter_ns

import msgpack
import zmq

from proto import messages as m
from proto.exits import Exit

# A stamp as perf_counter_ns gives it on a host that has been up a while: 9 bytes packed.
_T = 10**13


def hop_frames() -> dict[str, bytes]:
    """The stack's frames on each hop, at their real sizes."""
    return {
        "io_intercept": m.IoPortIntercept(1, 0x3FF, 1, False, 0, (_T,)).encode(),
        "port_notify": m.PortNotify(1, 0, 0x3FF, 1, False, 0, (_T,) * 3).encode(),
        "access_complete": m.AccessComplete(1, 0x41, (_T,) * 5).encode(),
        "io_resume": m.VpResume(1, 0, 0x41, 0, 0, 0, b"", (_T,) * 7, 0, (), _T, 0, Exit.IO_PORT.code).encode(),
        "cpuid_intercept": m.CpuidIntercept(1, 0x40000001, 0, (_T,)).encode(),
        "cpuid_resume": m.VpResume(1, 0, 0x31237648, 0, 0, 0, b"", (_T,) * 3, 0, (), _T, 0, Exit.CPUID.code).encode(),
    }


def _socket(kind: int) -> zmq.Socket:
    s = zmq.Context.instance().socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    return s


def relay(endpoint: str) -> None:
    f = hop_frames()
    sock = _socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(endpoint)
    print("READY", flush=True)
    roles: dict[bytes, bytes] = {}
    peers: dict[bytes, bytes] = {}  # echo role → identity
    notify, resume4, resume2 = f["port_notify"], f["io_resume"], f["cpuid_resume"]
    pending = []  # clients waiting for the echo, in order (one request in flight each)
    pending_irq = []
    # Requests that came before their echo peer said hello (it is a separate process, and
    # on a busy machine it can start after the first client): sent when it does.
    early: dict[bytes, int] = {}
    while True:
        ident, frame = sock.recv_multipart()
        role = roles.get(ident)
        if role is None:
            roles[ident] = frame  # the first frame of a peer names its role
            peers[frame] = ident
            for _ in range(early.pop(frame, 0)):
                sock.send_multipart((ident, notify))
            continue
        if role == b"hop4":
            pending.append(ident)
            try:
                sock.send_multipart((peers[b"echo"], notify))
            except KeyError:
                early[b"echo"] = early.get(b"echo", 0) + 1
        elif role == b"echo":
            sock.send_multipart((pending.pop(0), resume4))
        elif role == b"irq":
            pending_irq.append(ident)
            try:
                sock.send_multipart((peers[b"irqecho"], notify))
            except KeyError:
                early[b"irqecho"] = early.get(b"irqecho", 0) + 1
        elif role == b"irqecho":
            sock.send_multipart((pending_irq.pop(0), frame))
        else:
            sock.send_multipart((ident, resume2))


def echo(endpoint: str) -> None:
    complete = hop_frames()["access_complete"]
    sock = _socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"echo")
    while True:
        sock.recv()
        sock.send(complete)


def irqecho(endpoint: str) -> None:
    """Answers each request with an ``assert_interrupt`` stamped as it is sent."""
    sock = _socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"irqecho")
    while True:
        sock.recv()
        sock.send(m.AssertInterrupt(0x20, (perf_counter_ns(), _T)).encode())


class IrqFloorClient:
    """The one-way worker → hv → VP time of a frame the size of ``assert_interrupt``.

    Interrupts come from a timer, with every process idle in between; waking an idle
    process costs far more than handing a frame to a busy one, so the floor waits a tick
    period between samples too."""

    def __init__(self, endpoint: str, period_s: float = 0.01) -> None:
        self.sock = _socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.sock.send(b"irq")
        self.period_s = period_s

    def measure(self, n: int, warmup: int = 20) -> list[int]:
        out = []
        for i in range(n + warmup):
            time.sleep(self.period_s)
            self.sock.send(b"x")
            if not self.sock.poll(5000):
                raise TimeoutError("the floor relay did not answer within 5 s")
            frame = self.sock.recv()
            t = perf_counter_ns()
            if i >= warmup:
                out.append(t - msgpack.unpackb(frame)[2][0])
        return out

    def close(self) -> None:
        self.sock.close(0)


class FloorClient:
    """The VP's side: times each round trip as the VP does."""

    def __init__(self, endpoint: str, hops: int) -> None:
        f = hop_frames()
        self.frame = f["io_intercept"] if hops == 4 else f["cpuid_intercept"]
        self.sock = _socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.sock.send(b"hop4" if hops == 4 else b"hop2")

    def measure(self, n: int, warmup: int = 200) -> list[int]:
        send, recv, poll, frame = self.sock.send, self.sock.recv, self.sock.poll, self.frame
        out = []
        for i in range(n + warmup):
            t0 = perf_counter_ns()
            send(frame)
            if not poll(5000):
                raise TimeoutError("the floor relay did not answer within 5 s")
            recv()
            if i >= warmup:
                out.append(perf_counter_ns() - t0)
        return out

    def close(self) -> None:
        self.sock.close(0)


if __name__ == "__main__":
    {"relay": relay, "echo": echo, "irqecho": irqecho}[sys.argv[1]](sys.argv[2])
