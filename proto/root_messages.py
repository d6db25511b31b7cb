"""Root (launch.py and the commands that attach to a run) → hypervisor: memory, status,
execute, console, input, worker queries, trace and partition control.

Part of :mod:`proto.messages`, the one registry: that module imports these classes (which
registers them in ``REGISTRY``) and re-exports them, so import them through it
(``from proto import messages as m; m.StatusRequest``), not from here.
"""

from proto.exits import NAMES as EXIT_NAMES
from proto.fields import U32, U64, blob, boolean, mapping, one_of, stamps, text, texts
from proto.messages import (
    EXECUTE_OPS,
    HV_PAGE_SIZE,
    INPUT_DEVICES,
    Message,
    PARTITION_ACTIONS,
    WORKER_QUERIES,
    message,
)


@message(41, "memory_request")
class MemoryRequest(Message):
    """Worker or VP → hypervisor: where is ``partition``'s memory?  Only a partition's own
    memory is ever handed out; asking for another's is refused and counted."""

    partition: U64


@message(42, "memory_reply")
class MemoryReply(Message):
    """The shared-memory files: the partition's RAM, its SLAT table and its TLB on every
    logical processor (by LP index).  Where the run is root's, the partition's processes
    cannot open them by these paths: the launcher hands them descriptors."""

    ram: text(512)
    slat: text(512)
    tlbs: texts(256, 512)


@message(30, "status_request")
class StatusRequest(Message):
    """Partitions, VP states, counters and latency statistics.  ``brief``: without the
    latency histograms (every partition's ``paths`` empty) and the TLBs' walk (``tlb.lps``
    empty) — what supervision reads 4 times a second; those two grew with the partitions
    and the LPs and were most of a status's cost to build, send and decode."""

    brief: boolean = False


@message(31, "status_reply")
class StatusReply(Message):
    status: mapping(64)


@message(32, "execute_request")
class ExecuteRequest(Message):
    """Execute one instruction on behalf of ``vp`` of ``partition``, as QEMU's qtest does.
    ``a``/``b`` are the operands (port and value, leaf and subleaf, msr and value, or the
    hypercall input value); the reply is the :class:`VpResume` the VP would have got."""

    seq: U32
    partition: U64
    vp: U32
    op: one_of(*EXECUTE_OPS)
    a: U64
    b: U64
    input: blob(HV_PAGE_SIZE)


@message(33, "console_subscribe")
class ConsoleSubscribe(Message):
    """Send me ``console_data`` for this partition from now on."""

    partition: U64


@message(34, "console_data")
class ConsoleData(Message):
    """Hypervisor → subscribed root peers: guest console bytes."""

    partition: U64
    data: blob(1 << 16)


@message(35, "input_request")
class InputRequest(Message):
    """Root → hypervisor: bytes for a partition's console or keyboard."""

    partition: U64
    device: one_of(*INPUT_DEVICES)
    data: blob(HV_PAGE_SIZE)


@message(37, "worker_query_request")
class WorkerQueryRequest(Message):
    """Root → hypervisor: ask a partition's worker (the reply is a ``worker_query_reply``)."""

    partition: U64
    query: one_of(*WORKER_QUERIES)


@message(38, "trace_subscribe")
class TraceSubscribe(Message):
    """Root → hypervisor: send me a ``trace_event`` for every exit of ``partition`` (0: all)
    from now on.  Nothing is traced, and nothing costs, while nobody subscribes."""

    partition: U64


@message(39, "trace_event")
class TraceEvent(Message):
    """One exit as the hypervisor saw it.  ``a``/``b`` depend on ``reason``: port and value,
    leaf and subleaf, MSR and value, hypercall input value and result, GPA and value,
    vector and 0.  ``stamps`` are the exit's hops up to the hypervisor's resume."""

    partition: U64
    vp: U32
    reason: one_of(*EXIT_NAMES)
    write: boolean
    a: U64
    b: U64
    stamps: stamps


@message(40, "partition_control")
class PartitionControl(Message):
    """Root → hypervisor: pause, resume, reset or stop a partition."""

    partition: U64
    action: one_of(*PARTITION_ACTIONS)
