"""Confining a process of a run: secrets by descriptor, non-dumpable, a uid of its own.

Every process of a run gets its secret (the run secret for the hypervisor, its partition's
token for a worker or partition) through an inherited pipe whose descriptor number is on
its command line: never in the environment or argv, which ``/proc/PID/environ`` and
``cmdline`` show to anyone who may ptrace the process.

Root-side processes (launcher, hypervisor) set ``PR_SET_DUMPABLE 0`` so that no other
process of the same uid can read their ``/proc/PID/{environ,mem,maps}`` or ptrace them.

Where the run is root's, a worker or partition process drops, before it runs anything the
guest controls, to a uid and gid of its own (:func:`drop_to`), the order minijail's
``drop_ugid`` uses: ``no_new_privs``, then ``setgroups([])``, ``setresgid``,
``setresuid``; then it checks that the way back is shut (``setresuid(0)`` fails, no
effective capabilities) and asks again for SIGKILL at its parent's death (a uid change
clears PR_SET_PDEATHSIG).  It must have opened (or been handed) every descriptor it needs
and connected its sockets first: after the drop it can open nothing of the run.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# The isolation levels a run reports (manifest and `status`).
UIDS = "uids"  # root: every worker and partition under a uid of its own, no capabilities
SAME_USER = "same-user"  # not root: one uid; secrets by descriptor, root side not dumpable
LEVELS = {
    UIDS: "each worker and partition under a uid of its own (no capabilities, no_new_privs), "
          "holding only its partition's descriptors; secrets by descriptor; root side not dumpable",
    SAME_USER: "every process under the launcher's uid (not root): secrets by descriptor, root side "
               "not dumpable, hellos bound to the connection; a partition process could open the "
               "run's files",
}

_libc = None


class ConfineError(OSError):
    """A process could not be confined as asked; it must not go on."""


def _prctl(option: int, arg: int = 0) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    r = _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if r < 0:
        e = ctypes.get_errno()
        raise ConfineError(e, f"prctl({option}): {os.strerror(e)}")
    return r


def set_dumpable(dumpable: bool) -> None:
    _prctl(PR_SET_DUMPABLE, 1 if dumpable else 0)


def dumpable() -> bool:
    return bool(_prctl(PR_GET_DUMPABLE))


def die_with_parent() -> None:
    """SIGKILL when the parent (the launcher) dies, even by SIGKILL."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def level() -> str:
    """The isolation level a run started by this process gets."""
    return UIDS if os.geteuid() == 0 else SAME_USER


def read_secret(fd: int) -> str:
    """The secret written into the pipe whose read end is ``fd`` (closed after)."""
    chunks = []
    try:
        while True:
            b = os.read(fd, 4096)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii").strip()


def secret_pipe(secret: str) -> int:
    """A pipe holding ``secret``; returns its read end (inheritable) for a child to read.
    The secret is far smaller than a pipe's buffer, so the write never blocks."""
    r, w = os.pipe()
    try:
        os.write(w, secret.encode("ascii"))
    finally:
        os.close(w)
    os.set_inheritable(r, True)
    return r


def capabilities_effective() -> int:
    """CapEff of this process (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise ConfineError(0, "no CapEff in /proc/self/status")


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` for good, with no supplementary groups, no capabilities and
    ``no_new_privs``; raises :class:`ConfineError` if any of it did not hold."""
    if uid == 0 or gid == 0:
        raise ConfineError(0, "refusing to 'drop' to uid or gid 0")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        pass
    else:
        raise ConfineError(0, "setresuid(0) still works after dropping privileges")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise ConfineError(0, f"credentials are {os.getresuid()}/{os.getresgid()}/{os.getgroups()}")
    if capabilities_effective() != 0:
        raise ConfineError(0, "capabilities left after dropping privileges")
    die_with_parent()  # the uid change cleared it
    set_dumpable(False)  # already so after a uid change; said explicitly
