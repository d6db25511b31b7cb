"""``bench --service`` (benchmarks/service_bench.py): its rounds are checked before it
starts, and its summary is each stage's p50 and max over the services that have it."""

from __future__ import annotations

from benchmarks.service_bench import print_table, summarize
from root.cli import main


def test_service_rounds_are_checked_before_it_starts(capsys):
    assert main(["bench", "--service", "--service-rounds", "0"]) == 2
    assert "argument --service-rounds: 0 must be at least 1" in capsys.readouterr().err


def test_the_summary_is_p50_and_max_per_stage_and_the_table_shows_it(capsys):
    services = [{"blackout_ms": b, "pause_save_ms": 1.0, "restore_hello_commit_ms": b - 1, "restore_ms": None,
                 "spawn_ready_ms": 700.0, "saved_bytes": 35718} for b in (30.0, 10.0, 50.0, 20.0)]
    s = summarize(services)
    assert s["blackout_ms"] == {"p50": 20.0, "max": 50.0}
    assert "restore_ms" not in s  # (no service said how long its restore took)
    print_table({"rounds": 4, "services": services, "summary": s})
    out = capsys.readouterr().out
    assert "4 worker handovers" in out and "20.0" in out and "50.0" in out and "35718" in out
