"""The migrate command's lease (root/migration_lease.py): one holder at a time; a dead
holder's lease is settled by the source run (the integration tests kill real commands),
and until then no new migrate of that partition begins; the watcher leaves a live
holder's lease alone."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from proto.errors import HvstackError
from root.migration_lease import Lease, LeaseWatcher, lease_path


def test_a_lease_moves_through_its_phases_and_is_released(tmp_path):
    lease = Lease(tmp_path, "alpha", "tcp://127.0.0.1:1", "KEY")
    assert json.loads(lease_path(tmp_path, "alpha").read_text())["phase"] == "precopy"
    with pytest.raises(HvstackError, match="being migrated already"):
        Lease(tmp_path, "alpha", "tcp://127.0.0.1:1", "KEY")
    lease.phase("go", 1234)
    held = json.loads(lease_path(tmp_path, "alpha").read_text())
    assert held["phase"] == "go" and held["paused_at_ns"] == 1234
    lease.stall("go")  # (no HVSTACK_MIGRATE_STALL: returns at once)
    lease.release()
    assert not lease_path(tmp_path, "alpha").exists()
    again = Lease(tmp_path, "alpha", "tcp://127.0.0.1:1", "KEY")
    # Each handover its own token (the begin's, which a migrate_abandon must carry), kept in
    # the lease for the source run.
    assert len(again.handover) == 16 and again.handover != lease.handover
    assert bytes.fromhex(json.loads(lease_path(tmp_path, "alpha").read_text())["handover"]) == again.handover
    again.release()


def test_a_dead_holders_lease_refuses_a_new_migrate_until_settled(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os, psutil; print(os.getpid(), "
                           "psutil.Process().create_time())"], capture_output=True, text=True, check=True)
    pid, created = gone.stdout.split()
    lease_path(tmp_path, "alpha").write_text(json.dumps({
        "pid": int(pid), "create_time": float(created), "partition": "alpha", "endpoint": "tcp://127.0.0.1:1",
        "server_key": "KEY", "phase": "paused", "paused_at_ns": 0, "handover": "00" * 16}))
    with pytest.raises(HvstackError, match="not yet settled an earlier migrate"):
        Lease(tmp_path, "alpha", "tcp://127.0.0.1:1", "KEY")


def test_the_watcher_leaves_a_live_holders_lease_alone(tmp_path):
    lease = Lease(tmp_path, "alpha", "tcp://127.0.0.1:1", "KEY")  # this process holds it
    run = SimpleNamespace(run=SimpleNamespace(path=tmp_path), partition_ids={"alpha": 1})
    watcher = LeaseWatcher(run)  # (it would need run.root and run.out to settle: it must not)
    try:
        for _ in range(3):
            watcher.poll()
        assert lease_path(tmp_path, "alpha").exists() and not watcher.settled
        lease.release()
        watcher.poll()
        assert not watcher._pidfds  # its pidfd closed with the lease
    finally:
        watcher.close()
