"""proto.transport's guards, on real sockets in this process: CURVE on tcp (and only with
it), frames over MAXMSGSIZE dropped before they are buffered, idle connections shut down,
gone peers reported.  Only 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from proto import transport
from proto.errors import TransportError
from proto.transport import Dealer, Router, curve_keypair
from tests.support import send_or_refused, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys():
    return curve_keypair()


@pytest.fixture
def tcp_router(keys):
    router = Router("tcp://127.0.0.1:0", keys[1])
    yield router
    router.close()


def recv_one(router: Router, timeout_ms: int = 3000) -> list[bytes] | None:
    return router.recv() if router.wait(timeout_ms) else None


def closed_by_peer(s: socket.socket, timeout: float = 3.0) -> bool:
    """Read (the server's greeting) until EOF: True if the server closed within ``timeout``."""
    s.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if s.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def port_of(router: Router) -> int:
    return int(router.endpoint.rsplit(":", 1)[1])


def test_tcp_is_curve_only_on_both_ends(keys):
    with pytest.raises(TransportError, match="CURVE"):
        Router("tcp://127.0.0.1:0")
    with pytest.raises(TransportError, match="server key"):
        Dealer("tcp://127.0.0.1:1")


def test_a_curve_client_gets_through_and_a_plain_one_is_refused_and_counted(tcp_router, keys):
    assert tcp_router.public_key == keys[0]
    good = Dealer(tcp_router.endpoint, keys[0])
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)
        plain.linger = 0
        plain.sndtimeo = 1000
        plain.connect(tcp_router.endpoint)
        send_or_refused(plain, b"plain")
        wrong = Dealer(tcp_router.endpoint, curve_keypair()[0])  # the wrong server key
        wrong._sock.sndtimeo = 1000
        send_or_refused(wrong._sock, b"wrong")
        good.send(b"curve")
        frames = recv_one(tcp_router)
        assert frames is not None and frames[1] == b"curve"
        assert recv_one(tcp_router, 1000) is None, "only the CURVE client with the right key got through"
        wait_until(lambda: tcp_router.counters["handshakes_refused"] >= 2, 5.0, what="two refusals counted")
        wrong.close()
    finally:
        good.close()
        ctx.destroy(0)


def test_a_frame_over_maxmsgsize_is_dropped_before_it_is_buffered(tcp_router, keys):
    d = Dealer(tcp_router.endpoint, keys[0])
    try:
        d.send(b"x" * (transport.MAX_MSG_BYTES + 1))
        assert recv_one(tcp_router, 1000) is None
        # The connection was dropped; the DEALER reconnects and a normal frame arrives.
        d.send(b"small")
        frames = recv_one(tcp_router, 5000)
        assert frames is not None and frames[1] == b"small"
    finally:
        d.close()


def test_a_peer_the_loop_does_not_read_can_queue_only_a_few_frames(tcp_router, keys):
    """A flooding peer waits in its own queue (backpressure), not in the hypervisor's: with
    the loop not reading, 1 MiB frames stop being taken after RCVHWM (+ what the kernel's
    socket buffers hold), not after ZeroMQ's default of 1000."""
    d = Dealer(tcp_router.endpoint, keys[0])
    d._sock.sndhwm = 1
    frame = zmq.Frame(b"x" * transport.MAX_FRAME_BYTES)
    taken, deadline = 0, time.monotonic() + 3
    try:
        while taken < 200 and time.monotonic() < deadline:
            try:
                d.send(frame, zmq.NOBLOCK, copy=False)
                taken += 1
            except zmq.Again:
                time.sleep(0.01)
        queued = 0
        while tcp_router.wait(200):
            tcp_router.recv()
            queued += 1
    finally:
        d.close()
    assert taken < 64, f"the hypervisor's side took {taken} frames of 1 MiB without reading one"
    assert queued >= transport.ROUTER_RCVHWM


def test_idle_connections_beyond_the_limit_are_shut_down_oldest_first(tcp_router, keys, monkeypatch):
    monkeypatch.setattr(transport, "MAX_UNBOUND", 4)
    idle = [socket.create_connection(("127.0.0.1", port_of(tcp_router)), timeout=5) for _ in range(10)]
    try:
        wait_until(lambda: tcp_router.counters["connections_evicted"] >= 6, 5.0, what="six connections shut down")
        # The oldest went: they read EOF; the four newest are still open.
        for s in idle[:6]:
            assert closed_by_peer(s)
        wait_until(lambda: tcp_router.counters["connections"] <= 4, 5.0, what="four connections left")
        # A new client still gets through and, once bound, is not counted as idle.
        d = Dealer(tcp_router.endpoint, keys[0])
        d.send(b"hello")
        frames = recv_one(tcp_router)
        tcp_router.bind(frames[0])
        more = [socket.create_connection(("127.0.0.1", port_of(tcp_router)), timeout=5) for _ in range(8)]
        wait_until(lambda: tcp_router.counters["connections_evicted"] >= 14, 5.0, what="the next idle ones shut down")
        d.send(b"still here")
        frames = recv_one(tcp_router)
        assert frames is not None and frames[1] == b"still here"
        d.close()
        for s in more:
            s.close()
    finally:
        for s in idle:
            s.close()


