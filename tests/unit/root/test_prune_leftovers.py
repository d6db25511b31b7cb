"""``ls --prune`` of a run whose launcher died: the processes it left are killed — only
those whose command line names the run's directory — and its cgroups removed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from root import cgroups
from root.cli import main
from root.procs import leftovers


def sleeper(*args: str) -> subprocess.Popen:
    """A process with ``args`` on its command line (once it has exec'd: waited for)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    deadline = time.monotonic() + 10
    while "import time; time.sleep(60)" not in psutil.Process(p.pid).cmdline():
        assert time.monotonic() < deadline, "the sleeper did not exec"
        time.sleep(0.01)
    return p


@pytest.fixture
def dead_run(fake_run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return fake_run("gone-1", launcher_pid=dead.pid)


def test_prune_kills_the_runs_leftovers_and_nothing_else(dead_run, capsys):
    ours = sleeper("--spec", str(dead_run / "worker-alpha.json"))
    decoy = sleeper("--spec", str(dead_run) + "-other/worker-alpha.json")  # a pid, not of this run
    stranger = sleeper()
    try:
        man = json.loads((dead_run / "manifest.json").read_text())
        man["processes"] = {"worker:alpha": {"pid": ours.pid}, "partition:alpha": {"pid": decoy.pid},
                            "hypervisor:hv": {"pid": stranger.pid}}
        (dead_run / "manifest.json").write_text(json.dumps(man))
        assert [p.pid for p in leftovers(dead_run, man)] == [ours.pid]
        assert main(["ls", "--prune"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"pruned gone-1: its launcher had died; guest memory removed, "
                              f"1 leftover process(es) killed (pid {ours.pid})"), out
        ours.wait(5)  # gone (reaped by the prune, our child here)
        assert decoy.poll() is None and stranger.poll() is None
        assert ours.pid not in json.loads((dead_run / "manifest.json").read_text())["ended"]["left_running"]
    finally:
        for p in (ours, decoy, stranger):
            p.kill()
            p.wait()


def test_a_leftover_that_started_before_the_run_is_not_the_runs(dead_run):
    older = sleeper("--spec", str(dead_run / "worker-alpha.json"))
    try:
        man = {"created": "2000-01-01T00:00:00+00:00", "processes": {"worker:alpha": {"pid": older.pid}}}
        assert [p.pid for p in leftovers(dead_run, man)] == [older.pid]
        man["created"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 60))
        assert leftovers(dead_run, man) == []
    finally:
        older.kill()
        older.wait()


def test_a_dead_runs_cgroups_are_removed(tmp_path):
    controller = tmp_path / "cpu"  # a directory tree in place of the controller
    (controller / "hvstack" / "gone-1" / "alpha").mkdir(parents=True)
    (controller / "hvstack" / "gone-1" / "beta").mkdir()
    (controller / "hvstack" / "live-2" / "alpha").mkdir(parents=True)
    removed = cgroups.remove_run("gone-1", controller)
    assert sorted(p.name for p in removed) == ["alpha", "beta"]
    assert not (controller / "hvstack" / "gone-1").exists()
    assert (controller / "hvstack" / "live-2" / "alpha").exists()
    assert cgroups.remove_run("..", controller) == [] and (controller / "hvstack").exists()
