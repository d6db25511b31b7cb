"""The only module that touches ZeroMQ.

The hypervisor binds one ROUTER (:class:`Router`); workers, VP threads and root clients each
connect a DEALER (:class:`Dealer`).  Every socket has LINGER=0 so nothing blocks at exit, and
every receive takes a timeout.  The ROUTER sets ROUTER_MANDATORY so that a reply to a peer
that has gone raises instead of vanishing silently.  zmq errors become
:class:`~proto.errors.TransportError` subclasses here.

The hot path uses ``send``/``recv`` with raw frames; :meth:`Dealer.request` adds the message
codec and error-reply handling for everything else.

What the ROUTER does about peers that do not play by the rules (issue 9):

* **CURVE on tcp.**  A tcp endpoint is a CURVE server with the run's key pair (the root
  makes it, :func:`curve_keypair`; the public half goes in the manifest, the secret half
  reaches the hypervisor by descriptor).  Clients use an ephemeral key pair of their own and
  must know the server's public key.  A ZAP handler (:class:`Gatekeeper`) answers for the
  ``hvstack`` domain and ZAP_ENFORCE_DOMAIN is on, so a client that is not CURVE, or a
  server left without its handler, gets no connection.  CURVE encrypts; it does not say
  who a peer is: the hello's token still does that.  ipc is guarded by the run directory's
  permissions and stays NULL.
* **Bounded memory.**  MAXMSGSIZE makes libzmq refuse a frame by its declared size before
  allocating it (and drop the connection); RCVHWM bounds what one connection can queue.  A
  flooding peer costs at most ``(RCVHWM + 1) × MAX_MSG_BYTES`` until it is read.
* **Bounded connections.**  ZeroMQ cannot close one peer's connection, and an idle
  connection costs a descriptor.  The :class:`Gatekeeper` watches the ROUTER's monitor
  (ACCEPTED / DISCONNECTED carry the descriptor) and knows which descriptors a peer has
  said a good hello on (:meth:`Router.bind`, from the message's ZMQ_SRCFD).  Connections
  without one — *unbound* — are shut down (``shutdown(2)`` on a dup of the descriptor, after
  checking it is still the same socket by inode; libzmq then sees EOF and closes it itself)
  when there are more than MAX_UNBOUND of them, oldest first, or when they have had
  HELLO_DEADLINE_S to say hello.  HANDSHAKE_IVL bounds the ZMTP/CURVE handshake too.  So
  idle connections hold at most MAX_UNBOUND descriptors, and a new one (root's ``status``)
  is the last to go.  Heartbeats would not do: libzmq answers PINGs for an idle client.
* **Peers forgotten.**  When a bound connection goes, its identity is queued for the
  loop (:meth:`Router.disconnected`), which forgets the peer, its trace subscription and
  console watching.
* **Refusals logged at a bounded rate** (:class:`proto.loglimit.LimitedLog`).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import zmq

from proto.auth import check_reply, hello_proof, new_nonce, peer_token
from proto.errors import EndpointClosed, PeerTimeout, Refused, TransportError
from proto.loglimit import LimitedLog
from proto.messages import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ErrorReply,
    Hello,
    HelloChallenge,
    HelloProof,
    HelloReply,
    Message,
    decode,
    encode,
)

# The hot path's flags as plain ints and its polls by zmq_poll: pyzmq's sugar costs about
# 4 µs per Socket.poll (a Poller object each call) and per send_multipart (enum flag
# arithmetic per part) — a tenth of the hypervisor's CPU per message on this host.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)
_zmq_poll = zmq.zmq_poll

log = logging.getLogger("transport")

# Unix-domain socket paths are limited to 107 bytes on Linux.
MAX_IPC_PATH = 107

# ZMQ_MAXMSGSIZE: the largest frame our decoder takes, plus room for CURVE's box.
MAX_MSG_BYTES = MAX_FRAME_BYTES + 4096
ROUTER_RCVHWM = 16  # messages one connection may have queued for the loop
ROUTER_SNDHWM = 1000  # messages queued to one peer (trace and console streams drop beyond)
HANDSHAKE_IVL_MS = 5000  # ZMTP greeting and CURVE handshake
# listen(2) backlog: a connect flood waits to be accepted (and shut down) rather than having
# SYNs dropped, root's with them (which would retry 1 s, then 3 s, later).
LISTEN_BACKLOG = 1024
MAX_UNBOUND = 128  # connections that have not said a good hello
HELLO_DEADLINE_S = 10.0  # after which a connection without a good hello is shut down
ZAP_DOMAIN = b"hvstack"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MONITOR_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def ipc_endpoint(path: str) -> str:
    if len(path.encode()) > MAX_IPC_PATH:
        raise TransportError(f"ipc path is {len(path)} bytes, at most {MAX_IPC_PATH}: {path}")
    return f"ipc://{path}"


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def curve_keypair() -> tuple[str, str]:
    """A CURVE key pair for a run's tcp endpoint: (public, secret), Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def _context() -> zmq.Context:
    return zmq.Context.instance()


