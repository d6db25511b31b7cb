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

    python -m benchmarks.floor relay ENDPOINT [decode]
    python -m benchmarks.floor echo ENDPOINT [KEY [decode]]
    python -m benchmarks.floor irqecho ENDPOINT
    python -m benchmarks.floor timer ENDPOINT [PERIOD_US]
    python -m benchmarks.floor count ENDPOINT HOPS [PACE [decode]]   (the CPU floor's client: benchmarks/cpu.py)
    python -m benchmarks.floor chain ENDPOINT      (with vspchain, guestchain: the synthetic NIC)

``decode``: the *decoding floor* — each process also unpacks every frame it receives and
packs every frame it sends with msgpack (:class:`Codec`), as any stack in Python must at
least do with a message; the relay, echo and client otherwise do the same.  The stack's CPU
per round trip against it says what its own work costs beyond that minimum.

``timer`` is the local APIC timer's floor, a server of its own: it waits as the
hypervisor's loop does (a poll with a timeout) for a deadline a period after its client
"halted", then sends the client one resume-sized frame (one hop, hv → VP).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from time import perf_counter_ns

import msgpack
import zmq

from proto import messages as m
from proto.exits import Exit

# How often the busy interrupt floor's client looks at its socket: the VP's NOTIFY_POLL_NS
# (partitions/vp.py), the interval of its preemption points' looks for a posted interrupt.
LOOK_NS = 50_000

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


class Codec:
    """The decoding floor's work per message (``decode`` given): a received frame is
    unpacked as ``proto.messages.decode`` unpacks it (no field checks, no message object),
    and a frame to send is packed from its values (the pre-built frame, unpacked once), as
    ``encode`` packs a message's fields.  Without ``decode``, frames pass as bytes."""

    def __init__(self, decode: str = "") -> None:
        self.on = decode == "decode"

    def frame(self, frame: bytes):
        """A function that gives ``frame`` to send: packed anew each time, or as it is."""
        if not self.on:
            return lambda: frame
        values, pack = msgpack.unpackb(frame, use_list=False), msgpack.packb
        return lambda: pack(values)

    def received(self, frame: bytes) -> None:
        if self.on:
            msgpack.unpackb(frame, use_list=False, raw=False, strict_map_key=False)


def _socket(kind: int) -> zmq.Socket:
    s = zmq.Context.instance().socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    return s


def _send_to(sock: zmq.Socket, ident: bytes, frame: bytes) -> None:
    """A ROUTER_MANDATORY send to a peer that may have gone: at the floor's end its clients
    leave while their last answers are on the way (a bench once printed the relay's
    "Host unreachable" traceback)."""
    try:
        sock.send_multipart((ident, frame))
    except zmq.ZMQError as e:
        if e.errno != zmq.EHOSTUNREACH:
            raise


def relay(endpoint: str, decode: str = "") -> None:
    sock = _socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(endpoint)
    print("READY", flush=True)
    serve_relay(sock, decode)


def serve_relay(sock, decode: str = "") -> None:
    """The relay's loop on its bound ROUTER ``sock`` — a socket of its own, so that ``bench
    --instructions`` drives this very code on a fake one (benchmarks/instructions.py)."""
    f = hop_frames()
    codec = Codec(decode)
    received = codec.received
    roles: dict[bytes, tuple[bytes, bytes]] = {}  # identity → (kind, its echo peer's role)
    peers: dict[bytes, bytes] = {}  # echo role → identity
    notify, resume4, resume2 = codec.frame(f["port_notify"]), codec.frame(f["io_resume"]), codec.frame(f["cpuid_resume"])
    # Clients waiting for each echo peer, in order (one request in flight each).  A client
    # "hop4" uses the echo "echo"; with --scale, "hop4:K" uses "echo:K" (as each partition
    # has its own worker).
    pending: dict[bytes, list[bytes]] = {}
    # Requests that came before their echo peer said hello (it is a separate process, and
    # on a busy machine it can start after the first client): sent when it does.
    early: dict[bytes, int] = {}
    while True:
        ident, frame = sock.recv_multipart()
        role = roles.get(ident)
        if role is None:  # the first frame of a peer names its role
            kind = frame.split(b":")[0]
            target = {b"hop4": b"echo" + frame[4:], b"irq": b"irqecho"}.get(kind, frame)
            roles[ident] = (kind, target)
            peers[frame] = ident
            pending.setdefault(target, [])
            for _ in range(early.pop(frame, 0)):
                _send_to(sock, ident, notify())
            continue
        received(frame)
        kind, target = role
        if kind == b"hop4" or kind == b"irq":
            pending[target].append(ident)
            try:
                _send_to(sock, peers[target], notify())
            except KeyError:
                early[target] = early.get(target, 0) + 1
        elif kind == b"echo":
            _send_to(sock, pending[target].pop(0), resume4())
        elif kind == b"irqecho":
            _send_to(sock, pending[target].pop(0), frame)
        else:
            _send_to(sock, ident, resume2())


def echo(endpoint: str, key: str = "", decode: str = "") -> None:
    sock = _socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"echo" + (b":" + key.encode() if key else b""))
    serve_echo(sock, decode)


