"""Every message round-trips; malformed frames give typed errors, never anything else."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.errors import InvalidField, MalformedMessage, ProtocolError, UnknownMessageType
from proto.fields import FieldError

T = 1_234_567_890_123

EXAMPLES = {
    m.Hello: m.Hello(m.PROTOCOL_VERSION, "vp", 3, 1, 4242, "ab12", b"n" * 32),
    m.HelloChallenge: m.HelloChallenge(b"s" * 32),
    m.HelloProof: m.HelloProof(b"p" * 32),
    m.HelloReply: m.HelloReply("vp:3:1", "cd34", b"m" * 32),
    m.ErrorReply: m.ErrorReply(10, "NOT_PERMITTED", "a worker may not send io_port_intercept"),
    m.Ack: m.Ack(20),
    m.IoPortIntercept: m.IoPortIntercept(7, 0x3F8, 1, True, 0x41, (T,)),
    m.IoStringIntercept: m.IoStringIntercept(8, 0x1F0, 2, True, 2, b"\x01\x02\x03\x04", (T,)),
    m.CpuidIntercept: m.CpuidIntercept(8, 0x40000000, 0, (T,)),
    m.MsrIntercept: m.MsrIntercept(9, 0x40000002, False, 0, (T,)),
    m.HypercallIntercept: m.HypercallIntercept(10, 0x10008, b"\x01\x00\x00\x00", (T,)),
    m.HaltIntercept: m.HaltIntercept(11, (T,)),
    m.VpResume: m.VpResume(7, 0, 0x41, 1, 2, 2**64 - 1, b"out", (T, T + 1, T + 2), 0x20, (T, T), T + 10_000_000, 1, 6),
    m.QuantumExit: m.QuantumExit(13, (T,)),
    m.MmioIntercept: m.MmioIntercept(12, 0xB8000, 8, True, 0x0741074107410741, (T,)),
    m.MmioNotify: m.MmioNotify(2, 0, 0xB8000, 2, False, 0, (T, T, T)),
    m.AssertInterrupt: m.AssertInterrupt(0x20, (T, T)),
    m.InterruptNotify: m.InterruptNotify(0x120, (T, T, T, T)),
    m.PostedDescriptorReady: m.PostedDescriptorReady(1),
    m.ResetRequest: m.ResetRequest("i8042 CPU reset"),
    m.DeviceReset: m.DeviceReset(),
    m.WorkerQuery: m.WorkerQuery(5, "screen"),
    m.WorkerQueryReply: m.WorkerQueryReply(5, {"text": "hello", "cursor": [0, 0, True]}),
    m.WorkerQueryRequest: m.WorkerQueryRequest(1, "devices"),
    m.TraceSubscribe: m.TraceSubscribe(0),
    m.TraceEvent: m.TraceEvent(1, 0, "io_port", True, 0x3F8, 0x41, (T, T, T)),
    m.PartitionControl: m.PartitionControl(1, "pause"),
    m.MemoryRequest: m.MemoryRequest(1),
    m.MemoryReply: m.MemoryReply("run/mem-1.bin", "run/slat-1.bin", ("run/tlb-lp0.bin", "run/tlb-lp1.bin")),
    m.Cr3Intercept: m.Cr3Intercept(14, 0x41000, (T,)),
    m.InvlpgIntercept: m.InvlpgIntercept(15, 0x400000, (T,)),
    m.VpStats: m.VpStats({"io_port": {"t": {"c": {100: 1}, "n": 1, "s": 100, "lo": 100, "hi": 100}, "st": []}},
                         {"interrupts": 3, "exits": 9}),
    m.InstallIntercept: m.InstallIntercept(((0x3F8, 8), (0x60, 1)), ((0xB8000, 0x8000),)),
    m.PortNotify: m.PortNotify(1, 0, 0x3FD, 1, False, 0, (T, T, T)),
    m.AccessComplete: m.AccessComplete(1, 0x60, (T,) * 5),
    m.PortStringNotify: m.PortStringNotify(3, 0, 0x3F8, 1, True, 3, b"abc", (T, T)),
    m.StringAccessComplete: m.StringAccessComplete(3, b"\xff\xff", (T,) * 5),
    m.ConsoleOutput: m.ConsoleOutput(b"hello\r\n"),
    m.DeviceInput: m.DeviceInput("keyboard", b"\x1e\x9e"),
    m.StatusRequest: m.StatusRequest(),
    m.StatusReply: m.StatusReply({"pid": 1, "partitions": []}),
    m.ExecuteRequest: m.ExecuteRequest(1, 2, 0, "outb", 0x3FF, 0x41, b""),
    m.IoRequest: m.IoRequest(3, 1, 64, "hypercall_gpa", 0x13, 0x2000, 0x3000, b""),
    m.IoReply: m.IoReply(3, 0, 0, b"\x20\x24", 0),
    m.WorkerClockStep: m.WorkerClockStep(9, 20_000_000),
    m.ServiceRequest: m.ServiceRequest(3, "expect_worker"),
    m.DeviceSave: m.DeviceSave(12, "save"),
    m.ConsoleSubscribe: m.ConsoleSubscribe(1),
    m.ConsoleData: m.ConsoleData(1, b"hi"),
    m.InputRequest: m.InputRequest(1, "console", b"ls\r"),
}

# SynIC ↔ vsp (issue 10, proto/synic_messages.py; ids 70–79).
from proto import synic_messages as sm  # noqa: E402

EXAMPLES.update({
    sm.SynicConnect: sm.SynicConnect(1, 4, "message"),
    sm.SynicDisconnect: sm.SynicDisconnect(1, 4),
    sm.SynicMessageToRoot: sm.SynicMessageToRoot(1, 0, 4, 1, b"\x0e\x00\x00\x00" + bytes(36)),
    sm.SynicEventToRoot: sm.SynicEventToRoot(1, 1, 0x2001, 0),
    sm.SynicPost: sm.SynicPost(1, 0, 2, 1, b"\x0f\x00\x00\x00" + bytes(12)),
    sm.SynicPostResult: sm.SynicPostResult(1, 0),
    sm.SynicSignal: sm.SynicSignal(1, 0, 2, 7),
    sm.SynicSignalResult: sm.SynicSignalResult(1, 0x18),
    sm.GpaMapRequest: sm.GpaMapRequest(1, ((0x200, 16), (0x300, 1)), True),
    sm.GpaMapReply: sm.GpaMapReply(1, 0, "run/mem-1.bin", ((0x200, 16), (0x300, 1))),
})

# Saving and restoring a whole partition (issue 13, proto/save_messages.py; ids 48, 49, 53).
EXAMPLES.update({
    m.PartitionSaveRequest: m.PartitionSaveRequest(1),
    m.PartitionState: m.PartitionState(1, b"\x82"),
    m.PartitionRestoreRequest: m.PartitionRestoreRequest(1, b"\x82"),
    m.VpStateRequest: m.VpStateRequest(1),
    m.VpStateQuery: m.VpStateQuery(1),
    m.VpStateReply: m.VpStateReply(True, b"\x80"),
    m.VpStates: m.VpStates(1, b"\x91\x92\xc3\xc4\x00"),
})
# GPA maps kept honest (issue 10, proto/gpa_messages.py; ids 90–93).
from proto.gpa_messages import GpaUnmapped  # noqa: E402

EXAMPLES[GpaUnmapped] = GpaUnmapped(1, ((0x200, 2),))


# Live migration between two runs (issue 13, proto/migration_messages.py; ids 58, 59, 61–65).
from proto import migration_messages as mm  # noqa: E402

EXAMPLES.update({
    mm.MigrateBegin: mm.MigrateBegin("alpha", b"\x80", b"\x90", 1024, bytes(16)),
    mm.MigratePages: mm.MigratePages(0, b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", bytes(4096)),
    mm.MigrateProbe: mm.MigrateProbe(b"x" * 16),
    mm.MigrateState: mm.MigrateState(0, 3, b"abc"),
    mm.MigrateCommit: mm.MigrateCommit(3),
    mm.MigrateGo: mm.MigrateGo(1),
    mm.MigrateRunning: mm.MigrateRunning(2),
})
EXAMPLES[mm.MigrateAbandon] = mm.MigrateAbandon("alpha", 1, bytes(16))  # (root/migration_lease.py; id 69)
EXAMPLES[mm.MigrateSwitchover] = mm.MigrateSwitchover()  # (id 68)


# A partition's VMBus state relayed to and from the VSP (issue 13, proto/vsp_state_messages.py; ids 110–112).
EXAMPLES.update({
    m.VspStateRequest: m.VspStateRequest(1, "save", b""),
    m.VspStateQuery: m.VspStateQuery(7, 1, "restore", b"\x80"),
    m.VspStateReply: m.VspStateReply(7, 1, "", b"\x80"),
})


# Coalesced MMIO (issue 12, proto/coalesced_mmio_messages.py; ids 80–83).
EXAMPLES.update({
    m.CoalescedMmioRegister: m.CoalescedMmioRegister(((0xB8000, 0x8000),)),
    m.CoalescedMmioQuery: m.CoalescedMmioQuery(7),
    m.CoalescedMmioZones: m.CoalescedMmioZones(7, ((0xB8000, 0x8000),)),
    m.CoalescedMmioBatch: m.CoalescedMmioBatch(0, ((0xB8000, 8, 0x0720072007200720), (0xB8FA0, 2, 0x0741))),
})


def test_every_registered_message_has_an_example():
    assert set(EXAMPLES) == set(m.REGISTRY.values())


@pytest.mark.parametrize("cls", list(m.REGISTRY.values()), ids=lambda c: c.NAME)
def test_message_round_trips(cls):
    msg = EXAMPLES[cls]
    back = m.decode(msg.encode())
    assert type(back) is cls
    # Arrays inside free-form maps come back as tuples, so compare the bytes they encode to.
    assert back.encode() == msg.encode()
    if not any(isinstance(getattr(msg, f), dict) for f in cls.FIELD_NAMES):
        assert back == msg


def test_wire_format_is_an_array_of_type_then_fields():
    frame = m.IoPortIntercept(1, 0x3F8, 1, True, 0x41, (5,), (0x202, 0)).encode()
    assert frame == bytes([0x98, 10, 1, 0xCD, 0x03, 0xF8, 1, 0xC3, 0x41, 0x91, 5, 0x92, 0xCD, 0x02, 0x02, 0])


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\xff\xff\xff", b"hello world", bytes(range(256))])
def test_garbage_bytes_are_malformed(garbage):
    with pytest.raises(ProtocolError):
        m.decode(garbage)


@pytest.mark.parametrize("value", [42, "text", {"type": 10}, [], b"bytes"])
def test_a_value_that_is_not_a_non_empty_array_is_malformed(value):
    with pytest.raises(MalformedMessage):
        m.decode(msgpack.packb(value))


def test_an_oversized_frame_is_refused_before_decoding():
    with pytest.raises(MalformedMessage, match="at most"):
        m.decode(b"\x00" * (m.MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize("type_id", [0, 9, 99, 255, "io_port_intercept", None, 1.5])
def test_unknown_type_is_its_own_error(type_id):
    with pytest.raises(UnknownMessageType):
        m.decode(msgpack.packb([type_id, 1, 2]))


def test_missing_field_is_named():
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0]))
    assert e.value.field == "stamps" and "missing" in e.value.reason


def test_extra_field_is_refused():
    with pytest.raises(InvalidField, match="extra"):
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], [], "surplus"]))


def test_a_register_block_out_of_range_is_refused():
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], [-1, 0]]))
    assert e.value.field == "regs"
    with pytest.raises(InvalidField):
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], [0] * 5]))


@pytest.mark.parametrize("fields, bad", [
    ([1, 0x10000, 1, True, 0, [1]], "port"),          # port out of range
    ([1, 0x3F8, 3, True, 0, [1]], "size"),            # size not 1/2/4
    ([1, 0x3F8, 1, 1, 0, [1]], "write"),              # int where a bool belongs
    ([1, "0x3f8", 1, True, 0, [1]], "port"),          # string where a number belongs
    ([-1, 0x3F8, 1, True, 0, [1]], "seq"),            # negative
    ([1, 0x3F8, 1, True, 2**32, [1]], "value"),       # value beyond u32
    ([1, 0x3F8, 1, True, 0, [1] * 17], "stamps"),     # too many stamps
    ([1, 0x3F8, 1, True, 0, ["x"]], "stamps"),        # a stamp that is not a number
    ([True, 0x3F8, 1, True, 0, [1]], "seq"),          # bool where an int belongs
])
def test_wrong_types_and_ranges_name_the_field(fields, bad):
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([10, *fields, []]))
    assert e.value.field == bad


def test_hello_role_must_be_known():
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([1, 1, "admin", 0, 0, 1, "s", "t"]))
    assert e.value.field == "role"


def test_port_ranges_must_stay_in_the_io_space():
    with pytest.raises(InvalidField):
        m.decode(msgpack.packb([20, [[0xFFF0, 0x20]], []]))
    with pytest.raises(InvalidField):
        m.decode(msgpack.packb([20, [[0x3F8, 0]], []]))
    with pytest.raises(InvalidField):
        m.decode(msgpack.packb([20, [], [[1 << 52, 1]]]))


def test_hypercall_input_is_at_most_one_page():
    with pytest.raises(InvalidField):
        m.decode(msgpack.packb([13, 1, 0, b"\x00" * 4097, [1]], use_bin_type=True))


def test_message_ids_and_names_are_unique():
    assert len({c.NAME for c in m.REGISTRY.values()}) == len(m.REGISTRY)


# -- issue 9: the decoder's ranges exact ----------------------------------------------------------


@pytest.mark.parametrize("regs", [[1], [1, 2, 3], [0] * 4])
def test_a_register_block_has_exactly_the_regs_or_none(regs):
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], regs]))
    assert e.value.field == "regs"
    assert m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], [2, 0x1000]])).regs == (2, 0x1000)
    assert m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1], []])).regs == ()


@pytest.mark.parametrize("field, value", [("session", "é" * 40), ("session", "\u202e" + "f" * 39),
                                          ("session", "セッション"), ("nonce", "f" * 32)])
def test_hello_credentials_are_ascii(field, value):
    fields = dict(zip(m.Hello.FIELD_NAMES, (m.PROTOCOL_VERSION, "vp", 3, 1, 4242, "ab12", b"f" * 32)))
    fields[field] = value
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([m.Hello.TYPE, *fields.values()]))
    assert e.value.field == field


@pytest.mark.parametrize("bad", [
    {"n": float("inf")}, {"n": float("nan")}, {"a": {"b": [1, float("-inf")]}},  # not finite, at any depth
    {(1, 2): 1}, {1.5: 1}, {b"k": 1}, {None: 1},                                 # keys: str or int only
])
def test_a_map_holds_only_finite_numbers_and_str_or_int_keys(bad):
    with pytest.raises(InvalidField) as e:
        m.decode(msgpack.packb([m.VpStats.TYPE, {}, bad], use_bin_type=True, strict_types=False))
    assert e.value.field == "counters"


def test_a_map_is_bounded_in_depth_and_size():
    deep = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(InvalidField, match="deeper"):
        m.decode(msgpack.packb([m.VpStats.TYPE, {}, {"x": deep}]))
    ok = {"x": [[[[[1.5, -2, 2**64 - 1, "s", b"b", None, True]]]]]}
    assert m.decode(msgpack.packb([m.VpStats.TYPE, {}, ok], use_bin_type=True)).counters == \
        {"x": (((((1.5, -2, 2**64 - 1, "s", b"b", None, True),),),),)}


def test_stamps_are_bounded_by_where_the_message_is_in_its_round_trip():
    # An exit starts a round trip, a completion carries five; with the hops' stamps added,
    # what a peer sends still decodes where the round trip ends (at most MAX_STAMPS).
    with pytest.raises(InvalidField, match="stamps"):
        m.decode(msgpack.packb([10, 1, 0x3F8, 1, True, 0, [1] * 5, []]))
    with pytest.raises(InvalidField, match="stamps"):
        m.decode(msgpack.packb([m.AccessComplete.TYPE, 1, 0, [1] * 9]))
    with pytest.raises(InvalidField, match="stamps"):
        m.decode(msgpack.packb([m.AssertInterrupt.TYPE, 0x20, [1] * 5, 0, False]))
    longest = m.VpResume(1, 0, 0, 0, 0, 0, b"", (1,) * 10, 0, (1,) * 6, 0, 0, 0)  # 8 + hv in, out
    assert m.decode(longest.encode()) == longest


def test_every_field_check_says_what_it_accepts():
    for cls in m.REGISTRY.values():
        for name, check in zip(cls.FIELD_NAMES, cls.CHECKS):
            assert hasattr(check, "spec"), f"{cls.NAME}.{name}"


def test_the_generated_decoder_accepts_and_refuses_what_the_field_checks_do():
    """Each message's decoder writes its common checks out inline (messages._field_decoder):
    for every field of every message, a probe value is taken or refused (naming that field)
    exactly as the field's own check takes or refuses it."""
    import random

    from benchmarks.fuzz_sequence import Values

    values = Values(random.Random(12), [1, 2])
    probes = [0, 1, -1, True, False, 255, 256, 0xFFFF, 0x10000, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, -(1 << 63),
              1.5, None, "", "x", b"", b"x" * 5000, (), (1,), (1, 2), (1, 2, 3), (1,) * 17, (-1,), (True,), (1.0,),
              ((1, 2),), {}, {"a": 1}]
    for cls in m.REGISTRY.values():
        base = [values.well_formed(check, name) for check, name in zip(cls.CHECKS, cls.FIELD_NAMES)]
        m.decode(m.encode(cls(*base)))  # well-formed: decodes
        for i, (check, name) in enumerate(zip(cls.CHECKS, cls.FIELD_NAMES)):
            for probe in probes:
                try:
                    want = check(probe)
                except FieldError:
                    want = FieldError
                frame = msgpack.packb([cls.TYPE, *base[:i], probe, *base[i + 1:]], use_bin_type=True)
                if len(frame) > m.MAX_FRAME_BYTES:
                    continue  # refused for its size before any field is looked at (the random
                    # well-formed values of a message with several large fields can add up)
                if want is FieldError:
                    with pytest.raises(InvalidField, match=name):
                        m.decode(frame)
                else:
                    assert getattr(m.decode(frame), name) == want, (cls.NAME, name, probe)


