"""Worker ↔ hypervisor: intercept ranges, port and MMIO accesses and their completions,
interrupts, resets, queries, console bytes and device input.

Part of :mod:`proto.messages`, the one registry: that module imports these classes (which
registers them in ``REGISTRY``) and re-exports them, so import them through it
(``from proto import messages as m; m.PortNotify``), not from here.
"""

from proto.fields import (
    U16,
    U32,
    U64,
    U8,
    blob,
    boolean,
    gpa_ranges,
    mapping,
    one_of,
    port_ranges,
    stamps,
    text,
)
from proto.messages import (
    ACCESS_SIZES,
    HV_PAGE_SIZE,
    INPUT_DEVICES,
    MMIO_SIZES,
    Message,
    WORKER_QUERIES,
    completion_stamps,
    exit_stamps,
    message,
)


@message(20, "install_intercept")
class InstallIntercept(Message):
    """The worker claims port ranges and MMIO ranges ``[[gpa, length], …]`` of its
    partition (the HvCallInstallIntercept idea)."""

    ranges: port_ranges
    mmio: gpa_ranges


@message(21, "port_notify")
class PortNotify(Message):
    """Hypervisor → worker: emulate this port access for ``vp``; answer with ``ref``."""

    ref: U32
    vp: U32
    port: U16
    size: one_of(*ACCESS_SIZES)
    write: boolean
    value: U32
    stamps: stamps


@message(22, "access_complete")
class AccessComplete(Message):
    """Worker → hypervisor: the access ``ref`` is done; ``value`` is what a read returns."""

    ref: U32
    value: U64
    stamps: completion_stamps


@message(6, "port_string_notify")
class PortStringNotify(Message):
    """Hypervisor → worker: emulate ``count`` accesses of ``size`` at ``port`` for ``vp``
    (REP INS/OUTS; ``data``, a write's elements in order); answer with
    ``string_access_complete`` under ``ref``."""

    ref: U32
    vp: U32
    port: U16
    size: one_of(*ACCESS_SIZES)
    write: boolean
    count: U16
    data: blob(HV_PAGE_SIZE)
    stamps: stamps


@message(7, "string_access_complete")
class StringAccessComplete(Message):
    """Worker → hypervisor: the string access ``ref`` is done; ``data``, a read's
    ``count`` elements (empty for a write)."""

    ref: U32
    data: blob(HV_PAGE_SIZE)
    stamps: completion_stamps


@message(25, "mmio_notify")
class MmioNotify(Message):
    """Hypervisor → worker: emulate this MMIO access for ``vp``; answer with ``access_complete``."""

    ref: U32
    vp: U32
    gpa: U64
    size: one_of(*MMIO_SIZES)
    write: boolean
    value: U64
    stamps: stamps


@message(26, "assert_interrupt")
class AssertInterrupt(Message):
    """Worker → hypervisor: the chipset's interrupt controller has a vector for the
    partition's boot processor (ExtINT through LINT0: the PIC's INTA happened in the
    worker).  ``stamps`` start when the device raised its line.

    ``seq`` numbers the interrupts the partition's devices have taken (INTA), from 1,
    across worker handovers (0: not numbered).  A successor restored from a checkpoint
    sends again, ``resent``, the ones its predecessor took last: ZeroMQ sends in the
    background, so a worker killed just after an INTA may have taken a vector the
    hypervisor never got, and the guest, never given it, would never EOI it — the PIC
    would hold that IRQ and every lower one in service for good.  The hypervisor takes a
    resent vector only if its ``seq`` is above every one it has taken for the partition."""

    vector: U8
    stamps: exit_stamps  # the device's raise, the worker's INTA
    seq: U64 = 0
    resent: boolean = False


@message(27, "reset_request")
class ResetRequest(Message):
    """Worker → hypervisor: the chipset asked for a CPU reset (i8042 pulse, 0xFE).

    ``seq`` and ``resent`` as :class:`AssertInterrupt`'s, from the same count (RESET is a
    pin of the CPU as INTR is): a worker killed after saving the access that pulsed the
    line, before ZeroMQ sent this, leaves a successor that answers that access from its
    record without doing it again — the reset would be lost, and the guest, which waits
    for it, would hang.  The successor sends it again; the hypervisor takes a numbered
    reset only if its ``seq`` is above every one it has taken for the partition (a reset
    redone by a successor that had to do the access again has its predecessor's seq)."""

    reason: text(64)
    seq: U64 = 0
    resent: boolean = False


@message(28, "device_reset")
class DeviceReset(Message):
    """Hypervisor → worker: the partition is being reset; put every device at power-on.

    ``resets``: the partition's resets so far, this one included (0: not numbered, always
    done).  A worker puts its devices through each numbered reset once: the hypervisor sends
    the count again to a new worker at every handover (hypervisor/servicing.py), because a
    worker that died before taking a reset leaves a successor restored to the state before
    it; a successor that had it in its record lets it pass."""

    resets: U64 = 0


@message(29, "worker_query")
class WorkerQuery(Message):
    """Hypervisor → worker: a question from the root (``screen``, ``devices``)."""

    ref: U32
    query: one_of(*WORKER_QUERIES)


@message(36, "worker_query_reply")
class WorkerQueryReply(Message):
    """Worker → hypervisor → root: the answer to a ``worker_query``."""

    ref: U32
    result: mapping(64)


@message(23, "console_output")
class ConsoleOutput(Message):
    """Worker → hypervisor: bytes the guest's UART transmitted, for live watchers."""

    data: blob(1 << 16)


@message(24, "device_input")
class DeviceInput(Message):
    """Hypervisor → worker: bytes from outside for the console UART's receive FIFO, or
    scancodes for the keyboard."""

    device: one_of(*INPUT_DEVICES)
    data: blob(HV_PAGE_SIZE)
