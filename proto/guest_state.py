"""The Python guest kernel's own state, as a versioned value in its guest memory (issue 13).

A real guest's state is its registers and its memory: its kernel's globals, its counters,
its drivers' rings are bytes in RAM, so saving RAM saves them.  The Python guest kernel's
globals are Python objects in the partition process instead (``partitions/kernel.py``'s
``System``, each VP's counters), which no save of RAM would see.  So the kernel keeps
them where a kernel keeps its data: VP 0 writes them into guest RAM, at
:data:`KERNEL_STATE_GPA`, after a workload turn at most every 50 ms (a *checkpoint*), as this module's
value — and a partition saved with its RAM carries them.  Its "instruction pointer" is
the top of the workload loop: the Python frames of a VP in the middle of a turn cannot be
saved, so a restored kernel resumes from its last checkpoint (the work of a turn cut by
the save is done again; see the README's "Save and restore").

Layout at KERNEL_STATE_GPA: ``HEADER`` (magic, version, length, CRC-32 of the body), then
the body, msgpack::

    {"generation": int, "uptime_ns": int, "ticks": int, "tick_hz": float, "console_lines": int,
     "has_pic": bool, "has_vga": bool, "boot_time": str | None, "typed": str,
     "hv": {"present", "hypercalls": bool, "vendor", "interface": str,
            "privileges", "recommendations", "spin_retry": int},
     "disk": {"bytes", "exits", "ns", "errors": int},
     "timers": {name: int},            # the workloads' integer cursors (disk_round, …)
     "vps": [{"exits": int, "counters": {name: int}}, …]}   # by VP index

The body is written in one store (no exit can fall inside it, so a VP held at an exit never
leaves it half written), and every field is checked when it is read back: it is guest
memory, which the guest (or a tampered record) could have made anything.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from proto.errors import HvstackError

KERNEL_STATE_GPA = 0x20000  # below the TLB experiment's page tables (0x40000), above the spinlock's words
KERNEL_STATE_BYTES = 0x10000
MAGIC = b"HVKSTATE"
VERSION = 1
HEADER = struct.Struct("<8sIII")  # magic, version, body length, CRC-32 of the body
MAX_COUNTERS = 64
U64_MAX = (1 << 64) - 1


class GuestStateError(HvstackError):
    """No kernel state in guest memory, or one that is not valid; the message names why."""


def encode(state: dict) -> bytes:
    body = msgpack.packb(check(state), use_bin_type=True)
    if HEADER.size + len(body) > KERNEL_STATE_BYTES:
        raise GuestStateError(f"kernel state of {len(body)} bytes does not fit {KERNEL_STATE_BYTES}")
    return HEADER.pack(MAGIC, VERSION, len(body), zlib.crc32(body)) + body


def decode(data: bytes) -> dict:
    """The kernel state at the start of ``data`` (KERNEL_STATE_BYTES of guest memory)."""
    if len(data) < HEADER.size:
        raise GuestStateError("kernel state: truncated header")
    magic, version, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise GuestStateError(f"no kernel state at {KERNEL_STATE_GPA:#x} (the guest has not checkpointed yet)")
    if version != VERSION:
        raise GuestStateError(f"kernel state version {version}; this guest kernel reads version {VERSION}")
    if length > KERNEL_STATE_BYTES - HEADER.size or HEADER.size + length > len(data):
        raise GuestStateError(f"kernel state: a length of {length} bytes")
    body = bytes(data[HEADER.size:HEADER.size + length])
    if zlib.crc32(body) != crc:
        raise GuestStateError("kernel state: its CRC-32 does not match")
    try:
        state = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException):
        raise GuestStateError("kernel state: not msgpack") from None
    return check(state)


def _fail(where: str, why: str):
    raise GuestStateError(f"kernel state: {where}: {why}")


def _typed(obj: dict, fields: dict, where: str) -> None:
    if not isinstance(obj, dict):
        _fail(where, "not a map")
    for key, kind in fields.items():
        if key not in obj:
            _fail(f"{where}.{key}", "missing")
        v = obj[key]
        ok = type(v) in kind if isinstance(kind, tuple) else type(v) is kind
        if not ok:
            _fail(f"{where}.{key}", f"{type(v).__name__} is not {kind}")
        if type(v) is int and not 0 <= v <= U64_MAX:
            _fail(f"{where}.{key}", f"{v} is outside 0..2**64-1")


def _counts(obj: Any, where: str) -> None:
    if not isinstance(obj, dict) or len(obj) > MAX_COUNTERS:
        _fail(where, f"not a map of at most {MAX_COUNTERS} counters")
    for k, v in obj.items():
        if type(k) is not str or type(v) is not int or not 0 <= v <= U64_MAX:
            _fail(f"{where}[{k!r}]", "not a name → u64 counter")


def check(state: Any) -> dict:
    _typed(state, {"generation": int, "uptime_ns": int, "ticks": int, "tick_hz": (int, float),
                   "console_lines": int, "has_pic": bool, "has_vga": bool, "boot_time": (str, type(None)),
                   "typed": str, "hv": dict, "disk": dict, "timers": dict, "vps": list}, "state")
    _typed(state["hv"], {"present": bool, "hypercalls": bool, "vendor": str, "interface": str,
                         "privileges": int, "recommendations": int, "spin_retry": int}, "state.hv")
    _typed(state["disk"], {"bytes": int, "exits": int, "ns": int, "errors": int}, "state.disk")
    _counts(state["timers"], "state.timers")
    if not 1 <= len(state["vps"]) <= 4096:
        _fail("state.vps", f"{len(state['vps'])} VPs")
    for i, vp in enumerate(state["vps"]):
        _typed(vp, {"exits": int, "counters": dict}, f"state.vps[{i}]")
        _counts(vp["counters"], f"state.vps[{i}].counters")
    return state