def test_a_message_class_is_what_a_slotted_dataclass_would_be():
    """(proto.messages._message_class builds them without dataclasses, for start-up.)"""
    msg = m.AssertInterrupt(0x30, (1, 2), 7)
    assert msg.resent is False  # the field's default
    assert m.AssertInterrupt(0x30, (1, 2), 7, resent=False) == msg != m.AssertInterrupt(0x30, (1, 2), 8)
    assert msg != (m.AssertInterrupt.TYPE, 0x30, (1, 2), 7, False) and m.Ack(1) != m.AssertInterrupt(1, (), 0)
    assert repr(msg) == "AssertInterrupt(vector=48, stamps=(1, 2), seq=7, resent=False)"
    assert repr(m.DeviceReset()) == "DeviceReset(resets=0)" and m.Ack.__init__.__qualname__ == "Ack.__init__"
    assert m.AssertInterrupt.pack(0x30, (1, 2), 7) == msg.encode() and m.DeviceReset.pack() == m.DeviceReset().encode()
    with pytest.raises(AttributeError):
        msg.extra = 1  # slots: no instance dict
    with pytest.raises(TypeError):
        hash(msg)  # mutable and compared by value, as a dataclass with eq
    with pytest.raises(TypeError):
        m.AssertInterrupt(0x30)  # a field without a default must be given
    match msg:
        case m.AssertInterrupt(vector, _, seq):
            assert (vector, seq) == (0x30, 7)
    with pytest.raises(TypeError, match="without a default"):
        m._message_class(type("Bad", (m.Message,), {"__annotations__": {"a": int, "b": int}, "a": 1}), 99)
