"""root.prestart: a run's hypervisor and zygotes started before the launcher imports root —
only for `run`; the hypervisor takes its arguments and the secret from stdin, logs where it
is told, and is the launcher's as a spawned one is; what the run does not take is killed;
a dead launcher's leftovers are known by the run tag."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil
import pytest

from root import REPO, prestart, procs, zygote

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("argv, run", [
    ([], True), (["run"], True), (["run", "configs/x.toml", "--duration", "1"], True), (["--duration", "1"], True),
    (["run", "--help"], False), (["-h"], False), (["bench", "--startup"], False), (["ls"], False),
])
def test_only_a_run_command_starts_anything(argv, run):
    assert prestart.is_run_command(argv) is run


@pytest.fixture
def started(monkeypatch):
    monkeypatch.delenv(prestart.DISABLE, raising=False)
    prestart.start(["run"])
    yield prestart
    prestart.dismiss()
    zygote.become_subreaper(False)


def test_a_prestarted_hypervisor_takes_its_arguments_and_secret_from_stdin(started, tmp_path):
    tag = started.tag()
    hv = started._started["hypervisor"]
    cmdline = psutil.Process(hv.pid).cmdline()
    assert cmdline[cmdline.index("--run-tag") + 1] == tag and "--secret-fd" in cmdline
    zygotes = started.take_zygotes()
    assert zygotes.keys() == {"worker", "partitions"}
    for z in zygotes.values():
        z.stop()
    log = tmp_path / "hypervisor.log"
    popen = started.take_hypervisor(["--endpoint", f"ipc://{tmp_path}/hv.sock", "--memory-dir", str(tmp_path)],
                                    log, "s3cret")
    try:
        assert popen is hv and popen.stdin.closed
        ready, _, _ = select.select([popen.stdout], [], [], 30)
        assert ready and popen.stdout.readline().startswith(b"READY ipc://")
        deadline = time.monotonic() + 10
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "listening on" in log.read_text(), "its stderr went to the log it was given"
        assert oct(os.stat(log).st_mode & 0o777) == "0o600"
        assert procs._names_run(cmdline, tmp_path / "elsewhere", tag), "known by its run tag"
        assert not procs._names_run(cmdline, tmp_path / "elsewhere", "another")
    finally:
        popen.terminate()
        assert popen.wait(10) == 0


def test_what_the_run_does_not_take_is_killed(started):
    hv = started._started["hypervisor"]
    zygotes = [started._started[m].popen for m in prestart.ZYGOTE_MODULES]
    started.dismiss()
    for p in (hv, *zygotes):
        assert p.poll() is not None
    assert started.take_hypervisor([], "/nonexistent", "s") is None and started.take_zygotes() == {}


def test_a_hypervisor_told_nothing_ends_quietly():
    """The launcher closed its stdin without arguments (it did not need it): status 0."""
    p = subprocess.run([sys.executable, "-m", "hypervisor", "--run-tag", "t", "--secret-fd", "0", "--args-first"],
                       cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stderr == ""


def test_nothing_starts_when_disabled(monkeypatch):
    monkeypatch.setenv(prestart.DISABLE, "0")
    before = time.monotonic()
    prestart.start(["run"])
    assert prestart.tag() is None and time.monotonic() - before < 1
