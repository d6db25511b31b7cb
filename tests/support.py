"""Helpers for tests that start the real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s (last: {last!r})")


def send_or_refused(sock, frame: bytes) -> None:
    """Send ``frame`` on a client socket whose handshake the server may refuse.

    A refused handshake can take the connection's pipe away before the send (on a loaded
    host it does), and a DEALER with no pipe blocks in ``send``: the caller sets the socket's
    ``sndtimeo``, and a send that times out is the refusal, not a failure — the frame is
    queued or not at all, never delivered either way."""
    import zmq  # only the tests that speak ZeroMQ themselves pay for it

    try:
        sock.send(frame)
    except zmq.Again:
        pass


def short_run_root() -> str:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path is often too deep.
    return tempfile.mkdtemp(prefix="hvt")


def run_launch_py(*args: str, run_root: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HVSTACK_RUN_DIR=run_root)
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


@dataclass
class LiveRun:
    """A run started in the background with ``launch.py run CONFIG --duration 0``."""

    proc: subprocess.Popen
    run_root: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    def pids(self) -> list[int]:
        man = self.manifest()
        return [man["launcher_pid"], *(p["pid"] for p in man.get("processes", {}).values()),
                *(z["pid"] for z in man.get("zygotes", {}).values())]

    def launch(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_launch_py(*args, run_root=self.run_root, **kw)

    def postmortem(self, log_lines: int = 15) -> str:
        """What a failure message needs when the run stopped answering: whether the
        launcher still runs, each process's state and CPU time, and the end of the
        hypervisor's log (the run's directory is gone with the test's)."""
        lines = [f"launcher: {'running' if self.proc.poll() is None else f'exited {self.proc.returncode}'}"]
        try:
            procs = self.manifest().get("processes", {})
        except (OSError, ValueError) as e:
            procs, lines = {}, lines + [f"no manifest: {e}"]
        for name, p in procs.items():
            try:
                h = psutil.Process(p["pid"])
                t = h.cpu_times()
                lines.append(f"{name} (pid {p['pid']}): {h.status()}, {t.user + t.system:.2f} CPU-s")
            except psutil.Error as e:
                lines.append(f"{name} (pid {p['pid']}): {type(e).__name__}")
        log = self.path / "logs" / "hypervisor.log"
        tail = log.read_text(errors="replace").splitlines()[-log_lines:] if log.exists() else ["(no log)"]
        return "\n".join(lines + ["hypervisor.log, last lines:", *tail])

    def launch_background(self, *args: str, prefix: tuple = ()) -> subprocess.Popen:
        """``launch.py ARGS`` against this run's root, not waited for (text pipes)."""
        return subprocess.Popen([*prefix, sys.executable, str(REPO / "launch.py"), *args], cwd=REPO,
                                env=dict(os.environ, HVSTACK_RUN_DIR=self.run_root),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def console(self, partition: str) -> str:
        p = self.path / f"console-{partition}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def secret(self) -> str:
        return (self.path / "secret").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_run(config: str, run_root: str, duration: str = "0", extra: tuple = (), prefix: tuple = ()) -> LiveRun:
    """``launch.py run CONFIG``, its command after ``prefix`` (``ip netns exec NS``: on a host)."""
    env = dict(os.environ, HVSTACK_RUN_DIR=run_root)
    proc = subprocess.Popen([*prefix, sys.executable, str(REPO / "launch.py"), "run", config, "--duration", duration,
                             *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running():
        if proc.poll() is not None:
            raise AssertionError(f"launch.py exited {proc.returncode}: {proc.stderr.read()}")
        for d in Path(run_root).glob("*/manifest.json"):
            man = json.loads(d.read_text())
            if man.get("state") == "running":
                return d.parent
        return None

    path = wait_until(running, 30, what="run to start")
    return LiveRun(proc, run_root, path)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out
