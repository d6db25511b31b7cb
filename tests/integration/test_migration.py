"""Live migration between two runs (issue 13): each run a host of its own (its own
launcher, hypervisor and processes, in a run root of its own), the destination started with
``--incoming alpha``; ``migrate SRC alpha --to tcp://… --key …`` moves the running guest —
a serial counter, a verified ATA disk loop and a verified memory-writing loop — and its
counters, disk rounds and memory passes go on at the destination, none failing.  Bad input
loses nothing: a destination of another shape refuses at the begin, a tampered or truncated
record and pages outside the map are refused, a client without the CURVE key gets no
connection (counted), and a destination that dies mid-copy leaves the guest running on the
source."""

from __future__ import annotations

import json
import os
import re
import signal

import msgpack
import pytest
import zmq

from proto import messages as m, migration_messages as mm, saved_state
from proto.errors import Refused
from proto.memory import GuestMemory, memory_path, slat_path
from proto.status import HypervisorStatus
from proto.transport import Dealer
from root import partition_save
from root.client import RootClient
from root.testrun import handler_errors_in_logs
from root.topology import PartitionConfig
from tests.support import REPO, alive, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "migrate.toml")
pytestmark = pytest.mark.timeout(150)
SERIAL = re.compile(r"\[alpha\] vp0: (\d+) exits, (\d+) ticks")
RESUMED = re.compile(r"resumed from a saved state: (\d+) ticks, disk round (\d+), (\d+) exits")


def incoming(run) -> dict:
    return wait_until(lambda: run.manifest().get("incoming"), 10, what="the destination's incoming endpoint")


def partition_state(run) -> str:
    man = run.manifest()
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        return HypervisorStatus.from_wire(root.status()).partitions[0].state


def ended(*runs) -> None:
    """Stop the runs; every process gone, and no handler raised in either."""
    pids = [p for r in runs for p in r.pids()]
    for r in runs:
        r.stop()
    assert wait_until(lambda: not alive(pids), 15, what="every process of both runs to exit") is True
    for r in runs:
        assert not handler_errors_in_logs(r.path), f"a handler raised in run {r.name}"


def migrate(src, dst, *extra, timeout=90):
    inc = incoming(dst)
    return src.launch("migrate", src.name, "alpha", "--to", inc["endpoint"], f"--key={inc['server_key']}", *extra,
                      timeout=timeout)


def settled(src) -> None:
    """A disk round, a memory pass verified and two serial lines: every workload under way."""
    wait_until(lambda: len(SERIAL.findall(src.console("alpha"))) >= 2 and "round 0" in src.console("alpha")
               and "memwrite: pass 1" in src.console("alpha"), 60, interval=0.2, what="the workloads under way")


def test_a_migrated_partition_goes_on_at_the_destination():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        settled(src)
        r = migrate(src, dst)
        assert r.returncode == 0, r.stderr
        assert re.search(r"round 0: sent \d+ pages", r.stdout), r.stdout
        summary = re.search(r"migrated to .* downtime ([\d.]+) ms; (\d+) pre-copy rounds.*disk round (\d+)", r.stdout)
        assert summary, r.stdout
        rnd = int(summary.group(3))
        resumed = wait_until(lambda: RESUMED.search(dst.console("alpha")), 30, interval=0.2, what="the resume line")
        ticks, resumed_round, exits = map(int, resumed.groups())
        assert resumed_round == rnd and ticks > 0 and exits > 0
        # The guest goes on there: its serial counter, a memory pass checked page by page,
        # a disk round verified; nothing failed.
        wait_until(lambda: any(int(e) > exits for e, _ in SERIAL.findall(dst.console("alpha"))), 30,
                   interval=0.2, what="the serial counter to go on at the destination")
        wait_until(lambda: re.search(r"memwrite: pass [2-9]\d* of \d+ pages verified", dst.console("alpha")), 60,
                   interval=0.2, what="a memory pass verified at the destination")
        assert "MISMATCH" not in dst.console("alpha") + src.console("alpha")
        assert dst.manifest()["incoming"]["migrations"][0]["partition"] == "alpha"
        # The source stopped its partition once the destination ran it: that run ended.
        wait_until(lambda: src.manifest().get("state") == "ended", 20, what="the source run to end")
        assert "stopped" in src.manifest()["ended"]["reason"]
    finally:
        ended(src, dst)


