"""The bulk checks on the hot paths (issue 12) refuse exactly what the checks one value at
a time refuse: histograms from the wire, a TLB file's valid count, a message's fields."""

from __future__ import annotations

import random

import pytest

from proto import messages as m
from proto.errors import InvalidField
from proto.stats import MAX_BUCKET, MAX_WIRE_VALUE, Histogram
from proto.tlb import ENTRIES, ENTRY, offset

BAD_COUNTS = [{1: True}, {True: 1}, {-1: 1}, {MAX_BUCKET + 1: 1}, {1: MAX_WIRE_VALUE}, {1: -1}, {1: 1.0},
              {"x": 1}, {1.0: 1}, {1: None}, {1: 2, 3: "4"}]


def wire(counts) -> dict:
    return {"c": counts, "n": 1, "s": 1, "lo": 1, "hi": 1}


@pytest.mark.parametrize("counts", BAD_COUNTS, ids=repr)
def test_a_histogram_with_a_bad_bucket_is_refused(counts):
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_wire(wire(counts))


def test_a_good_histogram_reads_back_the_same_by_either_path():
    rnd = random.Random(12)
    counts = {b: rnd.randrange(1, 1000) for b in rnd.sample(range(MAX_BUCKET + 1), 300)}
    counts[MAX_BUCKET], counts[0] = MAX_WIRE_VALUE - 1, 0
    assert Histogram.from_wire(wire(counts)).counts == counts
    # A JSON round trip's string keys take the one-by-one path to the same histogram.
    assert Histogram.from_wire(wire({str(b): k for b, k in counts.items()})).counts == counts
    assert Histogram.from_wire(wire({})).counts == {}


def test_merging_into_an_empty_histogram_copies_and_does_not_alias():
    a, b = Histogram(), Histogram()
    for ns in (5, 500, 50_000):
        b.record(ns)
    a.merge(b)
    a.merge(b)
    assert a.n == 6 and sum(a.counts.values()) == 6 and sum(b.counts.values()) == 3


def test_the_tlb_valid_count_is_the_count_of_nonzero_valid_words(tmp_path):
    import os

    from hypervisor.tlb import TlbFile

    t = TlbFile(str(tmp_path / "tlb.bin"))
    rnd = random.Random(9)
    for i in range(ENTRIES):
        os.pwrite(t.fd, ENTRY.pack(rnd.choice((0, 0, 1, 7, 0xFFFFFFFF)), 1, 2, 3, 4), offset(i))
    one_by_one = sum(1 for _, valid, *_ in t.entries() if valid)
    assert 0 < t.valid_count() == one_by_one < ENTRIES
    os.truncate(t.fd, offset(10))  # a partition's truncation: the missing entries are not valid
    assert t.valid_count() == sum(1 for _, valid, *_ in t.entries() if valid) <= 10


def test_a_generated_decoder_still_names_the_field_that_fails():
    good = m.IoPortIntercept(5, 0x3F8, 1, True, 65, (1,), (2, 0x1000))
    assert m.decode(good.encode()) == good
    import msgpack

    for i, field in ((2, "port"), (3, "size"), (4, "write"), (7, "regs")):
        raw = list(good._wire())
        raw[i] = {2: 1 << 16, 3: 3, 4: 1, 7: (1,)}[i]
        with pytest.raises(InvalidField, match=field):
            m.decode(msgpack.packb(raw))


@pytest.mark.parametrize("value, why", [
    ({"a": [1, 2, 1 << 64]}, "outside i64/u64"), ({"a": (1, -(1 << 63) - 1)}, "outside i64/u64"),
    ({"a": {1.5: 2}}, "map key of type float"), ({"a": {b"x": 1}}, "map key of type bytes"),
    ({"a": [1, 1.0, float("inf")]}, "non-finite"), ({"a": float("nan")}, "non-finite"),
    ({"a": [set()]}, "value of type set"), ({"a": [[[[[[[[[[[[[1]]]]]]]]]]]]]}, "nested deeper"),
    ({"a": list(range(1 << 18))}, "more than"), ({"a": ["x"] * (1 << 18)}, "more than"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_free_form_map_is_refused_as_before(value, why):
    from proto.fields import FieldError, mapping

    with pytest.raises(FieldError, match=why):
        mapping(8)(value)
    mapping(8)({"a": [1, 2.5, "x", None, True, b"", (1,), {}], "b": {1: -1, "2": [0, 1 << 63]}})


@pytest.mark.parametrize("cls", list(m.REGISTRY.values()), ids=lambda c: c.NAME)
def test_a_message_packed_from_its_fields_is_the_frame_it_encodes_to(cls):
    """``cls.pack(…)`` (the hot paths' send without building the message) gives the bytes
    ``cls(…).encode()`` does, defaults included."""
    from tests.unit.proto.test_messages import EXAMPLES

    msg = EXAMPLES[cls]
    assert cls.pack(*msg._wire()[1:]) == msg.encode()
    assert m.decode(cls.pack(*msg._wire()[1:])) == m.decode(msg.encode())


def test_a_resume_packed_without_its_register_block_takes_the_default():
    assert m.VpResume.pack(1, 0, 2, 3, 4, 5, b"", (6,), 0, (), 7, 0, 6) == \
        m.VpResume(1, 0, 2, 3, 4, 5, b"", (6,), 0, (), 7, 0, 6).encode()
    with pytest.raises(TypeError):
        m.VpResume.pack(1, 0, 2)  # a field missing is the constructor's error
