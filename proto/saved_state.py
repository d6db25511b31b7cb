"""A partition's saved state: one versioned, self-describing msgpack record, and the
checkpoint file a worker keeps it in.

The record (what :func:`encode` makes and :func:`decode` checks) is an envelope::

    {"format": "hvstack-saved-state", "version": 1, "sha256": <32 bytes>, "record": <bytes>}

whose ``record`` is itself msgpack::

    {"partition": {"id": int, "name": str}, "created_at": ISO-8601 UTC str,
     "sequence": int, "sections": {name: section}}

The envelope's format and version are read before anything of the record is trusted, so a
file from another version is refused as such (not as a checksum mismatch); the SHA-256 over
the record's bytes catches a truncated or tampered file.  Sections are named: ``worker`` is
every device's state value by device name (``worker/devices/state.py`` checks each value when
the device restores it); ``worker_access`` the last access whose effect it holds; ``shape``,
``hypervisor``, ``vps``, ``memory`` and ``disks`` are a whole partition's (``ctl save``;
:mod:`proto.partition_state` checks every field of them).  A reader refuses an unknown section, as OpenVMM refuses an
unknown saved unit: it would be state dropped without a word.

A checkpoint file (:class:`CheckpointFile`) holds two slots of :data:`SLOT_BYTES`, written
alternately; each slot is a u32 length and a record.  A writer that dies in the middle of a
write spoils only the slot it was writing: :meth:`CheckpointFile.latest` takes the valid
record with the highest ``sequence``.

Every refusal is a :class:`SavedStateError` subclass naming what is wrong.
"""

from __future__ import annotations

import os
import struct
from datetime import datetime, timezone
from typing import Any

import msgpack

from proto.errors import HvstackError
from proto.sha256 import sha256

FORMAT = "hvstack-saved-state"
VERSION = 1
# What this version knows: every device's state value by name, and the last access the
# worker completed ({"ref", "value"}, and "data": a string access's elements), so a
# successor can answer its resend without doing it twice.
SECTIONS = frozenset({"worker", "worker_access"})
# The interrupts the devices took (INTA): how many so far ({"seq"}), and the last ones as
# [vector, seq] ({"taken"}), which a successor sends again (worker/service.py).
SECTIONS = SECTIONS | {"worker_interrupts"}
# A whole partition's record (``ctl save``, ``run --restore``; proto/partition_state.py
# checks each): its shape, the hypervisor's partition-wide and per-VP state, its memory
# and its disks, beside ``worker``.
PARTITION_SECTIONS = frozenset({"shape", "hypervisor", "vps", "memory", "disks"})
SECTIONS = SECTIONS | PARTITION_SECTIONS | {"cpu"}  # cpu: a real-CPU backend's registers
SECTIONS = SECTIONS | {"vmbus"}  # the root's VMBus server and VSPs of the partition (proto/vmbus_state.py)
SLOT_BYTES = 1 << 20  # one checkpoint slot: a u32 length, then the record
_LEN = struct.Struct("<I")


class SavedStateError(HvstackError):
    """A saved state that cannot be restored; the message says why."""


class WrongFormat(SavedStateError):
    """Not a saved state of ours at all."""


class WrongVersion(SavedStateError):
    """A saved state of another version of the format."""


class Corrupt(SavedStateError):
    """Truncated or changed after it was written: not msgpack, or the checksum differs."""


class MissingField(SavedStateError):
    """A field the format requires is absent, or of the wrong type."""


class UnknownSection(SavedStateError):
    """A section this version does not know: restoring without it would lose state."""


def encode(partition_id: int, name: str, sections: dict[str, Any], sequence: int = 0,
           created_at: str | None = None) -> bytes:
    """The record for ``sections`` of partition ``partition_id`` (``name``), as bytes."""
    unknown = set(sections) - SECTIONS
    if unknown:
        raise UnknownSection(f"sections {sorted(unknown)} are not in version {VERSION}")
    record = msgpack.packb({
        "partition": {"id": partition_id, "name": name},
        "created_at": created_at or datetime.now(timezone.utc).isoformat(),
        "sequence": sequence,
        "sections": sections,
    }, use_bin_type=True)
    return msgpack.packb({"format": FORMAT, "version": VERSION, "sha256": sha256(record).digest(),
                          "record": record}, use_bin_type=True)


