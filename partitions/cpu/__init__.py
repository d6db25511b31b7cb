"""CPU backends for a partition's VPs: what executes the guest.

``python`` (the default) runs the Python guest kernel (:mod:`partitions.kernel`) through the
instruction-level API of :mod:`partitions.vp`.  ``unicorn`` and ``kvm`` run real x86 code —
firmware (SeaBIOS) or a test kernel — and turn each of its exits into the same intercept
message the Python guest sends (:mod:`partitions.cpu.exitport`): port I/O (a REP INS/OUTS
one intercept under KVM, an element each under unicorn), MMIO (any GPA the SLAT does not
map), RDMSR/WRMSR, CPUID, the hypercall page's exit, HLT and the end of a quantum.

Which backend a partition takes is ``cpu = "…"`` in its topology; :func:`unavailable` says
why one cannot run on this host (checked by the topology before anything starts, and by the
tests, which skip with that reason).
"""

from __future__ import annotations

import os

BACKENDS = ("python", "unicorn", "kvm")
KVM_DEVICE = "/dev/kvm"
PVM_MODULE = "/sys/module/kvm_pvm"


def kvm_is_pvm() -> bool:
    """This host's KVM is PVM (a nested, paging-based KVM without VT-x/AMD-V): it runs guest
    kernel code deprivileged and sends some instructions through KVM's instruction
    emulator, which stops on those it lacks (protected-mode IRET among them)."""
    return os.path.isdir(PVM_MODULE)


def unavailable(kind: str) -> str | None:
    """Why backend ``kind`` cannot run here (None: it can)."""
    if kind == "python":
        return None
    if kind == "unicorn":
        try:
            import unicorn  # noqa: F401
        except ImportError as e:
            return f"the unicorn package is not installed ({e}); pip install unicorn"
        return None
    if kind == "kvm":
        if not os.path.exists(KVM_DEVICE):
            return f"{KVM_DEVICE} does not exist on this host"
        try:
            fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            return f"{KVM_DEVICE} cannot be opened: {e.strerror}"
        os.close(fd)
        return None
    return f"unknown CPU backend {kind!r} (known: {', '.join(BACKENDS)})"
