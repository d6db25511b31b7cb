"""root.zygote: a process forked by a run's zygote starts as a fresh ``python -m`` would —
the same descriptors and nothing else, its secret by pipe, stderr into its log, a session
of its own, faulthandler on, SIGKILL at the launcher's death, the launcher its parent — and
every way it can end is seen: its exit, its crash, the zygote's death (a fresh start
instead), the launcher's death (nothing left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from root import REPO, procs, zygote
from root.procs import ForkedPopen

pytestmark = pytest.mark.timeout(60)

PROBE = '''
import ctypes, faulthandler, fcntl, json, os, signal, sys, time


def main(argv):
    what = argv[0]
    if what == "exit":
        return int(argv[1])
    if what == "raise":
        raise RuntimeError("a bug in the child")
    if what == "abort":
        os.abort()
    if what == "sleep":
        time.sleep(60)
        return 0
    fds = [fd for fd in range(1024) if _open(fd)]
    secret_fd = int(argv[argv.index("--secret-fd") + 1])
    secret = os.read(secret_fd, 100).decode()
    pdeathsig = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
    dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
    print("to the log", file=sys.stderr, flush=True)
    print(json.dumps({"fds": fds, "secret_fd": secret_fd, "secret": secret,
                      "leaked": os.environ.get("HVSTACK_SECRET"), "run_dir": os.environ.get("HVSTACK_RUN_DIR"),
                      "sid": os.getsid(0), "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                      "pdeathsig": pdeathsig.value, "faulthandler": faulthandler.is_enabled(), "dumpable": dumpable,
                      "comm": open("/proc/self/comm").read().strip(), "threads": len(os.listdir("/proc/self/task"))}),
          flush=True)
    return 0


def _open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


if __name__ == "__main__":  # started fresh (python -m probe), where the zygote cannot fork it
    sys.exit(main(sys.argv[1:]))
'''


def write_probe(directory) -> None:
    (directory / "probe").mkdir()
    (directory / "probe" / "__init__.py").write_text("")
    (directory / "probe" / "__main__.py").write_text(PROBE)


@pytest.fixture
def probe_zygote(tmp_path, monkeypatch):
    """A zygote of the ``probe`` package above, this process its launcher (a subreaper)."""
    write_probe(tmp_path)
    monkeypatch.setenv("HVSTACK_SECRET", "leaked")
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # beside hvstack's packages (procs.child_env)
    assert zygote.become_subreaper()
    z = zygote.Zygote("probe", "tag", tmp_path, procs.child_env("worker"), REPO, procs.die_with_parent)
    yield z
    z.stop()
    zygote.become_subreaper(False)


def spawn(z, *args, stdout=subprocess.DEVNULL, fds=(), log_dir=None):
    return procs.spawn("worker", "x", "probe", list(args), log_dir, secret="s3cret", fds=fds, stdout=stdout, zygote=z)


def test_a_forked_child_starts_as_a_fresh_python_m_would(probe_zygote, tmp_path):
    handed = os.open(os.devnull, os.O_RDONLY)
    p = spawn(probe_zygote, "report", str(handed), stdout=subprocess.PIPE, fds=(handed,), log_dir=tmp_path)
    assert isinstance(p.popen, ForkedPopen), probe_zygote.failure
    out = p.popen.stdout.read()
    assert p.popen.wait(30) == 0
    r = json.loads(out)
    assert r["secret"] == "s3cret" and r["leaked"] is None and r["run_dir"] == str(tmp_path)
    assert r["fds"] == [0, 1, 2, handed, r["secret_fd"]] or r["fds"] == sorted([0, 1, 2, handed, r["secret_fd"]])
    assert r["ppid"] == os.getpid(), "the launcher is its parent (it waits for it, signals it)"
    assert r["sid"] == r["pid"] == p.pid, "a session of its own"
    assert r["pdeathsig"] == signal.SIGKILL and r["faulthandler"] and r["threads"] == 1
    assert r["comm"] == "worker-x" and r["cwd"] == str(REPO)
    assert r["dumpable"] == 0, "not dumpable, as its zygote (which nothing may ptrace)"
    assert "to the log" in (tmp_path / "worker-x.log").read_text()
    with pytest.raises(OSError):
        os.fstat(handed)  # closed here once the child has it, as for a fresh start
    assert probe_zygote.forked == 1 and probe_zygote.ready["threads"] == 1 and probe_zygote.ready["fds"] == []


def test_each_way_a_forked_child_ends_is_its_exit_status(probe_zygote, tmp_path):
    assert spawn(probe_zygote, "exit", "3", log_dir=tmp_path).popen.wait(30) == 3
    assert spawn(probe_zygote, "raise", log_dir=tmp_path).popen.wait(30) == 1
    assert "RuntimeError: a bug in the child" in (tmp_path / "worker-x.log").read_text()
    aborted = spawn(probe_zygote, "abort", log_dir=tmp_path)
    assert aborted.popen.wait(30) == -signal.SIGABRT
    log = (tmp_path / "worker-x.log").read_text()
    assert "Fatal Python error: Aborted" in log and "in main" in log, "faulthandler's stack in its log"
    sleeper = spawn(probe_zygote, "sleep", log_dir=tmp_path)
    assert sleeper.popen.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.popen.wait(0.05)
    assert procs.stop_procs([sleeper], grace_s=5) == {"worker:x": -signal.SIGTERM}
    assert procs.describe_exit(sleeper.popen.returncode) == "killed by SIGTERM"


def test_when_the_zygote_dies_its_children_live_on_and_the_next_starts_fresh(probe_zygote, tmp_path):
    sleeper = spawn(probe_zygote, "sleep", log_dir=tmp_path)
    assert isinstance(sleeper.popen, ForkedPopen)
    probe_zygote.popen.kill()
    probe_zygote.popen.wait(10)
    fresh = spawn(probe_zygote, "exit", "4", log_dir=tmp_path)
    assert isinstance(fresh.popen, subprocess.Popen) and fresh.popen.wait(30) == 4
    assert probe_zygote.failure and not probe_zygote.usable
    assert sleeper.popen.poll() is None, "the launcher's child, not the zygote's"
    sleeper.popen.kill()
    assert sleeper.popen.wait(10) == -signal.SIGKILL


def test_the_launchers_death_takes_the_zygote_and_its_children_with_it(tmp_path, monkeypatch):
    """A launcher killed by SIGKILL leaves nothing: its zygote and what it forked get SIGKILL."""
    write_probe(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    launcher = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from root import REPO, procs, zygote
        assert zygote.become_subreaper()
        d = Path({str(tmp_path)!r})
        z = zygote.Zygote("probe", "tag", d, procs.child_env("worker"), REPO, procs.die_with_parent)
        child = procs.spawn("worker", "w", "probe", ["sleep"], d, secret="s", zygote=z)
        print(z.pid, child.pid, type(child.popen).__name__, flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        zygote_pid, child_pid, kind = p.stdout.readline().split()
        assert kind == "ForkedPopen"
        assert os.path.exists(f"/proc/{child_pid}")
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 10
        while (_alive(zygote_pid) or _alive(child_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(zygote_pid), "the zygote outlived its launcher"
        assert not _alive(child_pid), "a forked child outlived its launcher"
    finally:
        if p.poll() is None:
            p.kill()


def _alive(pid) -> bool:
    """Running (a zombie is dead: whoever adopted it has not reaped it yet)."""
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_the_run_zygotes_import_without_a_thread_or_a_stray_descriptor(tmp_path):
    """A thread would be lost at the fork (and unshare(CLONE_NEWUSER) refuses a process with
    two); a descriptor an import kept would be closed under it in every child."""
    for module in ("worker", "partitions"):
        z = zygote.Zygote(module, "tag", tmp_path, procs.child_env(module), REPO, procs.die_with_parent)
        try:
            ready = z.wait_ready(30)
        finally:
            z.stop()
        assert ready["threads"] == 1 and ready["fds"] == [], (module, ready)