def serve_echo(sock, decode: str = "") -> None:
    """The echo's loop on its connected DEALER ``sock`` (as :func:`serve_relay`)."""
    codec = Codec(decode)
    complete, received = codec.frame(hop_frames()["access_complete"]), codec.received
    while True:
        received(sock.recv())
        sock.send(complete())


def irqecho(endpoint: str, period_us: str = "10000") -> None:
    """Answers each request, a tick period later (the PIT's 100 Hz by default), with an
    ``assert_interrupt`` stamped as it is sent: as in the stack, the relay and the client
    have then been idle for that period when the frame reaches them."""
    period_s = int(period_us) / 1e6
    sock = _socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"irqecho")
    while True:
        sock.recv()
        time.sleep(period_s)
        sock.send(m.AssertInterrupt(0x20, (perf_counter_ns(), _T)).encode())


def start_floor(roles: list[str], server: tuple[str, ...] = ("relay",), peer_args: tuple[str, ...] = ()
                ) -> tuple[subprocess.Popen, list[subprocess.Popen], str, tempfile.TemporaryDirectory]:
    """A relay (or another ``server``: ``("timer", PERIOD_US)``, ``("relay", "decode")``) and
    one peer per role (``echo``, ``irqecho``; ``peer_args`` after its endpoint) on an ipc
    endpoint in a temporary directory: (server, peers, endpoint, directory); :func:`stop_floor`
    ends them."""
    from root import REPO
    from root.procs import die_with_parent

    d = tempfile.TemporaryDirectory(prefix="hvfloor")
    endpoint = f"ipc://{d.name}/floor.sock"
    cmd = [sys.executable, "-m", "benchmarks.floor"]
    # In sessions of their own, as the run's processes are: a terminal's Ctrl-C reaches
    # the bench alone, which ends them (no traceback from a relay).
    relay = subprocess.Popen([*cmd, server[0], endpoint, *server[1:]], cwd=REPO, stdout=subprocess.PIPE,
                             preexec_fn=die_with_parent, start_new_session=True)
    peers: list[subprocess.Popen] = []
    try:
        if relay.stdout.readline().strip() != b"READY":
            raise RuntimeError("the floor relay did not start")
        peers = [subprocess.Popen([*cmd, role, endpoint, *peer_args], cwd=REPO, preexec_fn=die_with_parent,
                                  start_new_session=True) for role in roles]
        if peers:
            time.sleep(0.3)  # let the echo peers register before the first request
    except BaseException:
        stop_floor(relay, peers, d)
        raise
    return relay, peers, endpoint, d


def stop_floor(relay: subprocess.Popen, peers: list[subprocess.Popen], d: tempfile.TemporaryDirectory) -> None:
    for p in (*peers, relay):
        p.kill()
        p.wait()
    if relay.stdout is not None:
        relay.stdout.close()
    d.cleanup()


def timer(endpoint: str, period_us: str = "1000") -> None:
    """The local APIC timer's floor: a ROUTER (the hypervisor's loop) that waits with a
    timeout until a deadline a period after its client last asked (the VP's HLT), then
    sends it one resume-sized frame stamped as it goes (one hop, hv → VP)."""
    period_ms = int(period_us) / 1000
    resume = hop_frames()["cpuid_resume"]
    sock = _socket(zmq.ROUTER)
    sock.bind(endpoint)
    print("READY", flush=True)
    while True:
        ident, _ = sock.recv_multipart()  # "halted": arm the timer
        deadline = time.monotonic() + period_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if sock.poll(max(1, int(left * 1000 + 0.999))):  # the loop's wait, as the hv's
                sock.recv_multipart()  # (nothing else is sent; drained)
        sock.send_multipart((ident, msgpack.packb([perf_counter_ns()]), resume))


