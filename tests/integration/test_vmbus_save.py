"""A VMBus partition saved and restored, and serviced (issue 13): its guest's verified
synthetic-disk rounds (vmbus_disk: QUEUE_DEPTH writes, SYNCHRONIZE CACHE, reads compared)
go on across each, the restored guest using the channel it had — no new connection, no new
OPENCHANNEL: the root's VSP restored its bus (root/vsp/saved.py) — and a record whose bus
does not fit, or was changed, is refused before anything starts."""

from __future__ import annotations

import re

import pytest

from proto import saved_state
from tests.support import REPO, alive, run_launch_py, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "vmbus-save.toml")
pytestmark = pytest.mark.timeout(150)
ROUND = re.compile(r"\[alpha\] vmbus_disk: round (\d+) \S+ \d+ KiB x\d+ lba \d+: (verified|MISMATCH)")
PING = re.compile(r"\[alpha\] vmbus_net: ping 10\.0\.0\.\d+: \d+ bytes")


def rounds(console: str) -> list[int]:
    """The verified rounds' numbers in the console's whole lines; any other vmbus_disk line fails."""
    console = console[:console.rfind("\n") + 1]
    assert "MISMATCH" not in console and "vmbus_disk: " not in re.sub(ROUND, "", console), console[-2000:]
    # (a ping lost across a pause says "no reply", as a network drops frames: not a failure)
    assert not re.search(r"vmbus(_net)?: (?!ping |NIC |version |storvsc )", console), console[-2000:]
    return [int(n) for n, _ in ROUND.findall(console)]


def pings(console: str) -> int:
    """alpha's ping lines (each: replies to its pings to beta in the second before)."""
    return len(PING.findall(console))


def stopped(run) -> None:
    pids = run.pids()
    run.stop()
    assert not alive(pids), "processes of the run outlived it"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A record of alpha saved after its worker was serviced under it; the run went on, then ended."""
    path = tmp_path_factory.mktemp("vmbus-save") / "alpha.hvs"
    run = start_run(CONFIG, short_run_root())
    try:
        wait_until(lambda: len(rounds(run.console("alpha"))) >= 2 and pings(run.console("alpha")), 60, interval=0.2,
                   what="two verified rounds and a ping line")
        # `ctl service`: a new worker under the running guest (the VSP, which serves its
        # disk, is not the worker's: its channel is not touched).
        r = run.launch("ctl", run.name, "service", "alpha", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        done = len(rounds(run.console("alpha")))
        wait_until(lambda: len(rounds(run.console("alpha"))) >= done + 2, 30, interval=0.2,
                   what="verified rounds after the service")
        r = run.launch("ctl", run.name, "save", "alpha", str(path), timeout=60)
        assert r.returncode == 0, r.stderr
        assert "running again" in r.stdout, r.stdout
        print(r.stdout)
        done = len(rounds(run.console("alpha")))
        wait_until(lambda: len(rounds(run.console("alpha"))) >= done + 2, 30, interval=0.2,
                   what="verified rounds after the save")
    finally:
        stopped(run)
    return path, saved_state.read_file(path)


def test_the_record_holds_the_bus_and_the_synthetic_disk(saved):
    _, record = saved
    bus = record["sections"]["vmbus"]
    assert bus["version"] and bus["offers_sent"]
    disk, nic = bus["offers"]
    assert disk["device"] == "storvsp" and disk["channel"] is not None
    assert disk["device_state"]["state"] == 4  # storvsp READY
    assert nic["device"] == "netvsp" and nic["channel"] is not None and nic["device_state"]["recv_gpadl"] >= 0
    assert record["sections"]["disks"]["vmbus_disk"]["size"] == 8 << 20


def test_a_restored_vmbus_partition_goes_on_with_its_channel(saved):
    path, _ = saved
    run = start_run(CONFIG, short_run_root(), extra=("--restore", f"alpha={path}"))
    try:
        wait_until(lambda: "resumed from the checkpoint" in run.console("alpha"), 30, interval=0.2,
                   what="storvsc resumed")
        got = wait_until(lambda: len(r := rounds(run.console("alpha"))) >= 3 and r, 40, interval=0.2,
                         what="three verified rounds after the restore")
        console = run.console("alpha")
        assert "vmbus: version" not in console, "the restored guest connected again"
        assert got[0] >= 4, got  # from the checkpoint's round, not from zero
        # Its netvsc started its channel over (closed on the restored bus, opened again):
        # beta, a fresh partition of the new run, answers its pings.
        wait_until(lambda: pings(run.console("alpha")) >= 2, 30, interval=0.2, what="alpha's pings answered")
        assert got == list(range(got[0], got[0] + len(got))), got
        assert "handler error" not in (run.path / "logs" / "vsp-vsp.log").read_text()
    finally:
        stopped(run)


def test_a_record_whose_bus_does_not_fit_or_was_changed_is_refused(saved, tmp_path):
    path, record = saved
    root = short_run_root()
    nic = tmp_path / "nic.toml"
    nic.write_text(open(CONFIG).read().replace("vmbus = { disk = { size_mb = 8 }, nic = {} }",
                                               "vmbus = { disk = { size_mb = 8 } }"))
    r = run_launch_py("run", str(nic), "--restore", f"alpha={path}", run_root=root, timeout=30)
    assert r.returncode == 2 and "vmbus devices: saved ['storvsp', 'netvsp'], topology ['storvsp']" in r.stderr, \
        r.stderr
    sections = dict(record["sections"])
    sections["vmbus"] = dict(sections["vmbus"], sint=99)
    bad = tmp_path / "bad.hvs"
    bad.write_bytes(saved_state.encode(0, "alpha", sections))
    r = run_launch_py("run", CONFIG, "--restore", f"alpha={bad}", run_root=root, timeout=30)
    assert r.returncode == 2 and "vmbus.sint: 99 is outside 0..15" in r.stderr, r.stderr
    del sections["vmbus"]
    bad.write_bytes(saved_state.encode(0, "alpha", sections))
    r = run_launch_py("run", CONFIG, "--restore", f"alpha={bad}", run_root=root, timeout=30)
    assert r.returncode == 2 and "the record no VMBus section" in r.stderr, r.stderr


def test_a_vmbus_partition_migrates_with_its_bus():
    """Live migration: the bus goes with the record, the VSP's writes into guest memory
    (rings, read data) are in the dirty log, the destination's VSP takes the bus."""
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        wait_until(lambda: len(rounds(src.console("alpha"))) >= 3, 60, interval=0.2, what="three verified rounds")
        inc = wait_until(lambda: dst.manifest().get("incoming"), 10, what="the destination's endpoint")
        r = src.launch("migrate", src.name, "alpha", "--to", inc["endpoint"], f"--key={inc['server_key']}", timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        print(r.stdout)
        wait_until(lambda: "resumed from the checkpoint" in dst.console("alpha"), 30, interval=0.2,
                   what="storvsc resumed at the destination")
        got = wait_until(lambda: len(r := rounds(dst.console("alpha"))) >= 3 and r, 40, interval=0.2,
                         what="three verified rounds at the destination")
        assert "vmbus: version" not in dst.console("alpha"), "the migrated guest connected again"
        wait_until(lambda: pings(dst.console("alpha")) >= 2, 30, interval=0.2, what="alpha's pings answered there")
        assert got[0] >= 3 and got == list(range(got[0], got[0] + len(got))), got
        assert max(rounds(src.console("alpha"))) <= got[0] + 1
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
    finally:
        pids = src.pids() + dst.pids()
        src.stop()
        dst.stop()
        assert wait_until(lambda: not alive(pids), 15, what="every process of both runs to exit") is True
