"""A whole partition's record (issue 13): every section round-trips through the saved-state
format, and each kind of bad field, a record of another shape and a bad guest kernel state
are refused with an error naming what is wrong."""

from __future__ import annotations

import copy
import hashlib
import zlib

import pytest

from proto import guest_state, partition_state as ps, saved_state

PAGE = 4096


def vp(i: int) -> dict:
    return {"index": i, "rflags": 0x202, "cr3": 0x1000, "suspended": False, "assist_page": 0x9E001,
            "pending": [0x20],
            "apic": {"tpr": 0, "svr": 0x1FF, "lvt_timer": 0x200EF, "timer_icr": 200_000, "timer_dcr": 0b1011,
                     "icr_hi": 0, "isr": ps.mask_to_bytes(1 << 0xEF), "irr": ps.mask_to_bytes(0),
                     "auto_eoi": ps.mask_to_bytes(0), "timer_remaining_ns": 400_000, "assist_enabled": True},
            "synic": {"scontrol": 1, "siefp": 0, "simp": 0x80001, "sints": [0x10000] * 16,
                      "queues": [[[0x80000010, b"\x00" * 24, 0]]] + [[] for _ in range(15)],
                      "stimers": [{"config": 0, "count": 0, "due_ref": 0, "remaining_ns": None}] * 4},
            "sched": {"run_ns": 5, "wait_ns": 6, "dispatches": 7, "preemptions": 0, "yields": 1, "forced": 0,
                      "vruntime": 1.5}}


def sections() -> dict:
    pages = bytes(range(256)) * 16 * 3
    disk = b"disk" * 1024
    return {
        "shape": {"vps": 2, "memory_mb": 4, "cpu": "python", "privileges": 0x72,
                  "devices": [["com1", "uart16550"], ["ata", "ata"]]},
        "hypervisor": {"guest_os_id": 1 << 63, "hypercall_msr": 0x9F001, "reference_tsc": 0, "tsc_sequence": 0,
                       "reference_time_100ns": 12345, "clock_offset_ns": 0},
        "vps": [vp(0), vp(1)],
        "memory": {"gpa_pages": 1024, "runs": [[0, 2], [256, 1]], "zlib": zlib.compress(pages)},
        "disks": {"ata": {"size": len(disk), "sha256": hashlib.sha256(disk).digest(), "zlib": zlib.compress(disk)}},
        "worker": {"com1": {"ier": 3}},
    }


def test_every_section_round_trips():
    s = sections()
    record = saved_state.decode(saved_state.encode(1, "alpha", s))
    assert record["sections"] == s
    assert ps.memory_contents(record["sections"]["memory"]) == bytes(range(256)) * 48
    assert ps.disk_contents("ata", record["sections"]["disks"]["ata"]) == b"disk" * 1024


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize("path,value,named", [
    (("shape", "vps"), 0, "shape.vps"),
    (("shape", "devices"), [["com1"]], "shape.devices[0]"),
    (("hypervisor", "reference_time_100ns"), KeyError, "hypervisor.reference_time_100ns"),
    (("hypervisor", "tsc_sequence"), 1 << 32, "hypervisor.tsc_sequence"),
    (("vps", 1, "index"), 0, "vps[1].index"),
    (("vps", 0, "apic", "isr"), b"\x01", "vps[0].apic.isr"),
    (("vps", 0, "apic", "timer_remaining_ns"), -5, "vps[0].apic.timer_remaining_ns"),
    (("vps", 0, "pending"), [256], "vps[0].pending[0]"),
    (("vps", 1, "synic", "queues", 0), [[1, b"x" * 241, 0]], "vps[1].synic.queues[0][0]"),
    (("vps", 1, "synic", "stimers"), [], "vps[1].synic.stimers"),
    (("vps", 0, "sched", "dispatches"), "7", "vps[0].sched.dispatches"),
    (("memory", "runs"), [[0, 2], [1, 1]], "memory.runs[1]"),
    (("memory", "runs"), [[1020, 8]], "memory.runs[0]"),
    (("disks", "ata", "sha256"), b"short", "disks['ata'].sha256"),
])
def test_a_bad_field_is_refused_by_its_name(path, value, named):
    s = sections()
    _set(s, path, value)
    with pytest.raises(ps.InvalidField, match=named.replace("[", r"\[").replace("]", r"\]")):
        saved_state.decode(saved_state.encode(1, "alpha", s))


