"""A run's zygote: one process per role that has already imported that role's modules and
forks a worker (or partition) process from that state, instead of a fresh ``python -m``
importing them again (issue 12: each import cost ≈ 0.25 CPU-s; 32 of them were most of a
16-partition start-up).  Android's zygote and multiprocessing's forkserver do the same.

``python -X faulthandler -m root.zygote --module worker --run-dir RUN --control-fd N``
imports ``worker.__main__`` and waits on ``N``, one end of a ``SOCK_SEQPACKET`` pair
whose other end the launcher holds.  A request is one JSON message — the arguments of
``python -m MODULE ARGS…``, the environment, the working directory, the launcher's pid and
the descriptor numbers the child must see — with the descriptors themselves (stdin, stdout,
stderr, the secret pipe's read end, the partition's memory…) passed as ``SCM_RIGHTS``.  The
answer is ``{"pid": P}`` or ``{"error": …}``.

Nothing of the isolation changes (``proto.confine``): the child is, from its first
instruction of ``MODULE.main(ARGS)`` on, what ``python -X faulthandler -m MODULE ARGS``
would have been — the same descriptors at the same numbers and nothing else, stderr into
its log, the environment it is given, a session of its own, faulthandler on, SIGKILL at the
launcher's death — and it then confines itself exactly as before (namespaces, network
namespace, uid, seccomp: all in ``MODULE.main``).  Its secret still comes down the pipe:
the zygote passes the descriptor on and never reads it, and it never holds the run secret
(it is started with the sanitised environment of any run process).

The zygote must stay single-threaded and must not create a ZeroMQ context (a fork after
one is unsafe; and unshare(CLONE_NEWUSER) refuses a process with threads): it checks that
it has one thread before every fork and refuses otherwise.

*The launcher stays the parent.*  The launcher makes itself a child subreaper
(PR_SET_CHILD_SUBREAPER); the zygote forks an intermediate that forks the child and exits
at once, so that the child is re-parented to the launcher, which then supervises it exactly
as a child it had started itself (waitpid, exit status, signals) — the zygote dying takes no
child with it.  The child waits until it is the launcher's, then asks for SIGKILL at the
launcher's death (PR_SET_PDEATHSIG; a re-parenting would have fired it had it been set
before) and checks the launcher is still there.

*What forking does share* (and a fresh interpreter does not): the zygote's address-space
layout (ASLR) and Python's string-hash secret.  Each role has a zygote of its own and the
hypervisor is started fresh, so a process running guest code shares them only with the
other partitions' processes, which it cannot send anything to; not with its worker or the
hypervisor (those it talks to).
"""

from __future__ import annotations

import argparse
import array
import faulthandler
import fcntl
import gc
import importlib
import json
import os
import signal
import socket
import sys
import time

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
MAX_REQUEST = 1 << 16
MAX_FDS = 64
ADOPTION_TIMEOUT_S = 5.0  # the child's wait to become the launcher's (one exit away)


class Child:
    """A request the zygote forked: run in the child, from the zygote's ``main``."""

    def __init__(self, module: str, request: dict) -> None:
        self.module = module
        self.request = request

    def run(self) -> int:
        req = self.request
        os.setsid()
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        faulthandler.enable(file=sys.stderr, all_threads=True)  # stderr is now its log
        prctl(PR_SET_NAME, req["name"].encode()[:15])
        if not _adopted_by(req["launcher"]):
            print(f"zygote child: not re-parented to the launcher (pid {req['launcher']}) in "
                  f"{ADOPTION_TIMEOUT_S} s: ending", file=sys.stderr)
            return 1
        sys.argv = [f"-m {self.module}", *req["args"]]
        main = importlib.import_module(f"{self.module}.__main__").main
        return main(req["args"])


def prctl(option: int, arg) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if isinstance(arg, bytes):
        return libc.prctl(option, ctypes.c_char_p(arg), 0, 0, 0)
    return libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _adopted_by(launcher: int) -> bool:
    """Wait until this process is the launcher's child (the intermediate has exited); then
    die with the launcher, as a process it started itself would (root.procs.die_with_parent)."""
    deadline = time.monotonic() + ADOPTION_TIMEOUT_S
    while os.getppid() != launcher:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == launcher  # the launcher did not die before the line above


