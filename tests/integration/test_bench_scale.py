"""``bench --scale`` and ``bench --startup`` in their short versions (issue 12): the real
processes, a second or two of each, so that CI runs them in seconds."""

from __future__ import annotations

import json

import pytest

from tests.support import run_launch_py, short_run_root

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_bench_scale_reports_each_n_beside_its_floor():
    r = run_launch_py("bench", "--scale", "--scale-partitions", "1,2", "--scale-rounds", "2", "--duration", "1.5",
                      "--json", run_root=short_run_root(), timeout=170)
    assert r.returncode == 0, r.stderr + r.stdout
    rows = json.loads(r.stdout)["scale"]
    assert [row["n"] for row in rows] == [1, 2]
    for row in rows:
        for side in ("stack", "floor"):
            fig = row[side]
            assert fig["round_trips"] > 0 and fig["per_s"] > 0 and fig["cpu_us_per_round_trip"] > 0, row
            assert 0 < fig["p50_us_median"] <= fig["p99_us_max"], row
        assert row["stack"]["server_rss_mb"] > 5 and 0 < row["stack"]["banners_s"] < 120
        assert row["ratio"] == pytest.approx(row["stack"]["per_s"] / row["floor"]["per_s"], rel=0.01)
        # Two pairs of windows, taking turns: the row's is the lower ratio of the two.
        assert len(row["ratios"]) == 2 and row["ratio"] == min(row["ratios"]), row
        # The paused side took next to nothing while the other was measured.
        assert row["stack"]["other_side_cores"] < 0.5 and row["floor"]["other_side_cores"] < 0.5, row
        # What saturates: the hypervisor's and the relay's threads were seen working.
        assert row["stack"]["saturation"]["by_kind"]["hypervisor"]["busiest_thread_cores"] > 0, row
        assert row["floor"]["saturation"]["by_kind"]["relay"]["busiest_thread_cores"] > 0, row
    assert "bench: [4/4] N = 2: round 2 of 2" in r.stderr


@pytest.mark.timeout(120)
def test_bench_startup_measures_banners_and_rss_per_process_kind():
    r = run_launch_py("bench", "--startup", "--scale-partitions", "1", "--no-progress", "--startup-rounds", "2",
                      run_root=short_run_root(), timeout=110)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("start-up and footprint") and "the median of 2 launches" in lines[0]
    assert "hypervisor MB" in lines[1]
    # N, then each time as "median (low–high)", then the RSS of each kind
    n, first, first_range, every, every_range, *mbs = lines[3].split()
    low, high = map(float, first_range.strip("()").split("–"))
    assert n == "1" and 0 < low <= float(first) <= high < 60 and float(first) <= float(every) < 60
    assert all(5 < float(mb) < 500 for mb in mbs)


@pytest.mark.timeout(120)
def test_bench_profile_covers_the_window_not_the_start_up(tmp_path):
    """--profile's statistics start with the measurement window (issue 12): the exits of
    the window are in it, and nothing of start-up — every VP and worker asks for its
    partition's memory once, as it starts."""
    import pstats

    prof = tmp_path / "hv.prof"
    r = run_launch_py("bench", "--scale", "--scale-partitions", "2", "--duration", "1.5", "--json", "--no-progress",
                      "--profile", str(prof), run_root=short_run_root(), timeout=110)
    assert r.returncode == 0, r.stderr + r.stdout
    calls = {name: stat[1] for (_, _, name), stat in pstats.Stats(str(prof)).stats.items()}
    # (the port I/O exit's handler: its claimed-port case is written out in it since s8-hv)
    assert calls.get("io_port_intercept", 0) > 10, sorted(calls)[:40]
    assert "on_memory_request" not in calls
