"""proto.from_hypervisor: the hypervisor's per-exit messages decode as decode() decodes them;
a frame of the wrong shape, and every other message, get decode()'s checks and errors."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.errors import InvalidField, MalformedMessage, UnknownMessageType
from proto.from_hypervisor import HOT, decode_from_hypervisor

T = 1_234_567_890_123
FRAMES = [
    m.VpResume.pack(7, 0, 0x41, 1, 2, 2**64 - 1, b"out", (T, T + 1), 0x20, (T,), T + 10, 1, 6, (0x202, 0)),
    m.VpResume.pack(8, 0, 0, 0, 0, 0, b"", (), 0, (), 0, 0, 0),
    m.PortNotify.pack(3, 0, 0x3F8, 1, True, 0x41, (T, T + 1, T + 2)),
    m.MmioNotify.pack(2, 1, 0xB8000, 8, False, 0, (T,)),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_a_hot_message_decodes_as_decode_decodes_it(frame):
    got = decode_from_hypervisor(frame)
    assert got.__class__ in HOT and got == m.decode(frame)


def test_other_messages_and_bad_shapes_get_decodes_checks_and_typed_errors():
    assert decode_from_hypervisor(m.Ack(20).encode()) == m.Ack(20)
    with pytest.raises(InvalidField, match="ref_type"):  # not a hot message: its fields checked
        decode_from_hypervisor(msgpack.packb([m.Ack.TYPE, -1]))
    with pytest.raises(InvalidField, match="missing field"):
        decode_from_hypervisor(msgpack.packb([m.PortNotify.TYPE, 1, 0]))
    with pytest.raises(UnknownMessageType):
        decode_from_hypervisor(msgpack.packb([True, 1]))  # a bool is no type id (True == 1)
    for bad in (b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([]), b"\x91" + b"\x00" * (m.MAX_FRAME_BYTES + 1)):
        with pytest.raises(MalformedMessage):
            decode_from_hypervisor(bad)
