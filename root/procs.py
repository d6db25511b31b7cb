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
of its own (:func:`partition_uid`).  Partition IDs 1..127 get ``UID_BASE + (launcher pid mod
2**22) * 256 + partition * 2 + (1 for the worker)``, in [2**30, 2**31): two live runs have
different launcher pids, so those never meet.  Any other ID (the hypervisor hands out IDs
without bound as partitions are created and deleted) gets a uid hashed from (launcher pid,
partition, role) into [2**31, 2**32 - 2).  Either way a uid that a live process already has
(a leftover of a dead run whose launcher's pid came round again, another user's, a clash of
hashes) is passed over for the next candidate.  No /etc/passwd entry is needed.  The process
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
from datetime import datetime
from pathlib import Path

import psutil

from proto import confine
from proto.sha256 import sha256
from root import REPO
from root.prestart import PASSED_ON, child_env  # noqa: F401 (PASSED_ON: what a run's processes see)
from root.zygote import ForkedPopen, Zygote, ZygoteError

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 3.0
UID_BASE = 1 << 30
UID_HASHED = 1 << 31  # where the uids of partition IDs beyond the run's block start
UID_LIMIT = (1 << 32) - 2  # (uid_t)-1 is no uid; -2 is kept clear as well
MAX_ISOLATED_PARTITIONS = 128  # partition IDs in the run's block (2 uids per partition)
_CANDIDATES = 64


def uids_in_use() -> set[int]:
    """Every uid (real, effective, saved) a live process has, from /proc."""
    used = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        used.update(int(x) for x in line.split()[1:4])
                        break
        except OSError:  # gone meanwhile
            pass
    return used


def _candidates(launcher_pid: int, partition: int, role: str):
    worker = role == "worker"
    if partition < MAX_ISOLATED_PARTITIONS:
        yield UID_BASE + (launcher_pid % (1 << 22)) * 256 + partition * 2 + worker
    for attempt in range(_CANDIDATES):
        digest = sha256(f"{launcher_pid}:{partition}:{role}:{attempt}".encode()).digest()
        yield UID_HASHED + int.from_bytes(digest[:8], "little") % (UID_LIMIT - UID_HASHED)


def partition_uid(launcher_pid: int, partition: int, role: str, in_use: set[int] | None = None) -> int:
    """The uid (and gid) the ``role`` process (worker or partition) of ``partition`` runs
    under in the run whose launcher is ``launcher_pid``: the first candidate that no live
    process has (``in_use``: those uids; default: read from /proc now)."""
    if not isinstance(partition, int) or partition < 1:
        raise ValueError(f"partition {partition!r}: a child partition's ID is 1 or more")
    if role not in ("worker", "partition"):
        raise ValueError(f"role {role!r}: worker or partition")
    used = uids_in_use() if in_use is None else in_use
    for uid in _candidates(launcher_pid, partition, role):
        if uid not in used:
            return uid
    raise ValueError(f"partition {partition}: {_CANDIDATES} candidate uids, all in use")


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
    popen: subprocess.Popen | ForkedPopen  # the latter: forked by a zygote (root/zygote.py)
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def spawn(role: str, name: str, module: str, args: list[str], logs: Path, *, secret: str,
          fds: tuple[int, ...] = (), stdout=subprocess.DEVNULL, zygote: Zygote | None = None) -> Proc:
    """``python -m module args… --secret-fd N``, its stderr appended to
    ``logs/ROLE-NAME.log`` (the hypervisor's to ``logs/hypervisor.log``); ``secret`` goes
    down a pipe, ``fds`` are inherited (and closed here once the child has them).  With a
    usable ``zygote`` (root/zygote.py) of ``module``, forked from it with the same
    descriptors, environment and start; if it cannot, started fresh as before."""
    log_path = logs / f"{role}-{name}.log" if role != "hypervisor" else logs / "hypervisor.log"
    env = child_env(role)
    secret_fd = confine.secret_pipe(secret)
    if zygote is not None and zygote.usable and zygote.module == module and stdout in FORKABLE_STDOUT:
        try:
            popen = _fork(zygote, role, name, [*args, "--secret-fd", str(secret_fd)], log_path, env,
                          (secret_fd, *fds), stdout)
        except ZygoteError:
            pass  # started fresh below; zygote.failure says why (and the manifest)
        else:
            for fd in (secret_fd, *fds):
                os.close(fd)
            return Proc(role, name, popen, log_path)
    log = open(log_path, "ab")
    try:
        # -X faulthandler: a process that dies of a fatal signal (SIGSEGV, SIGABRT from a C
        # library's assertion, …) leaves every thread's Python stack in its log.
        popen = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", module, *args,
                                  "--secret-fd", str(secret_fd)],
                                 cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                 pass_fds=(secret_fd, *fds), preexec_fn=die_with_parent,
                                 start_new_session=True)
    finally:
        log.close()
        for fd in (secret_fd, *fds):
            os.close(fd)
    return Proc(role, name, popen, log_path)


