"""Confining a process of a run: secrets by descriptor, non-dumpable, a uid of its own.

Every process of a run gets its secret (the run secret for the hypervisor, its partition's
token for a worker or partition) through an inherited pipe whose descriptor number is on
its command line: never in the environment or argv, which ``/proc/PID/environ`` and
``cmdline`` show to anyone who may ptrace the process.

Root-side processes (launcher, hypervisor) set ``PR_SET_DUMPABLE 0`` so that no other
process of the same uid can read their ``/proc/PID/{environ,mem,maps}`` or ptrace them.

Where the run is not root's (so no uid of its own can be had), a worker or partition process
enters a user and mount namespace of its own (:func:`hide_in_namespaces`) where an empty
tmpfs covers the runs root, gives up every capability there, and is not dumpable: it
cannot open the run's files by path, nor ptrace or read the memory of any process of the
run.  Signalling them (which the kernel allows any process of the same uid) is refused by a
seccomp filter (:mod:`proto.seccomp`), installed at every level once the process is confined.

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
import resource
import select
import signal
import tempfile
from typing import Callable

from proto.errors import ConfineError

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# The isolation levels a run reports (manifest and `status`).
UIDS = "uids"  # root: every worker and partition under a uid of its own, no capabilities
NAMESPACES = "namespaces"  # not root: one uid, but each worker and partition in namespaces of its own
SAME_USER = "same-user"  # not root, no user namespaces: secrets by descriptor, root side not dumpable
LEVELS = {
    UIDS: "each worker and partition under a uid of its own (no capabilities, no_new_privs), "
          "holding only its partition's descriptors; secrets by descriptor; root side not dumpable",
    NAMESPACES: "every process under the launcher's uid (not root); each worker and partition in a "
                "user and mount namespace of its own, the runs root hidden, no capabilities, not "
                "dumpable; secrets by descriptor; root side not dumpable",
    SAME_USER: "every process under the launcher's uid (not root): secrets by descriptor, root side "
               "not dumpable, hellos bound to the connection; a partition process could open the "
               "run's files",
}

_libc = None


def _libc_handle():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(r: int, what: str) -> int:
    if r < 0:
        e = ctypes.get_errno()
        raise ConfineError(e, f"{what}: {os.strerror(e)}")
    return r


def _prctl(option: int, arg: int = 0) -> int:
    _libc = _libc_handle()
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


_userns_ok: bool | None = None


def user_namespaces_available() -> bool:
    """Whether this process may hide a directory in namespaces of its own
    (:func:`hide_in_namespaces`): tried once, in a forked child, since sysctls alone do not
    say (AppArmor may refuse an unprivileged user namespace its mounts)."""
    global _userns_ok
    if _userns_ok is None:
        probe = tempfile.mkdtemp(prefix="hvstack-userns-")
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the probe
                try:
                    hide_in_namespaces(probe, probe)
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            _, status = os.waitpid(pid, 0)
            _userns_ok = os.waitstatus_to_exitcode(status) == 0
        finally:
            os.rmdir(probe)
    return _userns_ok


def level() -> str:
    """The isolation level a run started by this process gets.  ``HVSTACK_ISOLATION``
    may ask for a weaker one than the best available (tests use it to run the non-root
    levels as root); never a stronger one."""
    best = UIDS if os.geteuid() == 0 else NAMESPACES if user_namespaces_available() else SAME_USER
    order = [SAME_USER, NAMESPACES, UIDS]
    asked = os.environ.get("HVSTACK_ISOLATION")
    if asked in order and order.index(asked) < order.index(best):
        return asked
    return best


def read_secret(fd: int, limit: int = 4096) -> str:
    """The secret written into the pipe whose read end is ``fd``, up to EOF (at most
    ``limit`` bytes are read); the descriptor is closed after."""
    data = b""
    try:
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data[:limit].decode("ascii").strip()


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


MAX_TASKS = 256  # threads and processes a confined uid may have: a VP thread each, and a few


def drop_to(uid: int, gid: int, max_tasks: int = MAX_TASKS) -> None:
    """Become ``uid``:``gid`` for good, with no supplementary groups, no capabilities,
    ``no_new_privs`` and at most ``max_tasks`` threads and processes (RLIMIT_NPROC counts
    per uid, and the uid is this process's alone: a fork bomb stops there); raises
    :class:`ConfineError` if any of it did not hold."""
    if uid == 0 or gid == 0:
        raise ConfineError(0, "refusing to 'drop' to uid or gid 0")
    parent = os.getppid()
    resource.setrlimit(resource.RLIMIT_NPROC, (max_tasks, max_tasks))
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
    if os.getppid() != parent:  # the parent died before the line above: nobody would kill us
        raise ConfineError(0, "the parent process died while this one was being confined")
    set_dumpable(False)  # already so after a uid change; said explicitly


CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST = 63


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def hide_in_namespaces(hide: str, keep: str, network: bool = False) -> int:
    """Not root: enter a user and mount namespace of this process's own, cover ``hide``
    (the runs root) with an empty read-only tmpfs, then give up every capability (so the
    cover cannot be lifted) and become not dumpable.  Returns an ``O_PATH`` descriptor of
    ``keep`` (the run directory, under the cover) through which the caller reaches the
    run's socket once (:func:`through`) and then closes.  Must run before any thread starts:
    unshare(CLONE_NEWUSER) refuses a process with more than one.  With ``network``, also
    an empty network namespace of its own (:func:`leave_network`)."""
    libc = _libc_handle()
    keep_fd = os.open(keep, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    uid, gid = os.getuid(), os.getgid()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _check(libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "mount(/, MS_PRIVATE)")
    if network:
        leave_network()  # with the user namespace's capabilities, before they go
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    _check(libc.mount(b"hvstack-hidden", hide.encode(), b"tmpfs", ctypes.c_ulong(flags), b"size=4k,mode=000"),
           f"mount(tmpfs over {hide})")
    for cap in range(CAP_LAST + 1):  # the bounding set, then every set, to nothing
        libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset(0)")
    if capabilities_effective() != 0:
        raise ConfineError(0, "capabilities left in the namespace")
    set_dumpable(False)
    return keep_fd


CLONE_NEWNET = 0x40000000


def leave_network() -> bool:
    """Enter an empty network namespace (only a loopback, down): no TCP or UDP peer, no
    abstract unix socket of the host is reachable.  An ipc endpoint (a unix socket by path)
    still is.  Needs CAP_SYS_ADMIN (root, or in a user namespace of its own); False, and
    nothing changed, where the kernel refuses."""
    return _libc_handle().unshare(CLONE_NEWNET) == 0


def through(endpoint: str, directory: str, fd: int) -> str:
    """``endpoint`` (an ipc path in ``directory``) reached through an ``O_PATH``
    descriptor of that directory, for a process that can no longer see it by name."""
    prefix = "ipc://" + directory.rstrip("/") + "/"
    if endpoint.startswith(prefix):
        return f"ipc:///proc/self/fd/{fd}/" + endpoint[len(prefix):]
    return endpoint


# A process started ahead waits this long for its go at most.  The launcher writes the go,
# or closes the pipe when the process is not needed after all (an abandoned migration), and
# the process dies with the launcher (PR_SET_PDEATHSIG); so this only bounds the wait, and
# leaves room for a long pre-copy (256 MiB over a slow link takes minutes).
GO_TIMEOUT_S = 600.0


def ready_go(fd: int) -> bool:
    """Say READY to the launcher (stdout), then wait for its go on ``fd``: True for the go,
    False when it closed the pipe or never wrote."""
    print("READY", flush=True)
    if not select.select([fd], [], [], GO_TIMEOUT_S)[0]:
        return False
    return os.read(fd, 1) == b"g"


def start_confined(spec_path: str, spec: dict, sockets: int, *, uid: int | None = None,
                   gid: int | None = None, namespaces: bool = False, log=None,
                   wait_go: Callable[[], bool] | None = None) -> list | None:
    """The start-up a worker or partition process shares: connect ``sockets`` dealers to
    the run's endpoint while it can still be reached (with ``namespaces``: after hiding the
    runs root, which must happen before the first socket starts ZeroMQ's threads, through a
    descriptor of the run directory closed once connected); then drop to ``uid`` if given;
    then the seccomp filter that keeps the process off every other process (all threads).
    Over ipc, at the uids and namespaces levels, the process first leaves the network too.
    Returns the connected, not yet hello'd, :class:`proto.transport.Dealer` objects.

    ``wait_go``: a process started ahead (of a servicing or an incoming migration) is held
    there, after its namespaces and before its first connection: the hypervisor shuts down a
    connection that says no hello within its deadline (proto/transport.py), and a pre-copy
    may run far longer than that.  None is returned when it says False (not needed after all)."""
    from proto import seccomp
    from proto.transport import Dealer

    endpoint, keep_fd = spec["endpoint"], None
    # Over ipc a process needs no network at all: an empty network namespace of its own,
    # where the kernel allows one (root, or a user namespace of its own).
    offline = endpoint.startswith("ipc://") and (namespaces or uid is not None)
    if namespaces:
        run_dir = os.path.dirname(os.path.abspath(spec_path))
        keep_fd = hide_in_namespaces(os.path.dirname(run_dir), run_dir, network=offline)
        endpoint = through(endpoint, run_dir, keep_fd)
    elif offline and not leave_network() and log is not None:
        log.warning("no network namespace of its own: %s", os.strerror(ctypes.get_errno()))
    try:
        if wait_go is not None and not wait_go():
            return None
        dealers = [Dealer(endpoint, spec.get("server_key"), connected_within_ms=5000) for _ in range(sockets)]
    finally:
        if keep_fd is not None:
            os.close(keep_fd)
    if uid is not None:
        drop_to(uid, gid if gid is not None else uid)
    elif not namespaces:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # the filter needs it; the other paths have set it
    if seccomp.supported():
        try:
            seccomp.deny_other_processes()
        except ConfineError as e:  # `status` shows which processes run without it
            if log is not None:
                log.warning("no seccomp filter: %s", e)
    return dealers
