"""Latency histograms that travel on the wire (in ``vp_stats`` and ``status_reply``).

A log-linear histogram: values below 64 ns have a bucket each; above, every power of two is
split into 64 buckets, so a bucket is at most 1/64 (1.6 %) wide.  Recording is an integer
``bit_length`` and a dict increment — cheap enough to do for every stage of every round
trip — and histograms merge by adding counts, so per-VP histograms sum to per-partition ones.
Percentiles are read as the upper edge of the bucket holding the rank, so they never
understate a latency.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import sub

SUB_BUCKET_BITS = 6
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
# A histogram from the wire (a VP's vp_stats) is a peer's word: every number in it must be
# an int in [0, MAX_WIRE_VALUE) — so that the sums of many VPs' histograms still pack as
# u64 and read exactly as JSON numbers — and every bucket one that a u64 can fall in.
MAX_WIRE_VALUE = 1 << 53
MAX_BUCKET = (64 << SUB_BUCKET_BITS) + SUB_BUCKETS
MAX_STAGES = 16  # a round trip's stages: one fewer than its stamps (proto.fields.MAX_STAMPS)


def wire_count(v) -> int:
    """A count or a time from the wire: an int in [0, MAX_WIRE_VALUE), or ValueError."""
    if type(v) is not int or not 0 <= v < MAX_WIRE_VALUE:
        raise ValueError(f"{v!r} is not an int in [0, 2**53)")
    return v


_INT = frozenset((int,))


def _all_ints(values, lo: int, hi: int) -> bool:
    """Every value an int (not a bool) in [lo, hi]: C loops, not a call per value."""
    return not values or (set(map(type, values)) <= _INT and lo <= min(values) and max(values) <= hi)


def bucket_of(ns: int) -> int:
    if ns < SUB_BUCKETS:
        return ns if ns > 0 else 0
    shift = ns.bit_length() - SUB_BUCKET_BITS - 1
    return ((shift + 1) << SUB_BUCKET_BITS) + ((ns >> shift) - SUB_BUCKETS)


def bucket_upper(b: int) -> int:
    """The largest value that falls in bucket ``b``."""
    if b < SUB_BUCKETS:
        return b
    shift = (b >> SUB_BUCKET_BITS) - 1
    mantissa = (b & (SUB_BUCKETS - 1)) + SUB_BUCKETS
    return ((mantissa + 1) << shift) - 1


# Histogram.record_many's table: from TABLE_LO up, a bucket is at least 2**TABLE_SHIFT wide and
# starts at a multiple of it, so ``value >> TABLE_SHIFT`` alone says the bucket of a value in
# [TABLE_LO, TABLE_HI) (1 µs to 1 ms: nearly every stage of every round trip).  A list index
# instead of bucket_of's arithmetic: 460 against 1,400 instructions a value (cachegrind; a
# port I/O exit files 8 values, and cost a VP 79k instructions in all, issue 12).  64 Ki
# entries (512 KB, in the partition process only), made on first use.
TABLE_SHIFT = 4
TABLE_LO = 1 << (SUB_BUCKET_BITS + TABLE_SHIFT)
TABLE_HI = 1 << 20
_table: list[int] = []


def _bucket_table() -> list[int]:
    """``_table[v >> TABLE_SHIFT] == bucket_of(v)`` for every v in [TABLE_LO, TABLE_HI):
    each bucket's run of entries at once (a few hundred list extensions, not 64 Ki calls)."""
    if not _table:
        t = [0] * (TABLE_LO >> TABLE_SHIFT)  # below TABLE_LO: never looked up
        b = bucket_of(TABLE_LO)
        while len(t) < TABLE_HI >> TABLE_SHIFT:
            t += [b] * (((bucket_upper(b) + 1) >> TABLE_SHIFT) - len(t))
            b += 1
        _table[:] = t
    return _table


