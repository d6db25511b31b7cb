"""Live migration between two hosts (issue 13): two network namespaces joined by a veth pair
(root/hosts.py), the source run on one, the destination — listening on its veth address —
on the other; the guest moves across the veth over CURVE tcp and goes on there.  Skipped,
saying why, where namespaces cannot be made."""

from __future__ import annotations

import os

import pytest

from root.hosts import HostsUnavailable, two_hosts, unavailable
from tests.integration.test_migration import CONFIG, RESUMED, SERIAL, ended, incoming, settled
from tests.support import short_run_root, start_run, wait_until

pytestmark = [pytest.mark.timeout(150),
              pytest.mark.skipif(unavailable() is not None, reason=f"two hosts as namespaces: {unavailable()}")]


@pytest.fixture
def hosts():
    try:
        with two_hosts(f"t{os.getpid() % 100000}") as pair:
            yield pair
    except HostsUnavailable as e:
        pytest.skip(f"two hosts as namespaces: {e}")


def test_a_partition_moves_between_two_namespaced_hosts_over_their_veth(hosts):
    first, second = hosts
    src = start_run(CONFIG, short_run_root(), prefix=tuple(first.command([])))
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha", "--listen", second.address),
                    prefix=tuple(second.command([])))
    try:
        inc = incoming(dst)
        assert inc["endpoint"].startswith(f"tcp://{second.address}:"), inc
        settled(src)
        proc = src.launch_background("migrate", src.name, "alpha", "--to", inc["endpoint"], f"--key={inc['server_key']}",
                                     prefix=tuple(first.command([])))
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert f"migrated to {inc['endpoint']}" in out, out
        resumed = wait_until(lambda: RESUMED.search(dst.console("alpha")), 30, interval=0.2,
                             what="the resume line on the second host")
        exits = int(resumed.group(3))
        wait_until(lambda: any(int(e) > exits for e, _ in SERIAL.findall(dst.console("alpha"))), 30,
                   interval=0.2, what="the serial counter to go on on the second host")
        assert "MISMATCH" not in dst.console("alpha")
    finally:
        ended(src, dst)