def test_a_connection_that_never_says_hello_is_shut_down_after_the_deadline(tcp_router, keys, monkeypatch):
    monkeypatch.setattr(transport, "HELLO_DEADLINE_S", 0.5)
    idle = Dealer(tcp_router.endpoint, keys[0])
    bound = Dealer(tcp_router.endpoint, keys[0])
    try:
        idle.send(b"not a hello")
        assert recv_one(tcp_router)[1] == b"not a hello"
        bound.send(b"a hello")
        frames = recv_one(tcp_router)
        assert frames[1] == b"a hello"
        tcp_router.bind(frames[0])  # as the loop does after a good hello
        wait_until(lambda: tcp_router.counters["connections_evicted"] >= 1, 5.0, what="the idle one shut down")
        time.sleep(1)
        bound.send(b"after the deadline")
        frames = recv_one(tcp_router)
        assert frames is not None and frames[1] == b"after the deadline"
        assert tcp_router.disconnected() == []
    finally:
        idle.close()
        bound.close()


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_a_bound_peer_whose_connection_goes_is_reported_once(kind, keys, tmp_path):
    if kind == "tcp":
        router = Router("tcp://127.0.0.1:0", keys[1])
    else:
        router = Router(f"ipc://{tmp_path}/r.sock")
    try:
        d = Dealer(router.endpoint, keys[0] if kind == "tcp" else None)
        d.send(b"hello")
        identity = recv_one(router)[0]
        router.bind(identity)
        assert router.disconnected() == []
        d.close()
        gone = wait_until(router.disconnected, 5.0, what="the peer reported gone")
        assert gone == [identity]
        assert router.disconnected() == []
    finally:
        router.close()


def test_an_unbound_peer_that_goes_is_not_reported(tcp_router, keys):
    d = Dealer(tcp_router.endpoint, keys[0])
    d.send(b"never a good hello")
    assert recv_one(tcp_router) is not None
    d.close()
    wait_until(lambda: tcp_router.counters["connections"] == 0, 5.0, what="the connection to go")
    assert tcp_router.disconnected() == []


def test_every_part_of_a_multipart_message_is_read_bound_or_not(tmp_path):
    """The loop refuses a message of more than one frame (MALFORMED): the router must
    hand it every part, and nothing of it may be left to be read as the next message."""
    router = Router(f"ipc://{tmp_path}/r.sock")
    try:
        d = Dealer(router.endpoint)
        d._sock.send_multipart([b"a", b"b", b"c"])
        identity, *parts = recv_one(router)
        assert parts == [b"a", b"b", b"c"]
        router.bind(identity)
        d._sock.send_multipart([b"d", b""])
        d.send(b"e")
        assert recv_one(router) == [identity, b"d", b""]
        assert recv_one(router) == [identity, b"e"]
        assert not router.wait(0)
        d.close()
    finally:
        router.close()


def test_the_routers_wait_is_its_receive_bounded_by_the_timeout(tmp_path):
    """The hypervisor's loop waits by receiving (ZMQ_RCVTIMEO) instead of zmq_poll and a
    non-blocking receive: a wait that times out returns False after about its timeout, one
    that finds a message keeps it for recv (asking again does not lose or skip it), and the
    timeout follows each call."""
    router = Router(transport.ipc_endpoint(str(tmp_path / "r.sock")))
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(router.endpoint)
        t0 = time.monotonic()
        assert not router.wait(50)
        assert 0.04 <= time.monotonic() - t0 < 2.0
        assert not router.wait(0)
        dealer.send(b"one")
        dealer.send(b"two")
        assert router.wait(3000) and router.wait(0)  # the first message, kept
        ident, frame = router.recv()
        assert frame == b"one"
        assert router.wait(3000)
        assert router.recv() == [ident, b"two"]
        assert not router.wait(0)
    finally:
        dealer.close(0)
        router.close()


def test_a_dealers_wait_receives_and_a_look_polls(tmp_path):
    """A VP's exit waits by receiving (the frame kept for recv_ready); its preemption point
    looks (timeout 0) without taking anything; recv() goes through the same wait."""
    router = Router(transport.ipc_endpoint(str(tmp_path / "r.sock")))
    dealer = Dealer(router.endpoint)
    try:
        dealer.send(b"hello")
        ident, _ = recv_one(router)
        assert not dealer.wait(0) and not dealer.wait(30)
        router.send(ident, b"a")
        router.send(ident, b"b")
        assert wait_until(lambda: dealer.wait(0), timeout=3)  # a look: nothing taken
        assert dealer.wait(3000) and dealer.wait(0) and dealer.wait(3000)  # the same frame, kept
        assert dealer.recv_ready() == b"a"
        assert dealer.recv(3000) == b"b"
        with pytest.raises(transport.PeerTimeout):
            dealer.recv(20)
    finally:
        dealer.close()
        router.close()
