"""SHA-256 and HMAC-SHA256 (RFC 2104) from CPython's built-in SHA-256, not OpenSSL's.

``hashlib`` (and ``hmac``, ``secrets``, which import it) loads ``_hashlib``, which maps
OpenSSL's libcrypto: 3.6 MB of resident memory in every process that imports it and
≈ 35 ms of its start-up (hypervisor, launcher, zygotes; measured 2026-11-30).  The stack
hashes a few short messages per hello and per saved record, for which the built-in
module (``_sha2`` from Python 3.12, ``_sha256`` before) does as well; where neither
exists, hashlib's.
"""

from __future__ import annotations

try:
    from _sha2 import sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # a build without them
        from hashlib import sha256
try:
    # What hmac.compare_digest is when OpenSSL's is absent: a comparison whose time does
    # not depend on where the inputs differ.
    from _operator import _compare_digest as compare_digest
except ImportError:
    from hmac import compare_digest

BLOCK = 64  # SHA-256's block size in bytes
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256(key, msg), as ``hmac.new(key, msg, hashlib.sha256).digest()``."""
    if len(key) > BLOCK:
        key = sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    inner = sha256(key.translate(_IPAD) + msg).digest()
    return sha256(key.translate(_OPAD) + inner).digest()


__all__ = ["sha256", "hmac_sha256", "compare_digest"]
