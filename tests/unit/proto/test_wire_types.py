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
from proto.checked_stats import CheckedPaths
from proto.stats import MAX_BUCKET, MAX_STAGES
from proto.errors import ProtocolError

FAST = sorted(t for t in m.REGISTRY if m.fast_decoder(t) is not None)

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
    return {"uint": 0, "bool": False, "blob": b"", "stamps": (), "registers": (), "mapping": {}}.get(
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
    fast_decode = m.fast_decoder(type_id)
    rng = random.Random(type_id)
    maps = any(c.spec[0] == "mapping" for c in cls.CHECKS)  # msgspec's type: a common case only
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
                assert checked == fast and type(getattr(fast, "regs", ())) is tuple, a
            elif not maps:  # ...and its no their no (else the checked way takes it: slower, still right)
                assert isinstance(checked, tuple), (a, checked)
            assert _outcome(m.decode, frame) == checked  # decode() says what decode_checked says
            seen += 1
    assert seen > 100


def _histogram(rng, buckets: int) -> dict:
    c = {rng.randrange(0, MAX_BUCKET + 1): rng.randrange(1, 1000) for _ in range(buckets)}
    return {"c": c, "n": sum(c.values()), "s": 10**9, "lo": 100, "hi": 10**6}


def _vp_stats_arrays(rng):
    """Real paths and counters, then each part of them wrong in each way a check looks at."""
    good = {"io_port": {"t": _histogram(rng, 300), "st": [_histogram(rng, 200) for _ in range(7)]},
            "cpuid": {"t": _histogram(rng, 5), "st": []}}
    counters = {"exits": 12, "interrupts": 3}
    yield [m.VpStats.TYPE, good, counters]
    yield [m.VpStats.TYPE, {}, {}]
    h = lambda **kw: {**_histogram(rng, 3), **kw}  # noqa: E731
    for bad_histogram in (h(extra=1), {k: v for k, v in h().items() if k != "lo"}, h(n=-1), h(n=2**53),
                          h(n=True), h(s=1.0), h(c={MAX_BUCKET + 1: 1}), h(c={-1: 1}), h(c={1: 2**53}),
                          h(c={1: False}), h(c={"12": 1}), h(c=[]), h(c={(1,): 1}), [], None):
        yield [m.VpStats.TYPE, {"io_port": {"t": bad_histogram, "st": []}}, counters]
        yield [m.VpStats.TYPE, {"io_port": {"t": h(), "st": [h(), bad_histogram]}}, counters]
    for bad_path in ({"t": h()}, {"t": h(), "st": [], "x": 0}, {"t": h(), "st": [h()] * (MAX_STAGES + 1)},
                     {"t": h(), "st": {}}, "io_port"):
        yield [m.VpStats.TYPE, {"io_port": bad_path}, counters]
    yield [m.VpStats.TYPE, {1: good["cpuid"]}, counters]  # a path named by a number
    yield [m.VpStats.TYPE, {f"p{i}": good["cpuid"] for i in range(65)}, counters]  # one path too many
    for bad_counters in ({1: 2}, {"a": [1, 2]}, {"a": 1.5}, {"a": float("inf")}, {"a": None},
                         {f"c{i}": i for i in range(257)}, {"a": {"b": 1}}, []):
        yield [m.VpStats.TYPE, good, bad_counters]
    # More values than mapping's MAX_VALUES in all (the frame itself under MAX_FRAME_BYTES).
    full = {"c": {b: 1 for b in range(MAX_BUCKET + 1)}, "n": MAX_BUCKET + 1, "s": 1, "lo": 1, "hi": 1}
    yield [m.VpStats.TYPE, {f"p{i}": {"t": full, "st": [full] * 7} for i in range(4)}, counters]
    yield [m.VpStats.TYPE, {f"p{i}": {"t": full, "st": [full] * 7} for i in range(3)}, counters]


def test_vp_stats_decodes_by_msgspec_exactly_as_the_checks_take_it():
    fast_decode = m.fast_decoder(m.VpStats.TYPE)
    taken = 0
    for a in _vp_stats_arrays(random.Random(5)):
        frame = msgpack.packb(a, use_bin_type=True)
        assert len(frame) <= m.MAX_FRAME_BYTES
        try:
            fast = fast_decode(frame)
        except wire_types.DecodeError:
            fast = None
        checked = _outcome(m.decode_checked, frame)
        if fast is not None:
            assert fast == checked and type(fast.paths) is type(checked.paths) is CheckedPaths, a
            taken += 1
        elif isinstance(checked, m.VpStats):  # taken by the checks: not the common case msgspec takes
            flat_counters = all(type(k) is str and type(v) is int for k, v in checked.counters.items())
            assert type(checked.paths) is not CheckedPaths or not flat_counters, a
        assert _outcome(m.decode, frame) == checked
    assert taken == 3  # the good one, the empty one, and three full paths (four are too many values)


def test_a_frame_with_bytes_after_the_message_is_refused_both_ways():
    frame = m.Ack(20).encode() + b"\x00"
    with pytest.raises(ProtocolError):
        m.decode(frame)
    with pytest.raises(wire_types.DecodeError):
        m.fast_decoder(m.Ack.TYPE)(frame)


def test_an_int_in_a_longer_form_than_needed_decodes_the_same_both_ways():
    """msgpack lets a sender spell 5 as a uint8 or a uint64: the type byte then is no
    fixint, and a field's value still means the same."""
    for head in (b"\x92\xcc\x04", b"\x92\x04"):  # [4 (ack), 20]: the type spelled long, then short
        for value in (b"\x14", b"\xcc\x14", b"\xcd\x00\x14", b"\xcf" + (20).to_bytes(8, "big")):
            assert m.decode(head + value) == m.decode_checked(head + value) == m.Ack(20)


def test_the_messages_that_pack_as_fixarrays_and_have_only_typed_fields_are_the_fast_ones():
    for type_id, cls in m.REGISTRY.items():
        typed = wire_types.message_decoder(type_id, cls.CHECKS) is not None
        assert (m.fast_decoder(type_id) is not None) == (typed and cls.ARITY <= 15), cls.NAME
    for hot in (m.IoPortIntercept, m.CpuidIntercept, m.HypercallIntercept, m.AccessComplete,
                m.VpResume, m.PortNotify, m.MmioNotify, m.AssertInterrupt):
        assert m.fast_decoder(hot.TYPE) is not None, hot.NAME


def test_msgspec_packs_the_bytes_msgpack_packs():
    packer = msgpack.Packer(use_bin_type=True)
    values = [0, 1, 127, 128, 255, 256, 2**16, 2**32, 2**63, 2**64 - 1, -1, -32, -33, -(2**63), True, False,
              None, 0.5, "", "é" * 40, b"", b"b" * 300, (), (1, (2, b"3")), [1, "a"], {"k": [1, 2]}, {1: None}]
    for v in itertools.chain(values, [tuple(values)]):
        assert wire_types.pack(v) == packer.pack(v), v
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(OverflowError):
            wire_types.pack(bad)


def test_a_message_s_code_is_generated_at_its_first_use_not_at_import():
    """(In a fresh interpreter: this one's tests have used them all.)"""
    script = """
from proto import messages as m
fixarrays = {t for t, cls in m.REGISTRY.items() if cls.ARITY <= 15}
assert m._UNBUILT == fixarrays and not any(cls.FROM_WIRE for cls in m.REGISTRY.values())
assert m.decode(m.Ack(7).encode()) == m.Ack(7)
assert m._UNBUILT == fixarrays - {m.Ack.TYPE}
untyped = next(t for t in sorted(fixarrays) if m.fast_decoder(t) is None)  # goes the checked way
print("ok", untyped)
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_threads_decoding_a_message_first_together_each_get_it():
    """A partition's VP threads decode their first answers at once: while one builds a
    message's decoder (slowed here), the others wait for it — they called the unbuilt
    entry again and again, a RecursionError that ended a partition of a default run."""
    script = """
import threading, time
from proto import messages as m, wire_types
real = wire_types.message_decoder
def slow(*args):
    time.sleep(0.2)  # the GIL goes to the other threads meanwhile
    return real(*args)
wire_types.message_decoder = slow
frame, got = m.Ack(7).encode(), []
threads = [threading.Thread(target=lambda: got.append(m.decode(frame))) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join(10)
assert got == [m.Ack(7)] * 4, got
print("ok")
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]
