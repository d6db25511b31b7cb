"""Attacks run as a confined process of a live run.

:func:`as_process` forks the test (which runs as root), takes the target process's own
descriptors with ``pidfd_getfd`` (the very open files, with their access modes), drops to
the target's uid and gid the way the target did (:func:`proto.confine.drop_to`), and runs
one attack there.  So the attacker has exactly what a guest that took over that worker or
partition process would have: its credentials and its descriptors, nothing more.
"""

from __future__ import annotations

import ctypes
import encodings.idna  # noqa: F401 - socket's host names need it; a dropped attacker cannot import it
import errno
import json
import mmap
import os
import select
import socket
from typing import Callable

from proto import confine, seccomp

SYS_pidfd_open = 434
SYS_pidfd_getfd = 438

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def credentials(pid: int) -> tuple[int, int]:
    """(uid, gid) of a live process."""
    uid = gid = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def fds_named(pid: int, suffix: str) -> list[int]:
    """The descriptors of process ``pid`` whose file's name ends with ``suffix``."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(suffix):
                out.append(int(fd))
        except OSError:
            pass
    return sorted(out)


def _take(pid: int, fds) -> dict[int, int]:
    pidfd = _libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    got = {}
    for fd in fds:
        mine = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if mine < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        got[fd] = mine
    os.close(pidfd)
    return got


def as_process(pid: int, attack: Callable[[dict[int, int]], object], fds=(), timeout: float = 10.0,
               filtered: bool | None = None):
    """Run ``attack({their fd: our copy})`` with the credentials of process ``pid`` and
    copies of its descriptors ``fds`` — and, if ``pid`` runs under the seccomp filter, under
    it too (``filtered``: say so instead).  Returns ``("ok", result)`` when the attack went
    through, ``("refused", "EACCES")`` (the errno's name) when an OSError stopped it."""
    uid, gid = credentials(pid)
    if filtered is None:
        filtered = seccomp.in_force(pid)

    def become():
        got = _take(pid, fds)
        if os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"):
            _enter_network_of(pid)  # as root, before the drop
        if uid != 0:
            confine.drop_to(uid, gid)
        if filtered:
            seccomp.deny_other_processes()
        return got
    return _in_child(become, attack, timeout)


def as_namespaced(hide: str, attack: Callable[[dict[int, int]], object], filtered: bool = True,
                  fds_of: tuple[int, list[int]] | None = None, timeout: float = 10.0):
    """Run ``attack({their fd: our copy})`` confined as a worker or partition process is at
    the ``namespaces`` level: the same uid, a user and mount namespace of its own hiding
    ``hide``, no capabilities, not dumpable — and the seccomp filter if ``filtered`` —
    holding copies of descriptors ``fds_of = (pid, fds)``."""
    def become():
        got = _take(*fds_of) if fds_of else {}
        confine.hide_in_namespaces(hide, hide, network=True)  # as over ipc
        if filtered:
            seccomp.deny_other_processes()
        return got
    return _in_child(become, attack, timeout)


def _enter_network_of(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(fd, confine.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET)")
    finally:
        os.close(fd)


def _in_child(become: Callable[[], dict[int, int]], attack, timeout: float):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked attacker
        try:
            os.close(r)
            got = become()
            try:
                result = ["ok", attack(got)]
            except OSError as e:
                result = ["refused", errno.errorcode.get(e.errno, str(e.errno))]
            os.write(w, json.dumps(result).encode())
        except BaseException as e:
            os.write(w, json.dumps(["error", repr(e)]).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        data = os.read(r, 65536) if ready else b""
    finally:
        os.close(r)
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass
        os.waitpid(child, 0)
    if not data:
        raise AssertionError(f"the attacker said nothing within {timeout} s")
    kind, value = json.loads(data)
    if kind == "error":
        raise AssertionError(f"the attacker could not be set up: {value}")
    return kind, value


# -- the attacks ---------------------------------------------------------------------------


def read_file(path: str, size: int = 4096):
    def attack(_):
        with open(path, "rb") as f:
            return f.read(size).decode("latin-1")
    return attack


def open_rw(path: str):
    def attack(_):
        os.close(os.open(path, os.O_RDWR))
        return "opened read-write"
    return attack


def reopen_rw(fd: int):
    """Reopen one of the process's own descriptors for writing, through /proc/self/fd."""
    def attack(got):
        os.close(os.open(f"/proc/self/fd/{got[fd]}", os.O_RDWR))
        return "reopened read-write"
    return attack


def map_shared_writable(fd: int):
    def attack(got):
        m = mmap.mmap(got[fd], 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[0:4] = b"\xff\xff\xff\xff"
        m.close()
        return "mapped read-write and wrote"
    return attack


def read_hypervisor_memory(pid: int):
    """Read the hypervisor's writable memory through /proc/PID/maps and /proc/PID/mem."""
    def attack(_):
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if "rw" in line.split()[1]:
                    mem.seek(lo)
                    return mem.read(min(hi - lo, 4096)).hex()[:16]
        return "no writable mapping"
    return attack


def connect_unix(path: str):
    def attack(_):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        finally:
            s.close()
        return "connected"
    return attack


def scan_for(fd: int, marker: bytes):
    """Search everything a descriptor (the process's RAM) maps for ``marker``."""
    def attack(got):
        m = mmap.mmap(got[fd], 0, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            return {"size": len(m), "found": m.find(marker) >= 0}
        finally:
            m.close()
    return attack


def signal_process(pid: int, sig: int = 0):
    """Signal another process (0: only whether it may)."""
    def attack(_):
        os.kill(pid, sig)
        return "signalled"
    return attack


def truncate(fd: int, size: int = 0):
    """Cut a file the process holds read-write (its RAM or TLB) to ``size`` bytes."""
    def attack(got):
        os.ftruncate(got[fd], size)
        return "truncated"
    return attack


PTRACE_ATTACH = 16


def ptrace_attach(pid: int):
    def attack(_):
        _libc.ptrace.restype = ctypes.c_long
        if _libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return "attached"
    return attack


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def vm_read(pid: int):
    """Read 8 bytes of another process's memory with process_vm_readv (at its first
    mapping, from /proc/PID/maps as far as that is readable, else at 4 MiB)."""
    def attack(_):
        address = 0x400000
        try:
            with open(f"/proc/{pid}/maps") as f:
                address = int(f.readline().split("-")[0], 16)
        except (OSError, ValueError):
            pass
        buf = ctypes.create_string_buffer(8)
        local, remote = _IoVec(ctypes.addressof(buf), 8), _IoVec(address, 8)
        _libc.process_vm_readv.restype = ctypes.c_ssize_t
        if _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return buf.raw.hex()
    return attack


def chmod_writable(fd: int):
    """Make a file the process holds (read-only) writable again, through its descriptor."""
    def attack(got):
        os.fchmod(got[fd], 0o600)
        return "made writable"
    return attack


def connect_tcp(port: int):
    def attack(_):
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.close()
        return "connected"
    return attack
