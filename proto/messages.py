"""Every message hvstack's processes exchange, one definition each, and the codec.

On the wire a message is one msgpack array ``[type_id, field1, field2, …]`` in one ZeroMQ
frame (a ROUTER adds the routing frame in front).  Arrays rather than maps keep the intercept
messages small and quick to pack; the field names live here, once.  :func:`decode` is the
only way bytes become a message: malformed bytes, unknown types, missing or extra fields and
out-of-range values each raise their own :class:`~proto.errors.ProtocolError`.

Naming: ``<action>_request`` / ``_reply`` pairs; events are nouns (``port_notify``); intercepts
carry the TLFS message they stand for in their docstring.

Every message on a measured path carries ``stamps``: ``time.perf_counter_ns()`` taken at each
hop and appended by that hop.  The originator derives the stages from consecutive stamps.
"""

import operator
from dataclasses import dataclass, fields
from typing import ClassVar

import msgpack

from proto.exits import BY_CODE, NAMES as EXIT_NAMES, NO_PATH
from proto.errors import InvalidField, MalformedMessage, UnknownMessageType
from proto.fields import (
    U8,
    U16,
    U32,
    U64,
    FieldError,
    blob,
    boolean,
    mapping,
    one_of,
    gpa_ranges,
    port_ranges,
    registers,
    stamps,
    stamps_upto,
    text,
    texts,
)

PROTOCOL_VERSION = 1
# A frame larger than this is refused before msgpack looks at it: the biggest legitimate
# messages are status replies and console output, far below.
MAX_FRAME_BYTES = 1 << 20
# One page: TLFS hypercall parameter blocks must not cross a page.
HV_PAGE_SIZE = 4096

ROLES = ("root", "worker", "vp", "vsp")  # vsp: the root's VMBus server (issue 10)
ACCESS_SIZES = (1, 2, 4)
MMIO_SIZES = (1, 2, 4, 8)
# VpResume.fault value that is not an x86 exception: the partition is being reset (INIT),
# so the VP abandons what it was doing and starts again at its reset vector.
FAULT_RESET = 0xFF
# The VP register block that travels with every exit (saved by the hypervisor) and every
# dispatch (restored): the architectural state the hypervisor must own for
# HvCallGet/SetVpRegisters.  Values are in this order.
REGS = ("rflags", "cr3")
# Every register block on the wire: exactly REGS, or empty.
reg_block = registers(len(REGS))
# Stamps by where a message is in its round trip (each hop appends one or two; at most
# proto.fields.MAX_STAMPS arrive anywhere): a VP's exit starts one (1), an interrupt starts
# at the device (2), a worker's completion carries the exit's and its own (5).  What a peer
# sends is limited so that with the hops' stamps added it still decodes where it ends.
exit_stamps = stamps_upto(4)
completion_stamps = stamps_upto(8)
RFLAGS_FIXED = 0x2  # bit 1 of RFLAGS always reads 1
RFLAGS_IF = 0x200
# VpResume.interrupt bit 8: "no EOI required" — the VP assist page bit the hypervisor sets
# when it does the EOI itself (TLFS virtual interrupts, EOI assist).
INTERRUPT_NO_EOI = 0x100
WORKER_QUERIES = ("screen", "devices", "ping")  # ping: the hypervisor's health check
INPUT_DEVICES = ("console", "keyboard")
PARTITION_ACTIONS = ("pause", "resume", "reset", "stop")
EXECUTE_OPS = ("inb", "inw", "inl", "outb", "outw", "outl", "readb", "readw", "readl", "readq",
          "writeb", "writew", "writel", "writeq", "cpuid", "rdmsr", "wrmsr", "hypercall")

EXIT_CODES = (NO_PATH, *BY_CODE)

REGISTRY: dict[int, type] = {}
BY_NAME: dict[str, type] = {}


class Message:
    """Base of every message; ``TYPE`` and ``NAME`` are set by :func:`message`."""

    __slots__ = ()
    TYPE: ClassVar[int]
    NAME: ClassVar[str]

    def encode(self) -> bytes:
        return _PACK(self._wire())

    def _wire(self) -> tuple:  # replaced per class by @message
        raise NotImplementedError


