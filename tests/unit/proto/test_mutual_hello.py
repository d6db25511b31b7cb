"""The hello is mutual (issue 9): the hypervisor's ``hello_reply`` proves it holds the
run's secret, and a peer refuses a reply that does not.  Before, any process that answered
on the endpoint (a takeover of the socket, a man in the middle) was taken for the
hypervisor by every worker and VP."""

from __future__ import annotations

import threading

import pytest

from proto import auth
from proto import messages as m
from proto.errors import NotAuthenticated
from proto.messages import decode
from proto.transport import Dealer, Router

pytestmark = pytest.mark.timeout(30)

SECRET = "ab" * 16


def fake_hypervisor(router: Router, key: str | None, done: threading.Event) -> None:
    """Answers one hello: a challenge, then a reply whose MAC is made with ``key`` (None:
    a MAC made up without any key)."""
    hello = challenge = None
    while not done.is_set():
        if not router.wait(100):
            continue
        identity, frame = router.recv()[:2]
        msg = decode(frame)
        if isinstance(msg, m.Hello):
            hello, challenge = msg, auth.new_nonce()
            router.send(identity, m.HelloChallenge(challenge).encode())
        elif isinstance(msg, m.HelloProof):
            mac = (auth.reply_proof(key, hello.role, hello.partition, hello.vp, hello.pid, hello.session,
                                    hello.nonce, challenge, "worker:1", "hv")
                   if key is not None else bytes(32))
            router.send(identity, m.HelloReply("worker:1", "hv", mac).encode())
            return


@pytest.mark.parametrize("key, ok", [(auth.peer_token(SECRET, "worker", 1), True),
                                     (auth.peer_token("cd" * 16, "worker", 1), False),  # another run's
                                     (auth.peer_token(SECRET, "worker", 2), False),  # another partition's
                                     (None, False)])
def test_a_peer_takes_only_a_hypervisor_that_proves_the_secret(tmp_path, key, ok):
    router = Router(f"ipc://{tmp_path}/hv.sock")
    done = threading.Event()
    t = threading.Thread(target=fake_hypervisor, args=(router, key, done), daemon=True)
    t.start()
    dealer = Dealer(router.endpoint)
    try:
        if ok:
            assert dealer.hello("worker", 1, 0, auth.peer_token(SECRET, "worker", 1)).peer == "worker:1"
        else:
            with pytest.raises(NotAuthenticated):
                dealer.hello("worker", 1, 0, auth.peer_token(SECRET, "worker", 1))
    finally:
        done.set()
        t.join(5)
        dealer.close()
        router.close()


def test_the_reply_proof_is_bound_to_both_nonces_and_the_binding():
    key = auth.peer_token(SECRET, "vp", 3)
    args = ("vp", 3, 1, 42, "s", b"c" * 32, b"s" * 32, "vp:3:1", "hv")
    mac = auth.reply_proof(key, *args)
    auth.check_reply(key, *args, mac)
    for i, other in [(5, b"C" * 32), (6, b"S" * 32), (7, "vp:3:0"), (8, "hv2")]:
        changed = list(args)
        changed[i] = other
        with pytest.raises(NotAuthenticated):
            auth.check_reply(key, *changed, mac)
    assert auth.hello_proof(key, *args[:7]) != mac  # a peer's own proof is no reply proof
