"""Field types of wire messages: each checks a decoded value and returns it (or raises).

A check returns the value to store, so a type can normalise (a msgpack array arrives as a
tuple).  Checks are plain callables because they run on the hot path: a handful of them per
intercept, each a type test and a range test.
"""

from __future__ import annotations

from typing import Any, Callable

Check = Callable[[Any], Any]


class FieldError(ValueError):
    """A value that does not fit its field; the decoder names the message and field."""


def _spec(check: Check, kind: str, **params) -> Check:
    """Say what a check accepts (``check.spec``: its kind and limits), for a reader that
    makes values — the fuzzer (benchmarks/fuzz.py) builds well-formed fields from it."""
    check.spec = (kind, params)
    return check


def uint(bits: int) -> Check:
    top = (1 << bits) - 1

    def check(v: Any) -> int:
        # bool is an int subclass; a True where a port belongs is a bug on the sender's side.
        if type(v) is not int:
            raise FieldError(f"expected u{bits}, got {type(v).__name__}")
        if not 0 <= v <= top:
            raise FieldError(f"{v} is outside u{bits}")
        return v

    check.__name__ = f"u{bits}"
    return _spec(check, "uint", bits=bits)


U8, U16, U32, U64 = uint(8), uint(16), uint(32), uint(64)


def boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise FieldError(f"expected bool, got {type(v).__name__}")
    return v


_spec(boolean, "bool")


def one_of(*choices: Any) -> Check:
    allowed = frozenset(choices)

    def check(v: Any) -> Any:
        if type(v) not in (int, str) or v not in allowed:
            raise FieldError(f"{v!r} is not one of {sorted(allowed, key=str)}")
        return v

    return _spec(check, "one_of", choices=tuple(choices))


def text(max_len: int, *, ascii_only: bool = False) -> Check:
    """A str of at most ``max_len`` characters; ``ascii_only`` for credentials and
    identifiers, which are compared and logged as bytes (a token is hex)."""

    def check(v: Any) -> str:
        if type(v) is not str:
            raise FieldError(f"expected str, got {type(v).__name__}")
        if len(v) > max_len:
            raise FieldError(f"string of {len(v)} characters, at most {max_len}")
        if ascii_only and not v.isascii():
            raise FieldError("expected ASCII text")
        return v

    return _spec(check, "text", max_len=max_len, ascii_only=ascii_only)


def blob(max_len: int) -> Check:
    def check(v: Any) -> bytes:
        if type(v) is not bytes:
            raise FieldError(f"expected bytes, got {type(v).__name__}")
        if len(v) > max_len:
            raise FieldError(f"{len(v)} bytes, at most {max_len}")
        return v

    return _spec(check, "blob", max_len=max_len)


MAX_STAMPS = 16


def stamps_upto(max_items: int) -> Check:
    """``perf_counter_ns`` stamps appended at each hop; at most ``max_items``.  A message
    that a hop extends and sends on has fewer than one it only receives, so that what a
    peer sends, with the hops' stamps added, still decodes at the far end."""

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of stamps, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} stamps, at most {max_items}")
        for s in v:
            if type(s) is not int or s < 0:
                raise FieldError(f"stamp {s!r} is not a non-negative integer")
        return tuple(v)

    check.__name__ = f"stamps{max_items}"
    return _spec(check, "stamps", max_items=max_items)


stamps = stamps_upto(MAX_STAMPS)


def registers(count: int) -> Check:
    """A VP's register block (``proto.messages.REGS``): exactly ``count`` u64, or empty
    (an exit that saves nothing, a resume that restores nothing).  Exactly: the receiver
    unpacks it into that many registers."""

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of registers, got {type(v).__name__}")
        if len(v) not in (0, count):
            raise FieldError(f"{len(v)} registers, expected {count} (or none)")
        for r in v:
            if type(r) is not int or not 0 <= r < 1 << 64:
                raise FieldError(f"register {r!r} is not a u64")
        return tuple(v)

    check.__name__ = f"registers{count}"
    return _spec(check, "registers", count=count)


def _tuples(v: Any, shape: str, noun: str, width: int, max_items: int):
    """The items of ``v``, an array of at most ``max_items`` arrays of ``width`` elements
    (``shape``: how the message names one, e.g. "[start, length]"; ``noun``: what one is)."""
    if type(v) is not tuple and type(v) is not list:
        raise FieldError(f"expected an array of {shape}, got {type(v).__name__}")
    if len(v) > max_items:
        raise FieldError(f"{len(v)} {noun}s, at most {max_items}")
    for item in v:
        if type(item) not in (tuple, list) or len(item) != width:
            raise FieldError(f"{noun} {item!r} is not {shape}")
    return v


def ranges(what: str, start: Check, length: Check, limit: int, max_items: int) -> Check:
    """``[[start, length], …]`` with each range non-empty and ending at or below ``limit``."""

    def check(v: Any) -> tuple:
        out = []
        for r in _tuples(v, "[start, length]", "range", 2, max_items):
            base, count = start(r[0]), length(r[1])
            if count < 1 or base + count > limit:
                raise FieldError(f"range {base:#x}+{count:#x} is outside the {what}")
            out.append((base, count))
        return tuple(out)

    return _spec(check, "ranges", start=start, length=length, limit=limit, max_items=max_items)


