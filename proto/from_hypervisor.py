"""Decoding what the hypervisor sends, on a connection whose only peer is the hypervisor (a
VP's, a worker's): its per-exit messages without their field checks (issue 12).

:func:`proto.messages.decode` checks every field of every frame, because a frame may come
from a hostile peer: the hypervisor decodes what a partition (or a worker) sends with it.
The hypervisor's own per-exit messages — the resume a VP waits for, the access a worker
emulates — are not a hostile peer's: a VP's and a worker's DEALER connect to the
hypervisor's ROUTER only, and the peer proved it holds the run's secret in the hello
(proto.auth); every value in them was either checked when the hypervisor decoded the exit
it came from (port, size, value, the VP's stamps) or made by the hypervisor.  Checking
them all again on arrival cost a VP ~12,000 of the ~21,500 instructions of decoding an
io_port VpResume (its 14 fields, its 8 stamps; cachegrind), and a worker ~4,500 of the
~12,300 of decoding a PortNotify: per round trip, a VP's instructions went from 60.7k to
50.6k (io_port), 48.5k to 40.0k (cpuid), 52.9k to 44.4k (hypercall), a worker's from
37.4k to 32.9k (``bench --instructions``).

So here the frame's shape is still checked — the size, msgpack, a non-empty array, a known
type, the number of fields — and the message built from the values as they are; any other
message, or a frame whose shape is wrong, goes through :func:`~proto.messages.decode`,
which checks everything and raises its typed error.  What a partition sends is never
decoded here.
"""

from __future__ import annotations

from proto import messages as m

# The messages the hypervisor sends per exit: a VP's resume, a worker's port and MMIO access.
HOT = (m.VpResume, m.PortNotify, m.MmioNotify)


def _builder(cls):
    """``obj`` (a decoded array of ``cls.ARITY`` items) → ``cls``, its fields as they are:
    the generated decoder's construction (messages._field_decoder) without its checks."""
    names = [f"v{i}" for i in range(len(cls.FIELD_NAMES))]
    lines = ["def build(obj):", f"    _, {''.join(v + ', ' for v in names)}= obj", "    msg = new(cls)"]
    lines += [f"    msg.{name} = v{i}" for i, name in enumerate(cls.FIELD_NAMES)]
    lines.append("    return msg")
    namespace = {"cls": cls, "new": object.__new__}
    exec("\n".join(lines) + "\n", namespace)
    return namespace["build"]


# type id → (the array's length, its builder)
_BUILD = {cls.TYPE: (cls.ARITY, _builder(cls)) for cls in HOT}
_UNPACKB = m._UNPACKB  # (the codec's own unpacker: the same options as decode's)
_MAX_FRAME_BYTES = m.MAX_FRAME_BYTES


def decode_from_hypervisor(frame: bytes) -> m.Message:
    """Bytes from the hypervisor → message; a :data:`HOT` one without its field checks (see
    the module's docstring), anything else by :func:`proto.messages.decode`, whose typed
    :class:`~proto.errors.ProtocolError` a frame of the wrong shape raises."""
    if len(frame) <= _MAX_FRAME_BYTES:
        try:
            obj = _UNPACKB(frame, use_list=False, raw=False, strict_map_key=False)
        except Exception:  # decode() below says what is wrong
            obj = None
        if type(obj) is tuple and obj and type(obj[0]) is int:
            hot = _BUILD.get(obj[0])
            if hot is not None and len(obj) == hot[0]:
                return hot[1](obj)
    return m.decode(frame)
