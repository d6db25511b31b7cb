"""Every message hvstack's processes exchange, one definition each, and the codec.

This module is the one registry: the messages of each pair of peers are defined in a
module of their own (intercept_messages, worker_messages, root_messages, synic_messages,
io_messages, interrupt_messages, service_messages), imported here, which registers them,
and re-exported, so that ``from proto import messages as m; m.X`` names every message.

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
import threading
from typing import ClassVar

import msgpack

from proto import wire_types
from proto.exits import BY_CODE, NO_PATH
from proto.errors import InvalidField, MalformedMessage, UnknownMessageType
from proto.fields import (
    U16,
    U32,
    U64,
    FieldError,
    blob,
    one_of,
    registers,
    stamps_upto,
    text,
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
        cls = _message_class(cls, type_id)
        names = cls.FIELD_NAMES
        cls.TYPE, cls.NAME = type_id, name
        cls.ARITY = len(names) + 1  # the wire array's length: the type, then the fields
        if len(names) == 0:
            cls._wire = lambda self: (type_id,)
        elif len(names) == 1:
            get1 = operator.attrgetter(names[0])
            cls._wire = lambda self: (type_id, get1(self))
        else:
            getn = operator.attrgetter(*names)
            cls._wire = lambda self: (type_id, *getn(self))
        # The generated decoders are made at their first use: see _UNBUILT.
        cls.FROM_WIRE = None
        if cls.ARITY <= 15:  # (a fixarray: the frame's byte 1 is its type)
            _FAST[type_id] = _first_decode(type_id)
            _UNBUILT.add(type_id)
        REGISTRY[type_id] = cls
        BY_NAME[name] = cls
        return cls

    return wrap


def _message_class(cls, type_id: int):
    """``cls``, its annotated fields made slots, with ``__init__`` (the fields in order, with
    their defaults), ``__repr__`` and ``__eq__`` — what ``@dataclass(slots=True)`` made — and
    ``pack``, in one generated source instead of four, the class built once instead of
    twice: 81 dataclasses and packers cost ~80 ms of every process's start-up (dataclass's
    ``_process_class`` looks at every field's type, which here is its check).
    ``FIELD_NAMES``, ``CHECKS`` (each field's annotation: its check, :mod:`proto.fields`)
    and ``DEFAULTS`` say what it has.

    ``cls.pack(field1, field2, …)`` is the frame ``cls(field1, …).encode()`` gives, without
    building the message — for a hot path that only sends one (the hypervisor's resume).
    Its parameters are ``__init__``'s, so a call is checked as the constructor's would be."""
    own = cls.__dict__
    checks = own.get("__annotations__", {})
    names = tuple(checks)
    defaults = {n: own[n] for n in names if n in own}
    params = [f"{n}=_d_{n}" if n in defaults else n for n in names]
    for before, n in zip(names, names[1:]):
        if before in defaults and n not in defaults:
            raise TypeError(f"{cls.__name__}: field {n} without a default follows one with a default")
    fields_of = "".join(f"self.{n}, " for n in names)
    source = "\n".join([
        f"def __init__(self, {', '.join(params)}):",
        *(f"    self.{n} = {n}" for n in names), "    pass",  # (a body, with no fields)
        "def __repr__(self):",
        "    return self.__class__.__qualname__ + f'(" + ", ".join(f"{n}={{self.{n}!r}}" for n in names) + ")'",
        "def __eq__(self, other):",
        "    if other.__class__ is self.__class__:",
        f"        return ({fields_of}) == ({fields_of.replace('self.', 'other.')})",
        "    return NotImplemented",
        f"def pack({', '.join(params)}):",
        f"    return _PACK(({type_id}, {fields_of.replace('self.', '')}))",
    ])
    namespace = {f"_d_{n}": v for n, v in defaults.items()}
    namespace["_PACK"] = _PACK
    exec(source + "\n", namespace)
    made = {f: namespace[f] for f in ("__init__", "__repr__", "__eq__", "pack")}
    for f, fn in made.items():
        fn.__qualname__ = f"{cls.__qualname__}.{f}"
    body = {k: v for k, v in own.items() if k not in defaults and k not in ("__dict__", "__weakref__")}
    body.update(made, pack=staticmethod(made["pack"]), __slots__=names, __hash__=None, __match_args__=names,
                FIELD_NAMES=names, CHECKS=tuple(checks.values()), DEFAULTS=defaults)
    return type(cls)(cls.__name__, cls.__bases__, body)


_PACK = wire_types.pack
_UNPACKB = msgpack.unpackb
# type id → its decoder by msgspec (_fast_decoder): every message whose fields all have a
# msgspec type (proto.wire_types) and that packs as a fixarray.
_FAST: dict[int, object] = {}
_FAST_ERROR = wire_types.DecodeError
# Messages whose entry in _FAST is still _first_decode's.  A message's decoders (msgspec's
# and the checked one, FROM_WIRE) are generated at its first decode, not when it is
# defined: generating them for all 81 took ~55 ms of every process's start-up (the
# launcher, the hypervisor, each zygote), and a process decodes a dozen of them.
_UNBUILT: set[int] = set()
# One builder at a time: a partition's VP threads decode their first answers together, and
# a thread that found the type already taken off _UNBUILT but _FAST still holding
# _first_decode's entry called that entry again, and again — a RecursionError that ended
# the partition (seen in a default run).  The entry changes before the type leaves _UNBUILT.
_BUILDING = threading.Lock()


def fast_decoder(type_id: int):
    """Message ``type_id``'s decoder by msgspec (generated now if it was not yet), or None
    if it has none (a field with no msgspec type, or too many fields for a fixarray)."""
    if type_id in _UNBUILT:
        with _BUILDING:
            if type_id in _UNBUILT:
                cls = REGISTRY[type_id]
                checked_array = wire_types.message_decoder(type_id, cls.CHECKS)
                if checked_array is None:
                    _FAST.pop(type_id, None)  # decode() goes the checked way
                else:
                    _FAST[type_id] = _fast_decoder(cls, checked_array.decode)
                _UNBUILT.discard(type_id)
    return _FAST.get(type_id)


def _first_decode(type_id: int):
    """_FAST's entry until the message's first decode, which generates its decoder."""
    def first(frame: bytes):
        decoder = fast_decoder(type_id)
        return None if decoder is None else decoder(frame)  # None: the checked way
    return first


def _field_decoder(cls):
    """``obj`` (the decoded array, its length already checked) → ``cls``, each field through
    its check: one generated function per message.  The common checks (``proto.fields``'
    uint, bool, one_of, blob, stamps and registers, which say what they are in ``spec``)
    are written out inline — the same tests, without a call per field, which cost about
    half of a hot message's decoding; a value that fails one, and every other kind of
    field, goes through its check function, which raises the :class:`FieldError` (or
    normalises, as a list becomes a tuple)."""
    namespace = {"cls": cls, "new": object.__new__}
    names = [f"v{i}" for i in range(len(cls.CHECKS))]
    # One unpacking of the array, not an index per field; then, each field's test.
    # The builtins the tests name are the function's own locals (defaults): a local's load
    # is cheaper than a global's, once per field.
    lines = ["def from_wire(obj, type=type, int=int, bool=bool, str=str, bytes=bytes, tuple=tuple):",
             f"    _, {''.join(v + ', ' for v in names)}= obj"]
    for i, check in enumerate(cls.CHECKS):
        namespace[f"check{i}"] = check
        v, call = f"v{i}", f"v{i} = check{i}(v{i})"
        test = _inline_test(check, v, namespace, i)
        if test is None:
            lines.append(f"    {call}")
        elif isinstance(test, str):
            lines.append(f"    if {test}:\n        {call}")
        else:  # an array of ints: its type and length, then each item
            head, item = test
            lines.append(f"    if {head}:\n        {call}\n    else:\n        for x in {v}:\n"
                         f"            if {item}:\n                {call}\n                break")
    lines += _construction(cls)
    exec("\n".join(lines) + "\n", namespace)
    return namespace["from_wire"]


def _construction(cls) -> list[str]:
    """A generated decoder's last lines: the message made from its fields ``v0``, ``v1``, …
    without calling its __init__ (a Python frame that assigns the same fields), its slots
    filled here.  With one unpacking of the array, this saved 2,700 of the 15,900
    instructions VpResume's decoder took (cachegrind, issue 12)."""
    return ["    msg = new(cls)", *(f"    msg.{name} = v{i}" for i, name in enumerate(cls.FIELD_NAMES)),
            "    return msg"]


def _inline_test(check, v: str, namespace: dict, i: int):
    """The test that ``v`` fails ``check``, as Python source (a str), or (the array's test,
    each item's test in ``x``) for stamps and registers; None: call the check."""
    kind, params = getattr(check, "spec", (None, {}))
    if kind == "uint":
        if params["bits"] == 64:  # (msgpack gives no int above 2**64 - 1)
            return f"type({v}) is not int or {v} < 0"
        # (an int fits ``bits`` exactly when shifting it right by ``bits`` leaves 0: a
        # negative one leaves -1; one shift, not a chained comparison's two tests)
        return f"type({v}) is not int or {v} >> {params['bits']}"
    if kind == "bool":
        return f"type({v}) is not bool"
    if kind == "one_of":
        namespace[f"allowed{i}"] = frozenset(params["choices"])
        return f"(type({v}) is not int and type({v}) is not str) or {v} not in allowed{i}"
    if kind == "blob":
        return f"type({v}) is not bytes or len({v}) > {params['max_len']}"
    if kind == "stamps":
        return (f"type({v}) is not tuple or len({v}) > {params['max_items']}",
                "type(x) is not int or x < 0")
    if kind == "registers":
        return (f"type({v}) is not tuple or (len({v}) != {params['count']} and len({v}) != 0)",
                "type(x) is not int or x < 0")  # (as a u64's: msgpack gives no int above 2**64 - 1)
    return None


def _fast_decoder(cls, checked_array):
    """``frame`` → ``cls`` by msgspec's ``checked_array`` decoder (proto.wire_types), or
    None where a register block's length is not its count (the one test its types do not
    make) or a field's finisher says so; msgspec's own refusals raise its error.  One
    generated function, as :func:`_field_decoder`."""
    names = [f"v{i}" for i in range(len(cls.FIELD_NAMES))]
    lines = ["def decode(frame):", f"    _, {''.join(v + ', ' for v in names)}= checked_array(frame)"]
    for i, count in wire_types.post_checks(cls.CHECKS).items():
        lines.append(f"    if v{i} and len(v{i}) != {count}:\n        return None")
    namespace = {"cls": cls, "new": object.__new__, "checked_array": checked_array}
    for i, finish in wire_types.finishers(cls.CHECKS).items():
        namespace[f"finish{i}"] = finish
        lines.append(f"    v{i} = finish{i}(v{i})\n    if v{i} is None:\n        return None")
    lines += _construction(cls)
    exec("\n".join(lines) + "\n", namespace)
    return namespace["decode"]


def encode(msg: Message) -> bytes:
    return _PACK(msg._wire())


def decode(frame: bytes) -> Message:
    """Bytes → message, or a typed :class:`~proto.errors.ProtocolError`.

    A message whose fields all have a msgspec type is decoded and checked by msgspec
    (proto.wire_types); anything that refuses, and every other message, the checked way
    below, whose error names what is wrong."""
    # (Byte 1 of a fixarray is its type id; of any other frame it names a decoder that
    # refuses it, as msgspec checks the whole frame, the type included.  A frame too short
    # or of a type with no such decoder raises here: the checked way says what it is.)
    if len(frame) <= MAX_FRAME_BYTES:
        try:
            msg = _FAST[frame[1]](frame)
        except (KeyError, IndexError, _FAST_ERROR):
            msg = None
        if msg is not None:
            return msg
    return decode_checked(frame)


def decode_checked(frame: bytes) -> Message:
    """Bytes → message by msgpack and the fields' Python checks: :func:`decode`'s
    definition, and its way for what msgspec does not take."""
    if len(frame) > MAX_FRAME_BYTES:
        raise MalformedMessage(f"frame of {len(frame)} bytes, at most {MAX_FRAME_BYTES}")
    try:
        obj = _UNPACKB(frame, use_list=False, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises many kinds; all mean the same to us
        raise MalformedMessage(f"not a msgpack value: {e}") from e
    if type(obj) is not tuple or not obj:
        raise MalformedMessage(f"expected a non-empty array, got {type(obj).__name__}")
    cls = REGISTRY.get(obj[0]) if type(obj[0]) is int else None
    if cls is None:
        raise UnknownMessageType(f"unknown message type {obj[0]!r}")
    if len(obj) != cls.ARITY:
        checks = cls.CHECKS
        have, want = len(obj) - 1, len(checks)
        what = "missing" if have < want else "extra"
        field = cls.FIELD_NAMES[have] if have < want else f"#{want}"
        raise InvalidField(cls.NAME, field, f"{what} field ({have} given, {want} expected)")
    from_wire = cls.FROM_WIRE
    if from_wire is None:  # its first decode this way (see _UNBUILT)
        from_wire = cls.FROM_WIRE = _field_decoder(cls)
    try:
        return from_wire(obj)
    except FieldError as e:
        bad = next(i for i, (c, v) in enumerate(zip(cls.CHECKS, obj[1:])) if _fails(c, v))
        raise InvalidField(cls.NAME, cls.FIELD_NAMES[bad], str(e)) from e


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
# Defined in proto/intercept_messages.py; registered and re-exported here.
from proto.intercept_messages import (  # noqa: E402,F401
    IoPortIntercept,
    IoStringIntercept,
    CpuidIntercept,
    MsrIntercept,
    HypercallIntercept,
    HaltIntercept,
    MmioIntercept,
    QuantumExit,
    Cr3Intercept,
    InvlpgIntercept,
    VpResume,
    VpStats,
)


# ---------------------------------------------------------------------------------------
# Worker ↔ hypervisor
# ---------------------------------------------------------------------------------------
# Defined in proto/worker_messages.py; registered and re-exported here.
from proto.worker_messages import (  # noqa: E402,F401
    InstallIntercept,
    PortNotify,
    AccessComplete,
    PortStringNotify,
    StringAccessComplete,
    MmioNotify,
    AssertInterrupt,
    ResetRequest,
    DeviceReset,
    WorkerQuery,
    WorkerQueryReply,
    ConsoleOutput,
    DeviceInput,
)


# ---------------------------------------------------------------------------------------
# Root (launch.py and the commands that attach to a run) → hypervisor
# ---------------------------------------------------------------------------------------
# Defined in proto/root_messages.py; registered and re-exported here.
from proto.root_messages import (  # noqa: E402,F401
    MemoryRequest,
    MemoryReply,
    StatusRequest,
    StatusReply,
    ExecuteRequest,
    ConsoleSubscribe,
    ConsoleData,
    InputRequest,
    WorkerQueryRequest,
    TraceSubscribe,
    TraceEvent,
    PartitionControl,
)


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
    "IoStringIntercept",
    "CpuidIntercept",
    "MsrIntercept",
    "HypercallIntercept",
    "HaltIntercept",
    "VpResume",
    "VpStats",
    "InstallIntercept",
    "PortNotify",
    "AccessComplete",
    "PortStringNotify",
    "StringAccessComplete",
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
from proto.interrupt_messages import InterruptNotify, PostedDescriptorReady  # noqa: E402,F401

__all__ += ["InterruptNotify", "PostedDescriptorReady"]
# Worker servicing's messages (ids 46–49), in a module of their own.
from proto.service_messages import DeviceSave, ServiceRequest  # noqa: E402,F401
# Saving and restoring a whole partition (ids 48, 49, 53–57), in a module of their own.
from proto.save_messages import (  # noqa: E402,F401
    PartitionRestoreRequest, PartitionSaveRequest, PartitionState, VpStateQuery, VpStateReply, VpStateRequest,
    VpStates)
# GPA maps kept honest for the VSP (issue 10; ids 90–93), in a module of their own.
# (as a module, as synic_messages: either may then be imported first)
from proto import gpa_messages as _gpa_messages  # noqa: E402,F401
# Coalesced MMIO's messages (ids 80–83), in a module of their own.
from proto.coalesced_mmio_messages import (  # noqa: E402,F401
    CoalescedMmioBatch,
    CoalescedMmioQuery,
    CoalescedMmioRegister,
    CoalescedMmioZones,
)
# Live migration between two runs (issue 13; ids 58, 59, 61–65), in a module of their own.
from proto import migration_messages as _migration_messages  # noqa: E402,F401
# A partition's VMBus state relayed to and from the VSP process (issue 13; ids 110–112).
from proto.vsp_state_messages import (  # noqa: E402,F401
    MAX_VMBUS_STATE_BYTES, VspStateQuery, VspStateReply, VspStateRequest)
