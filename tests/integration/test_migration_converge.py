"""Auto-converge (``migrate --auto-converge``, root/migration_throttle.py): a guest that
dirties its memory faster than a paced link carries it is throttled through its CPU cap,
step by step, and still arrives whole; its cap is put back on the source whenever it runs
on there — also when the ``migrate`` command is SIGKILLed after throttling it (the lease).

The pre-copy here lasts longer than the hypervisor's deadline for a connection's hello
(proto/transport.py HELLO_DEADLINE_S): the destination's processes, started at the begin,
connect only at their go (proto/confine.start_confined ``wait_go``) — before, a pre-copy
over 10 s lost them and the commit was never answered."""

from __future__ import annotations

import re

import pytest

from proto.transport import HELLO_DEADLINE_S
from root.client import RootClient
from root.migration_lease import lease_path
from root.migration_throttle import get_cap
from tests.integration.test_migration import SERIAL, ended, incoming, partition_state
from tests.integration.test_migration_lease import _lease, goes_on, killed, settled_outcome, stalled_migrate
from tests.support import REPO, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "migrate_converge.toml")
pytestmark = pytest.mark.timeout(150)
# 0.5 MB/s: the memwrite loop dirties its whole area (256 pages, 1 MiB) in each ≈ 2 s round.
PACED = ("--max-bandwidth", "0.5", "--auto-converge", "--throttle-initial", "50", "--throttle-increment", "20")
THROTTLED = re.compile(r"auto-converge: .* throttled by (\d+)% \(its CPU cap now ([\d.]+)% of an LP per VP\)")


def cap(run, pid: int = 1) -> int:
    man = run.manifest()
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        return get_cap(root, pid)


def writing(run) -> None:
    wait_until(lambda: len(SERIAL.findall(run.console("alpha"))) >= 1 and "memwrite: pass 2" in run.console("alpha"),
               60, interval=0.2, what="the memory-writing loop under way")


def test_a_guest_that_outruns_the_link_is_throttled_and_arrives_whole():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        writing(src)
        inc = incoming(dst)
        r = src.launch("migrate", src.name, "alpha", "--to", inc["endpoint"], "--key-file", "-", *PACED,
                       "--max-rounds", "6", stdin=inc["server_key"] + "\n", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        steps = [(int(p), float(c)) for p, c in THROTTLED.findall(r.stdout)]
        assert steps and steps[0] == (50, 50.0), r.stdout  # the initial step, of the cap it had (100 %)
        assert all(b[0] == a[0] + 20 for a, b in zip(steps, steps[1:])), steps  # then the increments
        summary = re.search(r"in ([\d.]+) s: .*auto-converge throttled the guest by (\d+)%", r.stdout)
        assert summary and int(summary[2]) == steps[-1][0], r.stdout
        precopy = sum(float(ms) for ms in re.findall(r"^round \d+: sent \d+ pages .* in (\d+) ms", r.stdout, re.M))
        assert precopy > HELLO_DEADLINE_S * 1000, r.stdout  # longer than an unbound connection may live
        resumed = wait_until(lambda: "resumed from a saved state" in dst.console("alpha"), 30,
                             what="the guest resumed at the destination")
        assert resumed
        passes = len(re.findall(r"memwrite: pass \d+ of \d+ pages verified", dst.console("alpha")))
        wait_until(lambda: len(re.findall(r"memwrite: pass \d+ of \d+ pages verified", dst.console("alpha")))
                   > passes, 30, interval=0.2, what="a memory pass verified at the destination")
        assert "MISMATCH" not in dst.console("alpha")
        assert cap(dst) == 100_000  # the throttle stayed behind: the destination's cap is its topology's
    finally:
        ended(src, dst)


def test_a_throttle_left_by_a_killed_migrate_is_undone_by_the_source_run():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        # Two rounds whose dirtied pages pass half of those sent throttle it; the third ends the pre-copy.
        proc = stalled_migrate(src, dst, "paused", *PACED, "--max-rounds", "3", ready=writing)
        assert _lease(src)["restore_cap"] == 100_000
        assert cap(src) < 100_000  # throttled, and paused with the lease saying what to put back
        killed(proc)
        assert settled_outcome(src).startswith("resumed here"), src.manifest()["migrations_settled"]
        assert not lease_path(src.path, "alpha").exists()
        assert cap(src) == 100_000
        assert partition_state(src) != "paused"
        goes_on(src)
    finally:
        ended(src, dst)
