"""``bench --migrate`` and ``bench --service`` in their short versions (issue 13): the real
runs and commands, the smallest guest and two handovers, so that CI runs them in seconds
and their figures keep their shape."""

from __future__ import annotations

import json

import pytest

from tests.support import run_launch_py, short_run_root

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_bench_service_reports_p50_and_max_of_each_stage():
    r = run_launch_py("bench", "--service", "--service-rounds", "2", "--json", run_root=short_run_root(),
                      timeout=110)
    assert r.returncode == 0, r.stderr + r.stdout
    result = json.loads(r.stdout)["service"]
    assert result["rounds"] == 2 and len(result["services"]) == 2
    assert len({s["new_worker_pid"] for s in result["services"]}) == 2  # two handovers, two new workers
    blackout = result["summary"]["blackout_ms"]
    assert 0 < blackout["p50"] <= blackout["max"] == max(s["blackout_ms"] for s in result["services"])
    assert "service 2/2: blackout" in r.stderr


@pytest.mark.timeout(180)
def test_bench_migrate_says_where_the_time_went():
    r = run_launch_py("bench", "--migrate", "--migrate-sizes", "4", "--json", run_root=short_run_root(),
                      timeout=170)
    assert r.returncode == 0, r.stderr + r.stdout
    rows = json.loads(r.stdout)["migrate"]
    assert [(row["memory_mb"], row["workload"]) for row in rows] == [(4, "memwrite"), (4, "memwrite_fast")]
    for row in rows:
        phases = row["phases_ms"]
        assert set(phases) == {"probe", "begin", "precopy", "switchover_wait", "precopy_after_wait",
                               "stop_and_copy", "stop_source"}, phases
        # The total runs from the begin: the probe is outside it, as its bytes are outside the wire's.
        assert sum(v for k, v in phases.items() if k != "probe") == pytest.approx(row["total_ms"], abs=1.0)
        assert row["probe_bytes"] >= 16 << 20 and row["bytes_on_wire"] >= row["memory_pages"] * 4
        assert 0 < row["downtime_ms"] < row["total_ms"] and row["send_once_ms"] > 0
