"""proto.seccomp: the filter that keeps a confined process off every other process, tried
in a forked child (the filter cannot be taken off again)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import threading

import pytest

from proto import seccomp

pytestmark = pytest.mark.skipif(not seccomp.available(), reason="no seccomp filter can be installed here")

PTRACE_ATTACH = 16


def _errno_of(fn) -> str:
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _ptrace(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _vm_read(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8)
    local, remote = _IoVec(ctypes.addressof(buf), 8), _IoVec(0x1000, 8)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _set_own_scheduling() -> None:
    """libzmq's applySchedulingParameters: pthread_setschedparam(pthread_self(), its own
    policy, priority 0), which is sched_setscheduler(this thread's id)."""
    tid = threading.get_native_id()
    os.sched_setscheduler(tid, os.sched_getscheduler(tid), os.sched_param(0))


def in_filtered_child(tries: dict) -> dict:
    """Fork; in the child set no_new_privs, start a thread, install the filter, run each
    ``tries`` entry (in the older thread, too, for ``threaded``) and report errno names."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the filtered child
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
            go, out = threading.Event(), {}
            older = threading.Thread(target=lambda: (go.wait(5), out.update(
                threaded=_errno_of(lambda: os.kill(os.getppid(), 0)),
                # what each ZeroMQ thread does first, maybe only after the filter is in:
                # libzmq aborts the process if it fails
                own_thread_sched_self=_errno_of(_set_own_scheduling))))
            older.start()  # before the filter: TSYNC must reach it
            seccomp.deny_other_processes()
            go.set()
            older.join(5)
            out.update({name: _errno_of(fn) for name, fn in tries.items()})
            out["in_force"] = seccomp.in_force()
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(child, 0)
    return json.loads(data)


def test_the_filtered_process_reaches_itself_and_no_other_process(tmp_path):
    parent = os.getpid()
    mine = tmp_path / "read-only"
    mine.write_bytes(b"x")
    mine.chmod(0o400)
    ram = tmp_path / "ram"
    ram.write_bytes(b"x" * 4096)
    seen = in_filtered_child({
        "chmod_back": lambda: os.chmod(mine, 0o600),  # the SLAT's 0400 stays
        "ftruncate": lambda: os.ftruncate(os.open(ram, os.O_RDWR), 0),  # the RAM file keeps its size
        "truncate": lambda: os.truncate(ram, 0),
        "open_trunc": lambda: os.open(ram, os.O_RDWR | os.O_TRUNC),
        "open_rw_self": lambda: os.close(os.open(ram, os.O_RDWR)),  # opening is not truncating
        "fchmod_back": lambda: os.fchmod(os.open(mine, os.O_RDONLY), 0o600),
        "kill_self": lambda: os.kill(os.getpid(), 0),
        "tgkill_self": lambda: signal.pthread_kill(threading.main_thread().ident, 0),
        "affinity_self": lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)),
        "prlimit_self": lambda: resource.prlimit(0, resource.RLIMIT_CORE, resource.getrlimit(resource.RLIMIT_CORE)),
        "kill_other": lambda: os.kill(parent, 0),
        "kill_group": lambda: os.kill(0, 0),
        "kill_negative": lambda: os.kill(-parent, 0),
        "ptrace": lambda: _ptrace(parent),
        "vm_read": lambda: _vm_read(parent),
        "affinity_other": lambda: os.sched_setaffinity(parent, os.sched_getaffinity(0)),
        "prlimit_other": lambda: resource.prlimit(parent, resource.RLIMIT_NOFILE),
        "nice_other": lambda: os.setpriority(os.PRIO_PROCESS, parent, 10),
    })
    assert seen.pop("in_force") is True
    assert {k: v for k, v in seen.items() if v == "ok"} == \
        {"kill_self": "ok", "tgkill_self": "ok", "affinity_self": "ok", "prlimit_self": "ok",
         "open_rw_self": "ok", "own_thread_sched_self": "ok"}, seen
    assert ram.stat().st_size == 4096
    assert all(v == "EPERM" for k, v in seen.items() if not k.endswith("_self")), seen


def test_jumps_land_inside_the_program():
    prog = seccomp.program(4242, tuple(range(5000, 5000 + seccomp.MAX_THREADS)))
    for i, (code, jt, jf, _) in enumerate(prog):
        if code in (seccomp.BPF_JEQ_K, seccomp.BPF_JGE_K, seccomp.BPF_JSET_K):
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (seccomp.BPF_RET_K, 0, 0, seccomp.SECCOMP_RET_KILL_PROCESS)


def test_the_program_names_at_most_max_threads():
    with pytest.raises(seccomp.ConfineError, match="65 threads, at most 64"):
        seccomp.program(4242, tuple(range(5000, 5000 + seccomp.MAX_THREADS + 1)))
