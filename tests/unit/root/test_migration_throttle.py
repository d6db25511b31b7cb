"""Auto-converge (root/migration_throttle.py): QEMU's trigger — two rounds running that
dirtied more than half of what they sent — and its steps (initial, then increments, at most
99 %), applied as the partition's CPU cap relative to the cap it had, told to the lease
before the cap changes, and put back by ``undo``.  A fake root client stands in for the
hypervisor's HvCallGet/SetPartitionProperty."""

from __future__ import annotations

import pytest

from proto.codes import HvPartitionProperty, HypercallCode
from proto.errors import HvstackError
from proto.hvcall import HV_INPUT_GET_PARTITION_PROPERTY, HV_INPUT_SET_PARTITION_PROPERTY, \
    HV_OUTPUT_GET_PARTITION_PROPERTY
from root.migration_throttle import MAX_PCT, Throttle, throttled_cap


class FakeRoot:
    def __init__(self, cap: int = 100_000) -> None:
        self.cap, self.sets, self.fail = cap, [], False

    def hypercall(self, code, data):
        if code == HypercallCode.HvCallGetPartitionProperty:
            pid, prop = HV_INPUT_GET_PARTITION_PROPERTY.unpack(data)
            assert (pid, prop) == (7, HvPartitionProperty.HvPartitionPropertyCpuCap)
            return HV_OUTPUT_GET_PARTITION_PROPERTY.pack(self.cap)
        assert code == HypercallCode.HvCallSetPartitionProperty
        if self.fail:
            raise HvstackError("HvCallSetPartitionProperty failed: HV_STATUS_INVALID_PARTITION_ID")
        pid, prop, value = HV_INPUT_SET_PARTITION_PROPERTY.unpack(data)
        assert (pid, prop) == (7, HvPartitionProperty.HvPartitionPropertyCpuCap)
        self.cap = value
        self.sets.append(value)
        return b""


class FakeLease:
    def __init__(self, root) -> None:
        self.root, self.told = root, None

    def restore_cap(self, cap):
        assert self.root.cap == cap, "the lease is told before the cap changes"
        self.told = cap


def make(cap=100_000, **kw):
    root = FakeRoot(cap)
    lease = FakeLease(root)
    return Throttle(root, 7, lease, **kw), root, lease


def test_a_converging_guest_is_never_throttled():
    t, root, _ = make()
    for sent, dirtied in ((1000, 400), (400, 100), (100, 50), (50, 10)):
        assert t.after_round(sent, dirtied) is None
    assert root.sets == [] and t.pct == 0


def test_two_high_rounds_running_throttle_by_the_initial_then_by_increments():
    t, root, lease = make(initial=20, increment=10)
    assert t.after_round(1000, 900) is None  # one high round is not yet a trend
    assert t.after_round(900, 100) is None  # and a low one resets the count
    assert t.after_round(900, 800) is None
    assert t.after_round(800, 700) == 20
    assert lease.told == 100_000 and root.cap == 80_000
    assert t.after_round(700, 700) is None
    assert t.after_round(700, 700) == 30
    assert root.cap == 70_000


def test_the_throttle_is_relative_to_the_cap_the_partition_had_and_stops_at_99():
    t, root, lease = make(cap=50_000, initial=90, increment=20)
    for _ in range(2):
        t.after_round(10, 10)
    assert t.pct == 90 and root.cap == throttled_cap(50_000, 90) == 5_000
    for _ in range(6):
        t.after_round(10, 10)
    assert t.pct == MAX_PCT and root.cap == 500 and lease.told == 50_000
    assert root.sets == [5_000, 500]  # no set once at the maximum


def test_undo_puts_the_cap_back_once_and_says_why_it_could_not():
    t, root, _ = make(cap=60_000, initial=50)
    assert t.undo() is None and root.sets == []  # never throttled: nothing to put back
    t.after_round(10, 10), t.after_round(10, 10)
    assert root.cap == 30_000
    assert t.undo() is None and root.cap == 60_000 and t.pct == 0
    t.after_round(10, 10), t.after_round(10, 10)
    root.fail = True
    assert "INVALID_PARTITION_ID" in t.undo()


@pytest.mark.parametrize("initial,increment", [(0, 10), (100, 10), (20, 0), (20, 120)])
def test_steps_out_of_range_are_refused(initial, increment):
    with pytest.raises(HvstackError, match="--throttle-initial"):
        make(initial=initial, increment=increment)