@dataclass(slots=True)
class _Connection:
    ino: int  # the socket's inode: a descriptor number is reused, an inode is not
    accepted: float  # time.monotonic()
    identity: bytes | None = None  # set when a good hello came on it
    evicted: bool = False


def _inode(fd: int) -> int | None:
    """The inode of the socket at descriptor ``fd``, or None when it is closed."""
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


class Gatekeeper:
    """The ROUTER's ZAP handler and connection table, on a thread of its own so that a
    handshake never waits for the loop.  It touches only its own sockets and the table
    (under a lock, shared with :meth:`Router.bind`)."""

    def __init__(self, monitor: zmq.Socket, zap: zmq.Socket | None) -> None:
        self._monitor = monitor
        self._zap = zap
        self._lock = threading.Lock()
        self._conns: dict[int, _Connection] = {}
        self.gone: collections.deque[bytes] = collections.deque()  # identities whose connection went
        self.counters = {"handshakes_refused": 0, "connections_evicted": 0, "connections": 0}
        self._log = LimitedLog(log)
        # Two descriptors kept for _shutdown, which must work when every other is taken.
        self._null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._slot = os.dup(self._null)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatekeeper", daemon=True)
        self._thread.start()

    # -- the loop's side ----------------------------------------------------------------------

    def bind(self, fd: int, identity: bytes) -> None:
        """``identity``'s good hello came in on descriptor ``fd``.  The loop may read it
        before this thread has seen the connection's ACCEPTED: then the entry starts here."""
        ino = _inode(fd)
        if ino is None:
            self.gone.append(identity)  # its connection went before the hello was read
            return
        with self._lock:
            conn = self._conns.get(fd)
            if conn is None or conn.ino != ino:
                self._replace(fd, _Connection(ino, time.monotonic()))
                conn = self._conns[fd]
            conn.identity = identity

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if not self._thread.is_alive():
            os.close(self._slot)
            os.close(self._null)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(250))
                if self._zap is not None and self._zap in ready:
                    self._answer_zap()
                while self._monitor.poll(0):
                    self._on_event(self._monitor.recv_multipart())
                self._reap()
                self._evict(time.monotonic())
                self._log.flush()
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                log.error("gatekeeper: %s", e)
            except Exception:  # a bug here must not leave every new connection unanswered
                log.exception("gatekeeper")
                time.sleep(0.1)

    def _answer_zap(self) -> None:
        """RFC 27: CURVE with any (ephemeral) client key is let through to the hello;
        anything else is refused."""
        req = self._zap.recv_multipart()
        req += [b""] * (6 - len(req))  # (libzmq's have 6 or more; a REP socket must answer anyway)
        _version, request_id, domain, address, _identity, mechanism = req[:6]
        creds = req[6:]
        if mechanism == b"CURVE" and domain == ZAP_DOMAIN and len(creds) == 1 and len(creds[0]) == 32:
            self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", b"curve", b""])
            return
        self.counters["handshakes_refused"] += 1
        self._log.warning("refused a %s client from %s (domain %s): CURVE only",
                          mechanism.decode(errors="replace"), address.decode(errors="replace"),
                          domain.decode(errors="replace"))
        self._zap.send_multipart([b"1.0", request_id, b"400", b"CURVE only", b"", b""])

    def _on_event(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or len(frames[0]) != 6:
            return
        event = int.from_bytes(frames[0][:2], "little")
        value = int.from_bytes(frames[0][2:], "little")
        if event == zmq.EVENT_ACCEPTED:
            ino = _inode(value)
            if ino is None:
                return  # already closed
            with self._lock:
                conn = self._conns.get(value)
                if conn is None or conn.ino != ino:  # (else: bound before we saw it)
                    self._replace(value, _Connection(ino, time.monotonic()))
        elif event == zmq.EVENT_DISCONNECTED:
            self._reap()
        elif event & _HANDSHAKE_FAILED:
            self.counters["handshakes_refused"] += 1
            self._log.warning("a handshake failed (%s, %d): not CURVE, a wrong key, or too slow",
                              zmq.Event(event).name, value)

    def _replace(self, fd: int, conn: _Connection | None) -> None:
        """(Under the lock.)  Whatever was at ``fd`` has gone; ``conn`` is there now."""
        old = self._conns.pop(fd, None)
        if old is not None and old.identity is not None:
            self.gone.append(old.identity)
        if conn is not None:
            self._conns[fd] = conn
        self.counters["connections"] = len(self._conns)

    def _reap(self) -> None:
        """Forget the connections whose descriptor is closed or is another socket now.
        The inode is the truth: a DISCONNECTED event is sent just before libzmq closes
        the descriptor, and a descriptor number is soon reused, so every tick checks."""
        with self._lock:
            for fd, conn in list(self._conns.items()):
                if _inode(fd) != conn.ino:
                    self._replace(fd, None)

    def _evict(self, now: float) -> None:
        """Shut down unbound connections beyond MAX_UNBOUND (oldest first) and those past
        HELLO_DEADLINE_S."""
        with self._lock:
            unbound = [(c.accepted, fd, c) for fd, c in self._conns.items() if c.identity is None and not c.evicted]
            unbound.sort(key=lambda t: t[0])
            excess = len(unbound) - MAX_UNBOUND
            victims = [(fd, c) for i, (accepted, fd, c) in enumerate(unbound)
                       if i < excess or now - accepted > HELLO_DEADLINE_S]
            done = 0
            for fd, conn in victims:
                conn.evicted = self._shutdown(fd, conn.ino)  # (if not, it is retried, or reaped)
                done += conn.evicted
            self.counters["connections_evicted"] += done
        if done:
            self._log.warning("shut down %d connection(s) without a hello (%d unbound at most, %g s to say hello)",
                              done, MAX_UNBOUND, HELLO_DEADLINE_S)

    def _shutdown(self, fd: int, ino: int) -> bool:
        """shutdown(2) the socket at ``fd`` if it is still the one accepted (same inode);
        libzmq, which owns the descriptor, then reads EOF and closes it.  The socket is
        looked at through a descriptor reserved for this (``dup2`` onto it), not a new one:
        this runs when the process may have none left."""
        slot = self._slot
        try:
            os.dup2(fd, slot, inheritable=False)
        except OSError:
            return False
        try:
            if os.fstat(slot).st_ino != ino:
                return False
            s = socket.socket(fileno=slot)
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.detach()
            return True
        except OSError:
            return False
        finally:
            os.dup2(self._null, slot, inheritable=False)  # let go of the socket


class _TimedReceive:
    """The first frame of a message received within a timeout, held for the caller's next
    receive: a wait *is* the receive, blocking for at most the timeout (ZMQ_RCVTIMEO), as
    the floor's relay blocks in its receive.  A zmq_poll and then a non-blocking receive
    cost a loop three more poll(2) calls per message (strace, 07:02 UTC) and a pyzmq poll
    call.  A look (``timeout_ms`` 0: a VP's preemption point) polls instead, which is
    cheaper than an empty receive's zmq.Again (~1.5 against ~6 µs)."""

    def __init__(self, sock, poll_items) -> None:
        self._sock, self._poll_items, self._recv = sock, poll_items, sock.recv
        self.held: bytes | None = None
        self._rcvtimeo = -1  # ZMQ_RCVTIMEO as last set (libzmq's default: block)

    def wait(self, timeout_ms: int) -> bool:
        """True when a frame is ready within ``timeout_ms`` (received into :attr:`held`,
        unless this was a look)."""
        if self.held is not None:
            return True
        if timeout_ms <= 0:
            return bool(_zmq_poll(self._poll_items, 0))
        if timeout_ms != self._rcvtimeo:
            self._sock.setsockopt(_RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        try:
            self.held = self._recv(0)
        except zmq.Again:
            return False
        return True

    def take(self) -> bytes:
        """The held frame, or the next one at once (after a look said one is there).
        (Router.recv writes this out: keep the two alike.)"""
        frame, self.held = self.held, None
        return self._recv(_NOBLOCK) if frame is None else frame


class Router:
    """The hypervisor's endpoint: ``recv`` gives ``(identity, frame)``.  A tcp endpoint
    needs the run's CURVE secret key (Z85)."""

    def __init__(self, endpoint: str, curve_secret_key: str | None = None) -> None:
        # A context of its own: the ZAP endpoint is per context, and so are its threads.
        self._ctx = zmq.Context()
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_BYTES)
        sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        sock.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        self.public_key: str | None = None
        zap = None
        try:
            if is_tcp(endpoint):
                if not curve_secret_key:
                    raise TransportError(f"a tcp endpoint is CURVE only: {endpoint} needs the run's server key")
                secret = curve_secret_key.encode()
                self.public_key = zmq.curve_public(secret).decode()
                zap = self._ctx.socket(zmq.REP)
                zap.setsockopt(zmq.LINGER, 0)
                zap.bind(ZAP_ENDPOINT)
                sock.curve_server = True
                sock.curve_secretkey = secret
                sock.curve_publickey = self.public_key.encode()
                sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.bind(endpoint)
        except (zmq.ZMQError, ValueError) as e:
            if zap is not None:
                zap.close(0)
            sock.close(0)
            self._ctx.term()
            raise TransportError(f"cannot bind {endpoint}: {e}") from e
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._gate = Gatekeeper(monitor, zap)
        self._monitor, self._zap = monitor, zap
        self._poll_items = [(sock, _POLLIN)]
        self._recv = sock.recv
        self._send = sock.send
        self._first = _TimedReceive(sock, self._poll_items)  # a message's first part: wait() receives it
        # wait(timeout_ms) -> bool: a frame is ready within the timeout (its first part
        # received already).  Bound, not wrapped: it is on every message's path.
        self.wait = self._first.wait
        self._bound: set[bytes] = set()  # identities a good hello was said on
        self._last_src: tuple[bytes, int] | None = None  # (identity, descriptor) of the last unbound frame

    @property
    def counters(self) -> dict[str, int]:
        """handshakes_refused (not CURVE, a wrong key, too slow, or shut down before the
        handshake ended), connections_evicted (shut down without a good hello),
        connections (open now)."""
        return self._gate.counters

    def recv(self) -> list[bytes]:
        """Routing frame(s) then the message frame; call after :meth:`wait`, never blocks.
        A frame from a peer not yet bound also gives the descriptor it came on
        (ZMQ_SRCFD) for :meth:`bind`."""
        recv = self._recv
        # _TimedReceive.take(), written out: a call less per message (~400 instructions).
        first = self._first
        identity = first.held
        if identity is None:
            identity = recv(_NOBLOCK)
        else:
            first.held = None
        # Without copy, a frame says whether more parts follow (``more``): a getsockopt
        # (ZMQ_RCVMORE) per message cost more than the frame object (1.15 against 0.7 µs).
        frame = recv(_NOBLOCK, copy=False)
        if identity not in self._bound:
            self._last_src = (identity, frame.get(zmq.SRCFD))
        frames = [identity, frame.bytes]
        while frame.more:
            frame = recv(_NOBLOCK, copy=False)
            frames.append(frame.bytes)
        return frames

    def bind(self, identity: bytes) -> None:
        """The peer ``identity`` said a good hello (in the frame just received): its
        connection is no longer idle, and its going will be reported."""
        src = self._last_src
        if src is None or src[0] != identity:
            return
        self._bound.add(identity)
        self._gate.bind(src[1], identity)

    def disconnected(self) -> list[bytes]:
        """Bound peers whose connection has gone since the last call."""
        gone = self._gate.gone
        out = []
        while gone:
            identity = gone.popleft()
            self._bound.discard(identity)
            out.append(identity)
        return out

    def send(self, identity: bytes, frame: bytes) -> bool:
        """False when the peer is gone (or cannot take more), so the caller can forget it."""
        try:
            # The routing frame then the message: what send_multipart does, without its
            # per-part overhead.  Once the first part is queued the second cannot fail.
            self._send(identity, _SNDMORE_NOBLOCK)
            self._send(frame, _NOBLOCK)
            return True
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise TransportError(f"send failed: {e}") from e

    def offer(self, identity: bytes, frame: bytes) -> str:
        """For best-effort streams (trace events, console output): "sent", "full" when the
        peer is not keeping up (the frame is dropped, the peer kept), or "gone"."""
        try:
            self._send(identity, _SNDMORE_NOBLOCK)
            self._send(frame, _NOBLOCK)
            return "sent"
        except zmq.ZMQError as e:
            if e.errno == zmq.EAGAIN:
                return "full"
            if e.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise TransportError(f"send failed: {e}") from e

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._gate.close()
        for s in (self._monitor, self._zap, self._sock):
            if s is not None:
                s.close(0)
        self._ctx.term()


class Dealer:
    """One peer's connection to the hypervisor.  Not thread-safe: one per thread."""

    def __init__(self, endpoint: str, server_key: str | None = None,
                 connected_within_ms: int | None = None) -> None:
        """A tcp endpoint needs the server's CURVE public key (the manifest's
        ``server_key``); this connection then uses an ephemeral key pair of its own.  With
        ``connected_within_ms``, return only once the connection is up (or raise
        PeerTimeout): a worker or partition connects while it may still reach the run's
        socket, then drops to its own uid and speaks on the connection it already has."""
        if is_tcp(endpoint) and not server_key:
            raise TransportError(f"{endpoint} is CURVE only: connecting needs the run's server key")
        self._sock = _context().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if server_key and is_tcp(endpoint):  # (ipc is NULL: the run directory guards it)
            try:
                self._sock.curve_serverkey = server_key.encode()
                self._sock.curve_publickey, self._sock.curve_secretkey = zmq.curve_keypair()
            except zmq.ZMQError as e:
                self._sock.close(0)
                raise TransportError(f"bad server key for {endpoint}: {e}") from e
        monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED) if connected_within_ms else None
        self._sock.connect(endpoint)
        if monitor is not None:
            up = bool(monitor.poll(connected_within_ms, zmq.POLLIN))
            self._sock.disable_monitor()
            monitor.close(0)
            if not up:
                self._sock.close(0)
                raise PeerTimeout(f"not connected to {endpoint} within {connected_within_ms} ms")
        self.endpoint = endpoint
        self._closed = False
        # Bound methods kept as attributes: the VP hot path calls them directly.
        self.send = self._sock.send
        self._poll_items = [(self._sock, _POLLIN)]
        self._ready = _TimedReceive(self._sock, self._poll_items)
        # wait(timeout_ms) -> bool: a frame is ready within the timeout (received by it);
        # recv_ready() -> bytes: that frame.  Bound, not wrapped: a VP's every exit waits.
        self.wait, self.recv_ready = self._ready.wait, self._ready.take

    def recv(self, timeout_ms: int) -> bytes:
        if self._closed:
            raise EndpointClosed("endpoint closed")
        if not self.wait(timeout_ms):
            raise PeerTimeout(f"no answer from {self.endpoint} within {timeout_ms} ms")
        return self.recv_ready()

    def request(self, msg: Message, timeout_ms: int = 5000) -> Message:
        """Send ``msg`` and return the decoded reply; an ``error_reply`` raises Refused."""
        self.send(encode(msg))
        reply = decode(self.recv(timeout_ms))
        if isinstance(reply, ErrorReply):
            raise Refused(reply.code, reply.message)
        return reply

    def hello(self, role: str, partition: int, vp: int, token: str, timeout_ms: int = 5000) -> HelloReply:
        """Say who this is and prove it on this connection (:mod:`proto.auth`): the key
        (``token``) never leaves the process, only a MAC over both sides' nonces."""
        session = os.urandom(8).hex()
        hello = Hello(PROTOCOL_VERSION, role, partition, vp, os.getpid(), session, new_nonce())
        challenge = self.request(hello, timeout_ms)
        if not isinstance(challenge, HelloChallenge):
            raise TransportError(f"expected hello_challenge, got {challenge.NAME}")
        mac = hello_proof(token, role, partition, vp, hello.pid, session, hello.nonce, challenge.nonce)
        reply = self.request(HelloProof(mac), timeout_ms)
        if not isinstance(reply, HelloReply):
            raise TransportError(f"expected hello_reply, got {reply.NAME}")
        check_reply(token, role, partition, vp, hello.pid, session, hello.nonce, challenge.nonce,
                    reply.peer, reply.session, reply.mac)  # the hypervisor proves the secret too
        return reply

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.held = None
            self._sock.close(0)


