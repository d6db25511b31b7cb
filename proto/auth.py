"""Who may say hello as what, proved on the connection it is said on.

The launcher makes a secret per run and keeps it in the run directory (0600, in a 0700
directory).  Each peer holds a key derived from it for its role (:func:`peer_token`): the
root derives its own from the secret; each partition's worker and VPs get only the key of
their own role and partition (by descriptor, :mod:`proto.confine`), so a partition process
cannot claim to be another partition, nor the root.

The key never crosses the wire.  A hello is a challenge-response bound to the connection
(RFC 2104 HMAC; the shape of RFC 5056 channel binding): the peer's ``hello`` carries a
fresh client nonce; the hypervisor answers with a fresh nonce of its own for this
connection (``hello_challenge``); the peer proves it holds the key with
``HMAC-SHA256(key, label ‖ role ‖ partition ‖ vp ‖ pid ‖ session ‖ client nonce ‖ server
nonce)`` (``hello_proof``).  The hypervisor uses each server nonce once, within a
deadline, so a captured hello and proof replayed on another connection (or again on this
one) meet a new nonce and fail.

The other way round, the hypervisor proves it holds the run's secret: ``hello_reply``
carries ``HMAC-SHA256(key, reply label ‖ the same transcript ‖ the name it bound the peer
to ‖ its session)`` (:func:`reply_proof`), which only a holder of the secret (or of this
peer's key) can compute for these fresh nonces.  A peer refuses a reply without it
(:class:`~proto.errors.NotAuthenticated`), so a process that took over the endpoint, or
answers on it for the hypervisor, cannot pass itself off as the hypervisor to a worker or
VP (and hand it memory files or device accesses of its choosing).
"""

from __future__ import annotations

import os

from proto.errors import NotAuthenticated
from proto.sha256 import compare_digest, hmac_sha256


def new_secret() -> str:
    return os.urandom(16).hex()  # secrets.token_hex, without importing hashlib (proto/sha256.py)


def peer_token(secret: str, role: str, partition: int) -> str:
    """The token a peer of ``role`` for ``partition`` presents in its hello."""
    scope = "root" if role == "root" else f"{role}:{partition}"
    return hmac_sha256(secret.encode(), scope.encode()).hex()[:40]


HELLO_LABEL = b"hvstack hello v1\0"
NONCE_BYTES = 32


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def _hello_transcript(role: str, partition: int, vp: int, pid: int, session: str,
                      client_nonce: bytes, server_nonce: bytes) -> bytes:
    # Each part length-prefixed, so that no two different hellos share a transcript.
    out = [HELLO_LABEL]
    for part in (role.encode("utf-8", "replace"), str(partition).encode(), str(vp).encode(), str(pid).encode(),
                 session.encode("utf-8", "replace"), client_nonce, server_nonce):
        out += [len(part).to_bytes(4, "big"), part]
    return b"".join(out)


def hello_proof(token: str, role: str, partition: int, vp: int, pid: int, session: str,
                client_nonce: bytes, server_nonce: bytes) -> bytes:
    """The MAC a peer holding ``token`` (its key) answers a hello challenge with."""
    return hmac_sha256(token.encode(), _hello_transcript(role, partition, vp, pid, session, client_nonce,
                                                         server_nonce))


def proof_matches(secret: str, role: str, partition: int, vp: int, pid: int, session: str,
                  client_nonce: bytes, server_nonce: bytes, proof: bytes) -> bool:
    expected = hello_proof(peer_token(secret, role, partition), role, partition, vp, pid, session,
                           client_nonce, server_nonce)
    return compare_digest(expected, proof)


REPLY_LABEL = b"hvstack hello reply v1\0"


def reply_proof(token: str, role: str, partition: int, vp: int, pid: int, session: str,
                client_nonce: bytes, server_nonce: bytes, peer_name: str, hv_session: str) -> bytes:
    """The MAC the hypervisor's ``hello_reply`` carries: it holds the peer's key too."""
    tail = b"".join(len(x).to_bytes(4, "big") + x for x in (peer_name.encode("utf-8", "replace"),
                                                            hv_session.encode("utf-8", "replace")))
    transcript = _hello_transcript(role, partition, vp, pid, session, client_nonce, server_nonce)
    return hmac_sha256(token.encode(), REPLY_LABEL + transcript + tail)


def check_reply(token: str, role: str, partition: int, vp: int, pid: int, session: str,
                client_nonce: bytes, server_nonce: bytes, peer_name: str, hv_session: str,
                mac: bytes) -> None:
    """The peer's side: raise :class:`NotAuthenticated` unless ``mac`` is the reply proof."""
    expected = reply_proof(token, role, partition, vp, pid, session, client_nonce, server_nonce,
                           peer_name, hv_session)
    if not compare_digest(expected, mac):
        raise NotAuthenticated("the hello reply does not prove the run's secret: not our hypervisor")
