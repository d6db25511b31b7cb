"""A party of a live migration that dies (issue 13, "nothing lost"): exactly one side runs
the guest, and it goes on.  The ``migrate`` command holds a lease in the source run
(root/migration_lease.py); held at a phase by ``HVSTACK_MIGRATE_STALL`` and SIGKILLed
there, the source run settles it — before the go it resumes the partition; after it, it
asks the destination, which runs it (the source stops its copy) or abandons it (the
source resumes).  A source that dies after the go leaves the destination running it; a
destination that dies before the go leaves the source running it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from root.migration_lease import STALL_ENV, lease_path
from tests.integration.test_migration import SERIAL, ended, incoming, partition_state, settled
from tests.support import REPO, alive, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "migrate.toml")
pytestmark = pytest.mark.timeout(150)


def stalled_migrate(src, dst, point: str, *extra, ready=settled) -> subprocess.Popen:
    """``migrate`` held at ``point`` (its lease says ``stalled``), the workloads under way
    (``ready(src)`` has seen them)."""
    ready(src)
    inc = incoming(dst)
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "migrate", src.name, "alpha", "--to",
                             inc["endpoint"], f"--key={inc['server_key']}", *extra], cwd=REPO,
                            env=dict(os.environ, HVSTACK_RUN_DIR=src.run_root, **{STALL_ENV: point}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: proc.poll() is not None or _lease(src).get("stalled") == point, 60, interval=0.02,
               what=f"migrate to stall at {point}")
    assert proc.poll() is None, proc.communicate()
    return proc


def _lease(src) -> dict:
    try:
        return json.loads(lease_path(src.path, "alpha").read_text())
    except (OSError, ValueError):
        return {}


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def settled_outcome(src, count: int = 1) -> str:
    """What the source run decided for the ``count``-th dead migrate."""
    found = wait_until(lambda: len(src.manifest().get("migrations_settled", [])) >= count and
                       src.manifest()["migrations_settled"], 20, interval=0.05,
                       what="the source run to settle the dead migrate's lease")
    assert not lease_path(src.path, "alpha").exists()
    return found[count - 1]["outcome"]


def goes_on(run, after: int = 0) -> None:
    """The guest's serial counter passes ``after`` (or its last line now) in ``run``."""
    last = after or max((int(e) for e, _ in SERIAL.findall(run.console("alpha"))), default=0)
    wait_until(lambda: any(int(e) > last for e, _ in SERIAL.findall(run.console("alpha"))), 30, interval=0.2,
               what=f"the serial counter to go on in {run.name}")


def test_a_migrate_sigkilled_before_the_go_leaves_the_guest_on_the_source():
    """Killed in the stop-and-copy (the partition paused, its worker frozen), then — the same
    two runs — committed at the destination but never told to go: each time the source
    resumes the guest and the destination runs nothing of it."""
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        for n, point in enumerate(("paused", "before_go"), 1):
            proc = stalled_migrate(src, dst, point)
            assert partition_state(src) == "paused"
            killed(proc)
            assert settled_outcome(src, n).startswith("resumed here"), src.manifest()["migrations_settled"]
            failures = wait_until(lambda: len(dst.manifest()["incoming"]["failures"]) >= n and
                                  dst.manifest()["incoming"]["failures"], 15, what="the destination to abandon")
            assert "migrate command died" in failures[n - 1], failures
            assert not dst.manifest()["incoming"]["migrations"]
            if point == "paused":  # abandoned before its commit: it waits for another begin
                assert dst.manifest()["incoming"]["partitions"] == ["alpha"]
            else:  # committed there: stopped, never run
                assert "never told to go: stopped" in failures[n - 1]
            assert partition_state(src) != "paused"
            goes_on(src)
        assert "MISMATCH" not in src.console("alpha") + dst.console("alpha")
    finally:
        ended(src, dst)


def test_a_migrate_sigkilled_after_the_go_leaves_the_guest_on_the_destination():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        proc = stalled_migrate(src, dst, "after_go")
        assert partition_state(src) == "paused"
        killed(proc)
        assert settled_outcome(src) == "it runs at the destination: stopped here"
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
        assert dst.manifest()["incoming"]["migrations"][0]["partition"] == "alpha"
        goes_on(dst)
        assert "MISMATCH" not in src.console("alpha") + dst.console("alpha")
    finally:
        ended(src, dst)


def test_a_source_that_dies_after_the_go_leaves_the_destination_running_it():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        proc = stalled_migrate(src, dst, "after_go")
        os.kill(src.manifest()["launcher_pid"], signal.SIGKILL)  # the source host dies
        killed(proc)
        src.proc.wait(10)
        assert wait_until(lambda: not alive(src.pids()[1:]), 15, what="the source's processes to go") is True
        goes_on(dst)
        goes_on(dst)
        assert "MISMATCH" not in dst.console("alpha")
        assert dst.manifest()["state"] == "running"
    finally:
        ended(dst)


def test_a_destination_that_dies_after_the_commit_before_the_go_leaves_the_source_running_it():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        proc = stalled_migrate(src, dst, "before_go", "--timeout", "2")
        os.kill(dst.manifest()["launcher_pid"], signal.SIGKILL)  # the destination host dies
        dst.proc.wait(10)
        lease = _lease(src)
        del lease["stalled"]
        lease_path(src.path, "alpha").write_text(json.dumps(lease))  # let the command go on: its go is lost
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, out
        assert "did not say it does" in err, err
        outcome = settled_outcome(src)
        assert re.match(r"resumed here \(its destination refuses connections", outcome), outcome
        assert partition_state(src) != "paused"
        goes_on(src)
        assert "MISMATCH" not in src.console("alpha")
    finally:
        ended(src)
        assert wait_until(lambda: not alive(dst.pids()[1:]), 15, what="the destination's processes to go") is True