GPA_LIMIT = 1 << 52  # guest-physical addresses have at most 52 bits
port_ranges = ranges("I/O space", U16, U32, 0x10000, 256)
gpa_ranges = ranges("guest-physical space", U64, U64, GPA_LIMIT, 64)


def mmio_writes(max_items: int, sizes: tuple[int, ...]) -> Check:
    """``[[gpa, size, value], …]``: at most ``max_items`` stores, each of an MMIO size, its
    value fitting that size (``sizes``: the MMIO sizes), its bytes inside guest-physical space.  Whether they lie in a
    coalesced region is the hypervisor's check (it knows the regions)."""

    def check(v: Any) -> tuple:
        out = []
        for w in _tuples(v, "[gpa, size, value]", "write", 3, max_items):
            gpa, size, value = w
            if type(gpa) is not int or type(size) is not int or type(value) is not int:
                raise FieldError(f"write {w!r}: gpa, size and value are integers")
            if size not in sizes:
                raise FieldError(f"write of {size} bytes (sizes: {sizes})")
            if not 0 <= gpa <= GPA_LIMIT - size:
                raise FieldError(f"write at {gpa:#x}+{size} is outside guest-physical space")
            if not 0 <= value < 1 << (8 * size):
                raise FieldError(f"value {value:#x} does not fit {size} bytes")
            out.append((gpa, size, value))
        return tuple(out)

    check.__name__ = f"mmio_writes{max_items}"
    return _spec(check, "mmio_writes", max_items=max_items, sizes=sizes)


def texts(max_items: int, max_len: int) -> Check:
    """A list of at most ``max_items`` strings (file paths, names)."""
    one = text(max_len)

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of strings, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} strings, at most {max_items}")
        return tuple(one(s) for s in v)

    return _spec(check, "texts", max_items=max_items, max_len=max_len)


# A free-form map's limits: how deep maps and arrays nest (a status reply is about 8
# deep), and how many values it holds in all.  msgpack already limits ints to
# [-2**63, 2**64) and the frame to MAX_FRAME_BYTES; these bound the work of walking it.
MAX_DEPTH = 12
MAX_VALUES = 1 << 18
I64_MIN, U64_MAX = -(1 << 63), (1 << 64) - 1


_LEAVES = frozenset((str, bytes, bool, type(None)))  # nothing to check beyond their type
_INT = frozenset((int,))


def _tree(v: Any, depth: int, budget: list) -> None:
    """Check a decoded value for what a receiver can store and pack again: finite floats,
    ints within msgpack's range, str or int keys; bounded depth and size."""
    budget[0] -= 1
    if budget[0] < 0:
        raise FieldError(f"more than {MAX_VALUES} values")
    t = type(v)
    if t is int:
        if not I64_MIN <= v <= U64_MAX:
            raise FieldError(f"integer {v} is outside i64/u64")
    elif t is float:
        if v != v or v in (float("inf"), float("-inf")):
            raise FieldError(f"non-finite number {v!r}")
    elif t is str or t is bytes or t is bool or v is None:
        pass
    elif t is tuple or t is list or t is dict:
        if depth >= MAX_DEPTH:
            raise FieldError(f"nested deeper than {MAX_DEPTH}")
        if t is dict:
            key_types = set(map(type, v))
            if not key_types <= {str, int}:
                bad = next(k for k in v if type(k) is not str and type(k) is not int)
                raise FieldError(f"a map key of type {type(bad).__name__}")
            _items(v.keys(), key_types, depth + 1, budget)
            _items(v.values(), set(map(type, v.values())), depth + 1, budget)
        else:
            _items(v, set(map(type, v)), depth + 1, budget)
    else:
        raise FieldError(f"a value of type {t.__name__}")


def _items(items, types: set, depth: int, budget: list) -> None:
    """The members of one array, or a map's keys or values, whose ``types`` are known: all
    ints or all plain leaves are checked in bulk (a histogram's hundreds of counts cost a
    min and a max, not a call each), anything else one by one."""
    if types <= _INT:
        budget[0] -= len(items)
        if budget[0] < 0:
            raise FieldError(f"more than {MAX_VALUES} values")
        if items and (min(items) < I64_MIN or max(items) > U64_MAX):
            bad = next(i for i in items if not I64_MIN <= i <= U64_MAX)
            raise FieldError(f"integer {bad} is outside i64/u64")
    elif types <= _LEAVES:
        budget[0] -= len(items)
        if budget[0] < 0:
            raise FieldError(f"more than {MAX_VALUES} values")
    else:
        for item in items:
            _tree(item, depth, budget)


def mapping(max_items: int) -> Check:
    """A free-form map (telemetry, status): at most ``max_items`` entries at the top, its
    keys str or int, its values what msgpack carries (every number finite, every int
    within i64/u64), nested at most :data:`MAX_DEPTH` deep, :data:`MAX_VALUES` in all."""

    def check(v: Any) -> dict:
        if type(v) is not dict:
            raise FieldError(f"expected a map, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} entries, at most {max_items}")
        _tree(v, 0, [MAX_VALUES])
        return v

    return _spec(check, "mapping", max_items=max_items)