def message(type_id: int, name: str):
    """Register a message class; duplicate ids or names are a programming error."""

    def wrap(cls):
        if type_id in REGISTRY or name in BY_NAME:
            raise RuntimeError(f"message {type_id}/{name} is defined twice")
        if not 0 < type_id < 128:
            # Ids are msgpack positive fixints, so a frame's second byte is its type (the VP
            # reads it without decoding its own frame again).
            raise RuntimeError(f"message id {type_id} is not 1..127")
        cls = dataclass(slots=True)(cls)
        names = tuple(f.name for f in fields(cls))
        cls.TYPE, cls.NAME = type_id, name
        cls.FIELD_NAMES = names
        cls.CHECKS = tuple(f.type for f in fields(cls))
        if len(names) == 0:
            cls._wire = lambda self: (type_id,)
        elif len(names) == 1:
            get1 = operator.attrgetter(names[0])
            cls._wire = lambda self: (type_id, get1(self))
        else:
            getn = operator.attrgetter(*names)
            cls._wire = lambda self: (type_id, *getn(self))
        REGISTRY[type_id] = cls
        BY_NAME[name] = cls
        return cls

    return wrap


_PACK = msgpack.Packer(use_bin_type=True).pack


def encode(msg: Message) -> bytes:
    return _PACK(msg._wire())