FORKABLE_STDOUT = (subprocess.DEVNULL, subprocess.PIPE)


def _fork(zygote: Zygote, role: str, name: str, args: list[str], log_path: Path, env: dict,
          fds: tuple[int, ...], stdout) -> ForkedPopen:
    """The child from ``zygote``: stdin /dev/null, stdout /dev/null or a pipe read here,
    stderr appended to its log, ``fds`` at their numbers (the secret pipe's first)."""
    read_end, std_out = os.pipe() if stdout == subprocess.PIPE else (None, os.open(os.devnull, os.O_WRONLY))
    std_in = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        pid = zygote.fork(args, env, REPO, f"{role}-{name}", [std_in, std_out, log, *fds], [0, 1, 2, *fds])
    except ZygoteError:
        if read_end is not None:
            os.close(read_end)
        raise
    finally:
        for fd in (std_in, std_out, log):
            os.close(fd)
    return ForkedPopen(pid, [f"{zygote.module} (forked)", *args],
                       stdout=open(read_end, "rb") if read_end is not None else None)


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


def last_words(log_path: Path, lines: int = 20, max_chars: int = 3000) -> str:
    """The end of a process's log, indented, for the line that says it died ('' if it
    wrote nothing): why it died is usually there, and a run's output is often all a user
    (or a CI log) keeps."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_chars))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    if not tail:
        return ""
    return f"the end of {log_path.parent.name}/{log_path.name}:\n" + "\n".join("  " + line for line in tail)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _names_run(cmdline: list[str], run_dir: Path, run_tag: str | None = None) -> bool:
    """Whether a command line is one of this run's: an argument in its run directory (a
    worker's or partition's ``--spec``, the hypervisor's ``--memory-dir`` or endpoint), or
    ``--run-tag`` and the run's tag (a zygote and what it forked, a process started before
    its run directory: root/prestart.py)."""
    if run_tag and any(a == "--run-tag" and b == run_tag for a, b in zip(cmdline, cmdline[1:])):
        return True
    d = str(run_dir).rstrip("/")
    for arg in cmdline:
        arg = arg.removeprefix("ipc://")
        if arg == d or arg.startswith(d + "/"):
            return True
    return False


def leftovers(run_dir: Path, man: dict) -> list[psutil.Process]:
    """The processes a run's manifest names that are still alive and are that run's: the
    pid alone proves nothing (it may have been reused), so a process counts only if its
    command line names the run directory and it started after the run was created."""
    created = None
    try:
        created = datetime.fromisoformat(man["created"]).timestamp()
    except (KeyError, TypeError, ValueError):
        pass
    found = []
    for info in [*(man.get("processes") or {}).values(), *(man.get("zygotes") or {}).values()]:
        pid = info.get("pid") if isinstance(info, dict) else None
        if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
            continue
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                if p.status() == psutil.STATUS_ZOMBIE or not _names_run(p.cmdline(), run_dir, man.get("run_tag")):
                    continue
                if created is not None and p.create_time() < created - 1:
                    continue
        except psutil.Error:
            continue
        found.append(p)
    return found


def kill_leftovers(run_dir: Path, man: dict, timeout_s: float = 3.0) -> list[int]:
    """SIGKILL what a dead launcher's run left running (:func:`leftovers`); the pids killed."""
    procs = leftovers(run_dir, man)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)
    return [p.pid for p in procs]
