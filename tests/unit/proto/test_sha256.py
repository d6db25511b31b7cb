"""proto/sha256.py: the built-in SHA-256 and HMAC-SHA256 give hashlib's and hmac's answers,
and the processes that hash (hypervisor, launcher, zygotes) no longer map OpenSSL."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from proto import auth
from proto.sha256 import compare_digest, hmac_sha256, sha256
from root import REPO


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("msg", [b"", b"abc", bytes(range(256)) * 5])
def test_hmac_sha256_is_rfc_2104s(key_len, msg):
    key = bytes((7 * i + 1) & 0xFF for i in range(key_len))
    assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
    assert sha256(msg).digest() == hashlib.sha256(msg).digest()


def test_rfc_4231_test_case_2():
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_compare_digest_and_the_hello_proofs_are_what_they_were():
    assert compare_digest(b"ab", b"ab") and not compare_digest(b"ab", b"ac")
    token = auth.peer_token("s" * 32, "worker", 3)
    assert token == hmac.new(b"s" * 32, b"worker:3", hashlib.sha256).hexdigest()[:40]
    proof = auth.hello_proof(token, "worker", 3, 0, 42, "sess", b"c" * 32, b"n" * 32)
    assert auth.proof_matches("s" * 32, "worker", 3, 0, 42, "sess", b"c" * 32, b"n" * 32, proof)
    assert not auth.proof_matches("s" * 32, "worker", 4, 0, 42, "sess", b"c" * 32, b"n" * 32, proof)


@pytest.mark.timeout(60)
def test_the_hashing_processes_do_not_load_openssl():
    """3.6 MB of RSS each (libcrypto) for a few hashes per run: issue 12's ≤ 35 MB."""
    code = ("import sys, hypervisor.__main__, root.cli, root.zygote, worker.__main__, partitions.__main__; "
            "print(sorted(m for m in ('_hashlib', '_ssl') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
