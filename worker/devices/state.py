"""A device's state as a value, saved as plain data and restored only after every field of it
has been checked against the type the state dataclass declares for it.

A device keeps what the guest can observe in one dataclass whose defaults are the power-on
values.  ``save_state`` turns it into a dict of ints, bools, strs, bytes, lists and dicts
(what msgpack carries); ``load_state`` turns such a dict back into a new dataclass, or raises
``ValueError`` naming the first field that is wrong, so ``restore()`` can check everything
before it replaces anything.  The field's type is the whole rule:

=====================================  ===============================================
``bool``                               True or False, not 0 or 1
``int``                                an int, not a bool
``Annotated[int, Range(lo, hi)]``      lo <= value <= hi (``None``: unbounded)
``Annotated[int, Mask(bits)]``         no bit outside ``bits`` (:data:`Byte` is 0..0xFF)
``Annotated[T, OneOf(a, b, ...)]``     one of the listed values
``bytes`` / ``bytearray``              bytes; restored as the field's type
``list[T]``                            a list (or tuple) of T
``Annotated[..., Length(...)]``        a bytes or list value of that length
``T | None``                           None or a T
a dataclass                            a dict of that dataclass's fields, checked alike
=====================================  ===============================================

A field declared with ``field(metadata=LIVE)`` is not saved: it is anchored to this
process's clock (an absolute deadline, a time base) and the device saves it relative to the
moment of saving, in a second dataclass passed alongside (see the UART and the RTC).
Invariants between fields (a FIFO no longer than the FIFO mode allows) are the device's own
check, made after these.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Union

__all__ = ["Byte", "LIVE", "Length", "Mask", "OneOf", "Range", "load_state", "save_state"]

# Metadata of a field that is not part of the saved state (see the module docstring).
LIVE = {"saved": False}


@dataclass(frozen=True)
class Range:
    lo: int | None = None
    hi: int | None = None

    def check(self, value: Any) -> str | None:
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"is outside {self.lo}..{self.hi}"
        return None


@dataclass(frozen=True)
class Mask:
    bits: int

    def check(self, value: Any) -> str | None:
        if value < 0 or value & ~self.bits:
            return f"has bits outside {self.bits:#x}"
        return None


class OneOf:
    def __init__(self, *values: Any) -> None:
        self.values = frozenset(values)

    def check(self, value: Any) -> str | None:
        if value not in self.values:
            return f"is not one of {sorted(self.values, key=repr)}"
        return None


@dataclass(frozen=True)
class Length:
    at_most: int | None = None
    exactly: int | None = None

    def check(self, value: Any) -> str | None:
        if self.exactly is not None and len(value) != self.exactly:
            return f"holds {len(value)} items, not {self.exactly}"
        if self.at_most is not None and len(value) > self.at_most:
            return f"holds {len(value)} items, more than {self.at_most}"
        return None


Byte = Annotated[int, Mask(0xFF)]


def save_state(version: int, *parts: Any) -> dict:
    """``{"version": version}`` and the saved fields of each dataclass in ``parts``."""
    saved: dict = {"version": version}
    for part in parts:
        saved.update(_dump(part))
    return saved


def load_state(saved: Any, version: int, *classes: type, what: str) -> tuple:
    """New instances of ``classes`` from ``saved`` (what ``save_state`` made of them), after
    checking the version, that no key is missing or unknown, and every value's type."""
    if not isinstance(saved, dict):
        raise ValueError(f"{what} saved state is not a dict but {type(saved).__name__}")
    got = saved.get("version")
    if type(got) is not int or got != version:
        raise ValueError(f"{what} saved state version {got!r} is not {version}")
    expected = {"version"}.union(*(_saved_fields(cls) for cls in classes))
    if set(saved) != expected:
        missing = sorted(expected - set(saved))
        unknown = sorted(map(str, set(saved) - expected))
        raise ValueError(f"{what} saved state: missing keys {missing}, unknown keys {unknown}")
    return tuple(_load(cls, saved, what) for cls in classes)


# ------------------------------------------------------------------------- internals


@cache
def _saved_fields(cls: type) -> dict[str, Any]:
    """The saved fields of a dataclass and their (resolved) types."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("saved", True)}


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {name: _dump(getattr(obj, name)) for name in _saved_fields(type(obj))}
    if isinstance(obj, bytearray):
        return bytes(obj)
    if isinstance(obj, list):
        return [_dump(item) for item in obj]
    return obj


def _load(cls: type, saved: dict, where: str) -> Any:
    values = {name: _value(saved[name], hint, f"{where}.{name}")
              for name, hint in _saved_fields(cls).items()}
    return cls(**values)


def _value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against ``hint`` and converted to what the field holds."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *constraints = typing.get_args(hint)
        value = _value(value, base, where)
        for constraint in constraints:
            problem = constraint.check(value)
            if problem:
                raise ValueError(f"saved {where}={_short(value)} {problem}")
        return value
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(value, inner, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"saved {where}={_short(value)} is not a list")
        (item,) = typing.get_args(hint)
        return [_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint in (bytes, bytearray):
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"saved {where}={_short(value)} is not bytes")
        return hint(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict) or set(value) != set(_saved_fields(hint)):
            raise ValueError(f"saved {where} is not a dict of the fields {sorted(_saved_fields(hint))}")
        return _load(hint, value, where)
    if hint in (bool, int, str):
        if type(value) is not hint:
            raise ValueError(f"saved {where}={_short(value)} is not a {hint.__name__}")
        return value
    raise TypeError(f"{where}: a state field of type {hint!r} cannot be saved")  # a bug here


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
