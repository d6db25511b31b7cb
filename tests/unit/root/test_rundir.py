"""Run directories (issue 9): the runs root must be ours and private, ``stop`` signals only
the run's own launcher, every file of a run is 0600, a run whose launcher died shows as such
and ``ls --prune`` cleans it up — each driven in-process through root.cli.main."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from root.cli import main
from root.rundir import write_json
from worker.backends import DiskFile


@pytest.fixture
def victim():
    """A process that is not a launcher: what a planted manifest would name."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("argv", [["ls"], ["stop", "planted"], ["status", "planted"]])
def test_a_runs_root_others_can_write_is_refused_with_status_2(argv, runs, fake_run, victim, capsys):
    fake_run("planted", launcher_pid=victim.pid)
    runs.chmod(0o777)  # e.g. pre-created in the shared temporary directory by someone else
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"launch.py {argv[0]}: the runs directory {runs} has mode 0777, not 0700: " \
                  f"refused (chmod 700 it if it is yours)\n"
    assert victim.poll() is None, "nothing in an untrusted runs root is acted on"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_runs_root_of_another_user_is_refused_and_its_planted_run_is_not_signalled(
        runs, fake_run, victim, capsys):
    fake_run("planted", launcher_pid=victim.pid)
    os.chown(runs, 65534, 65534)
    assert main(["stop", "planted"]) == 2
    assert capsys.readouterr().err.startswith(f"launch.py stop: the runs directory {runs} belongs to uid 65534")
    assert victim.poll() is None


def test_a_default_runs_root_that_is_a_symlink_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HVSTACK_RUN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    (tmp_path / f"hvstack-{os.getuid()}").symlink_to(theirs)
    assert main(["ls"]) == 2
    assert "is not a directory (a symlink?): refused" in capsys.readouterr().err


def test_stop_does_not_signal_a_pid_that_is_not_the_runs_launcher(fake_run, victim, capsys):
    # The manifest names the victim's pid, but the launcher it recorded started at another
    # time (the launcher died and its pid was reused): not the run's launcher.
    path = fake_run("live-1", launcher_pid=victim.pid)
    man = json.loads((path / "manifest.json").read_text())
    man["launcher"]["create_time"] -= 100
    (path / "manifest.json").write_text(json.dumps(man))
    assert main(["stop", "live-1", "--timeout", "0.3"]) == 1
    assert "not running" in capsys.readouterr().out
    assert victim.poll() is None, "stop signalled a process that is not the run's launcher"


def test_stop_does_not_signal_a_pid_a_manifest_names_without_the_launchers_identity(fake_run, victim, capsys):
    fake_run("live-1", launcher_pid=victim.pid, identity=False)
    assert main(["stop", "live-1", "--timeout", "0.3"]) == 1
    assert capsys.readouterr().err == (f"launch.py stop: the manifest of run live-1 does not identify its launcher "
                                       f"(pid {victim.pid} could be any process): not signalled\n")
    assert victim.poll() is None


def test_manifests_secrets_and_disk_images_are_0600_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "manifest.json", {"a": 1})
        disk = DiskFile(str(tmp_path / "disk.img"), 1 << 20)
        disk.close()
    finally:
        os.umask(old)
    for name in ("manifest.json", "disk.img"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_a_run_whose_launcher_died_shows_so_and_prune_cleans_it_up(fake_run, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = fake_run("gone-1", launcher_pid=dead.pid)
    for f in ("memory.pool", "slat-1.bin", "tlb-lp0.bin", "console-alpha.log"):
        (path / f).write_bytes(b"x")
    assert main(["ls"]) == 0  # listed without --all: something of it is left
    out = capsys.readouterr().out
    assert "gone-1" in out and "launcher died" in out
    assert main(["ls", "--prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pruned gone-1: its launcher had died")
    assert sorted(p.name for p in path.iterdir()) == ["console-alpha.log", "logs", "manifest.json", "secret"]
    man = json.loads((path / "manifest.json").read_text())
    assert man["state"] == "ended"
    assert man["ended"]["reason"] == f"its launcher died without ending the run (pid {dead.pid}); pruned"
    assert main(["ls", "--all"]) == 0
    assert "its launcher died without ending the run" in capsys.readouterr().out
    assert main(["ls", "--prune"]) == 0
    assert capsys.readouterr().out.startswith("no live runs in ")


def test_a_live_run_is_not_pruned(fake_run, capsys):
    path = fake_run("live-1")
    (path / "memory.pool").write_bytes(b"x")
    assert main(["ls", "--prune"]) == 0
    assert "live-1" in capsys.readouterr().out and (path / "memory.pool").exists()


def test_run_refuses_a_runs_root_that_is_not_private_before_anything_starts(runs, tmp_path, capsys):
    runs.chmod(0o755)
    cfg = tmp_path / "t.toml"
    cfg.write_text("[[partition]]\nname = 'a'\n")
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err == f"launch.py run: the runs directory {runs} has mode 0755, not 0700: " \
                                      f"refused (chmod 700 it if it is yours)\n"
    assert list(runs.iterdir()) == []


def test_a_missing_runs_root_is_created_private(runs, tmp_path, monkeypatch):
    from root.rundir import checked_runs_root

    monkeypatch.setenv("HVSTACK_RUN_DIR", str(tmp_path / "new" / "runs"))
    assert checked_runs_root() is None
    root = checked_runs_root(create=True)
    assert root == tmp_path / "new" / "runs" and stat.S_IMODE(root.stat().st_mode) == 0o700
