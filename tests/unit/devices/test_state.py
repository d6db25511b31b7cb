"""Saved state is checked against the state dataclass's declared field types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import pytest

from worker.devices.state import LIVE, Byte, Length, Mask, OneOf, Range, load_state, save_state


@dataclass
class Inner:
    flag: bool = False
    level: Annotated[int, Range(0, 7)] = 7


@dataclass
class Example:
    reg: Byte = 0x12
    bits: Annotated[int, Mask(0x0F)] = 0
    mode: Annotated[str, OneOf("idle", "busy")] = "idle"
    latch: Byte | None = None
    fifo: Annotated[bytearray, Length(at_most=4)] = field(default_factory=bytearray)
    ram: Annotated[list[Byte], Length(exactly=2)] = field(default_factory=lambda: [0, 0])
    chips: list[Inner] = field(default_factory=lambda: [Inner(), Inner()])
    deadline: int = field(default=0, metadata=LIVE)


@dataclass
class Times:
    elapsed: Annotated[int, Range(0, None)] = 0


def saved() -> dict:
    return save_state(1, Example(fifo=bytearray(b"ab"), latch=3, deadline=99), Times(5))


def test_save_is_plain_data_without_the_live_fields():
    assert saved() == {"version": 1, "reg": 0x12, "bits": 0, "mode": "idle", "latch": 3,
                       "fifo": b"ab", "ram": [0, 0],
                       "chips": [{"flag": False, "level": 7}, {"flag": False, "level": 7}],
                       "elapsed": 5}


def test_load_gives_new_values_of_the_fields_types():
    state, times = load_state(saved(), 1, Example, Times, what="example")
    assert state == Example(fifo=bytearray(b"ab"), latch=3) and times == Times(5)
    assert type(state.fifo) is bytearray and state.chips[0] is not state.chips[1]


@pytest.mark.parametrize("change, words", [
    ({"version": 2}, "version"),
    ({"version": True}, "version"),
    ({"reg": 0x100}, "reg"),
    ({"reg": True}, "reg"),
    ({"bits": 0x10}, "bits"),
    ({"mode": "running"}, "mode"),
    ({"latch": -1}, "latch"),
    ({"fifo": b"abcde"}, "fifo"),
    ({"fifo": "ab"}, "fifo"),
    ({"ram": [0]}, "ram"),
    ({"ram": [0, 256]}, "ram"),
    ({"chips": [{"flag": 0, "level": 7}]}, "chips"),
    ({"chips": [{"flag": False}]}, "chips"),
    ({"elapsed": -1}, "elapsed"),
    ({"deadline": 5}, "unknown keys"),
])
def test_a_bad_value_is_a_value_error_naming_the_field(change, words):
    with pytest.raises(ValueError, match=words):
        load_state({**saved(), **change}, 1, Example, Times, what="example")


def test_a_missing_key_or_not_a_dict_is_refused():
    bad = saved()
    del bad["reg"]
    with pytest.raises(ValueError, match=r"missing keys \['reg'\]"):
        load_state(bad, 1, Example, Times, what="example")
    with pytest.raises(ValueError, match="not a dict"):
        load_state([], 1, Example, what="example")
