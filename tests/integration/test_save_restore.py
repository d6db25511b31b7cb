"""Save and restore a whole partition (issue 13): `ctl RUN save PARTITION FILE` while the
guest runs a serial counter and a verified ATA disk loop, end the run, start a new one with
`--restore PARTITION=FILE`: the guest resumes where its kernel last checkpointed — its
exits, ticks and disk rounds go on from there, no disk round fails — and nothing of either
run is left running.  A record for another topology shape, or a changed one, is refused
before anything starts."""

from __future__ import annotations

import re

import pytest

from proto import guest_state, partition_state, saved_state
from proto.status import HypervisorStatus
from root.client import RootClient
from tests.support import REPO, alive, run_launch_py, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "save.toml")
pytestmark = pytest.mark.timeout(150)
SERIAL = re.compile(r"\[alpha\] vp0: (\d+) exits, (\d+) ticks")


def kernel_state(record: dict) -> dict:
    """The guest kernel's state as the record's memory holds it (proto/guest_state.py)."""
    mem = record["sections"]["memory"]
    pages, at = partition_state.memory_contents(mem), 0
    for first, count in mem["runs"]:
        if first <= guest_state.KERNEL_STATE_GPA >> 12 < first + count:
            off = at + guest_state.KERNEL_STATE_GPA - (first << 12)
            return guest_state.decode(pages[off:off + guest_state.KERNEL_STATE_BYTES])
        at += count << 12
    raise AssertionError("the kernel state's page is not in the record")


def guest(run) -> dict:
    man = run.manifest()
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        return HypervisorStatus.from_wire(root.status()).partitions[0].vps[0].guest


