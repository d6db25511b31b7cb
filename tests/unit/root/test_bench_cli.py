"""``bench`` and bad input (issue 9): --samples 0 divided by zero, --plot x.txt measured for
75 s and then crashed without printing the results, Ctrl-C printed a traceback and SIGTERM
was ignored.  The measuring is replaced here by rounds that take no time."""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import pytest

import benchmarks.bench as bench
from proto.stats import Histogram, PathStats
from root.cli import main

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _hist(*values_ns: int) -> Histogram:
    h = Histogram()
    for v in values_ns:
        h.record(v)
    return h


def fake_round(samples: int, slice_s: float):
    paths = {name: PathStats(total=_hist(40_000, 50_000)) for name in ("io_port", "cpuid", "hypercall", "interrupt")}
    floor = {4: _hist(20_000, 30_000), 2: _hist(10_000, 15_000), "irq": _hist(10_000)}
    return floor, paths, {"disk_bytes": 0, "disk_exits": 0, "disk_ns": 0, "disk_errors": 0}


@pytest.fixture
def rounds(monkeypatch):
    """Rounds that take no time; ``rounds.signal_at = (n, SIG)`` sends SIG during round n."""
    seen = []

    def measure_round(samples, slice_s):
        seen.append(samples)
        if getattr(measure_round, "signal_at", (None,))[0] == len(seen):
            os.kill(os.getpid(), measure_round.signal_at[1])
        return fake_round(samples, slice_s)

    measure_round.seen = seen
    monkeypatch.setattr(bench, "measure_round", measure_round)
    monkeypatch.setattr(bench, "run_experiments", lambda d: pytest.fail("the experiments ran"))
    monkeypatch.setattr(bench, "measure_cpu", fake_cpu)
    return measure_round


def fake_cpu(window_s, progress=None):
    out = {}
    for i, path in enumerate(("io_port", "cpuid", "hypercall")):
        if progress:
            progress(path, i, 3)
        out[path] = {"stack": {"round_trips": 100, "per_s": 50.0, "cpu_us": 300.0,
                               "by_process_us": {"hypervisor": 150.0, "partition": 100.0, "worker": 50.0}},
                     "floor": {"round_trips": 100, "per_s": 80.0, "cpu_us": 250.0,
                               "by_process_us": {"client": 50.0, "relay": 150.0, "echo": 50.0}},
                     "ratio": 1.2}
    return out


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "argument --samples: 0 must be at least 1"),
    (["--rounds", "0"], "argument --rounds: 0 must be at least 1"),
    (["--rounds", "-3"], "argument --rounds: -3 must be at least 1"),
    (["--duration", "0"], "argument --duration: 0.0 must be more than 0 and at most 3600 seconds"),
    (["--duration", "nan"], "argument --duration: nan must be more than 0 and at most 3600 seconds"),
    (["--scale", "--scale-rounds", "0"], "argument --scale-rounds: 0 rounds: at least 1 and at most 10"),
    (["--scale", "--scale-rounds", "x"], "argument --scale-rounds: invalid int value: 'x'"),
])
def test_bench_arguments_are_checked_before_it_starts(argv, message, rounds, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
    assert rounds.seen == []


def test_fewer_samples_than_rounds_is_status_2(rounds, capsys):
    assert main(["bench", "--samples", "2", "--rounds", "3"]) == 2
    assert capsys.readouterr().err == ("launch.py bench: --samples 2 is fewer than --rounds 3: each round needs "
                                       "at least one round trip of each floor\n")
    assert rounds.seen == []


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[plot]')")
def test_plot_to_a_file_type_matplotlib_cannot_write_is_refused_before_measuring(rounds, tmp_path, capsys):
    assert main(["bench", "--plot", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert f"argument --plot: {tmp_path / 'x.txt'}: cannot draw a .txt file type (one of: " in err and ".png" in err
    assert rounds.seen == []


def test_the_results_are_printed_before_the_plot_and_a_failed_plot_loses_nothing(rounds, monkeypatch, capsys):
    import benchmarks.plot

    monkeypatch.setattr(bench, "_run_bench", bench._run_bench)  # (the real one)
    monkeypatch.setattr(benchmarks.plot, "plot", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    args = bench_args(plot="out.png")
    assert bench.run_bench(args) == 1
    out, err = capsys.readouterr()
    assert "emulated port I/O" in out and "emulated I/O p50 is" in out
    assert err == "launch.py bench: --plot out.png: not drawn: disk full\n"


def bench_args(**changes):
    from root.cli import build_parser

    args = build_parser().parse_args(["bench", "--no-experiments", "--no-progress", "--rounds", "3", "--samples", "30"])
    for k, v in changes.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_bench_reports_the_complete_rounds_without_a_traceback(sig, rounds, capsys):
    rounds.signal_at = (2, sig)  # during the second of three rounds
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["bench", "--json", "--no-experiments", "--no-progress", "--rounds", "3", "--samples", "30"]) == 128 + sig
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["rounds"] == 1 and result["partial"] == f"stopped by {sig.name} after 1 of 3 round(s)"
    assert err == f"launch.py bench: stopped by {sig.name} after 1 of 3 round(s): the results above are of those\n"
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_signal_before_any_round_is_complete_is_one_line(rounds, capsys):
    rounds.signal_at = (1, signal.SIGINT)
    assert main(["bench", "--no-experiments", "--no-progress"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "launch.py bench: stopped by SIGINT: no round was complete, nothing to report\n"


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[plot]')")
def test_the_scale_chart_draws_every_pairs_ratio_beside_the_goal(tmp_path):
    from benchmarks.plot import plot_scale

    def side(per_s: float) -> dict:
        return {"per_s": per_s, "cpu_us_per_round_trip": 1e6 / per_s}

    rows = [{"n": n, "stack": side(800.0 * n), "floor": side(1000.0 * n), "ratio": 0.8, "ratios": [0.7, 0.8, 0.9]}
            for n in (1, 2, 4)]
    out = tmp_path / "scale.png"
    plot_scale(str(out), rows)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