class TimerFloorClient:
    """The VP's side of :func:`timer`: "halt", then time the frame that wakes it."""

    def __init__(self, endpoint: str) -> None:
        self.sock = _socket(zmq.DEALER)
        self.sock.connect(endpoint)

    def measure(self, n: int, warmup: int = 20) -> list[int]:
        out = []
        for i in range(n + warmup):
            self.sock.send(b"hlt")
            if not self.sock.poll(5000):
                raise TimeoutError("the floor's timer did not fire within 5 s")
            stamp, _ = self.sock.recv_multipart()
            t = perf_counter_ns()
            if i >= warmup:
                out.append(t - msgpack.unpackb(stamp)[0])
        return out

    def close(self) -> None:
        self.sock.close(0)


class IrqFloorClient:
    """The one-way worker → hv → VP time of a frame the size of ``assert_interrupt``.

    Interrupts come from a timer, with every process idle in between; waking an idle
    process costs far more than handing a frame to a busy one.  So the interrupt source
    (``irqecho``) waits a tick period after each request before it sends, and the relay
    and this client, like the hypervisor and the VP in HLT, have been idle that long when
    the measured hops reach them."""

    def __init__(self, endpoint: str, busy: bool = False) -> None:
        self.sock = _socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.sock.send(b"irq")
        self.busy = busy

    def _computing(self, timeout_s: float = 5.0) -> None:
        """``busy``: the floor of an interrupt posted to a VP executing guest code — this
        process computes (a Python loop) and looks at its socket every LOOK_NS, as
        the VP does at its preemption points, instead of sleeping in a poll: on a shared
        host a computing thread runs in the host's time slices, and its ZeroMQ I/O thread
        waits for a core, which the idle client's floor did not pay."""
        poll, deadline = self.sock.poll, perf_counter_ns() + int(timeout_s * 1e9)
        while not poll(0):
            look = perf_counter_ns() + LOOK_NS
            while (now := perf_counter_ns()) < look:
                pass
            if now > deadline:
                raise TimeoutError("the floor relay did not answer within 5 s")

    def measure(self, n: int, warmup: int = 20) -> list[int]:
        out = []
        for i in range(n + warmup):
            self.sock.send(b"x")
            if self.busy:
                self._computing()
            elif not self.sock.poll(5000):
                raise TimeoutError("the floor relay did not answer within 5 s")
            frame = self.sock.recv()
            t = perf_counter_ns()
            if i >= warmup:
                out.append(t - msgpack.unpackb(frame)[2][0])
        return out

    def close(self) -> None:
        self.sock.close(0)


class FloorClient:
    """The VP's side: times each round trip as the VP does.  ``key``: which echo peer a
    4-hop client's requests go to (``echo:KEY``; by default ``echo``)."""

    def __init__(self, endpoint: str, hops: int, key: str = "") -> None:
        f = hop_frames()
        self.frame = f["io_intercept"] if hops == 4 else f["cpuid_intercept"]
        self.sock = _socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.sock.send((b"hop4" + (b":" + key.encode() if key else b"")) if hops == 4 else b"hop2")

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


