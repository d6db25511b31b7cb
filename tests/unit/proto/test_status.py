"""The typed status: to_wire is the map status_reply carries; from_wire reads it back."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.exits import Exit
from proto.stats import PathStats
from proto.status import (
    CpuStatus,
    HypercallStatus,
    HypervisorStatus,
    InterruptStatus,
    LpStatus,
    MemoryStatus,
    PartitionStatus,
    SchedulerStatus,
    SlatStatus,
    TlbLpStatus,
    TlbStatus,
    VpSchedStatus,
    VpStatus,
)


def sample() -> HypervisorStatus:
    stats = PathStats()
    stats.record((100, 250, 400, 1000))
    running = VpStatus(0, "running", {Exit.IO_PORT: 3, Exit.CPUID: 1}, 0x1000, 0, {"interrupts": 2},
                       VpSchedStatus("running", 1, 0.5, 0.25, 10, 2, 0), {"eoi_mmio": 1},
                       InterruptStatus(3, 2, 1, {"0x20": 2}))
    unstarted = VpStatus(1, "created", dict.fromkeys((Exit.IO_PORT, Exit.CPUID), 0), 0, 0, {}, None, {},
                         InterruptStatus(0, 0, 0, {}))
    part = PartitionStatus(1, "active", 0x72, 8, 0xFFF, True, [(0x3F8, 8), (0x60, 1)], [(0xB8000, 0x8000)], True,
                           1, 2, 0, 0, 0, CpuStatus(0, 100000, 100), [running, unstarted], {"interrupts": 2},
                           {"io_port": stats})
    return HypervisorStatus(
        pid=42, session="ab12", uptime_s=1.5, counters={"messages": 9, "malformed": 0},
        hypercalls=HypercallStatus({"0x0008": 4}, {"HV_STATUS_ACCESS_DENIED": 1}), peers=3, pending=0, tracers=0,
        scheduler=SchedulerStatus([LpStatus(0, None, 0.0), LpStatus(1, (1, 0), 0.5)], 1, 2, 0, 10.0),
        memory=MemoryStatus(64, 48, "run/memory.pool", {"1": SlatStatus(16, 16, "run/slat-1.bin")},
                            {"deposited": 16}),
        tlb=TlbStatus(512, [TlbLpStatus(0, 5, {"mov_cr3": 1}, 2, {"1": 3})]),
        partitions=[part])


def test_to_wire_is_the_status_map_as_readers_index_it():
    d = sample().to_wire()
    assert list(d) == ["pid", "session", "uptime_s", "counters", "hypercalls", "peers", "pending", "tracers",
                       "scheduler", "memory", "tlb", "partitions"]
    p = d["partitions"][0]
    assert p["ranges"] == [[0x3F8, 8], [0x60, 1]] and p["mmio"] == [[0xB8000, 0x8000]]
    assert p["vps"][0]["exits"]["io_port"] == 3 and p["vps"][0]["sched"]["state"] == "running"
    assert p["vps"][1]["sched"] == {}  # no thread yet
    assert d["scheduler"]["lps"][1]["vp"] == [1, 0]
    assert p["paths"]["io_port"]["t"]["n"] == 1


def test_a_status_survives_the_wire_and_reads_back_by_attribute():
    st = sample()
    frame = m.StatusReply(st.to_wire()).encode()
    back = HypervisorStatus.from_wire(m.decode(frame).status)  # msgpack gives tuples for arrays
    assert back == st
    assert m.StatusReply(back.to_wire()).encode() == frame
    assert back.partition(1).vps[0].sched.lp == 1 and back.partition(1).vps[1].sched is None
    assert back.partition(1).paths["io_port"].total.n == 1 and back.partition(2) is None
    assert back.scheduler.lps[1].vp == (1, 0) and back.memory.partitions["1"].mapped == 16


def test_a_workers_answers_are_typed_and_a_missing_device_is_refused():
    from proto.errors import Refused
    from proto.status import DeviceCounters, ScreenSnapshot, query_result

    screen = ScreenSnapshot("A\nB", ["A", "B"], (1, 0, True))
    assert query_result("screen", msgpack.unpackb(msgpack.packb(screen.to_wire()), use_list=False)) == screen
    devices = DeviceCounters({"com1": {"rx_bytes": 3}, "port_bus": {"unclaimed_reads": 0}})
    assert query_result("devices", devices.to_wire()).get("com1", "rx_bytes") == 3
    assert query_result("devices", devices.to_wire()).get("com2", "rx_bytes") is None
    with pytest.raises(Refused, match="NO_DEVICE"):
        query_result("screen", {"error": "this partition has no VGA"})
    with pytest.raises(Refused, match="MALFORMED"):
        query_result("screen", {"text": "x"})
