"""The messages of ``io``'s qtest-style operations beyond one instruction (ids 50–59).

:class:`proto.messages.ExecuteRequest` executes one instruction on a VP's behalf; these
reach what a conformance test needs around it, as QEMU's qtest protocol does: guest memory
in bulk, the VP's registers, a hypercall made the guest's way (input and output pages at
guest physical addresses), the interrupts delivered to a VP (at its local APIC) or raised
at the PIC's output, and the partition's clocks.  Imported at the end of
:mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U8, U32, U64, blob, one_of
from proto.messages import HV_PAGE_SIZE, Message, message

# Bytes one `read` or `write` moves (the client splits longer ones).
MAX_IO_BYTES = 64 * 1024
# The longest an `irqs` answer gets: what a VP's log holds (proto: one byte per vector).
IRQ_LOG_VECTORS = 1024
IO_OPS = (
    "read",  # a: GPA, b: length → data: the bytes
    "write",  # a: GPA, data: the bytes
    "get_reg",  # a: HV_REGISTER_NAME → value
    "set_reg",  # a: HV_REGISTER_NAME, b: the value
    "hypercall_gpa",  # a: the input value (RCX), b: RDX, c: R8 (input and output GPAs, or fast values)
    "irqs_apic",  # the vectors injected into the VP since the last look → data (one byte each)
    "irqs_pic",  # the vectors the partition's PIC raised (its INTA) since the last look → data
    "clock_step",  # a: nanoseconds to advance the partition's clocks (it must be paused)
)
assert HV_PAGE_SIZE <= MAX_IO_BYTES


@message(50, "io_request")
class IoRequest(Message):
    """Root → hypervisor: one ``io`` operation of :data:`IO_OPS` for ``vp`` of ``partition``.
    Answered by an :class:`IoReply` (``clock_step`` on a partition with a worker: by the
    worker's ``worker_query_reply``), or an ``error_reply``."""

    seq: U32
    partition: U64
    vp: U32
    op: one_of(*IO_OPS)
    a: U64
    b: U64
    c: U64
    data: blob(MAX_IO_BYTES)


@message(51, "io_reply")
class IoReply(Message):
    """Hypervisor → root: what an :class:`IoRequest` found.  ``fault``: the exception the
    guest would have taken (a hypercall's #UD); ``value``: a register, or a hypercall's
    result value; ``data``: bytes read, a hypercall's output block, or vectors (one byte
    each, oldest first); ``dropped``: vectors the log lost since the last look."""

    seq: U32
    fault: U8
    value: U64
    data: blob(MAX_IO_BYTES)
    dropped: U32


@message(52, "worker_clock_step")
class WorkerClockStep(Message):
    """Hypervisor → worker: advance the devices' clock by ``ns`` (``io clock_step``), then
    answer ``worker_query_reply`` with ``ref``: the offset now in force."""

    ref: U32
    ns: U64
