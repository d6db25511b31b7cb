"""A vp_stats' histograms checked once, not twice (issue 12).

``VpStats.paths`` is a free-form map on the wire (proto.fields.mapping: its walk checks
every value's type and range), and the hypervisor then read it with
:meth:`proto.stats.PathStats.from_wire`, which checks every bucket again against the
histogram's own limits.  An io_port vp_stats holds ~1,750 buckets: each walk cost ~2.5M
instructions (cachegrind), together ~6,000 of the hypervisor's ~97,700 per io_port round
trip at the bench's pace (one vp_stats per 430).

:func:`vp_stats_paths` is the field's check: a map of paths each of which ``from_wire``
would take (checked as ``from_wire`` checks it, with a bound on its size that keeps it
inside ``mapping``'s limits) comes back as a :class:`CheckedPaths` — equal to the map, and
made nowhere else — which :func:`path_stats` turns into histograms without checking again;
anything else goes through ``mapping``'s walk as before (and, in the hypervisor, through
``from_wire``).  What decodes and what is refused stay the same: a map taken here is one
``mapping`` takes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from proto.fields import MAX_VALUES, Check, _spec, mapping
from proto.stats import MAX_BUCKET, MAX_STAGES, MAX_WIRE_VALUE, Histogram, PathStats, _all_ints

_HISTOGRAM_KEYS = frozenset(("c", "n", "s", "lo", "hi"))
_PATH_KEYS = frozenset(("t", "st"))


class CheckedPaths(dict):
    """A vp_stats' paths, each one :meth:`PathStats.from_wire` takes: made only by
    :func:`vp_stats_paths`' check."""

    __slots__ = ()


def _histogram_values(h) -> int:
    """How many values the histogram ``h`` holds, if ``Histogram.from_wire`` takes it
    through its bulk path; -1 if not (then the usual checks decide)."""
    if type(h) is not dict or h.keys() != _HISTOGRAM_KEYS:
        return -1
    c, n, s, lo, hi = h["c"], h["n"], h["s"], h["lo"], h["hi"]
    if (type(c) is not dict or type(n) is not int or type(s) is not int or type(lo) is not int
            or type(hi) is not int or (n | s | lo | hi) >> 53):  # each in [0, MAX_WIRE_VALUE)
        return -1
    if not (_all_ints(c.keys(), 0, MAX_BUCKET) and _all_ints(c.values(), 0, MAX_WIRE_VALUE - 1)):
        return -1
    return 12 + 2 * len(c)  # (at least what mapping's walk counts: the map, 5 keys, 5 values, c's)


def _checked(v, max_items: int) -> bool:
    """Every path of ``v`` one ``PathStats.from_wire`` takes, and ``v`` within ``mapping``'s
    limits: at most ``max_items`` paths (str keys), MAX_VALUES values in all (depth is 4)."""
    if type(v) is not dict or len(v) > max_items:
        return False
    values = 1 + 2 * len(v)
    for name, d in v.items():
        if type(name) is not str or type(d) is not dict or d.keys() != _PATH_KEYS:
            return False
        st = d["st"]
        if type(st) is not tuple or len(st) > MAX_STAGES:
            return False
        values += 4 + len(st)
        for h in (d["t"], *st):
            k = _histogram_values(h)
            if k < 0:
                return False
            values += k
    return values <= MAX_VALUES


# The same test as _checked's, made by msgspec while it decodes (proto/wire_types.py): a
# histogram and a path are structs whose keys must be exactly theirs, each number in its
# range.  Decoding and checking an io_port vp_stats so costs about a third of msgpack's
# unpacking and _checked's walk (~230 against ~720 µs).
_Count = Annotated[int, msgspec.Meta(ge=0, lt=MAX_WIRE_VALUE)]
_Bucket = Annotated[int, msgspec.Meta(ge=0, le=MAX_BUCKET)]


class _WireHistogram(msgspec.Struct, forbid_unknown_fields=True):
    c: dict[_Bucket, _Count]
    n: _Count
    s: _Count
    lo: _Count
    hi: _Count


class _WirePath(msgspec.Struct, forbid_unknown_fields=True):
    t: _WireHistogram
    st: Annotated[tuple[_WireHistogram, ...], msgspec.Meta(max_length=MAX_STAGES)]


_asdict = msgspec.structs.asdict


def _finish(paths: dict) -> CheckedPaths | None:
    """msgspec's decoded paths → the :class:`CheckedPaths` the check makes of the same map;
    None (the checked way) where they hold more than ``mapping``'s MAX_VALUES values."""
    values = 1 + 2 * len(paths)
    out = CheckedPaths()
    for name, p in paths.items():
        t, st = _asdict(p.t), tuple(map(_asdict, p.st))
        values += 4 + len(st) + 12 * (1 + len(st)) + 2 * (len(t["c"]) + sum(len(h["c"]) for h in st))
        out[name] = {"t": t, "st": st}
    return out if values <= MAX_VALUES else None


def vp_stats_paths(max_items: int) -> Check:
    """``mapping(max_items)``, and a :class:`CheckedPaths` for a map of valid path stats."""
    walk = mapping(max_items)

    def check(v):
        if _checked(v, max_items):
            return CheckedPaths(v)
        return walk(v)

    check.__name__ = f"vp_stats_paths{max_items}"
    wire = (Annotated[dict[str, _WirePath], msgspec.Meta(max_length=max_items)], _finish)
    return _spec(check, "mapping", max_items=max_items, wire=wire)


def _histogram(h: dict) -> Histogram:
    return Histogram(dict(h["c"]), h["n"], h["s"], h["lo"], h["hi"])


def path_stats(d: dict) -> PathStats:
    """One path of a :class:`CheckedPaths` as ``PathStats.from_wire`` makes it, unchecked."""
    return PathStats(_histogram(d["t"]), [_histogram(h) for h in d["st"]])
