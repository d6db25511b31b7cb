"""The exit vocabulary: every path hvstack measures, named once.

A member's value is the one name that the hypervisor's ``exits`` counters, ``trace_event``
reasons, the guest's path histograms, ``status`` and every table use.  Each member also
carries what a reader needs to show it: its table label, how many hops it takes, the stage
names between its stamps (in stamp order), whether it is a VP exit (counted in ``exits``; an
interrupt delivery is a path but not an exit) and whether it is an access with a direction.

A new exit kind is a new member here and one handler in the hypervisor; the resume that
completes an exit says which member it was (``VpResume.path``), so the guest never infers
a path from the shape of its stamps.
"""

from __future__ import annotations

import enum

# Stage names between consecutive stamps (see DESIGN.md, "The round trip").
EMULATED_STAGES = (
    "guest→hv",
    "hv dispatch",
    "hv→worker",
    "worker emulate",
    "worker→hv",
    "hv complete",
    "hv→guest",
)
HANDLED_STAGES = ("guest→hv", "hv handle", "hv→guest")
# The interrupt path: the PIC's INTR rises in the worker → the worker sends the vector → the
# hypervisor queues it → injects it with a resume → the guest's handler starts.
INTERRUPT_STAGES = ("worker INTA", "worker→hv", "hv queued", "hv→guest handler")
# The local APIC timer: it fires in the hypervisor → injected with a resume → the handler.
APIC_TIMER_STAGES = ("hv queued", "hv→guest handler")


class Exit(str, enum.Enum):
    """A measured path: a VP exit kind, or one of the two interrupt deliveries (which
    share the vocabulary but are not counted as exits).  ``Exit.IO_PORT == "io_port"``;
    ``Exit("io_port")`` looks one up; ``Exit.IO_PORT.code`` is its number on the wire."""

    # name = value, code, label, hops, stages, is_exit, is_access
    IO_PORT = "io_port", 1, "emulated port I/O (worker)", 4, EMULATED_STAGES, True, True
    # REP INS/OUTS: one exit for up to a page of elements (code 15: the codes are the wire's).
    IO_STRING = "io_string", 15, "emulated string port I/O (worker)", 4, EMULATED_STAGES, True, True
    IO_UNCLAIMED = "io_unclaimed", 2, "unclaimed port I/O (hv)", 2, HANDLED_STAGES, True, True
    MMIO = "mmio", 3, "emulated MMIO (worker)", 4, EMULATED_STAGES, True, True
    UNMAPPED_GPA = "unmapped_gpa", 4, "unmapped GPA (hv)", 2, HANDLED_STAGES, True, True
    APIC = "apic", 5, "local APIC MMIO (hv)", 2, HANDLED_STAGES, True, True
    CPUID = "cpuid", 6, "CPUID intercept (hv)", 2, HANDLED_STAGES, True, False
    MSR = "msr", 7, "synthetic MSR (hv)", 2, HANDLED_STAGES, True, True
    HYPERCALL = "hypercall", 8, "hypercall (hv)", 2, HANDLED_STAGES, True, False
    INTERRUPT = "interrupt", 9, "interrupt: line → handler", 2, INTERRUPT_STAGES, False, False
    APIC_TIMER = "apic_timer", 10, "APIC timer → handler", 1, APIC_TIMER_STAGES, False, False
    QUANTUM = "quantum", 11, "quantum end → redispatch", 2, HANDLED_STAGES, True, False
    HALT = "halt", 12, "HLT → wake", 2, HANDLED_STAGES, True, False
    CR3 = "cr3", 13, "MOV CR3 intercept (hv)", 2, HANDLED_STAGES, True, False
    INVLPG = "invlpg", 14, "INVLPG intercept (hv)", 2, HANDLED_STAGES, True, False

    def __new__(cls, name: str, code: int, label: str, hops: int, stages: tuple[str, ...],
                is_exit: bool, is_access: bool):
        member = str.__new__(cls, name)
        member._value_ = name
        member.code = code
        member.label = label
        member.hops = hops
        member.stages = stages
        member.is_exit = is_exit
        member.is_access = is_access
        return member

    def __str__(self) -> str:
        return self.value

    @property
    def order(self) -> int:
        """Where the path sits in tables: the order of definition."""
        return _ORDER[self]

    def stage_names(self, n: int) -> tuple[str, ...]:
        """The names of ``n`` stages of this path: its own, numbered past its last."""
        names = self.stages[:n]
        return names + tuple(f"stage {i + 1}" for i in range(len(names), n))


_ORDER = {p: i for i, p in enumerate(Exit)}
BY_CODE: dict[int, Exit] = {p.code: p for p in Exit}
NAMES: tuple[str, ...] = tuple(p.value for p in Exit)
EXITS: tuple[Exit, ...] = tuple(p for p in Exit if p.is_exit)
# The wire value of ``VpResume.path`` when the resume completes no measured exit (a HLT that
# woke, a root's `io` request, a dispatch after a reset).
NO_PATH = 0


def order_key(name: str) -> int:
    """Sort key for path names as tables list them; unknown names go last."""
    p = Exit._value2member_map_.get(name)
    return _ORDER[p] if p is not None else len(_ORDER)


def label(name: str) -> str:
    """A path's table label; an unknown name is shown as it is."""
    p = Exit._value2member_map_.get(name)
    return p.label if p is not None else name


def stage_names(name: str, n: int) -> tuple[str, ...]:
    """The names of the ``n`` stages of the path called ``name`` (numbered if unknown)."""
    p = Exit._value2member_map_.get(name)
    if p is None:
        return tuple(f"stage {i + 1}" for i in range(n))
    return p.stage_names(n)


__all__ = ["Exit", "BY_CODE", "NAMES", "EXITS", "NO_PATH", "EMULATED_STAGES", "HANDLED_STAGES",
           "INTERRUPT_STAGES", "APIC_TIMER_STAGES", "order_key", "label", "stage_names"]