def stopped(run) -> None:
    pids = run.pids()
    run.stop()
    assert not alive(pids), "processes of the run outlived it"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A record of partition alpha, saved from a run that has done a disk round; the run ended."""
    path = tmp_path_factory.mktemp("save") / "alpha.hvs"
    run = start_run(CONFIG, short_run_root())
    try:
        wait_until(lambda: len(SERIAL.findall(run.console("alpha"))) >= 2 and "round 0" in run.console("alpha"),
                   60, interval=0.2, what="a disk round and two serial lines")
        r = run.launch("ctl", run.name, "save", "alpha", str(path), timeout=60)
        assert r.returncode == 0, r.stderr
        assert "saved to" in r.stdout and "running again" in r.stdout, r.stdout
        before = len(SERIAL.findall(run.console("alpha")))
        # The partition runs on after the save.
        wait_until(lambda: len(SERIAL.findall(run.console("alpha"))) > before, 30, interval=0.2,
                   what="the guest to go on after the save")
        console = run.console("alpha")
    finally:
        stopped(run)
    record = saved_state.read_file(path)
    assert "MISMATCH" not in console
    return path, record


def test_a_restored_partition_goes_on_where_it_was_saved(saved):
    path, record = saved
    kernel = kernel_state(record)
    assert kernel["timers"]["disk_round"] >= 1 and kernel["disk"]["errors"] == 0
    run = start_run(CONFIG, short_run_root(), extra=("--restore", f"alpha={path}"))
    try:
        resumed = wait_until(lambda: re.search(r"resumed from a saved state: (\d+) ticks, disk round (\d+), (\d+) exits",
                                               run.console("alpha")), 30, interval=0.2, what="the resume line")
        ticks, rnd, exits = map(int, resumed.groups())
        assert rnd == kernel["timers"]["disk_round"]
        assert ticks >= kernel["ticks"] and exits >= kernel["vps"][0]["exits"]
        # Guest time stood still across the gap: the tick goes on from the saved count, it
        # does not jump by the time the record lay on disk (nor by the host's uptime).
        assert ticks - kernel["ticks"] < 500, (ticks, kernel["ticks"])
        # The serial counter and the tick count go on from the saved ones, not from zero.
        line = wait_until(lambda: SERIAL.search(run.console("alpha")), 30, interval=0.2, what="a serial line")
        assert int(line.group(1)) > kernel["vps"][0]["exits"] and int(line.group(2)) >= kernel["ticks"]
        # Verified disk rounds go on from the saved count, on the saved image: the guest's
        # own counters (its VP's statistics) pass the saved ones with no round failed.
        first = wait_until(lambda: guest(run).get("disk_bytes"), 20, interval=0.1, what="the guest's counters")
        assert first >= kernel["disk"]["bytes"], "the disk counters started again from zero"

        def disk_went_on():
            g = guest(run)
            assert g.get("disk_errors", 0) == 0, g
            return g.get("disk_bytes", 0) > kernel["disk"]["bytes"] > 0
        wait_until(disk_went_on, 40, interval=0.2, what="a verified disk round after the restore")
        assert "MISMATCH" not in run.console("alpha")
        assert "hvstack guest kernel" not in run.console("alpha")  # resumed, not booted
    finally:
        stopped(run)


def test_a_record_of_another_shape_or_a_changed_one_is_refused(saved, tmp_path):
    path, _ = saved
    other = tmp_path / "other.toml"
    other.write_text((REPO / "tests" / "configs" / "save.toml").read_text().replace("vps = 2", "vps = 1")
                     .replace("memory_mb = 4", "memory_mb = 8"))
    root = short_run_root()
    r = run_launch_py("run", str(other), "--restore", f"alpha={path}", run_root=root, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "vps: saved 2, topology 1" in r.stderr and "memory_mb: saved 4, topology 8" in r.stderr, r.stderr
    r = run_launch_py("run", CONFIG, "--restore", f"beta={path}", run_root=root, timeout=30)
    assert r.returncode == 2 and "no partition 'beta'" in r.stderr, r.stderr
    tampered = tmp_path / "tampered.hvs"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    r = run_launch_py("run", CONFIG, "--restore", f"alpha={tampered}", run_root=root, timeout=30)
    assert r.returncode == 2 and ("checksum" in r.stderr or "msgpack" in r.stderr), r.stderr
    assert not list(__import__("pathlib").Path(root).glob("*/manifest.json")), "a refused restore started a run"


def settled_console(run, partition: str) -> str:
    """The console once it has stopped growing (the launcher writes it as output arrives)."""
    last = [None]

    def same():
        text = run.console(partition)
        if text == last[0]:
            return text
        last[0] = text
        return None
    return wait_until(same, 10, interval=0.3, what="the console to settle")


def test_a_real_x86_guest_on_unicorn_goes_on_from_its_saved_registers(tmp_path):
    """hvtest64 (long mode, partitions/guests) saved between two of its checks resumes in a
    new run from its registers and memory: it finishes the remaining checks, and none of the
    earlier ones runs again."""
    pytest.importorskip("unicorn", reason="the unicorn backend needs the unicorn package")
    config, path = str(REPO / "configs" / "hvtest64.toml"), tmp_path / "real.hvs"
    run = start_run(config, short_run_root())
    try:
        wait_until(lambda: re.search(r"^ok 5 - ", run.console("real"), re.M), 60, interval=0.02,
                   what="hvtest64's fifth check")
        # Paused at once: the save itself may wait for an instruction boundary (≈ 0.8 s under
        # load), long enough for the guest to finish all 33 checks first (CI once saved it after
        # its last line, and the restored guest rightly had nothing left to print).
        r = run.launch("ctl", run.name, "pause", "real", timeout=30)
        assert r.returncode == 0, r.stderr
        r = run.launch("ctl", run.name, "save", "real", str(path), "--paused", timeout=60)
        assert r.returncode == 0, r.stderr
        assert "its CPU registers saved" in r.stdout, r.stdout
        before = settled_console(run, "real")  # what the guest wrote before the pause, all of it
    finally:
        stopped(run)
    done = [int(n) for n in re.findall(r"^ok (\d+) - ", before, re.M)]
    assert done[-1] < 33, f"the guest finished before the pause reached it: {done}"
    assert len(saved_state.read_file(path)["sections"]["cpu"]) == 1
    run = start_run(config, short_run_root(), extra=("--restore", f"real={path}"))
    try:
        console = wait_until(lambda: "hvtest: 33/33 passed" in run.console("real") and run.console("real"), 60,
                             interval=0.2, what="the restored guest to finish its checks")
        checks = [int(n) for n in re.findall(r"^ok (\d+) - ", console, re.M)]
        assert checks and checks[0] > 5 and checks[-1] == 33, console  # went on; did not start over
        # The two consoles together are one guest's: every check once, in order (the pause
        # may fall inside a line, which the restored guest then finishes).
        whole = [int(n) for n in re.findall(r"^ok (\d+) - ", before + console, re.M)]
        assert whole == list(range(1, 34)), whole
        assert "not ok" not in console
    finally:
        stopped(run)


def test_a_firmware_partition_saved_in_its_post_boots_on_from_its_shadow_ram(tmp_path):
    """SeaBIOS (configs/seabios.toml) saved during its POST — its code and data in its shadow
    RAM at 0xE0000–0xFFFFF and option ROMs at 0xC0000, the partition process's memory, which
    VP 0 saves with its registers — restored in a new run: it goes on and boots the disk's
    boot sector, without POSTing again."""
    pytest.importorskip("unicorn", reason="the unicorn backend needs the unicorn package")
    from partitions.cpu.boot import seabios_missing
    if seabios_missing():
        pytest.skip(seabios_missing())
    config, path = str(REPO / "configs" / "seabios.toml"), tmp_path / "bios.hvs"
    run = start_run(config, short_run_root())
    try:
        wait_until(lambda: "Start SeaVGABIOS" in run.console("bios"), 60, interval=0.02, what="the VGA BIOS's start")
        r = run.launch("ctl", run.name, "pause", "bios", timeout=30)
        assert r.returncode == 0, r.stderr
        r = run.launch("ctl", run.name, "save", "bios", str(path), "--paused", timeout=60)
        assert r.returncode == 0 and "its CPU registers saved" in r.stdout, r.stdout + r.stderr
        before = settled_console(run, "bios")
    finally:
        stopped(run)
    assert "hvstack boot sector" not in before, "the BIOS booted before the pause reached it"
    run = start_run(config, short_run_root(), extra=("--restore", f"bios={path}"))
    try:
        console = wait_until(lambda: "signature and checksum ok" in run.console("bios") and run.console("bios"), 60,
                             interval=0.2, what="the restored BIOS to boot the disk")
        assert "SeaBIOS (version" not in console, console  # went on; did not POST again
    finally:
        stopped(run)
