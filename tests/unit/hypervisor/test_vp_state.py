"""What the hypervisor keeps of a partition, saved and restored (hypervisor/vp_state.py):
the round trip into a new partition, the paused-and-not-executing rule, and a refusal per
kind of bad field."""

from __future__ import annotations

import msgpack
import pytest

from proto import messages as m
from proto.codes import HV_CHILD_ENLIGHTENED_PRIVILEGES, HV_STIMER_PRIVILEGES, HV_SYNIC_PRIVILEGES, \
    HV_TSC_PAGE_PRIVILEGES, HvMsr
from tests.unit.hypervisor.fake_stack import REGS, ROOT, Stack, stamps, vp_id, worker_id

PRIV = int(HV_CHILD_ENLIGHTENED_PRIVILEGES | HV_SYNIC_PRIVILEGES | HV_STIMER_PRIVILEGES | HV_TSC_PAGE_PRIVILEGES)
APIC = 0xFEE00000
V10, V11 = vp_id(1, 0), vp_id(1, 1)


@pytest.fixture
def s(tmp_path) -> Stack:
    s = Stack(tmp_path)
    s.hello(ROOT, "root")
    assert s.partition(privileges=PRIV) == 1
    s.send(worker_id(1), m.MemoryRequest(1)).one(worker_id(1), m.MemoryReply)
    return s


def wrmsr(s, vp, msr, value):
    s.exit(vp, m.MsrIntercept(s.seq(), msr, True, value, stamps(), REGS)).one(vp, m.VpResume)


def mmio_write(s, vp, gpa, value):
    s.exit(vp, m.MmioIntercept(s.seq(), gpa, 4, True, value, stamps(), REGS)).one(vp, m.VpResume)


def guest_sets_everything_up(s) -> None:
    s.enable_hypercalls(V10)
    wrmsr(s, V10, HvMsr.HV_X64_MSR_VP_ASSIST_PAGE, 0x9E001)
    wrmsr(s, V10, HvMsr.HV_X64_MSR_REFERENCE_TSC, 0x9001)  # in RAM (16 pages at 0)
    wrmsr(s, V11, HvMsr.HV_X64_MSR_SIMP, 0x80001)
    wrmsr(s, V11, HvMsr.HV_X64_MSR_SCONTROL, 1)
    wrmsr(s, V11, HvMsr.HV_X64_MSR_SINT0 + 3, 0x33)
    wrmsr(s, V11, HvMsr.HV_X64_MSR_STIMER0_CONFIG, 0x3 << 16 | 0b1010)  # SINT 3, periodic, AutoEnable
    wrmsr(s, V11, HvMsr.HV_X64_MSR_STIMER0_COUNT, 5_000_000)  # 0.5 s
    mmio_write(s, V10, APIC + 0xF0, 0x1FF)
    mmio_write(s, V10, APIC + 0x320, 0xEF | 1 << 17)
    mmio_write(s, V10, APIC + 0x3E0, 0b1011)
    mmio_write(s, V10, APIC + 0x380, 200_000_000)  # a 1 s period


def pause_at_exits(s, pid=1) -> None:
    s.send(ROOT, m.PartitionControl(pid, "pause")).one(ROOT, m.Ack)
    for i in range(2):  # each VP's next exit holds it: off its LP
        s.exit(vp_id(pid, i), m.CpuidIntercept(s.seq(), 1, 0, stamps(), REGS))


def saved(s, pid=1) -> dict:
    return msgpack.unpackb(s.send(ROOT, m.PartitionSaveRequest(pid)).one(ROOT, m.PartitionState).state)


def test_save_needs_a_pause_and_every_vp_off_its_lp(s):
    guest_sets_everything_up(s)
    assert s.send(ROOT, m.PartitionSaveRequest(1)).one(ROOT, m.ErrorReply).code == "OUT_OF_TURN"
    s.send(ROOT, m.PartitionControl(1, "pause")).one(ROOT, m.Ack)
    err = s.send(ROOT, m.PartitionSaveRequest(1)).one(ROOT, m.ErrorReply)
    assert err.code == "OUT_OF_TURN" and "executing" in err.message
    assert s.send(ROOT, m.PartitionSaveRequest(9)).one(ROOT, m.ErrorReply).code == "UNKNOWN_PARTITION"