@dataclass
class Histogram:
    """Counts by bucket, plus the exact count, sum, min and max."""

    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    total: int = 0
    lo: int = 0
    hi: int = 0

    def record(self, ns: int) -> None:
        b = bucket_of(ns)
        c = self.counts
        c[b] = c.get(b, 0) + 1
        if self.n == 0 or ns < self.lo:
            self.lo = ns
        if ns > self.hi:
            self.hi = ns
        self.n += 1
        self.total += ns

    def record_many(self, values: list[int]) -> None:
        """Record every value of ``values`` as :meth:`record` would, in bulk: the buckets by
        one comprehension (the table's, or ``bucket_of`` inline), counted into ``counts`` by
        ``Counter.update`` and min/max/sum in C — a fraction of a call per value."""
        if not values:
            return
        lo = min(values)
        if lo >= TABLE_LO:  # the usual case: every value a µs or more
            t = _table or _bucket_table()
            buckets = [t[v >> TABLE_SHIFT] if v < TABLE_HI else bucket_of(v) for v in values]
        else:
            buckets = [((((s := v.bit_length() - SUB_BUCKET_BITS - 1) + 1) << SUB_BUCKET_BITS)
                        + (v >> s) - SUB_BUCKETS) if v >= SUB_BUCKETS else (v if v > 0 else 0)
                       for v in values]
        c = self.counts
        if type(c) is not Counter:
            # A Counter counts a list in C (a dict subclass: it packs, compares and merges as
            # one); the Python loop over each bucket it replaces cost ~1,000 instructions a
            # bucket.
            c = self.counts = Counter(c)
        c.update(buckets)
        if self.n == 0 or lo < self.lo:
            self.lo = lo
        self.hi = max(self.hi, max(values))
        self.n += len(values)
        self.total += sum(values)

    def merge(self, other: "Histogram") -> None:
        if other.n == 0:
            return
        if not self.counts:  # the first VP's (a one-VP partition's only): a copy, in C
            self.counts = dict(other.counts)
        else:
            mine = self.counts  # (bound once: the hypervisor merges hundreds of buckets per vp_stats)
            get = mine.get
            for b, k in other.counts.items():
                mine[b] = get(b, 0) + k
        self.lo = other.lo if self.n == 0 else min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        self.n += other.n
        self.total += other.total

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0–100), 0 for an empty histogram."""
        if self.n == 0:
            return 0
        rank = max(1, -(-self.n * p // 100))  # ceil, at least the first sample
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_upper(b), self.hi)
        return self.hi

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def to_wire(self) -> dict:
        return {"c": self.counts, "n": self.n, "s": self.total, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_wire(cls, d: dict) -> "Histogram":
        try:
            c = d["c"]
            if type(c) is dict and _all_ints(c.keys(), 0, MAX_BUCKET) and _all_ints(c.values(), 0, MAX_WIRE_VALUE - 1):
                # The usual case, checked in bulk (a histogram has hundreds of buckets);
                # anything else — keys a JSON round trip made strings, a bad value — is
                # looked at one by one below, which also says what is wrong.
                return cls(dict(c), *(wire_count(d[k]) for k in ("n", "s", "lo", "hi")))
            counts = {}
            for b, k in d["c"].items():
                if type(b) is str and b.isdigit() and len(b) < 8:  # a JSON round trip makes keys strings
                    b = int(b)
                if wire_count(b) > MAX_BUCKET:
                    raise ValueError(f"no bucket {b}")
                counts[b] = wire_count(k)
            return cls(counts, *(wire_count(d[k]) for k in ("n", "s", "lo", "hi")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a histogram: {e}") from e


@dataclass
class PathStats:
    """One measured path: the total round trip and each stage between consecutive stamps."""

    total: Histogram = field(default_factory=Histogram)
    stages: list[Histogram] = field(default_factory=list)

    def record(self, stamps) -> None:
        """Record one round trip from its stamps (at least two)."""
        self.total.record(stamps[-1] - stamps[0])
        stages = self.stages
        n = len(stamps) - 1
        if len(stages) < n:
            stages.extend(Histogram() for _ in range(n - len(stages)))
        for i in range(n):
            stages[i].record(stamps[i + 1] - stamps[i])

    def record_many(self, rounds: list) -> None:
        """Record many round trips (each a stamps tuple, at least two) as :meth:`record`
        would one by one: each histogram takes its values in one batch."""
        if not rounds:
            return
        stages = self.stages
        # A path's round trips have as many stamps each, as a rule: then the stamps by
        # position (zip, in C) give each stage's values by one subtraction in C, not a
        # comprehension (~550 against ~750 instructions a value).
        cols = list(zip(*rounds))
        if len(cols) * len(rounds) == sum(map(len, rounds)):
            n = len(cols) - 1
            if len(stages) < n:
                stages.extend(Histogram() for _ in range(n - len(stages)))
            self.total.record_many(list(map(sub, cols[-1], cols[0])))
            for i in range(n):
                stages[i].record_many(list(map(sub, cols[i + 1], cols[i])))
            return
        self.total.record_many([st[-1] - st[0] for st in rounds])
        n = max(map(len, rounds)) - 1
        if len(stages) < n:
            stages.extend(Histogram() for _ in range(n - len(stages)))
        for i in range(n):
            j = i + 1
            stages[i].record_many([st[j] - st[i] for st in rounds if len(st) > j])

    def merge(self, other: "PathStats") -> None:
        self.total.merge(other.total)
        if len(self.stages) < len(other.stages):
            self.stages.extend(Histogram() for _ in range(len(other.stages) - len(self.stages)))
        for mine, theirs in zip(self.stages, other.stages):
            mine.merge(theirs)

    def to_wire(self) -> dict:
        return {"t": self.total.to_wire(), "st": [h.to_wire() for h in self.stages]}

    @classmethod
    def from_wire(cls, d: dict) -> "PathStats":
        try:
            if len(d["st"]) > MAX_STAGES:
                raise ValueError(f"{len(d['st'])} stages, at most {MAX_STAGES}")
            return cls(Histogram.from_wire(d["t"]), [Histogram.from_wire(h) for h in d["st"]])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not path stats: {e}") from e


def merge_paths(into: dict[str, PathStats], more: dict[str, PathStats]) -> dict[str, PathStats]:
    """Add each path's statistics in ``more`` to ``into``'s (a path new to ``into`` gets
    its own copy); returns ``into``."""
    for path, stats in more.items():
        mine = into.get(path)
        if mine is None:
            mine = into[path] = PathStats()
        mine.merge(stats)
    return into