def decode(frame: bytes) -> Message:
    """Bytes → message, or a typed :class:`~proto.errors.ProtocolError`."""
    if len(frame) > MAX_FRAME_BYTES:
        raise MalformedMessage(f"frame of {len(frame)} bytes, at most {MAX_FRAME_BYTES}")
    try:
        obj = msgpack.unpackb(frame, use_list=False, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises many kinds; all mean the same to us
        raise MalformedMessage(f"not a msgpack value: {e}") from e
    if type(obj) is not tuple or not obj:
        raise MalformedMessage(f"expected a non-empty array, got {type(obj).__name__}")
    cls = REGISTRY.get(obj[0]) if type(obj[0]) is int else None
    if cls is None:
        raise UnknownMessageType(f"unknown message type {obj[0]!r}")
    checks = cls.CHECKS
    if len(obj) != len(checks) + 1:
        have, want = len(obj) - 1, len(checks)
        what = "missing" if have < want else "extra"
        field = cls.FIELD_NAMES[have] if have < want else f"#{want}"
        raise InvalidField(cls.NAME, field, f"{what} field ({have} given, {want} expected)")
    try:
        values = [check(v) for check, v in zip(checks, obj[1:])]
    except FieldError as e:
        bad = next(i for i, (c, v) in enumerate(zip(checks, obj[1:])) if _fails(c, v))
        raise InvalidField(cls.NAME, cls.FIELD_NAMES[bad], str(e)) from e
    return cls(*values)


def _fails(check, value) -> bool:
    try:
        check(value)
    except FieldError:
        return True
    return False


# ---------------------------------------------------------------------------------------
# Connection set-up and generic replies
# ---------------------------------------------------------------------------------------


@message(1, "hello")
class Hello(Message):
    """Opens every connection: who the peer says it is, and a fresh client ``nonce``.
    The hypervisor answers with a ``hello_challenge``; the peer proves its role with a
    ``hello_proof`` (:mod:`proto.auth`).  No key or token is ever sent."""

    version: U16
    role: one_of(*ROLES)
    partition: U64
    vp: U32
    pid: U32
    session: text(64, ascii_only=True)
    nonce: blob(32)


@message(44, "hello_challenge")
class HelloChallenge(Message):
    """The hypervisor's fresh nonce for this connection's hello, good once."""

    nonce: blob(32)


@message(45, "hello_proof")
class HelloProof(Message):
    """HMAC-SHA256 under the peer's key of the hello and both nonces (:func:`proto.auth.hello_proof`)."""

    mac: blob(32)


@message(2, "hello_reply")
class HelloReply(Message):
    """The hypervisor's answer: the name it bound this peer to, its own session, and its
    proof that it holds the run's secret (:func:`proto.auth.reply_proof`)."""

    peer: text(64)
    session: text(64)
    mac: blob(32)


@message(3, "error_reply")
class ErrorReply(Message):
    """A request could not be served.  ``code`` is from :data:`ERROR_CODES`."""

    ref_type: U16
    code: text(32)
    message: text(512)


@message(4, "ack")
class Ack(Message):
    """A request without a result was carried out."""

    ref_type: U16


ERROR_CODES = (
    "MALFORMED",  # not a message at all
    "UNKNOWN_TYPE",
    "VERSION_MISMATCH",
    "INVALID_FIELD",
    "NOT_AUTHENTICATED",  # no hello yet, or a bad (or replayed, or late) hello proof
    "NOT_PERMITTED",  # this role may not send this message
    "UNKNOWN_PARTITION",
    "UNKNOWN_VP",
    "CONFLICT",  # e.g. an intercept range another worker owns
    "STALE",  # a completion for a request that is not pending
    "OUT_OF_TURN",  # a message the sender's state does not allow now, e.g. an exit from a VP not in guest mode
    "INTERNAL",  # the hypervisor failed handling the message (a bug: logged and counted)
    "UNMAPPED_GPA",  # io: a guest physical address the partition's memory map does not have
)

# ---------------------------------------------------------------------------------------
# VP → hypervisor: intercepts (the instruction a VP cannot complete by itself)
# ---------------------------------------------------------------------------------------


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
    """Cumulative latency histograms of one VP, by path name (:class:`proto.exits.Exit`,
    values :meth:`proto.stats.PathStats.to_wire`), and the guest's own counters (interrupts
    taken, TLB hits, a workload's operations, ``exits``); sent now and then, never answered,
    so it costs the measured paths nothing."""

    paths: mapping(64)
    counters: mapping(256)


# ---------------------------------------------------------------------------------------
# Worker ↔ hypervisor
# ---------------------------------------------------------------------------------------


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
    worker).  ``stamps`` start when the device raised its line."""

    vector: U8
    stamps: exit_stamps  # the device's raise, the worker's INTA


@message(27, "reset_request")
class ResetRequest(Message):
    """Worker → hypervisor: the chipset asked for a CPU reset (i8042 pulse, 0xFE)."""

    reason: text(64)


@message(28, "device_reset")
class DeviceReset(Message):
    """Hypervisor → worker: the partition is being reset; put every device at power-on."""


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


# ---------------------------------------------------------------------------------------
# Root (launch.py and the commands that attach to a run) → hypervisor
# ---------------------------------------------------------------------------------------


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
    """Partitions, VP states, counters and latency statistics."""


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


__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_BYTES",
    "HV_PAGE_SIZE",
    "ROLES",
    "EXECUTE_OPS",
    "FAULT_RESET",
    "INTERRUPT_NO_EOI",
    "REGS",
    "WORKER_QUERIES",
    "INPUT_DEVICES",
    "PARTITION_ACTIONS",
    "ERROR_CODES",
    "REGISTRY",
    "BY_NAME",
    "Message",
    "encode",
    "decode",
    "Hello",
    "HelloReply",
    "ErrorReply",
    "Ack",
    "IoPortIntercept",
    "CpuidIntercept",
    "MsrIntercept",
    "HypercallIntercept",
    "HaltIntercept",
    "VpResume",
    "VpStats",
    "InstallIntercept",
    "PortNotify",
    "AccessComplete",
    "ConsoleOutput",
    "DeviceInput",
    "MmioIntercept",
    "QuantumExit",
    "Cr3Intercept",
    "InvlpgIntercept",
    "MmioNotify",
    "AssertInterrupt",
    "ResetRequest",
    "DeviceReset",
    "WorkerQuery",
    "WorkerQueryReply",
    "WorkerQueryRequest",
    "TraceSubscribe",
    "TraceEvent",
    "PartitionControl",
    "HelloChallenge",
    "HelloProof",
    "MemoryRequest",
    "MemoryReply",
    "StatusRequest",
    "StatusReply",
    "ExecuteRequest",
    "ConsoleSubscribe",
    "ConsoleData",
    "InputRequest",
]

# The SynIC's messages (ids 70–84) register themselves in REGISTRY on import, so that
# decode() knows every message whoever imports this module.
from proto import synic_messages as _synic_messages  # noqa: E402,F401
# io's qtest-style operations (ids 50–59): their own module, registered here.
from proto.io_messages import IoReply, IoRequest, WorkerClockStep  # noqa: E402,F401
# Prompt interrupt delivery's messages (ids 60–64), in a module of their own.
from proto.interrupt_messages import InterruptNotify  # noqa: E402,F401

__all__.append("InterruptNotify")
# Worker servicing's messages (ids 46–49), in a module of their own.
from proto.service_messages import DeviceSave, ServiceRequest  # noqa: E402,F401
