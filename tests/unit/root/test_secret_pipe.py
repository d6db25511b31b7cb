"""The tcp endpoint's CURVE secret key goes from the root to the hypervisor on an inherited
pipe (root.procs.secret_pipe → hypervisor.__main__.read_secret_fd), not argv or env."""

from __future__ import annotations

import os
import subprocess
import sys

from hypervisor.__main__ import read_secret_fd
from proto.transport import curve_keypair
from root.procs import secret_pipe


def test_the_key_crosses_a_pipe_and_the_descriptor_is_closed_after():
    public, secret = curve_keypair()
    fd = secret_pipe(secret.encode())
    assert read_secret_fd(fd) == secret
    try:
        os.fstat(fd)
        still_open = True
    except OSError:
        still_open = False
    assert not still_open


def test_a_child_reads_it_from_the_descriptor_it_inherited():
    _, secret = curve_keypair()
    fd = secret_pipe(secret.encode())
    try:
        out = subprocess.run([sys.executable, "-c", f"import os; print(os.read({fd}, 100).decode())"],
                             pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
    assert out.stdout.strip() == secret
