"""A seccomp filter that keeps a confined process (a worker or partition) off every other
process: it may not signal, trace, read or write the memory of, nor re-prioritise or limit,
any process but itself.

Why: at the ``namespaces`` level every process of a run has the launcher's uid, and the
kernel lets a process signal any process of its uid (``kill`` checks only uids); ptrace and
``process_vm_readv`` are already refused there (each confined process is not dumpable and
in a user namespace of its own), but a filter says it once for every level.  At the
``uids`` level the uids already keep processes apart; the filter costs nothing and is
installed there too.

The program is hand-written classic BPF (``seccomp(2)``, ``SECCOMP_SET_MODE_FILTER``), no
libseccomp, and installed with ``SECCOMP_FILTER_FLAG_TSYNC`` so ZeroMQ's threads (started
when the sockets were connected) get it as well.  It needs ``no_new_privs``, which every
confined process has set by then.

* The numbers below are x86-64's, and another ABI's would slip past them: a syscall of
  the i386 ABI (``int 0x80``) kills the process, one of the x32 ABI gets EPERM.
* ``kill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``: only with this process's
  own pid as the target (not 0 nor a negative process group); otherwise EPERM.
* ``prlimit64``, ``sched_setaffinity``, ``sched_setparam``, ``sched_setscheduler``,
  ``sched_setattr``: only on pid 0 (the caller), this process's pid or the thread ids it
  has when the filter goes in; otherwise EPERM.  The thread ids matter: each ZeroMQ thread
  begins by setting its own scheduling parameters (libzmq's ``applySchedulingParameters``:
  ``pthread_setschedparam`` on itself, i.e. ``sched_setscheduler(tid)``) and aborts the
  process if that fails — and a thread the context started just before the filter may not
  have run that far yet on a loaded host (CI saw workers and partitions die of SIGABRT at
  start-up: "Operation not permitted (src/thread.cpp:315)").  A thread started after the
  filter is not in the list: a confined process starts no ZeroMQ context after it.
* ``ptrace``, ``process_vm_readv``, ``process_vm_writev``, ``tkill`` (its target is a bare
  tid), ``pidfd_send_signal``, ``pidfd_getfd``, ``kcmp``, ``setpriority``, ``ioprio_set``,
  ``move_pages``, ``migrate_pages``, ``perf_event_open``: EPERM always; and the ``chmod``
  family, so that a file the process may only read (its SLAT table, mode 0400) cannot be
  made writable again by its owner at the namespaces level; and whatever makes a file
  shorter (``truncate``, ``ftruncate``, ``fallocate``, ``creat``, ``open``/``openat`` with
  ``O_TRUNC``, ``openat2`` whose flags BPF cannot see), so that the partition's RAM file,
  which the hypervisor maps, cannot be cut short under that mapping (SIGBUS).
* Everything else is allowed (a deny-list, as QEMU's ``-sandbox``): the filter is about
  other processes and the files the hypervisor shares, not about what the process does
  to itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from proto.errors import ConfineError

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SYS_seccomp = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# classic BPF
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
NR, ARCH, ARG0, ARG1, ARG2 = 0, 4, 16, 24, 32
O_TRUNC = 0o1000

# x86-64 syscall numbers
SELF_ONLY = {"kill": 62, "rt_sigqueueinfo": 129, "tgkill": 234, "rt_tgsigqueueinfo": 297}
SELF_OR_ZERO = {"sched_setparam": 142, "sched_setscheduler": 144, "sched_setaffinity": 203,
                "prlimit64": 302, "sched_setattr": 314}
DENIED = {"ptrace": 101, "setpriority": 141, "tkill": 200, "ioprio_set": 251, "migrate_pages": 256,
          "move_pages": 279, "perf_event_open": 298, "process_vm_readv": 310, "process_vm_writev": 311,
          "kcmp": 312, "pidfd_send_signal": 424, "pidfd_getfd": 438,
          # A file it holds read-only (its SLAT, 0400) stays so: at the namespaces level the
          # process owns the run's files and could otherwise chmod one back and reopen it.
          "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452,
          # No file it holds can be made shorter: the hypervisor maps the partition's RAM
          # file (SynIC's atomics), and a mapping of a truncated file faults (SIGBUS).
          "truncate": 76, "ftruncate": 77, "creat": 85, "fallocate": 285, "openat2": 437}
TRUNC_IN_ARG1 = {"open": 2}  # O_TRUNC in flags: refused
TRUNC_IN_ARG2 = {"openat": 257}


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def supported() -> bool:
    """Whether this filter can be built here (its syscall numbers are x86-64's)."""
    return platform.machine() == "x86_64"


MAX_THREADS = 64  # thread ids a filter names (each is one compare)


def program(pid: int, threads: tuple[int, ...] = ()) -> list[tuple[int, int, int, int]]:
    """The filter for process ``pid`` whose threads are ``threads`` (thread ids), as
    (code, jt, jf, k) instructions.  Jumps are relative and forward: each compare jumps to
    one of the three returns at the end or to one of the argument checks just before them."""
    threads = tuple(t for t in dict.fromkeys(threads) if t != pid)
    if len(threads) > MAX_THREADS:
        raise ConfineError(0, f"seccomp program: {len(threads)} threads, at most {MAX_THREADS}")
    body: list[tuple] = [
        (BPF_LD_W_ABS, 0, 0, ARCH),
        (BPF_JEQ_K, "next", "kill", AUDIT_ARCH_X86_64),
        (BPF_LD_W_ABS, 0, 0, NR),
        (BPF_JGE_K, "deny", "next", X32_SYSCALL_BIT),
    ]
    body += [(BPF_JEQ_K, "deny", "next", nr) for nr in sorted(DENIED.values())]
    body += [(BPF_JEQ_K, "self_only", "next", nr) for nr in sorted(SELF_ONLY.values())]
    body += [(BPF_JEQ_K, "self_or_zero", "next", nr) for nr in sorted(SELF_OR_ZERO.values())]
    body += [(BPF_JEQ_K, "trunc_arg1", "next", nr) for nr in sorted(TRUNC_IN_ARG1.values())]
    body += [(BPF_JEQ_K, "trunc_arg2", "next", nr) for nr in sorted(TRUNC_IN_ARG2.values())]
    body.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    labels = {"trunc_arg1": len(body)}
    body += [(BPF_LD_W_ABS, 0, 0, ARG1),
             (BPF_JSET_K, "deny", "allow", O_TRUNC)]
    labels["trunc_arg2"] = len(body)
    body += [(BPF_LD_W_ABS, 0, 0, ARG2),
             (BPF_JSET_K, "deny", "allow", O_TRUNC)]
    labels["self_or_zero"] = len(body)
    body += [(BPF_LD_W_ABS, 0, 0, ARG0),  # the low half: a pid_t is 32 bits
             (BPF_JEQ_K, "allow", "next", 0)]
    body += [(BPF_JEQ_K, "allow", "next", tid) for tid in threads]
    labels["self_only"] = len(body)
    body += [(BPF_LD_W_ABS, 0, 0, ARG0),
             (BPF_JEQ_K, "allow", "deny", pid)]
    labels["allow"] = len(body)
    body.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    labels["deny"] = len(body)
    body.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    labels["kill"] = len(body)
    body.append((BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))

    def target(at: int, label) -> int:
        if label == 0:
            return 0
        to = at + 1 if label == "next" else labels[label]
        off = to - at - 1
        if not 0 <= off < 256:
            raise ConfineError(0, f"seccomp program: a jump of {off} instructions")
        return off

    return [(code, target(i, jt), target(i, jf), k) for i, (code, jt, jf, k) in enumerate(body)]


def deny_other_processes() -> None:
    """Install the filter on every thread of this process (TSYNC); raises
    :class:`ConfineError` if the kernel refuses it.  Requires ``no_new_privs``."""
    if not supported():
        raise ConfineError(errno.ENOSYS, f"no seccomp filter for {platform.machine()}")
    insns = program(os.getpid(), own_threads())
    arr = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    prog = _Prog(len(insns), arr)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(SYS_seccomp), ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
                     ctypes.c_ulong(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog))
    if r != 0:
        e = ctypes.get_errno() if r < 0 else errno.EBUSY  # > 0: a thread that could not sync
        raise ConfineError(e, f"seccomp(SET_MODE_FILTER, TSYNC): {os.strerror(e)}")


def own_threads() -> tuple[int, ...]:
    """The thread ids of this process now (``/proc/self/task``)."""
    return tuple(sorted(int(t) for t in os.listdir("/proc/self/task")))


def in_force(pid: int | str = "self") -> bool:
    """Whether process ``pid`` runs under a seccomp filter (``Seccomp: 2``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return line.split()[1] == "2"
    return False


_available: bool | None = None


def available() -> bool:
    """Whether a process here can install the filter: tried once, in a forked child."""
    global _available
    if _available is None:
        if not supported():
            _available = False
            return False
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the probe
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
                    os._exit(1)
                deny_other_processes()
                try:
                    os.kill(os.getppid(), 0)
                except PermissionError:
                    os._exit(0)
                os._exit(1)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        _available = os.waitstatus_to_exitcode(status) == 0
    return _available