def test_a_destination_of_another_shape_refuses_and_the_source_runs_on(tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(open(CONFIG).read().replace("memory_mb = 4", "memory_mb = 8"))
    src = start_run(CONFIG, short_run_root())
    dst = start_run(str(other), short_run_root(), extra=("--incoming", "alpha"))
    try:
        wait_until(lambda: SERIAL.search(src.console("alpha")), 60, interval=0.2, what="a serial line")
        r = migrate(src, dst)
        assert r.returncode == 1, r.stdout
        assert "memory_mb: saved 4, topology 8" in r.stderr and "runs on here" in r.stderr, r.stderr
        assert partition_state(src) != "paused"
        before = len(SERIAL.findall(src.console("alpha")))
        wait_until(lambda: len(SERIAL.findall(src.console("alpha"))) > before, 30, interval=0.2,
                   what="the guest to go on at the source")
        assert incoming(dst)["partitions"] == ["alpha"]  # still waiting
    finally:
        ended(src, dst)


def _begin(dst, old: Dealer | None = None) -> tuple[Dealer, list]:
    """A client with the destination's key that begins a migration of the right shape
    (the shape and map read from the destination itself); the number of mapped pages."""
    inc = incoming(dst)
    man = dst.manifest()
    pc = PartitionConfig(**man["config"]["partitions"][0])
    devices = json.loads((dst.path / "worker-alpha.json").read_text())["devices"]
    pid = man["partitions"]["alpha"]["id"]
    mem = GuestMemory(memory_path(dst.path, pid), slat_path(dst.path, pid))
    runs = [[gpa >> 12, length >> 12] for gpa, length in mem.mapped_runs()]
    pages = mem.pages
    mem.close()
    if old is not None:
        old.close()
    client = Dealer(inc["endpoint"], inc["server_key"])
    client.request(mm.MigrateBegin("alpha", msgpack.packb(partition_save.shape(pc, devices)), msgpack.packb(runs),
                                   pages, HANDOVER), 30_000)
    return client, runs


HANDOVER = bytes(range(16))  # _begin's handover token


def _abandon(dst, handover: bytes) -> m.Message:
    """A migrate_abandon of alpha's handover from another connection with the destination's key."""
    inc = incoming(dst)
    other = Dealer(inc["endpoint"], inc["server_key"])
    try:
        return other.request(mm.MigrateAbandon("alpha", 0, handover), 10_000)
    finally:
        other.close()


def test_tampered_truncated_or_unmapped_input_and_a_keyless_client_are_refused():
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        inc = incoming(dst)
        # Without CURVE, or with another server key: no answer; the plain client's refusal
        # is counted (by the ZAP handler, as the hypervisor's endpoint counts its own).
        ctx = zmq.Context.instance()
        for curve in (False, True):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if curve:
                sock.curve_serverkey = zmq.curve_keypair()[0]  # not the destination's
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.connect(inc["endpoint"])
            sock.send(m.encode(mm.MigrateProbe(b"x")))
            assert not sock.poll(1500), "a client without the destination's key was answered"
            sock.close(0)
        wait_until(lambda: dst.manifest()["incoming"]["handshakes_refused"] >= 1, 10,
                   what="the refused handshake to be counted")

        client, runs = _begin(dst)
        try:
            # The destination's key lets a client connect; it does not let it end another's
            # migration: an abandon without the begin's token is refused, and the session
            # goes on (the refusal below is the session's, not "without a migrate_begin").
            with pytest.raises(Refused, match="without its handover's token"):
                _abandon(dst, bytes(16))
            with pytest.raises(Refused, match="not mapped"):
                client.request(mm.MigratePages(0, (0xFFFFF).to_bytes(4, "little"), b"", b""))
            client, runs = _begin(dst, client)  # a refusal abandons the session: begin again
            with pytest.raises(Refused, match="bytes of data for 1 pages"):
                client.request(mm.MigratePages(0, b"", (runs[0][0]).to_bytes(4, "little"), b"\0" * 100))
            client, runs = _begin(dst, client)
            with pytest.raises(Refused, match="mapped pages never came"):
                client.request(mm.MigrateCommit(0))
            client, runs = _begin(dst, client)
            zero = [p for first, count in runs for p in range(first, first + count)]
            for at in range(0, len(zero), 4096):
                client.request(mm.MigratePages(0, b"".join(p.to_bytes(4, "little") for p in zero[at:at + 4096]),
                                               b"", b""))
            record = bytearray(saved_state.encode(1, "alpha", {"worker": {}}))
            record[-3] ^= 0xFF  # tampered
            client.request(mm.MigrateState(0, len(record), bytes(record)))
            with pytest.raises(Refused, match="checksum"):
                client.request(mm.MigrateCommit(len(record)))
            client, runs = _begin(dst, client)
            for at in range(0, len(zero), 4096):
                client.request(mm.MigratePages(0, b"".join(p.to_bytes(4, "little") for p in zero[at:at + 4096]),
                                               b"", b""))
            client.request(mm.MigrateState(0, len(record), bytes(record[:100])))
            with pytest.raises(Refused, match="100 bytes of the record came"):  # truncated
                client.request(mm.MigrateCommit(len(record)))
            client, runs = _begin(dst, client)
            assert isinstance(_abandon(dst, HANDOVER), m.Ack)  # with it (the source run's lease has it)
            with pytest.raises(Refused, match="without a migrate_begin"):
                client.request(mm.MigrateCommit(0))
        finally:
            client.close()
        inc = dst.manifest()["incoming"]
        assert inc["partitions"] == ["alpha"] and inc["receiving"] is None and not inc["migrations"]
        assert len(inc["failures"]) == 6 and "migrate command died" in inc["failures"][-1], inc["failures"]
        assert dst.manifest()["state"] == "running"
    finally:
        ended(dst)


def migrating_slowly(src, dst):
    """A `migrate` in the background, its workloads under way, once the destination has
    begun to receive: at 2 MB/s the memory area alone (768 written pages) takes 1.5 s."""
    settled(src)
    inc = incoming(dst)
    proc = src.launch_background("migrate", src.name, "alpha", "--to", inc["endpoint"], f"--key={inc['server_key']}",
                                 "--max-bandwidth", "2", "--timeout", "5")
    wait_until(lambda: (dst.manifest().get("incoming") or {}).get("receiving") == "alpha", 30, interval=0.01,
               what="the destination to begin receiving")
    return proc


def test_a_destination_that_dies_mid_copy_leaves_the_partition_running_on_the_source():
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        proc = migrating_slowly(src, dst)
        os.kill(dst.manifest()["launcher_pid"], signal.SIGKILL)  # the destination host dies
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out
        assert "runs on here" in err and "did not answer" in err, err
        assert "migrated" not in out
        assert partition_state(src) != "paused"
        before = len(SERIAL.findall(src.console("alpha")))
        wait_until(lambda: len(SERIAL.findall(src.console("alpha"))) > before, 30, interval=0.2,
                   what="the guest to go on at the source")
        assert "MISMATCH" not in src.console("alpha")
    finally:
        dst.proc.wait(10)
        ended(src)
        # The dead destination's processes went with its launcher (they die with their parent).
        assert wait_until(lambda: not alive(dst.pids()[1:]), 15, what="the destination's processes to go") is True


def test_a_migrate_command_stopped_by_sigterm_leaves_the_partition_running_on_the_source():
    """SIGTERM (a user's `kill`, a supervisor's stop) is taken as Ctrl-C: the migration's
    unwinding resumes the partition here (Python's default would end the command at once,
    leaving a partition paused in the stop-and-copy with nobody to thaw it)."""
    src = start_run(CONFIG, short_run_root())
    dst = start_run(CONFIG, short_run_root(), extra=("--incoming", "alpha"))
    try:
        proc = migrating_slowly(src, dst)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out
        assert "interrupted (signal SIGTERM)" in err and "runs on here" in err, err
        assert partition_state(src) != "paused"
        before = len(SERIAL.findall(src.console("alpha")))
        wait_until(lambda: len(SERIAL.findall(src.console("alpha"))) > before, 30, interval=0.2,
                   what="the guest to go on at the source")
    finally:
        ended(src, dst)
