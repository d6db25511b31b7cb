"""A field check's msgspec type: the same test, made by msgspec's C decoder (issue 12).

:mod:`proto.fields`' checks are the definition of what a field accepts.  For the common
kinds — uint, bool, one_of, blob, stamps and registers, which say what they are in their
``spec`` — the same test can be written as a type that ``msgspec.msgpack.Decoder`` checks
while it decodes, in C: an ``IoPortIntercept`` is decoded, checked and built in ~1.2 µs
this way, against ~2.1 µs by msgpack's unpacking and the generated Python tests (timeit).
:func:`proto.messages.decode` uses it for every message whose fields all have such a type,
and the Python checks stay the definition: a frame msgspec refuses is decoded again the
checked way, which raises the typed error (naming the field) or, if the two ever differ,
accepts what the definition accepts.  ``tests/unit/proto/test_wire_types.py`` holds the two
to the same answers on mutated frames of every such message.

One test is not a type: a register block is exactly ``count`` registers *or none*.  Its
type here is "at most ``count``", and :func:`post_checks` says which fields the decoder must
still test for the length (a wrong one goes the checked way too).

A free-form map (``mapping``) has a type for its common case only, a flat map of str to int
(a VP's counters): any other map goes the checked way.  A check may also carry its own
msgspec form in its spec (``wire``: the type and a function that finishes the decoded value
into the check's, or None to send the frame the checked way): a vp_stats' histograms
(proto/checked_stats.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

_U64 = Annotated[int, msgspec.Meta(ge=0)]  # (msgpack has no int above 2**64 - 1)


def wire_type(check) -> Any:
    """The msgspec type that accepts exactly what ``check`` accepts (and decodes it to the
    same value) — or, for a map, a common case of it —, or None where there is none (text,
    ranges, …: checked in Python)."""
    kind, params = getattr(check, "spec", (None, {}))
    if "wire" in params:
        return params["wire"][0]
    if kind == "uint":
        return _U64 if params["bits"] == 64 else Annotated[int, msgspec.Meta(ge=0, lt=1 << params["bits"])]
    if kind == "bool":
        return bool
    if kind == "one_of":
        choices = params["choices"]
        # (msgspec's Literal takes ints and strs, and — like the check — refuses a bool for an int)
        if choices and all(type(c) in (int, str) for c in choices):
            return Literal[choices]
        return None
    if kind == "blob":
        return Annotated[bytes, msgspec.Meta(max_length=params["max_len"])]
    if kind == "stamps":
        return Annotated[tuple[_U64, ...], msgspec.Meta(max_length=params["max_items"])]
    if kind == "registers":  # its "or none" is a post check (post_checks)
        return Annotated[tuple[_U64, ...], msgspec.Meta(max_length=params["count"])]
    if kind == "mapping":  # (msgpack's ints are all within mapping's i64/u64)
        return Annotated[dict[str, int], msgspec.Meta(max_length=params["max_items"])]
    return None


def finishers(checks) -> dict[int, Any]:
    """Field index → the function that finishes its decoded value (None: the checked way),
    for the checks that carry their own msgspec form."""
    return {i: c.spec[1]["wire"][1] for i, c in enumerate(checks)
            if "wire" in getattr(c, "spec", (None, {}))[1]}


def post_checks(checks) -> dict[int, int]:
    """Field index → the exact length a non-empty register block must have: the one test
    :func:`wire_type` cannot make."""
    return {i: c.spec[1]["count"] for i, c in enumerate(checks)
            if getattr(c, "spec", (None,))[0] == "registers"}


def message_decoder(type_id: int, checks) -> msgspec.msgpack.Decoder | None:
    """A decoder of the whole wire array ``[type_id, field…]`` to a tuple, every field
    tested by its type; None if a field has no type."""
    types = [wire_type(c) for c in checks]
    if any(t is None for t in types):
        return None
    return msgspec.msgpack.Decoder(tuple[(Literal[type_id], *types)])


pack = msgspec.msgpack.Encoder().encode
"""A value → msgpack bytes: the same bytes msgpack's ``Packer(use_bin_type=True)`` makes for
what messages hold (ints in their smallest form, bytes as bin, str as str, tuples and
lists as arrays), in about a third of its time."""

DecodeError = msgspec.MsgspecError
