"""proto.wire_types: msgspec's checked decoding of a message accepts exactly what the
fields' Python checks accept (proto.fields, the definition), and decodes it to the same
message; whatever it refuses gets the checked decoder's typed error."""

from __future__ import annotations

import itertools
import random

import msgpack
import pytest

from proto import messages as m
from proto import wire_types
from proto.errors import ProtocolError

FAST = sorted(m._FAST)

# Values of every kind a field might be sent, well-formed or not: each field of each
# message is given each of these in turn, the others kept valid.
T = 1_234_567_890_123
ODD_VALUES = [
    0, 1, 2, 3, 4, 8, 0xFF, 0x100, 0xFFFF, 0x10000, 2**32 - 1, 2**32, 2**63, 2**64 - 1, -1, -(2**63),
    True, False, None, 1.0, float("nan"), "", "a", "x" * 70, b"", b"\x00", b"y" * 33, b"z" * 4097,
    (), (T,), (T, T + 1), (2, 0x1000), (1, 2, 3), tuple(range(9)), tuple(range(17)), (-1,), (True,), ("a",),
    (1.0,), ((1,),), {}, {"a": 1}, [T],
]


def _valid(check):
    """A value ``check`` accepts (its spec's smallest)."""
    kind, params = check.spec
    return {"uint": 0, "bool": False, "blob": b"", "stamps": (), "registers": ()}.get(
        kind, params.get("choices", (None,))[0])


def _arrays(cls, rng):
    base = [cls.TYPE] + [_valid(c) for c in cls.CHECKS]
    yield list(base)
    for i in range(1, len(base)):
        for v in ODD_VALUES:
            a = list(base)
            a[i] = v
            yield a
    for _ in range(200):  # several fields odd at once
        a = list(base)
        for i in rng.sample(range(1, len(base)), k=min(3, len(base) - 1)):
            a[i] = rng.choice(ODD_VALUES)
        yield a
    yield base[:-1]  # a field missing
    yield base + [0]  # one too many
    yield [True] + base[1:]  # a bool is no type id


def _outcome(fn, frame):
    try:
        return fn(frame)
    except ProtocolError as e:
        return (type(e), str(e))


@pytest.mark.parametrize("type_id", FAST, ids=lambda t: m.REGISTRY[t].NAME)
def test_msgspec_accepts_exactly_what_the_checks_accept(type_id):
    cls = m.REGISTRY[type_id]
    fast_decode = m._FAST[type_id]
    rng = random.Random(type_id)
    seen = 0
    for a in _arrays(cls, rng):
        frames = [msgpack.packb(a, use_bin_type=True)]
        if any(type(v) is bytes for v in a):  # bytes sent as msgpack str (the old raw type)
            frames.append(msgpack.packb(a, use_bin_type=False))
        for frame in frames:
            try:
                fast = fast_decode(frame)
            except wire_types.DecodeError:
                fast = None
            checked = _outcome(m.decode_checked, frame)
            if fast is not None:  # msgspec's yes is the checks' yes, to the same message
                assert checked == fast and type(checked.regs if hasattr(cls, "regs") else ()) is tuple, a
            else:  # ...and its no their no (else the checked way would take it: slower, still right)
                assert isinstance(checked, tuple), (a, checked)
            assert _outcome(m.decode, frame) == checked  # decode() says what decode_checked says
            seen += 1
    assert seen > 100


def test_a_frame_with_bytes_after_the_message_is_refused_both_ways():
    frame = m.Ack(20).encode() + b"\x00"
    with pytest.raises(ProtocolError):
        m.decode(frame)
    with pytest.raises(wire_types.DecodeError):
        m._FAST[m.Ack.TYPE](frame)


def test_an_int_in_a_longer_form_than_needed_decodes_the_same_both_ways():
    """msgpack lets a sender spell 5 as a uint8 or a uint64: the type byte then is no
    fixint, and a field's value still means the same."""
    for head in (b"\x92\xcc\x04", b"\x92\x04"):  # [4 (ack), 20]: the type spelled long, then short
        for value in (b"\x14", b"\xcc\x14", b"\xcd\x00\x14", b"\xcf" + (20).to_bytes(8, "big")):
            assert m.decode(head + value) == m.decode_checked(head + value) == m.Ack(20)


def test_the_messages_that_pack_as_fixarrays_and_have_only_typed_fields_are_the_fast_ones():
    for type_id, cls in m.REGISTRY.items():
        typed = wire_types.message_decoder(type_id, cls.CHECKS) is not None
        assert (type_id in m._FAST) == (typed and cls.ARITY <= 15), cls.NAME
    for hot in (m.IoPortIntercept, m.CpuidIntercept, m.HypercallIntercept, m.AccessComplete,
                m.VpResume, m.PortNotify, m.MmioNotify, m.AssertInterrupt):
        assert hot.TYPE in m._FAST, hot.NAME


def test_msgspec_packs_the_bytes_msgpack_packs():
    packer = msgpack.Packer(use_bin_type=True)
    values = [0, 1, 127, 128, 255, 256, 2**16, 2**32, 2**63, 2**64 - 1, -1, -32, -33, -(2**63), True, False,
              None, 0.5, "", "é" * 40, b"", b"b" * 300, (), (1, (2, b"3")), [1, "a"], {"k": [1, 2]}, {1: None}]
    for v in itertools.chain(values, [tuple(values)]):
        assert wire_types.pack(v) == packer.pack(v), v
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(OverflowError):
            wire_types.pack(bad)
