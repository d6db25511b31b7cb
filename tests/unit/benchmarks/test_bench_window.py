"""The steady-state window of the interrupt paths (benchmarks/window.py) and ``--paths``."""

from __future__ import annotations

import argparse

import pytest

import benchmarks.bench as bench
from benchmarks.bench_command import BENCH_PATHS, path_names
from benchmarks.window import histogram_since, path_since
from proto.stats import Histogram, PathStats


def _hist(*values: int) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def test_a_window_holds_only_what_was_recorded_after_its_start():
    boot = [150_000_000, 112_000_000, 700_000]  # the boot's slow ticks
    steady = [600_000, 650_000, 700_000, 2_000_000]
    before = _hist(*boot)
    after = _hist(*boot, *steady)
    w = histogram_since(before, after)
    assert w.n == len(steady) and w.total == sum(steady)
    assert w.percentile(100) == pytest.approx(2_000_000, rel=0.02)  # not the boot's 150 ms
    assert w.percentile(50) == _hist(*steady).percentile(50)
    assert w.lo <= 600_000 and w.lo >= 600_000 * 0.98
    assert histogram_since(after, after).n == 0


def test_a_paths_window_subtracts_every_stage_and_keeps_a_new_path_whole():
    before, after = PathStats(), PathStats()
    before.record((0, 10, 30))
    after.record((0, 10, 30))
    after.record((0, 1000, 5000))
    w = path_since(before, after)
    assert w.total.n == 1 and w.total.total == 5000
    assert [h.total for h in w.stages] == [1000, 4000]
    assert path_since(None, after) is after


def test_paths_are_checked_and_name_the_benchs_own():
    assert BENCH_PATHS == bench.PATH_NAMES
    assert path_names("interrupt, apic_timer,interrupt") == ["apic_timer", "interrupt"]
    for bad in ("", "interrupt,nmi"):
        with pytest.raises(argparse.ArgumentTypeError):
            path_names(bad)


def test_the_busy_interrupt_floor_looks_as_often_as_the_vp_and_is_its_paths_floor():
    from benchmarks import floor
    from partitions import vp

    assert floor.LOOK_NS == vp.NOTIFY_POLL_NS
    hops = {name: key for name, key, _ in bench.PATHS}
    assert hops["interrupt_busy"] == "irqbusy" and hops["interrupt"] == "irq"
    assert bench.HOPS["irqbusy"] == bench.HOPS["irq"] == 2


@pytest.mark.timeout(60)
def test_the_busy_interrupt_floor_measures_a_computing_client():
    from benchmarks.floor import IrqFloorClient, start_floor, stop_floor

    relay, peers, endpoint, d = start_floor(["echo", "irqecho"])
    try:
        client = IrqFloorClient(endpoint, busy=True)
        try:
            samples = client.measure(5, warmup=2)
        finally:
            client.close()
    finally:
        stop_floor(relay, peers, d)
    assert len(samples) == 5 and all(0 < s < 5e9 for s in samples)