def connect(endpoint: str, role: str, partition: int, vp: int, secret: str | None = None,
            token: str | None = None, timeout_ms: int = 5000, server_key: str | None = None,
            dealer: Dealer | None = None) -> Dealer:
    """Connect and say hello; give the run ``secret`` (root) or a ready ``token``, and for
    tcp the server's CURVE public key.  A ``dealer`` already connected (see
    :class:`Dealer`) is used instead of a new one."""
    if token is None:
        if secret is None:
            raise ValueError("connect needs the run secret or a peer token")
        token = peer_token(secret, role, partition)
    dealer = dealer if dealer is not None else Dealer(endpoint, server_key)
    try:
        dealer.hello(role, partition, vp, token, timeout_ms)
    except PeerTimeout as e:
        dealer.close()
        if is_tcp(endpoint):
            raise PeerTimeout(f"{e} (over tcp only a client with the run's server key is answered)") from e
        raise
    except BaseException:
        dealer.close()
        raise
    return dealer


def nobody_listens(endpoint: str, timeout_s: float = 1.0) -> bool:
    """Whether a tcp ``endpoint``'s host refuses the connection (a RST: its host is up and
    no process listens on that port); False if something accepts it or nothing answers in
    ``timeout_s`` (an unreachable host is not a refusal)."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False
