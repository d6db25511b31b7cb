"""Auto-converge for live migration (``migrate --auto-converge``): a guest that dirties its
memory faster than the link carries it never converges — each pre-copy round leaves as much
to send as the one before, and the stop-and-copy would take as long.  QEMU's answer, which
this follows, is to slow the guest down until its pre-copy converges: when, in two rounds
running, the guest dirtied more than half as many bytes as the round sent
(``throttle-trigger-threshold`` 50 %, ``dirty_rate_high_cnt`` ≥ 2), it is throttled by
``cpu-throttle-initial`` (20 %), and by ``cpu-throttle-increment`` (10 %) more each time after,
to at most 99 %.

QEMU throttles by making each vCPU thread sleep; here the hypervisor's scheduler already has
the control: the partition's CPU cap (``HvPartitionPropertyCpuCap``, thousandths of a percent
of an LP per VP), which may change while the partition runs.  A throttle of T % caps it at
(100 − T) % of what its cap was.  The cap it had is put back when the partition runs on here
— a migration that failed — and the lease (root/migration_lease.py) carries it, so that the
source run puts it back itself if the ``migrate`` process dies.  The destination's partition
has its own topology's cap: a throttle never moves with the guest."""

from __future__ import annotations

from proto.errors import HvstackError
from proto.hvcall import (HV_INPUT_GET_PARTITION_PROPERTY, HV_INPUT_SET_PARTITION_PROPERTY,
                          HV_OUTPUT_GET_PARTITION_PROPERTY)
from proto.codes import HvPartitionProperty, HypercallCode

TRIGGER_THRESHOLD = 0.5  # QEMU's throttle-trigger-threshold: dirtied / sent in a round
TRIGGER_ROUNDS = 2  # QEMU's dirty_rate_high_cnt: that many rounds running
INITIAL_PCT = 20  # QEMU's cpu-throttle-initial
INCREMENT_PCT = 10  # QEMU's cpu-throttle-increment
MAX_PCT = 99  # QEMU's cpu-throttle maximum


def get_cap(root, pid: int) -> int:
    out = root.hypercall(HypercallCode.HvCallGetPartitionProperty,
                         HV_INPUT_GET_PARTITION_PROPERTY.pack(pid, HvPartitionProperty.HvPartitionPropertyCpuCap))
    (cap,) = HV_OUTPUT_GET_PARTITION_PROPERTY.unpack_from(out)
    return cap


def set_cap(root, pid: int, cap: int) -> None:
    root.hypercall(HypercallCode.HvCallSetPartitionProperty,
                   HV_INPUT_SET_PARTITION_PROPERTY.pack(pid, HvPartitionProperty.HvPartitionPropertyCpuCap, cap))


def throttled_cap(cap: int, pct: int) -> int:
    """The cap that leaves the guest (100 − pct) % of the CPU its ``cap`` gave it (≥ 1)."""
    return max(1, cap * (100 - pct) // 100)


def check_steps(initial: int, increment: int) -> None:
    if not 1 <= initial <= MAX_PCT or not 1 <= increment <= MAX_PCT:
        raise HvstackError(f"--throttle-initial and --throttle-increment are 1..{MAX_PCT} (%), "
                           f"not {initial} and {increment}")


class Throttle:
    """Watches the pre-copy rounds and throttles the partition when they do not converge.
    ``lease`` (a root.migration_lease.Lease) is told the cap to put back before the first
    throttle takes effect."""

    def __init__(self, root, pid: int, lease, initial: int = INITIAL_PCT, increment: int = INCREMENT_PCT) -> None:
        check_steps(initial, increment)
        self.root, self.pid, self.lease = root, pid, lease
        self.initial, self.increment = initial, increment
        self.pct = 0
        self.original: int | None = None  # the cap before the first throttle
        self._high = 0

    @property
    def cap(self) -> int:
        """The partition's cap now (its own while not throttled)."""
        return throttled_cap(self.original, self.pct) if self.original is not None else 0

    def after_round(self, sent_pages: int, dirtied_pages: int) -> int | None:
        """Told each pre-copy round's pages sent and dirtied meanwhile: the new throttle in
        percent when this round raised it, else None."""
        if sent_pages == 0 or dirtied_pages <= TRIGGER_THRESHOLD * sent_pages:
            self._high = 0
            return None
        self._high += 1
        if self._high < TRIGGER_ROUNDS or self.pct >= MAX_PCT:
            return None
        self._high = 0
        if self.original is None:
            self.original = get_cap(self.root, self.pid)
            self.lease.restore_cap(self.original)  # before the cap changes: a death after it is undone
        self.pct = min(MAX_PCT, self.pct + self.increment if self.pct else self.initial)
        set_cap(self.root, self.pid, self.cap)
        return self.pct

    def undo(self) -> str | None:
        """Put the cap back (the partition runs on here); a reason when that failed."""
        if self.original is None:
            return None
        try:
            set_cap(self.root, self.pid, self.original)
        except HvstackError as e:
            return str(e)
        self.original, self.pct = None, 0
        return None