def test_memory_and_disk_streams_that_do_not_hold_their_pages_are_refused():
    s = sections()
    s["memory"]["zlib"] = zlib.compress(b"\0" * (4 * PAGE))  # one page too many
    record = saved_state.decode(saved_state.encode(1, "alpha", s))
    with pytest.raises(ps.InvalidField, match="memory.zlib"):
        ps.memory_contents(record["sections"]["memory"])
    with pytest.raises(ps.InvalidField, match="memory.zlib"):
        ps.memory_contents({**s["memory"], "zlib": b"not zlib"})
    with pytest.raises(ps.InvalidField, match=r"disks\['ata'\].zlib"):
        ps.disk_contents("ata", {**s["disks"]["ata"], "size": 10})


def test_a_record_of_another_shape_is_refused_naming_each_difference():
    saved = sections()["shape"]
    ps.compare_shape(saved, copy.deepcopy(saved))
    other = {**saved, "vps": 4, "devices": [["com1", "uart16550"]]}
    with pytest.raises(ps.WrongShape) as e:
        ps.compare_shape(saved, other)
    assert "vps: saved 2, topology 4" in str(e.value) and "devices:" in str(e.value)
    assert "memory_mb" not in str(e.value)


def test_an_unknown_section_is_still_refused():
    with pytest.raises(saved_state.UnknownSection):
        saved_state.encode(1, "alpha", {"vmbus_channels": {}})


def kernel_state() -> dict:
    return {"generation": 1, "uptime_ns": 8_000_000_000, "ticks": 700, "tick_hz": 100.0, "console_lines": 5,
            "has_pic": True, "has_vga": True, "boot_time": "2026-11-30T02:50:16", "typed": "",
            "hv": {"present": True, "hypercalls": True, "vendor": "Microsoft Hv", "interface": "Hv#1",
                   "privileges": 0x72, "recommendations": 0, "spin_retry": 0xFFFFFFFF},
            "disk": {"bytes": 16384, "exits": 4000, "ns": 10, "errors": 0},
            "timers": {"disk_round": 3}, "vps": [{"exits": 6433, "counters": {"ticks": 700}}]}


def test_the_guest_kernel_state_round_trips_through_its_memory_layout():
    data = guest_state.encode(kernel_state())
    memory = data + bytes(guest_state.KERNEL_STATE_BYTES - len(data))
    assert guest_state.decode(memory) == kernel_state()


@pytest.mark.parametrize("damage,why", [
    (lambda d: bytes(len(d)), "has not checkpointed"),
    (lambda d: d[:8] + (2).to_bytes(4, "little") + d[12:], "version 2"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "CRC-32"),
    (lambda d: d[:12] + (1 << 20).to_bytes(4, "little") + d[16:], "length"),
])
def test_a_bad_guest_kernel_state_is_refused(damage, why):
    data = guest_state.encode(kernel_state())
    with pytest.raises(guest_state.GuestStateError, match=why):
        guest_state.decode(damage(data) + bytes(64))


def test_a_guest_kernel_state_field_of_the_wrong_type_is_named():
    bad = kernel_state()
    bad["vps"][0]["counters"]["ticks"] = -1
    with pytest.raises(guest_state.GuestStateError, match=r"state.vps\[0\].counters\['ticks'\]"):
        guest_state.encode(bad)
    bad = kernel_state()
    del bad["disk"]["errors"]
    with pytest.raises(guest_state.GuestStateError, match="state.disk.errors"):
        guest_state.encode(bad)
