"""Supervision reads a brief status 4 times a second (issue 12): without the latency
histograms and the TLB walk, which it does not look at — with 16 partitions the whole one
cost the launcher 105 ms of CPU a second to decode, and the hypervisor 6 ms each to build."""

from __future__ import annotations

from types import SimpleNamespace

from proto.status import HypercallStatus, HypervisorStatus, MemoryStatus, SchedulerStatus, TlbStatus
from root.run import Run


def test_supervision_asks_for_a_brief_status():
    asked = []
    empty = HypervisorStatus(1, "s", 0.0, {}, HypercallStatus({}, {}), 0, 0, 0,
                             SchedulerStatus([], 0, 0, 0, 10.0, 20.0, 0), MemoryStatus(0, 0, "", {}, {}),
                             TlbStatus(64, []), [])

    def status_watched(check, slice_ms=50, brief=False):
        asked.append(brief)
        return empty.to_wire()

    fake = SimpleNamespace(root=SimpleNamespace(status_watched=status_watched), _check_procs=lambda: None)
    assert Run._status_watched(fake) == empty
    assert asked == [True]
