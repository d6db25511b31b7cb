"""A real run, short, driven in-process through root.cli.main: the hypervisor, a worker and a
partition start, the guest runs its workloads for a second, the tables are printed and
every process is gone."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
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
