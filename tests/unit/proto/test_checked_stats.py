"""proto.checked_stats: a vp_stats' paths that PathStats.from_wire takes are checked once by
the decoder (CheckedPaths) and read as from_wire reads them; anything else is mapping's."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.checked_stats import CheckedPaths, path_stats, vp_stats_paths
from proto.errors import InvalidField
from proto.fields import FieldError, mapping
from proto.stats import MAX_BUCKET, MAX_STAGES, PathStats

T = 10 ** 12


def wire_paths() -> dict:
    ps = PathStats()
    ps.record_many([(T, T + 40_000 + i, T + 90_000 + 7 * i) for i in range(300)])
    return {"io_port": ps.to_wire(), "cpuid": PathStats().to_wire()}


def as_decoded(paths) -> dict:
    """``paths`` as msgpack gives them back (arrays as tuples)."""
    return msgpack.unpackb(msgpack.packb(paths), use_list=False, strict_map_key=False)


def decoded(paths) -> object:
    return m.decode(msgpack.packb([m.VpStats.TYPE, paths, {"exits": 1}], use_bin_type=True)).paths


def test_a_vps_paths_decode_checked_and_read_as_from_wire_reads_them():
    paths = decoded(wire_paths())
    assert type(paths) is CheckedPaths and paths == as_decoded(wire_paths())
    for name, d in paths.items():
        assert path_stats(d) == PathStats.from_wire(d)


@pytest.mark.parametrize("spoil", [
    lambda p: p["io_port"]["t"]["c"].update({MAX_BUCKET + 1: 1}),  # no such bucket
    lambda p: p["io_port"]["t"].update(c={5: True}),  # a bool count
    lambda p: p["io_port"]["t"].update(n=1 << 53),  # beyond MAX_WIRE_VALUE
    lambda p: p["io_port"]["t"].update(extra=1),  # a key from_wire does not read
    lambda p: p["io_port"].update(st=[p["io_port"]["t"]] * (MAX_STAGES + 1)),
    lambda p: p.update({7: p["cpuid"]}),  # an int path name
])
def test_anything_else_is_mappings_to_take_or_refuse(spoil):
    paths = wire_paths()
    spoil(paths)
    assert type(decoded(paths)) is dict and decoded(paths) == as_decoded(paths)  # mapping's walk takes it


def test_what_mapping_refuses_is_refused_and_the_check_is_mappings_otherwise():
    with pytest.raises(InvalidField, match="paths"):
        decoded({"io_port": {"t": float("inf")}})
    check, walk = vp_stats_paths(64), mapping(64)
    for v in ({}, {"a": 1}, as_decoded(wire_paths())):
        assert check(v) == walk(v)
    too_many = as_decoded({f"p{i}": PathStats().to_wire() for i in range(65)})
    for c in (check, walk):
        with pytest.raises(FieldError, match="65 entries"):
            c(too_many)
