"""A real run, short, driven in-process through root.cli.main: the hypervisor, a worker and a
partition start, the guest runs its workloads for a second, the tables are printed and
every process is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from root.cli import main

TOPOLOGY = """\
[run]
name = "inproc"
duration_s = 30
logical_processors = 1

[[partition]]
name = "alpha"
vps = 1
memory_mb = 2
chipset = "minimal"
workloads = ["serial", "cpuid", "portio"]
"""


@pytest.fixture
def short_runs(monkeypatch):
    # ipc socket paths are at most 107 bytes: pytest's tmp_path is often deeper than that.
    root = Path(tempfile.mkdtemp(prefix="hvu"))
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(60)
def test_a_one_second_run_prints_banners_and_tables_and_leaves_nothing_running(short_runs, tmp_path, capsys):
    cfg = tmp_path / "inproc.toml"
    cfg.write_text(TOPOLOGY)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["run", str(cfg), "--duration", "1"]) == 0
    out = capsys.readouterr().out
    (run,) = short_runs.iterdir()
    assert out.startswith(f"run {run.name}: 1 partition(s), 1 LPs — directory {run}\n")
    assert "       alpha | hvstack guest kernel" in out
    assert "\npartition alpha (id 1, 1 VPs, privileges 0x0, hypercall page off)\n  exits: " in out
    for label in ("emulated port I/O (worker)", "CPUID intercept (hv)"):
        assert label in out
    assert out.endswith(f"\nrun {run.name} ended: guests finished their workloads\n")
    man = json.loads((run / "manifest.json").read_text())
    assert man["state"] == "ended" and man["ended"]["exit_code"] == 0 and man["ended"]["left_running"] == []
    assert man["config"]["duration_s"] == 30  # --duration overrides the topology's, for the run only
    for info in man["processes"].values():
        assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "the run gives back the signal handlers"


def _when_running(root: Path, act, timeout: float = 30.0) -> threading.Thread:
    """In a thread: once a run in ``root`` says running, ``act(run_dir, manifest)``."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in root.glob("*/manifest.json"):
                try:
                    man = json.loads(m.read_text())
                except (OSError, ValueError):
                    continue
                if man.get("state") == "running":
                    act(m.parent, man)
                    return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(60)
def test_the_hypervisors_death_ends_the_run_at_once_in_its_name(short_runs, tmp_path, capsys):
    """Issue 9: after SIGKILL of the hypervisor the others lingered 5-10 s (the supervisor
    waited out a status request's timeout, twice) and the manifest could name a status
    timeout instead of the death."""
    cfg = tmp_path / "inproc.toml"
    cfg.write_text(TOPOLOGY)
    killed = {}

    def kill_hypervisor(run_dir, man):
        time.sleep(0.5)
        pid = man["processes"]["hypervisor:hv"]["pid"]
        killed.update(pid=pid, at=time.monotonic())
        os.kill(pid, signal.SIGKILL)

    watcher = _when_running(short_runs, kill_hypervisor)
    assert main(["run", str(cfg), "--duration", "0"]) == 1
    ended = time.monotonic()
    watcher.join(5)
    assert killed, "the run never said running"
    assert ended - killed["at"] < 2.0, f"the run took {ended - killed['at']:.1f} s to end after the hypervisor died"
    (run,) = short_runs.iterdir()
    man = json.loads((run / "manifest.json").read_text())
    assert man["ended"]["reason"] == f"hypervisor hv (pid {killed['pid']}) killed by SIGKILL"
    assert man["ended"]["left_running"] == []
    capsys.readouterr()



@pytest.mark.timeout(60)
def test_a_process_that_dies_of_a_fatal_signal_leaves_its_stack_in_the_runs_output(short_runs, tmp_path, capsys):
    """CI once saw only 'worker alpha killed by SIGABRT' (a C library's assertion?) and
    nothing to say why: every process runs with -X faulthandler, and the launcher prints
    the end of a dead process's log beside its death."""
    cfg = tmp_path / "inproc.toml"
    cfg.write_text(TOPOLOGY)
    killed = {}

    def abort_worker(run_dir, man):
        time.sleep(0.5)
        killed["pid"] = man["processes"]["worker:alpha"]["pid"]
        os.kill(killed["pid"], signal.SIGABRT)

    watcher = _when_running(short_runs, abort_worker)
    assert main(["run", str(cfg), "--duration", "0"]) == 1
    watcher.join(5)
    out = capsys.readouterr().out
    assert f"worker alpha (pid {killed['pid']}) killed by SIGABRT; the end of logs/worker-alpha.log:\n" in out
    assert "  Fatal Python error: Aborted" in out and 'File "' in out
    (run,) = short_runs.iterdir()
    man = json.loads((run / "manifest.json").read_text())
    assert man["ended"]["reason"] == f"worker alpha (pid {killed['pid']}) killed by SIGABRT"


GEN1_DISK = """\
[run]
name = "private"
duration_s = 30
logical_processors = 1

[[partition]]
name = "alpha"
vps = 1
memory_mb = 2
disk = { image = "alpha.img", size_mb = 1 }
workloads = ["serial", "disk"]
"""


@pytest.mark.timeout(60)
def test_every_file_of_a_run_and_its_disk_image_are_0600(short_runs, tmp_path, capsys):
    """Issue 9: disk images were created 0644 (so were logs, consoles, specs and the
    manifest, inside a 0700 directory)."""
    cfg = tmp_path / "private.toml"
    cfg.write_text(GEN1_DISK)
    seen = {}

    def modes(run_dir, man):
        time.sleep(0.5)  # the guest has written its console and the disk
        seen.update({str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode)
                     for p in run_dir.rglob("*") if p.exists()})
        os.kill(os.getpid(), signal.SIGTERM)

    old = os.umask(0o022)
    try:
        watcher = _when_running(short_runs, modes)
        main(["run", str(cfg), "--duration", "0"])
        watcher.join(5)
    finally:
        os.umask(old)
    capsys.readouterr()
    assert {"mem-1.bin", "slat-1.bin", "tlb-p1-lp0.bin", "logs/hypervisor.log", "manifest.json"} <= set(seen), \
        sorted(seen)
    loose = {k: f"{v:04o}" for k, v in seen.items()
             if v != (0o700 if k == "logs" else 0o400 if k.startswith("slat-") else 0o600)
             and not k.endswith(".sock")}
    assert loose == {}
    assert stat.S_IMODE((tmp_path / "alpha.img").stat().st_mode) == 0o600
