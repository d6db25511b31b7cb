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
    return check


U8, U16, U32, U64 = uint(8), uint(16), uint(32), uint(64)


def boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise FieldError(f"expected bool, got {type(v).__name__}")
    return v


def one_of(*choices: Any) -> Check:
    allowed = frozenset(choices)

    def check(v: Any) -> Any:
        if type(v) not in (int, str) or v not in allowed:
            raise FieldError(f"{v!r} is not one of {sorted(allowed, key=str)}")
        return v

    return check


def text(max_len: int) -> Check:
    def check(v: Any) -> str:
        if type(v) is not str:
            raise FieldError(f"expected str, got {type(v).__name__}")
        if len(v) > max_len:
            raise FieldError(f"string of {len(v)} characters, at most {max_len}")
        return v

    return check


def blob(max_len: int) -> Check:
    def check(v: Any) -> bytes:
        if type(v) is not bytes:
            raise FieldError(f"expected bytes, got {type(v).__name__}")
        if len(v) > max_len:
            raise FieldError(f"{len(v)} bytes, at most {max_len}")
        return v

    return check


MAX_STAMPS = 16


def stamps(v: Any) -> tuple:
    """``perf_counter_ns`` stamps appended at each hop; at most :data:`MAX_STAMPS`."""
    if type(v) is not tuple and type(v) is not list:
        raise FieldError(f"expected an array of stamps, got {type(v).__name__}")
    if len(v) > MAX_STAMPS:
        raise FieldError(f"{len(v)} stamps, at most {MAX_STAMPS}")
    for s in v:
        if type(s) is not int or s < 0:
            raise FieldError(f"stamp {s!r} is not a non-negative integer")
    return tuple(v)


MAX_REGS = 4


def registers(v: Any) -> tuple:
    """A VP's register block (see ``proto.messages.REGS``): at most :data:`MAX_REGS` u64."""
    if type(v) is not tuple and type(v) is not list:
        raise FieldError(f"expected an array of registers, got {type(v).__name__}")
    if len(v) > MAX_REGS:
        raise FieldError(f"{len(v)} registers, at most {MAX_REGS}")
    for r in v:
        if type(r) is not int or not 0 <= r < 1 << 64:
            raise FieldError(f"register {r!r} is not a u64")
    return tuple(v)


def ranges(what: str, start: Check, length: Check, limit: int, max_items: int) -> Check:
    """``[[start, length], …]`` with each range non-empty and ending at or below ``limit``."""

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of [start, length], got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} ranges, at most {max_items}")
        out = []
        for r in v:
            if type(r) not in (tuple, list) or len(r) != 2:
                raise FieldError(f"range {r!r} is not [start, length]")
            base, count = start(r[0]), length(r[1])
            if count < 1 or base + count > limit:
                raise FieldError(f"range {base:#x}+{count:#x} is outside the {what}")
            out.append((base, count))
        return tuple(out)

    return check


port_ranges = ranges("I/O space", U16, U32, 0x10000, 256)
gpa_ranges = ranges("guest-physical space", U64, U64, 1 << 52, 64)


def texts(max_items: int, max_len: int) -> Check:
    """A list of at most ``max_items`` strings (file paths, names)."""
    one = text(max_len)

    def check(v: Any) -> tuple:
        if type(v) is not tuple and type(v) is not list:
            raise FieldError(f"expected an array of strings, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} strings, at most {max_items}")
        return tuple(one(s) for s in v)

    return check


def mapping(max_items: int) -> Check:
    """A free-form map (telemetry, status); only its shape is checked here."""

    def check(v: Any) -> dict:
        if type(v) is not dict:
            raise FieldError(f"expected a map, got {type(v).__name__}")
        if len(v) > max_items:
            raise FieldError(f"{len(v)} entries, at most {max_items}")
        return v

    return check
