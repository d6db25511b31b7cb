"""Who may say hello as what.

The launcher makes a secret per run and keeps it in the run directory (mode 0700).  A peer
proves its role with a token derived from that secret: the root holds the secret itself;
each partition's worker and VPs get only the token of their own partition, so a partition
process cannot claim to be another partition, nor the root.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret() -> str:
    return secrets.token_hex(16)


def peer_token(secret: str, role: str, partition: int) -> str:
    """The token a peer of ``role`` for ``partition`` presents in its hello."""
    scope = "root" if role == "root" else f"{role}:{partition}"
    return hmac.new(secret.encode(), scope.encode(), hashlib.sha256).hexdigest()[:40]


def token_matches(secret: str, role: str, partition: int, token) -> bool:
    """Whether ``token`` is the one for ``role`` and ``partition``.  Never raises:
    ``hmac.compare_digest`` refuses a str that is not ASCII, so anything that is not an
    ASCII str is simply not the token (a hex string)."""
    if type(token) is not str or not token.isascii():
        return False
    return hmac.compare_digest(peer_token(secret, role, partition).encode(), token.encode())