def decode(data: bytes) -> dict:
    """The record in ``data``, every field of the envelope and record checked."""
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:  # ExtraData, OutOfData, FormatError are ValueErrors
        raise Corrupt(f"saved state is not one msgpack record ({len(data)} bytes): {type(e).__name__}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise WrongFormat(f"not an {FORMAT} record")
    version = envelope.get("version")
    if type(version) is not int:
        raise MissingField("saved state: no version")
    if version != VERSION:
        raise WrongVersion(f"saved state version {version}; this hvstack reads version {VERSION}")
    record, digest = envelope.get("record"), envelope.get("sha256")
    if not isinstance(record, bytes) or not isinstance(digest, bytes):
        raise MissingField("saved state: no record or no sha256")
    if sha256(record).digest() != digest:
        raise Corrupt("saved state: the checksum does not match its record (changed or truncated)")
    try:
        body = msgpack.unpackb(record, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException):
        raise Corrupt("saved state: its record is not msgpack") from None
    _require(body, {"partition": dict, "created_at": str, "sequence": int, "sections": dict}, "record")
    _require(body["partition"], {"id": int, "name": str}, "partition")
    unknown = set(body["sections"]) - SECTIONS
    if unknown:
        raise UnknownSection(f"saved state has sections {sorted(map(str, unknown))} this version does not know")
    if "worker_access" in body["sections"]:
        access = body["sections"]["worker_access"]
        _require(access, {"ref": int, "value": int}, "worker_access")
        if "data" in access and type(access["data"]) is not bytes:  # a string access's elements
            raise MissingField("saved state: worker_access.data is not a bytes")
    if "worker" in body["sections"] and not isinstance(body["sections"]["worker"], dict):
        raise MissingField("saved state: worker is not a map of device states")
    from proto.partition_state import CHECKS  # it imports this module's errors
    for name, check in CHECKS.items():
        if name in body["sections"]:
            check(body["sections"][name])
    return body


def _require(obj: Any, fields: dict[str, type], where: str) -> None:
    if not isinstance(obj, dict):
        raise MissingField(f"saved state: {where} is not a map")
    for key, kind in fields.items():
        if key not in obj:
            raise MissingField(f"saved state: {where} has no {key!r}")
        if type(obj[key]) is not kind:
            raise MissingField(f"saved state: {where}.{key} is not a {kind.__name__}")


def read_file(path: os.PathLike) -> dict:
    """The record a saved-state file holds (all of the file is the record)."""
    with open(path, "rb") as f:
        return decode(f.read())


class CheckpointFile:
    """Two alternating slots in one file (a descriptor opened read-write, so a confined
    worker can keep writing it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._next_slot = 0
        self.written = 0  # records written by this process

    def write(self, data: bytes) -> None:
        if len(data) + _LEN.size > SLOT_BYTES:
            raise SavedStateError(f"saved state of {len(data)} bytes does not fit a {SLOT_BYTES}-byte slot")
        os.pwrite(self.fd, _LEN.pack(len(data)) + data, self._next_slot * SLOT_BYTES)
        self._next_slot ^= 1
        self.written += 1

    def latest(self) -> dict:
        """The valid record with the highest sequence; SavedStateError when neither slot
        holds one (the error of the slot written last, if any was, says why)."""
        found: list[tuple[dict, int]] = []
        errors: list[SavedStateError] = []
        for slot in (0, 1):
            head = os.pread(self.fd, _LEN.size, slot * SLOT_BYTES)
            length = _LEN.unpack(head)[0] if len(head) == _LEN.size else 0
            if length == 0:
                continue
            if length > SLOT_BYTES - _LEN.size:
                errors.append(Corrupt(f"checkpoint slot {slot}: a length of {length} bytes"))
                continue
            try:
                found.append((decode(os.pread(self.fd, length, slot * SLOT_BYTES + _LEN.size)), slot))
            except SavedStateError as e:
                errors.append(e)
        if not found:
            raise errors[0] if errors else MissingField("the checkpoint file holds no saved state")
        record, slot = max(found, key=lambda f: f[0]["sequence"])
        self._next_slot = slot ^ 1  # the next write keeps this one
        return record
