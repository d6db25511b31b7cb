"""VP ↔ hypervisor: the intercepts (the instruction a VP cannot complete by itself), the
resume that answers them, and the VP's stats.

Part of :mod:`proto.messages`, the one registry: that module imports these classes (which
registers them in ``REGISTRY``) and re-exports them, so import them through it
(``from proto import messages as m; m.VpResume``), not from here.
"""

from proto.checked_stats import vp_stats_paths
from proto.fields import U16, U32, U64, U8, blob, boolean, mapping, one_of, stamps
from proto.messages import (
    ACCESS_SIZES,
    EXIT_CODES,
    HV_PAGE_SIZE,
    MMIO_SIZES,
    Message,
    exit_stamps,
    message,
    reg_block,
)


@message(10, "io_port_intercept")
class IoPortIntercept(Message):
    """IN/OUT — HvMessageTypeX64IoPortIntercept.  ``value`` is AL/AX/EAX on a write."""

    seq: U32
    port: U16
    size: one_of(*ACCESS_SIZES)
    write: boolean
    value: U32
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(5, "io_string_intercept")
class IoStringIntercept(Message):
    """REP INS/OUTS — HvMessageTypeX64IoPortIntercept with AccessInfo's StringOp and
    RepPrefix bits: ``count`` (RCX) elements of ``size`` bytes at ``port``, in one exit.  As
    KVM's string PIO exit, the VP's own side moves the bytes: a write carries the ``count``
    elements it read from DS:RSI in ``data``; a read's resume carries them in ``output``
    for ES:RDI.  At most a page (KVM's pio_data page): a longer REP exits again."""

    seq: U32
    port: U16
    size: one_of(*ACCESS_SIZES)
    write: boolean
    count: U16
    data: blob(HV_PAGE_SIZE)
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(11, "cpuid_intercept")
class CpuidIntercept(Message):
    """CPUID — HvMessageTypeX64CpuidIntercept (EAX = leaf, ECX = subleaf)."""

    seq: U32
    leaf: U32
    subleaf: U32
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(12, "msr_intercept")
class MsrIntercept(Message):
    """RDMSR/WRMSR — HvMessageTypeX64MsrIntercept (ECX = msr, EDX:EAX = value)."""

    seq: U32
    msr: U32
    write: boolean
    value: U64
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(13, "hypercall_intercept")
class HypercallIntercept(Message):
    """A hypercall: ``control`` is the TLFS hypercall input value (RCX); ``input`` the
    parameter block (the page at RDX for a memory call, RDX:R8 for a fast one)."""

    seq: U32
    control: U64
    input: blob(HV_PAGE_SIZE)
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(14, "halt_intercept")
class HaltIntercept(Message):
    """HLT — HvMessageTypeX64Halt.  The VP stays suspended until something wakes it."""

    seq: U32
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(17, "mmio_intercept")
class MmioIntercept(Message):
    """A load or store to a guest-physical address that is not RAM —
    HvMessageTypeGpaIntercept where a worker claims it, HvMessageTypeUnmappedGpa where
    nothing does."""

    seq: U32
    gpa: U64
    size: one_of(*MMIO_SIZES)
    write: boolean
    value: U64
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(18, "quantum_exit")
class QuantumExit(Message):
    """The VP's quantum is over: it gives its logical processor back (the exit a
    hypervisor's scheduler timer forces)."""

    seq: U32
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(19, "cr3_intercept")
class Cr3Intercept(Message):
    """MOV to CR3 — a control-register intercept: the VP loads ``value`` into CR3.  The
    hypervisor flushes the whole TLB of the VP's logical processor (untagged, as the
    non-enlightened address-space switch is)."""

    seq: U32
    value: U64
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(43, "invlpg_intercept")
class InvlpgIntercept(Message):
    """INVLPG ``gva`` — intercepted: the hypervisor flushes the whole TLB of the VP's
    logical processor."""

    seq: U32
    gva: U64
    stamps: exit_stamps
    regs: reg_block = ()  # the VP's register block at the exit (saved)


@message(15, "vp_resume")
class VpResume(Message):
    """Completes an intercept: the registers the instruction sets, or an exception to
    inject instead (``fault`` is an :class:`~proto.codes.X86Exception`, or
    :data:`FAULT_RESET` when the partition is being reset).  ``path`` says which measured
    path the exit took (:class:`proto.exits.Exit`), so the VP files its round trip under
    the name the hypervisor counted it by.  ``output`` is a hypercall's
    output parameter block.  A pending external interrupt rides along in ``interrupt``."""

    seq: U32
    fault: U8
    rax: U64
    rbx: U64
    rcx: U64
    rdx: U64
    output: blob(HV_PAGE_SIZE)
    stamps: stamps
    interrupt: U16  # a vector to deliver after the instruction completes; 0: none
    irq_stamps: stamps  # that interrupt's path: device raise, hv in, hv inject
    deadline_ns: U64  # perf_counter_ns when the VP's quantum ends (0: no quantum; not a dispatch)
    lp: U8  # the logical processor the VP is dispatched on (whose TLB it uses)
    path: one_of(*EXIT_CODES)  # the proto.exits.Exit code of the exit this completes (0: none)
    regs: reg_block = ()  # the register block the VP resumes with (restored)


@message(16, "vp_stats")
class VpStats(Message):
    """Latency histograms of the round trips one VP measured since its last vp_stats, by
    path name (:class:`proto.exits.Exit`, values :meth:`proto.stats.PathStats.to_wire`) —
    the hypervisor adds them to what it has — and the guest's own counters, cumulative
    (interrupts taken, TLB hits, a workload's operations, ``exits``); sent now and then,
    never answered, so it costs the measured paths nothing."""

    paths: vp_stats_paths(64)  # mapping(64), checked as the hypervisor reads it (proto/checked_stats.py)
    counters: mapping(256)
