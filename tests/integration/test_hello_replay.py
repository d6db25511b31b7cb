"""A captured hello cannot be replayed (issue 9: tokens were static bearer credentials, and
a captured hello replayed as root paused a partition).

The test is a legitimate root client that records the frames of its own hello, then
replays them on a connection of its own, as someone who captured them would, and tries to
pause the partition.
"""

from __future__ import annotations

import os

import pytest

from proto import messages as m
from proto.auth import peer_token
from proto.errors import Refused
from proto.transport import Dealer
from root.client import RootClient

pytestmark = pytest.mark.integration


class Recording(Dealer):
    """A Dealer that keeps every frame it sends."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.sent: list[bytes] = []
        real = self.send

        def send(frame, *a, **kw):
            self.sent.append(bytes(frame))
            return real(frame, *a, **kw)

        self.send = send


def test_a_captured_root_hello_replayed_on_another_connection_cannot_pause_a_partition(live):
    man = live.manifest()
    endpoint, alpha = man["endpoint"], man["partitions"]["alpha"]["id"]
    victim = Recording(endpoint)
    try:
        victim.hello("root", 0, 0, peer_token(live.secret(), "root", 0))
        captured = list(victim.sent)
    finally:
        victim.close()
    assert [m.decode(f).NAME for f in captured] == ["hello", "hello_proof"]

    thief = Dealer(endpoint)
    try:
        answers = []
        for frame in captured:
            thief.send(frame)
            answers.append(m.decode(thief.recv(5000)))
        assert isinstance(answers[0], m.HelloChallenge)  # a fresh nonce for this connection
        assert isinstance(answers[1], m.ErrorReply) and answers[1].code == "NOT_AUTHENTICATED"
        with pytest.raises(Refused, match="NOT_AUTHENTICATED"):
            thief.request(m.PartitionControl(alpha, "pause"))
    finally:
        thief.close()
    # The partition was never paused.
    with RootClient(endpoint, live.secret()) as root:
        [part] = [p for p in root.status()["partitions"] if p["id"] == alpha]
        assert part["state"] != "paused" and not part.get("paused")
        assert root.status()["counters"]["refused_hellos"] >= 1


def test_a_worker_refuses_an_endpoint_that_does_not_prove_the_runs_secret(tmp_path):
    """The hello is mutual: something answering on the run's endpoint without the secret
    (a takeover of the socket) is not taken for the hypervisor.  The worker says so and
    exits before it asks for memory or serves a single device access."""
    import json
    import subprocess
    import sys
    import threading

    from proto import confine
    from proto.auth import new_nonce
    from proto.transport import Router
    from root import REPO

    router = Router(f"ipc://{tmp_path}/hv.sock")
    seen: list[str] = []
    done = threading.Event()

    def impostor():
        challenge = None
        while not done.is_set():
            if not router.wait(100):
                continue
            identity, frame = router.recv()[:2]
            msg = m.decode(frame)
            seen.append(msg.NAME)
            if isinstance(msg, m.Hello):
                challenge = new_nonce()
                router.send(identity, m.HelloChallenge(challenge).encode())
            elif isinstance(msg, m.HelloProof):  # it cannot check the proof, nor make its own
                router.send(identity, m.HelloReply("worker:1", "impostor", bytes(32)).encode())

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    spec = tmp_path / "worker.json"
    spec.write_text(json.dumps({"endpoint": router.endpoint, "partition_id": 1, "name": "w",
                                "console_path": str(tmp_path / "console.log"), "devices": []}))
    fd = confine.secret_pipe(peer_token("ab" * 16, "worker", 1))
    try:
        p = subprocess.run([sys.executable, "-m", "worker", "--spec", str(spec), "--secret-fd", str(fd)],
                           cwd=REPO, pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
        done.set()
        t.join(5)
        router.close()
    assert p.returncode != 0
    assert "not our hypervisor" in p.stderr, p.stderr
    assert seen == ["hello", "hello_proof"], "nothing after the refused reply"