def _place_fds(received: list[int], targets: list[int]) -> None:
    """Each received descriptor at its target number (as ``pass_fds`` keeps them), every
    other descriptor closed, as an exec'd child's would be."""
    high = max([*received, *targets, 2]) + 1
    moved = [_dup_at_least(fd, high) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, target in zip(moved, targets):
        os.dup2(fd, target, inheritable=True)
    keep = set(targets)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor
                pass


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def _dup_at_least(fd: int, low: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve(module: str, control: socket.socket) -> Child | None:
    """Answer requests until the launcher closes its end; in a forked child, return what
    that child is to run (the zygote's own return is None)."""
    while True:
        try:
            data, ancdata, _, _ = control.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(MAX_FDS * 4))
        except InterruptedError:
            continue
        except ConnectionResetError:  # closed with a request unread (a run that dismissed it early)
            return None
        if not data:
            return None  # the launcher closed its end (or died)
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        received = list(fds)
        try:
            request = json.loads(data)
            if len(request["fds"]) != len(received):
                raise ValueError(f"{len(received)} descriptors for {len(request['fds'])} numbers")
            if _threads() != 1:  # a fork would copy one thread of several (and their locks)
                raise RuntimeError(f"the zygote has {_threads()} threads: it forks only with one")
            child = _fork(module, request, received, control)
            if child is not None:
                return child
        except Exception as e:  # a bad request: refused, the zygote goes on
            _send(control, {"error": f"{type(e).__name__}: {e}"})
        finally:
            for fd in received:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _fork(module: str, request: dict, received: list[int], control: socket.socket) -> Child | None:
    """Fork an intermediate that forks the child and exits; answer with the child's pid.
    Returns the :class:`Child` in the child, None in the zygote."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    middle = os.fork()
    if middle == 0:  # the intermediate: one fork, then gone, so the launcher adopts the child
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                control.close()
                _place_fds(received, request["fds"])
                received.clear()  # now at their numbers: the zygote's loop must not close them
                return Child(module, request)
            os.write(w, str(pid).encode())
            os._exit(0)
        except BaseException:  # never back into the zygote's loop, in either process
            import traceback

            traceback.print_exc()
            os._exit(1)
    os.close(w)
    try:
        pid = int(os.read(r, 32) or b"0")
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    _send(control, {"pid": pid} if pid > 0 else {"error": "the intermediate process forked nothing"})
    return None


def _send(control: socket.socket, answer: dict) -> None:
    try:
        control.send(json.dumps(answer).encode())
    except OSError:
        pass


# -- the launcher's side ------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT_S = 10.0  # its imports, on a loaded host (the hypervisor's is as long)
DISABLE = "HVSTACK_ZYGOTE"  # "0": every process a fresh `python -m` (measuring, or a fallback)


class ZygoteError(OSError):
    """The zygote could not fork the process (dead, not ready in time, refused): the caller
    starts it as a fresh ``python -m`` instead."""


def enabled() -> bool:
    return os.environ.get(DISABLE, "1") != "0"


def become_subreaper(on: bool = True) -> bool:
    """Make this process (the launcher) the parent of the children the zygotes fork."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0) == 0


class ForkedPopen:
    """The launcher's handle on a child a zygote forked and the launcher adopted (its
    parent, as a subreaper): the part of :class:`subprocess.Popen` a run uses."""

    def __init__(self, pid: int, args: list[str], stdout=None) -> None:
        self.pid = pid
        self.args = args
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not ours after all (never adopted): gone or not, no status
                if not os.path.exists(f"/proc/{self.pid}"):
                    self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a reaped pid (it may be another process's by now)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """``python -m root.zygote`` for ``module``, started by the launcher (stderr into
    ``logs/zygote-MODULE.log``, or the launcher's where ``logs`` is None: started before the
    run directory was; its own session; ``preexec_fn``: SIGKILL at the launcher's death).
    ``run_tag`` on its command line (and so its children's) names its run (the manifest's)."""

    def __init__(self, module: str, run_tag: str, logs, env: dict, cwd, preexec_fn) -> None:
        import subprocess

        self.module = module
        self.log_path = logs / f"zygote-{module}.log" if logs is not None else None
        self.failure: str | None = None  # why it stopped being used, if it did
        self.forked = 0
        self.ready: dict | None = None  # its first message: its pid, threads and stray descriptors
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self.log_path or os.devnull, "ab") as log:
                self.popen = subprocess.Popen(
                    [sys.executable, "-X", "faulthandler", "-m", "root.zygote", "--module", module,
                     "--run-tag", run_tag, "--control-fd", str(theirs.fileno())],
                    cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=log if self.log_path else None, pass_fds=(theirs.fileno(),), preexec_fn=preexec_fn,
                    start_new_session=True)
        finally:
            theirs.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def usable(self) -> bool:
        return self.failure is None

    def fork(self, args: list[str], env: dict, cwd, name: str, fds: list[int], numbers: list[int]) -> int:
        """A child running ``python -m MODULE args`` with ``fds`` at ``numbers``; its pid.
        Raises :class:`ZygoteError` (and the zygote is not used again) on any failure."""
        if self.failure is not None:
            raise ZygoteError(self.failure)
        request = {"args": args, "env": env, "cwd": str(cwd), "name": name, "launcher": os.getpid(),
                   "fds": numbers}
        try:
            self._control.sendmsg([json.dumps(request).encode()],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            answer = self._answer()
        except (OSError, ValueError) as e:
            self._fail(f"{type(e).__name__}: {e}")
        if "pid" not in answer:
            self._fail(str(answer.get("error", answer)))
        self.forked += 1
        return int(answer["pid"])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Its first message, once its imports are done (:attr:`ready`)."""
        deadline = time.monotonic() + timeout_s
        while self.ready is None:
            self._receive(deadline)
        return self.ready

    def _answer(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            answer = self._receive(deadline)
            if "ready" not in answer:
                return answer

    def _receive(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer in {READY_TIMEOUT_S:g} s")
        self._control.settimeout(left)
        data = self._control.recv(MAX_REQUEST)
        if not data:
            code = self.popen.poll()
            raise ConnectionError("the zygote " + ("ended" if code is None else f"exited ({code})"))
        answer = json.loads(data)
        if "ready" in answer:
            self.ready = answer
        return answer

    def _fail(self, why: str):
        self.failure = why
        self.stop(0.5)
        raise ZygoteError(why)

    def stop(self, grace_s: float = 3.0) -> int | None:
        """Close its control socket (it ends at the EOF), then wait; SIGKILL after ``grace_s``."""
        import subprocess

        self._control.close()
        try:
            return self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(prog="python -m root.zygote")
    ap.add_argument("--module", required=True, help="the package whose __main__.main(argv) children run")
    ap.add_argument("--run-tag", required=True, help="names the run (its manifest's run_tag) for leftovers")
    ap.add_argument("--control-fd", type=int, required=True)
    args = ap.parse_args(argv)
    # Not dumpable, as the launcher and the hypervisor are: a process of its uid that could
    # ptrace it could plant code in every process it forks from then on.  Its children
    # inherit it (the confined ones were not dumpable anyway).
    prctl(PR_SET_DUMPABLE, 0)
    importlib.import_module(f"{args.module}.__main__")
    gc.freeze()  # what is imported stays in pages the children share (no GC writes into them)
    control = socket.socket(fileno=args.control_fd)
    # A descriptor an import left open would be closed under it in every child.
    stray = sorted(fd for fd in map(int, os.listdir("/proc/self/fd"))
                   if fd not in (0, 1, 2, args.control_fd) and _is_open(fd))  # (not the listing's own)
    _send(control, {"ready": os.getpid(), "threads": _threads(), "fds": stray})
    return serve(args.module, control)


if __name__ == "__main__":
    job = main()
    if isinstance(job, Child):
        # A worker or partition process: its own interpreter's end (atexit, threads, flush).
        try:
            code = job.run()
        except SystemExit as e:
            code = e.code
        sys.exit(code)
    sys.exit(0)
