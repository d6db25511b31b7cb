"""Starting and stopping the processes of a run.

Each process is ``python -m <package>`` started in the directory that holds hvstack's
packages, in a session of its own, with its stderr in the run's ``logs/``.  Before exec it
asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so that no process of a run
outlives the launcher, even a launcher killed by SIGKILL.  Stopping is SIGTERM, a grace
period, then SIGKILL (as trio does).

A process's secret (the run secret, or its partition's token) reaches it through a pipe it
inherits, named by ``--secret-fd N``: never the environment or argv.  Other descriptors a
process is handed (its partition's memory) are inherited the same way (``pass_fds``);
nothing else of the launcher's is.

Where the run is root's, each partition's worker and partition process gets a uid and gid
of its own (:func:`partition_uid`): ``UID_BASE + (launcher pid mod 2**22) * 256 +
partition * 2 + (1 for the worker)``, in [2**30, 2**31).  Two live runs have different
launcher pids, so their uids never meet; no /etc/passwd entry is needed.  The process
starts as root (the interpreter lives where only root may read), opens what it is
handed, connects, and drops to that uid before running anything the guest controls
(:mod:`proto.confine`).
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

from proto import confine
from root import REPO

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 3.0
UID_BASE = 1 << 30
MAX_ISOLATED_PARTITIONS = 128  # partition IDs that get uids of their own (2 per partition)


def partition_uid(launcher_pid: int, partition: int, role: str) -> int:
    """The uid (and gid) the ``role`` process (worker or partition) of ``partition`` runs
    under in the run whose launcher is ``launcher_pid``."""
    if not 0 < partition < MAX_ISOLATED_PARTITIONS:
        raise ValueError(f"partition {partition}: only IDs 1..{MAX_ISOLATED_PARTITIONS - 1} get uids of their own")
    return UID_BASE + (launcher_pid % (1 << 22)) * 256 + partition * 2 + (role == "worker")


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


# The HVSTACK_ variables a run's processes see: the run directory, and (the hypervisor
# only) where `bench --profile` wants its loop's cProfile statistics.
PASSED_ON = ("HVSTACK_RUN_DIR", "HVSTACK_PROFILE_HV")


def spawn(role: str, name: str, module: str, args: list[str], logs: Path, *, secret: str,
          fds: tuple[int, ...] = (), stdout=subprocess.DEVNULL) -> Proc:
    """``python -m module args… --secret-fd N``, its stderr appended to
    ``logs/ROLE-NAME.log`` (the hypervisor's to ``logs/hypervisor.log``); ``secret`` goes
    down a pipe, ``fds`` are inherited (and closed here once the child has them)."""
    log_path = logs / f"{role}-{name}.log" if role != "hypervisor" else logs / "hypervisor.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HVSTACK_") or k in PASSED_ON}
    if role != "hypervisor":
        env.pop("HVSTACK_PROFILE_HV", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    secret_fd = confine.secret_pipe(secret)
    log = open(log_path, "ab")
    try:
        popen = subprocess.Popen([sys.executable, "-m", module, *args, "--secret-fd", str(secret_fd)],
                                 cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                 pass_fds=(secret_fd, *fds), preexec_fn=die_with_parent,
                                 start_new_session=True)
    finally:
        log.close()
        for fd in (secret_fd, *fds):
            os.close(fd)
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
