"""The only module that touches ZeroMQ.

The hypervisor binds one ROUTER (:class:`Router`); workers, VP threads and root clients each
connect a DEALER (:class:`Dealer`).  Every socket has LINGER=0 so nothing blocks at exit, and
every receive takes a timeout.  The ROUTER sets ROUTER_MANDATORY so that a reply to a peer
that has gone raises instead of vanishing silently.  zmq errors become
:class:`~proto.errors.TransportError` subclasses here.

The hot path uses ``send``/``recv`` with raw frames; :meth:`Dealer.request` adds the message
codec and error-reply handling for everything else.
"""

from __future__ import annotations

import os

import zmq

from proto.auth import hello_proof, new_nonce, peer_token
from proto.errors import EndpointClosed, PeerTimeout, Refused, TransportError
from proto.messages import (
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

# Unix-domain socket paths are limited to 107 bytes on Linux.
MAX_IPC_PATH = 107


def ipc_endpoint(path: str) -> str:
    if len(path.encode()) > MAX_IPC_PATH:
        raise TransportError(f"ipc path is {len(path)} bytes, at most {MAX_IPC_PATH}: {path}")
    return f"ipc://{path}"


def _context() -> zmq.Context:
    return zmq.Context.instance()


class Router:
    """The hypervisor's endpoint: ``recv`` gives ``(identity, frame)``."""

    def __init__(self, endpoint: str) -> None:
        self._sock = _context().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._sock.close()
            raise TransportError(f"cannot bind {endpoint}: {e}") from e
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poll = self._sock.poll

    def wait(self, timeout_ms: int) -> bool:
        """True when a frame is ready within ``timeout_ms``."""
        return bool(self._poll(timeout_ms, zmq.POLLIN))

    def recv(self) -> list[bytes]:
        """Routing frame(s) then the message frame; call after :meth:`wait`, never blocks."""
        return self._sock.recv_multipart(zmq.NOBLOCK)

    def send(self, identity: bytes, frame: bytes) -> bool:
        """False when the peer is gone (or cannot take more), so the caller can forget it."""
        try:
            self._sock.send_multipart((identity, frame), zmq.NOBLOCK)
            return True
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise TransportError(f"send failed: {e}") from e

    def offer(self, identity: bytes, frame: bytes) -> str:
        """For best-effort streams (trace events, console output): "sent", "full" when the
        peer is not keeping up (the frame is dropped, the peer kept), or "gone"."""
        try:
            self._sock.send_multipart((identity, frame), zmq.NOBLOCK)
            return "sent"
        except zmq.ZMQError as e:
            if e.errno == zmq.EAGAIN:
                return "full"
            if e.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise TransportError(f"send failed: {e}") from e

    def close(self) -> None:
        self._sock.close(0)


class Dealer:
    """One peer's connection to the hypervisor.  Not thread-safe: one per thread."""

    def __init__(self, endpoint: str, connected_within_ms: int | None = None) -> None:
        """With ``connected_within_ms``, return only once the connection is up (or raise
        PeerTimeout): a worker or partition connects while it may still reach the run's
        socket, then drops to its own uid and speaks on the connection it already has."""
        self._sock = _context().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
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
        self._recv = self._sock.recv
        self._poll = self._sock.poll

    def recv(self, timeout_ms: int) -> bytes:
        if self._closed:
            raise EndpointClosed("endpoint closed")
        if not self._poll(timeout_ms, zmq.POLLIN):
            raise PeerTimeout(f"no answer from {self.endpoint} within {timeout_ms} ms")
        return self._recv(zmq.NOBLOCK)

    def wait(self, timeout_ms: int) -> bool:
        return bool(self._poll(timeout_ms, zmq.POLLIN))

    def recv_ready(self) -> bytes:
        """The frame :meth:`wait` said is there (one poll per message on the hot path, not two)."""
        return self._recv(zmq.NOBLOCK)

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
        return reply

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close(0)


def connect(endpoint: str, role: str, partition: int, vp: int, secret: str | None = None,
            token: str | None = None, timeout_ms: int = 5000, dealer: Dealer | None = None) -> Dealer:
    """Connect and say hello; give the run ``secret`` (root) or a ready ``token``.  A
    ``dealer`` already connected (see :class:`Dealer`) is used instead of a new one."""
    if token is None:
        if secret is None:
            raise ValueError("connect needs the run secret or a peer token")
        token = peer_token(secret, role, partition)
    dealer = dealer if dealer is not None else Dealer(endpoint)
    try:
        dealer.hello(role, partition, vp, token, timeout_ms)
    except BaseException:
        dealer.close()
        raise
    return dealer

