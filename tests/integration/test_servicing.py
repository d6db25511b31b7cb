"""Worker servicing (issue 13): `ctl RUN service PARTITION` hands a running partition's
devices to a new worker process, and a partition with ``on_worker_exit = "restart"``
survives its worker's SIGKILL.  The guest (a serial counter and a verified ATA disk loop
back to back) must see only a pause: its counters go on, no disk round fails."""

from __future__ import annotations

import json
import os
import signal

import pytest

from proto.status import HypervisorStatus
from root.client import RootClient
from tests.support import REPO, alive, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "servicing.toml")
pytestmark = pytest.mark.timeout(120)


def status(run) -> HypervisorStatus:
    man = run.manifest()
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        return HypervisorStatus.from_wire(root.status())


def guest(run) -> dict:
    return status(run).partitions[0].vps[0].guest


def stuck(run) -> str:
    """What a guest that does not go on is waiting for: its partition's and VP's state and
    the ends of the worker's and the hypervisor's logs (a CI failure explains itself)."""
    hv = status(run)
    p = hv.partitions[0]
    vp = p.vps[0]
    logs = ""
    for log in sorted((run.path / "logs").glob("*")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if " root:" not in line]
        logs += f"\n--- {log.name}:\n" + "\n".join(lines[-15:])  # (not the root's hellos: the polls')
    return (f"hypervisor: {hv.pending} accesses pending, counters {hv.counters}; partition {p.state}, unresponsive {p.unresponsive}, health pauses {p.health_pauses}, "
            f"worker timeouts {p.worker_timeouts}, worker {p.worker}; VP {vp.state}, sched {vp.sched}, "
            f"exits {vp.exits}, guest {vp.guest}{logs}")


def worker_pid(run) -> int:
    return run.manifest()["processes"]["worker:alpha"]["pid"]


def goes_on(run, before: dict, what: str) -> dict:
    """Wait until the guest has done another disk round and more exits and ticks than in
    ``before``, with no disk error."""
    def moved():
        now = guest(run)
        assert now.get("disk_errors", 0) == 0, f"a disk round failed {what}: {now}"
        if all(now.get(k, 0) > before.get(k, 0) for k in ("disk_bytes", "exits", "ticks")):
            return now
        return None
    try:
        return wait_until(moved, 40, interval=0.2, what=f"the guest to go on {what}")
    except AssertionError as e:
        raise AssertionError(f"{e}; {stuck(run)}") from None


@pytest.fixture(scope="module")
def run():
    r = start_run(CONFIG, short_run_root())
    yield r
    pids = r.pids()
    r.stop()
    assert not alive(pids), "processes of the run outlived it"


def test_service_hands_the_devices_to_a_new_worker_and_the_guest_goes_on(run):
    before = goes_on(run, {}, "before servicing")
    old = worker_pid(run)
    r = run.launch("ctl", run.name, "service", "alpha", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "worker serviced" in r.stdout and "blackout" in r.stdout, r.stdout
    new = worker_pid(run)
    assert new != old
    wait_until(lambda: not alive([old]), 10, what="the old worker to end")
    [figures] = [s for s in run.manifest()["services"] if s["kind"] == "service"]
    assert figures["old_worker_pid"] == old and figures["new_worker_pid"] == new
    assert 0 < figures["pause_save_ms"] <= figures["blackout_ms"] and figures["saved_bytes"] > 0
    goes_on(run, before, "after servicing")
    assert "MISMATCH" not in run.console("alpha")


def test_a_killed_worker_is_restarted_from_its_checkpoint(run):
    before = goes_on(run, {}, "before the kill")
    old = worker_pid(run)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: run.manifest().get("worker_restarts", {}).get("alpha") == 1, 30,
               what="the launcher to restart the worker")
    man = run.manifest()
    assert man["state"] == "running"
    new = worker_pid(run)
    assert new != old and alive([new]) and not alive([old])
    assert man["services"][-1]["kind"] == "restart"
    goes_on(run, before, "after the restart")
    assert "MISMATCH" not in run.console("alpha")
    replaced = len([s for s in man["services"] if "error" not in s])
    status = run.launch("status", run.name, timeout=30)
    assert f"worker replaced {replaced} times (1 restarted after dying)" in status.stdout, status.stdout
    assert run.manifest().get("unresponsive_partitions", []) == []


def test_a_service_whose_new_worker_fails_after_its_hello_is_rolled_back(run):
    """The rollback gap: the successor (its COM1 moved in its spec) says hello, then its
    devices claim other ranges than its predecessor's and it is refused; the abort gives the
    partition back to the old worker, which goes on serving the guest."""
    before = goes_on(run, {}, "before the failed service")
    old = worker_pid(run)
    spec_path = run.path / "worker-alpha.json"
    original = spec_path.read_text()
    spec = json.loads(original)
    next(d for d in spec["devices"] if d["type"] == "uart16550")["base"] = 0x2E8
    spec_path.write_text(json.dumps(spec))
    try:
        r = run.launch("ctl", run.name, "service", "alpha", timeout=60)
    finally:
        spec_path.write_text(original)
    assert r.returncode != 0 and "cannot service partition alpha" in r.stderr, r.stdout + r.stderr
    assert worker_pid(run) == old and alive([old])
    goes_on(run, before, "after the rolled-back service")
    status = run.launch("status", run.name, timeout=30)
    assert ", 1 rolled back" in status.stdout, status.stdout


def test_service_of_an_unknown_partition_is_refused(run):
    r = run.launch("ctl", run.name, "service", "nobody", timeout=30)
    assert r.returncode != 0
