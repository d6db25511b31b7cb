"""Starting and stopping the processes of a run.

Each process is ``python -m <package>`` started in the directory that holds hvstack's
packages, in a session of its own, with its stderr in the run's ``logs/``.  Before exec it
asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so that no process of a run
outlives the launcher, even a launcher killed by SIGKILL.  Stopping is SIGTERM, a grace
period, then SIGKILL (as trio does).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from root import REPO

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 3.0


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the launcher dies, even by SIGKILL, so
    no process of a run outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass
class Proc:
    role: str  # hypervisor | worker | partition
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def secret_pipe(data: bytes) -> int:
    """The read end of a pipe holding ``data`` then EOF: a secret for a child to inherit
    (``spawn(pass_fds=…)``) and read, never in its argv or environment.  The caller
    closes it once the child is started."""
    r, w = os.pipe()
    try:
        os.write(w, data)  # far below the pipe's capacity: never blocks
    finally:
        os.close(w)
    return r


def spawn(role: str, name: str, module: str, args: list[str], env_extra: dict, logs: Path,
          stdout=subprocess.DEVNULL, pass_fds: tuple[int, ...] = ()) -> Proc:
    """``python -m module args…``, its stderr appended to ``logs/ROLE-NAME.log`` (the
    hypervisor's to ``logs/hypervisor.log``); ``pass_fds`` are inherited."""
    log_path = logs / f"{role}-{name}.log" if role != "hypervisor" else logs / "hypervisor.log"
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(log_path, "ab")
    try:
        popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                 preexec_fn=die_with_parent, start_new_session=True, pass_fds=pass_fds)
    finally:
        log.close()
    return Proc(role, name, popen, log_path)


def stop_procs(procs: list[Proc], grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
    """SIGTERM, wait, SIGKILL (as trio does); returns each process's exit status."""
    for p in procs:
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)
    return {f"{p.role}:{p.name}": p.popen.returncode for p in procs}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
