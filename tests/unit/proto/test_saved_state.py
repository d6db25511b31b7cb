"""The saved-state record (proto/saved_state.py): round trips, and a clear typed refusal of
another version, a missing field, a truncated or tampered file, an unknown section."""

from __future__ import annotations

import os

import msgpack
import pytest

from proto import saved_state as ss
from worker.backends import ConsoleLog
from worker.chipset import Chipset
from worker.devices.config import CHIPSETS


@pytest.fixture
def chipset(tmp_path):
    c = Chipset(CHIPSETS["gen1"], ConsoleLog(str(tmp_path / "console.log")))
    yield c
    c.close()


def test_every_device_of_a_chipset_round_trips_through_a_record(chipset, tmp_path):
    chipset.bus.write(0x3FF, 1, 0x5A)  # COM1's scratch register: a state that is not power-on
    data = ss.encode(3, "alpha", {"worker": chipset.save()}, sequence=7)
    record = ss.decode(data)
    assert record["partition"] == {"id": 3, "name": "alpha"} and record["sequence"] == 7
    other = Chipset(CHIPSETS["gen1"], ConsoleLog(str(tmp_path / "other.log")))
    other.restore(record["sections"]["worker"])
    assert other.bus.read(0x3FF, 1) == 0x5A
    other.close()


def envelope(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False)


def test_another_version_is_refused_as_such():
    outer = envelope(ss.encode(1, "a", {"worker": {}}))
    outer["version"] = ss.VERSION + 1
    with pytest.raises(ss.WrongVersion, match=f"version {ss.VERSION + 1}"):
        ss.decode(msgpack.packb(outer))


def test_not_a_saved_state_is_refused():
    with pytest.raises(ss.WrongFormat):
        ss.decode(msgpack.packb({"format": "qemu", "version": 1}))


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_a_truncated_file_is_refused(cut):
    data = ss.encode(1, "a", {"worker": {"pic": {"version": 1}}})
    with pytest.raises(ss.Corrupt):
        ss.decode(data[:-cut])


def test_a_tampered_record_is_refused():
    data = bytearray(ss.encode(1, "a", {"worker": {"com1": {"scr": 1}}}))
    i = data.index(b"scr")
    data[i] = ord("x")
    with pytest.raises(ss.Corrupt, match="checksum"):
        ss.decode(bytes(data))


@pytest.mark.parametrize("field", ["partition", "created_at", "sequence", "sections"])
def test_a_missing_field_is_refused(field):
    body = envelope(ss.encode(1, "a", {"worker": {}}))
    record = msgpack.unpackb(body["record"], raw=False)
    del record[field]
    body["record"] = msgpack.packb(record)
    body["sha256"] = __import__("hashlib").sha256(body["record"]).digest()
    with pytest.raises(ss.MissingField, match=field):
        ss.decode(msgpack.packb(body))


def test_an_unknown_section_is_refused_both_ways():
    with pytest.raises(ss.UnknownSection):
        ss.encode(1, "a", {"vp": {}})


def test_a_device_set_that_differs_is_refused_by_the_chipset(chipset):
    saved = chipset.save()
    del saved["com1"]
    with pytest.raises(ValueError, match="not this partition's"):
        chipset.restore(saved)


def test_a_bad_device_value_is_refused_by_the_device(chipset):
    saved = chipset.save()
    saved["pic"]["version"] = 99
    with pytest.raises(ValueError, match="version"):
        chipset.restore(saved)


def test_the_checkpoint_file_keeps_the_newest_valid_record(tmp_path):
    fd = os.open(tmp_path / "cp.bin", os.O_RDWR | os.O_CREAT, 0o600)
    cp = ss.CheckpointFile(fd)
    with pytest.raises(ss.MissingField):
        cp.latest()
    for seq in (1, 2, 3):
        cp.write(ss.encode(1, "a", {"worker": {}}, sequence=seq))
    assert cp.latest()["sequence"] == 3
    # A writer that died in the middle of its write spoils only that slot (slot 0 held 3).
    os.pwrite(fd, b"\xff" * 40, 8)
    assert ss.CheckpointFile(fd).latest()["sequence"] == 2
    os.pwrite(fd, b"\xff" * 40, ss.SLOT_BYTES + 8)
    with pytest.raises(ss.Corrupt):
        ss.CheckpointFile(fd).latest()
    os.close(fd)


@pytest.mark.parametrize("section", [
    {"seq": 2}, {"seq": -1, "taken": []}, {"seq": 2, "taken": [[0x20, 3]]}, {"seq": 2, "taken": [[0x100, 1]]},
    {"seq": 2, "taken": [[0x20]]}, {"seq": 2, "taken": [[0x20, 0]]}, {"seq": 2, "taken": "x"},
    {"seq": 300, "taken": [[0x20, 1]] * 257}, {"seq": 2, "taken": [], "reset": ["i8042", 3]},
    {"seq": 2, "taken": [], "reset": ["", 1]}, {"seq": 2, "taken": [], "reset": [1, 1]},
    {"seq": 2, "taken": [], "reset": ["x" * 65, 1]}, {"seq": 2, "taken": [], "reset": "i8042"},
    {"seq": 2, "taken": [], "device_resets": -1}, {"seq": 2, "taken": [], "device_resets": "1"},
])
def test_a_bad_worker_interrupts_section_is_refused_naming_it(section):
    """What a successor sends again as interrupts (worker/service.py): a vector and a seq
    no later than the record's count."""
    data = ss.encode(1, "alpha", {"worker": {}, "worker_interrupts": section})
    with pytest.raises(ss.SavedStateError, match="worker_interrupts"):
        ss.decode(data)
    for good in ({"worker": {}, "worker_interrupts": {"seq": 2, "taken": [[0x20, 1], [0x2E, 2]]}},
                 {"worker": {}, "worker_interrupts": {"seq": 3, "taken": [[0x20, 1]], "reset": ["i8042", 2]}}):
        assert ss.decode(ss.encode(1, "alpha", good))["sections"] == good