def test_the_state_round_trips_into_a_new_partition_with_time_frozen(s):
    guest_sets_everything_up(s)
    s.vp(1, 1).interrupts.post(0x24, ())
    s.vp(1, 0).apic.isr |= 1 << 0xEF
    pause_at_exits(s)
    state = saved(s)
    pid = s.partition(privileges=PRIV, worker=False, connect=False)
    ack = s.send(ROOT, m.PartitionRestoreRequest(pid, msgpack.packb(state))).one(ROOT, m.Ack)
    assert ack.ref_type == m.PartitionRestoreRequest.TYPE
    s.send(ROOT, m.PartitionControl(pid, "pause")).one(ROOT, m.Ack)
    again = saved(s, pid)
    # Timers: what was left of them, less the little time the test took.
    for a, b in ((state["vps"][0]["apic"], again["vps"][0]["apic"]),
                 (state["vps"][1]["synic"]["stimers"][0], again["vps"][1]["synic"]["stimers"][0])):
        key = "timer_remaining_ns" if "timer_remaining_ns" in a else "remaining_ns"
        assert 0 < a[key] - b[key] < 500_000_000
        a[key] = b[key] = 0
    # The reference time goes on from where it was saved, not from the new partition's creation.
    t0, t1 = state["hypervisor"].pop("reference_time_100ns"), again["hypervisor"].pop("reference_time_100ns")
    assert 0 <= t1 - t0 < 5_000_000
    assert again["hypervisor"].pop("tsc_sequence") != state["hypervisor"].pop("tsc_sequence")  # republished
    for vp in (*state["vps"], *again["vps"]):
        vp["sched"].pop("vruntime")
        vp.pop("suspended")  # recorded, not restored: the root starts the VPs (root/run.py)
    assert s.vp(pid, 0).sched.suspended
    assert again == state
    assert s.vp(pid, 1).interrupts.pending[0][0] == 0x24 and s.part(pid).hypercalls_enabled


def test_a_restore_into_a_partition_whose_vps_connected_is_refused(s):
    pause_at_exits(s)
    state = msgpack.packb(saved(s))
    assert s.send(ROOT, m.PartitionRestoreRequest(1, state)).one(ROOT, m.ErrorReply).code == "OUT_OF_TURN"


@pytest.mark.parametrize("path,value,named", [
    (("vps", 0, "apic", "timer_dcr"), "x", "vps[0].apic.timer_dcr"),
    (("vps", 1, "pending"), [300], "vps[1].pending[0]"),
    (("vps", 0, "synic", "sints"), [0] * 15, "vps[0].synic.sints"),
    (("vps", 1, "apic", "isr"), b"\x00" * 31, "vps[1].apic.isr"),
    (("vps", 0, "index"), 1, "vps[0].index"),
    (("hypervisor", "guest_os_id"), -1, "hypervisor.guest_os_id"),
    (("vps", 0, "sched", "vruntime"), None, "vps[0].sched.vruntime"),
])
def test_a_bad_field_is_refused_by_name_and_nothing_changes(s, path, value, named):
    pause_at_exits(s)
    state = saved(s)
    target = state
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    pid = s.partition(privileges=PRIV, worker=False, connect=False)
    before = s.vp(pid, 0).apic
    err = s.send(ROOT, m.PartitionRestoreRequest(pid, msgpack.packb(state))).one(ROOT, m.ErrorReply)
    assert err.code == "INVALID_FIELD" and named in err.message, err.message
    assert s.vp(pid, 0).apic is before


def test_a_state_with_another_vp_count_or_not_msgpack_is_refused(s):
    pause_at_exits(s)
    state = saved(s)
    pid = s.partition(vps=1, privileges=PRIV, worker=False, connect=False)
    err = s.send(ROOT, m.PartitionRestoreRequest(pid, msgpack.packb(state))).one(ROOT, m.ErrorReply)
    assert err.code == "INVALID_FIELD" and "2 VPs" in err.message
    err = s.send(ROOT, m.PartitionRestoreRequest(pid, b"\xc1junk")).one(ROOT, m.ErrorReply)
    assert err.code == "INVALID_FIELD"