def scale_client(endpoint: str, key: str) -> None:
    """One of --scale's clients (a process, as each partition is): 4-hop round trips to
    ``echo:KEY`` until its standard input ends.  Each SIGUSR1 starts a window (it answers
    ``{}``) or ends the one under way: one JSON line of the window's round trips and
    percentiles.  SIGUSR2 pauses it after the round trip under way (it answers ``PAUSED``)
    until a line comes on its standard input: the stack's windows then have the cores.
    (Not SIGSTOP: a round trip stopped in its poll times out when it continues.)"""
    import json
    import signal

    client = FloorClient(endpoint, 4, key)
    send, recv, poll, frame = client.sock.send, client.sock.recv, client.sock.poll, client.frame
    window: dict = {"samples": None, "pause": False}

    def on_usr1(signum, frame_):
        if window["samples"] is None:
            window["samples"] = []
            print("{}", flush=True)
            return
        samples, window["samples"] = sorted(window["samples"]), None
        pct = (lambda p: samples[min(len(samples) - 1, len(samples) * p // 100)] if samples else 0)
        print(json.dumps({"n": len(samples), "p50_ns": pct(50), "p99_ns": pct(99)}), flush=True)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, lambda *_: window.update(pause=True))
    print("READY", flush=True)
    while True:
        t0 = perf_counter_ns()
        send(frame)
        if not poll(5000):
            raise TimeoutError("the floor relay did not answer within 5 s")
        recv()
        samples = window["samples"]
        if samples is not None:
            samples.append(perf_counter_ns() - t0)
        if window["pause"]:
            window["pause"] = False
            print("PAUSED", flush=True)
            if not sys.stdin.readline():
                break
    client.close()


def counting_client(endpoint: str, hops: str, pace: str = "0", decode: str = "") -> None:
    """The CPU floor's client (a process, as the partition is, so that its ZeroMQ I/O thread
    is charged as the partition's is): ``hops``-hop round trips as fast as they come back,
    or at most ``pace`` a second (sleeping until each one's turn); each SIGUSR1 prints the
    round trips made so far, one line; SIGUSR2 pauses it after the round trip under way
    (it prints ``PAUSED``) until a line comes on its standard input.  ``decode``: each
    request packed, each answer unpacked (:class:`Codec`)."""
    client = FloorClient(endpoint, int(hops))
    count_round_trips(client.sock, client.frame, pace, decode)


def count_round_trips(sock, request: bytes, pace: str = "0", decode: str = "") -> None:
    """The counting client's loop on its connected DEALER ``sock``, ``request`` its frame
    (as :func:`serve_relay`)."""
    import signal

    codec = Codec(decode)
    send, recv, poll, frame = sock.send, sock.recv, sock.poll, codec.frame(request)
    received = codec.received
    made = 0
    pause = [False]  # (a list: the handler sets it, the loop tests it in one load)
    signal.signal(signal.SIGUSR1, lambda *_: print(made, flush=True))
    signal.signal(signal.SIGUSR2, lambda *_: pause.__setitem__(0, True))
    period = 1 / float(pace) if float(pace) > 0 else 0.0
    turn = time.perf_counter()
    print("READY", flush=True)
    while True:
        if period:
            turn = max(turn + period, time.perf_counter() - period)  # no catching up after a stall
            if (ahead := turn - time.perf_counter()) > 0:
                time.sleep(ahead)
        send(frame())
        if not poll(5000):
            raise TimeoutError("the floor relay did not answer within 5 s")
        received(recv())
        made += 1
        if pause[0]:
            pause[0] = False
            print("PAUSED", flush=True)
            if not sys.stdin.readline():
                return
            turn = time.perf_counter()


# -- the synthetic NIC's floor: partition → hv → VSP → hv → partition -------------------------
#
# A ping between two partitions over the root's switch crosses, each way, four hops:
# guest A's HvCallSignalEvent (A → hv, a hypercall exit), the hypervisor's event to the VSP
# (hv → vsp, synic_event_to_root), the VSP's signal of B's channel after its switch wrote
# B's ring (vsp → hv, synic_signal), and the hypervisor waking B's VP for its SINT (hv → B,
# a resume).  The ring writes are shared memory and cost no hop.  ``chain`` is the relay of
# that shape (the hypervisor's ROUTER), ``vspchain`` the VSP (a DEALER), ``guestchain``
# partition B answering (a DEALER); :class:`ChainClient` is partition A.  A frame's first
# part names where it goes; the relay sends on a pre-built frame of that hop's size.


def chain_frames() -> dict[bytes, bytes]:
    """The stack's frame on each hop of the chain, by where it goes."""
    from proto import synic_messages as sm

    signal_event = m.HypercallIntercept(1, 0x1005D, bytes(16), (_T,)).encode()  # fast HvCallSignalEvent
    return {
        b"hv": signal_event,
        b"vsp": sm.SynicEventToRoot(1, 0, 0x10010, 0).encode(),
        b"signal": sm.SynicSignal(2, 0, 2, 16).encode(),
        b"guest": hop_frames()["io_resume"],  # the resume that delivers the SINT
    }


def chain(endpoint: str) -> None:
    """The relay: ``[dest, tag, payload]`` from a peer goes on to the peer registered as
    ``dest`` as ``[tag, payload]`` — the payload as sent (the streaming floor's 1 KiB)
    when it is not empty, else the pre-built frame of that hop."""
    sock = _socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(endpoint)
    print("READY", flush=True)
    frames = chain_frames()
    to_vsp, to_guest = frames[b"vsp"], frames[b"guest"]
    peers: dict[bytes, bytes] = {}
    early: list[tuple[bytes, bytes, bytes]] = []
    while True:
        ident, dest, tag, payload = sock.recv_multipart()
        if dest == b"hello":
            peers[tag] = ident
            for d, t, p in [e for e in early if e[0] == tag]:
                early.remove((d, t, p))
                sock.send_multipart((ident, t, p))
            continue
        frame = payload or (to_vsp if dest == b"vsp" else to_guest)
        if dest in peers:
            try:
                sock.send_multipart((peers[dest], tag, frame))
            except zmq.ZMQError:  # that peer is gone (the client, at the end)
                pass
        else:
            early.append((dest, tag, frame))


def _chain_peer(endpoint: str, role: bytes) -> zmq.Socket:
    sock = _socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send_multipart((b"hello", role, b""))
    return sock


def vspchain(endpoint: str) -> None:
    """The VSP: an event for ``tag``'s channel → a signal to partition ``tag`` (its ring
    written); a streaming frame (``tag`` ``s``) → the frame on to B and its completion
    (``c``) back to A, as netvsp's switch and send completion do."""
    sock = _chain_peer(endpoint, b"vsp")
    signal = chain_frames()[b"signal"]
    while True:
        tag, payload = sock.recv_multipart()
        if tag == b"s":
            sock.send_multipart((b"b", b"s", payload))
            sock.send_multipart((b"a", b"c", signal))
        else:
            sock.send_multipart((tag, tag, signal))


def guestchain(endpoint: str) -> None:
    """Partition B: answers each ping through the VSP to A; counts streamed frames."""
    sock = _chain_peer(endpoint, b"b")
    event = chain_frames()[b"hv"]
    while True:
        tag, _ = sock.recv_multipart()
        if tag == b"b":
            sock.send_multipart((b"vsp", b"a", event))


class ChainClient:
    """Partition A: ping round trips (8 hops) and streaming frames/s (4 hops each, at most
    ``window`` frames waiting for their completion, as netvsc's transmit pages)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = _chain_peer(endpoint, b"a")
        self.event = chain_frames()[b"hv"]

    def ping(self, n: int, warmup: int = 50) -> list[int]:
        send, recv, poll, event = self.sock.send_multipart, self.sock.recv_multipart, self.sock.poll, self.event
        out = []
        for i in range(n + warmup):
            t0 = perf_counter_ns()
            send((b"vsp", b"b", event))
            if not poll(5000):
                raise TimeoutError("the chain floor did not answer within 5 s")
            recv()
            if i >= warmup:
                out.append(perf_counter_ns() - t0)
        return out

    def stream(self, seconds: float, size: int = 1024, window: int = 8) -> float:
        """Frames/s of ``size`` bytes A → hv → vsp → hv → B, every one signalled."""
        frame = bytes(size)
        sent = done = 0
        t0 = perf_counter_ns()
        end = t0 + int(seconds * 1e9)
        while perf_counter_ns() < end:
            while sent - done < window:
                self.sock.send_multipart((b"vsp", b"s", frame))
                sent += 1
            if not self.sock.poll(5000):
                raise TimeoutError("the chain floor did not complete a frame within 5 s")
            self.sock.recv_multipart()
            done += 1
        return done / ((perf_counter_ns() - t0) / 1e9)

    def close(self) -> None:
        self.sock.close(0)


def measure_chain(samples: int, stream_s: float) -> dict:
    """The synthetic NIC's floor: ping round trips (ns) and streaming frames/s."""
    server, peers, endpoint, d = start_floor(["vspchain", "guestchain"], ("chain",))
    try:
        client = ChainClient(endpoint)
        try:
            return {"ping_ns": client.ping(samples), "stream_fps": client.stream(stream_s)}
        finally:
            client.close()
    finally:
        stop_floor(server, peers, d)


if __name__ == "__main__":
    {"relay": relay, "echo": echo, "irqecho": irqecho, "timer": timer,
     "client": scale_client, "count": counting_client, "chain": chain, "vspchain": vspchain,
     "guestchain": guestchain}[sys.argv[1]](*sys.argv[2:])
