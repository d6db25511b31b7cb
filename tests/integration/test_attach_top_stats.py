"""Attaching to a live run: `top`, `stats`, `bench --plot`, and hvstack's pytest plugin."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from proto.client import RootClient
from proto.exits import EMULATED_STAGES, HANDLED_STAGES
from proto.stats import Histogram, PathStats

from tests.support import REPO, alive, launch, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]
ONE = "tests/configs/one.toml"
PROCESSES = {"launcher", "hypervisor:hv", "worker:alpha", "partition:alpha"}


def status(run) -> dict:
    with RootClient(run.manifest()["endpoint"], run.secret()) as root:
        return root.status()


def wait_for_samples(run, n: int = 50, paths=("io_port", "cpuid", "hypercall")) -> dict:
    def enough():
        p = status(run)["partitions"][0]["paths"]
        return all(k in p and p[k]["t"]["n"] >= n for k in paths) and p
    return wait_until(enough, 30, 0.2, what=f"{n} samples of {', '.join(paths)}")


# -- top ---------------------------------------------------------------------------------


def test_top_once_shows_vps_exit_rates_latency_and_processes(live):
    wait_for_samples(live)
    r = live.launch("top", live.name, "--once", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("hvstack top") == 1  # one sample, not a refreshing screen
    assert "\x1b[" not in out  # no clear-screen when stdout is not a terminal
    for text in ("partition", "alpha", "active", "exits/s", "exits by reason", "io_port", "now/s",
                 "emulated port I/O (worker)", "p99 µs", "ctxsw", *PROCESSES):
        assert text in out, text


def test_top_once_json_is_one_sample_with_rates_and_processes(live):
    wait_for_samples(live)
    r = live.launch("top", live.name, "--once", "--json", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert s["run"] == live.name and s["interval_s"] > 0
    (part,) = s["partitions"]
    assert part["name"] == "alpha" and part["state"] == "active"
    assert part["vps"]["total"] == 1
    assert part["vps"]["running"] + part["vps"]["intercept"] + part["vps"]["halted"] == 1
    assert part["exits"]["io_port"] > 0 and set(part["exits_per_s"]) == set(part["exits"])
    assert all(v >= 0 for v in part["exits_per_s"].values())
    io = part["paths"]["io_port"]
    assert io["count"] > 0 and 0 < io["p50_us"] <= io["p99_us"]
    assert {"count", "p50_us", "p99_us"} <= set(io["interval"])
    procs = {p["name"]: p for p in s["processes"]}
    assert set(procs) == PROCESSES
    for p in procs.values():
        assert p["alive"] and p["pid"] > 0 and p["rss_bytes"] > 0 and p["threads"] >= 1
        assert p["cpu_percent"] >= 0 and p["ctx_switches"]["voluntary"] >= 0
        assert p["ctx_switches_per_s"] is not None
    assert procs["partition:alpha"]["threads"] >= 2  # the main thread and VP 0's


def test_top_refreshes_sorts_and_measures_rates_between_samples(live):
    wait_for_samples(live)
    r = live.launch("top", live.name, "--json", "--iterations", "3", "--interval", "0.5", "--sort", "cpu")
    assert r.returncode == 0, r.stderr
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(samples) == 3 and all(s["sort"] == "cpu" for s in samples)
    # The guest never stops (duration 0): some interval sees exits and new samples.
    assert any(s["partitions"][0]["exits_per_s_total"] > 0 for s in samples)
    assert any(s["partitions"][0]["paths"]["io_port"]["interval"]["count"] > 0 for s in samples)
    totals = [sum(s["partitions"][0]["exits"].values()) for s in samples]
    assert totals == sorted(totals)
    cpu = [p["cpu_percent"] for p in samples[-1]["processes"]]
    assert cpu == sorted(cpu, reverse=True)
    r = live.launch("top", live.name, "--once", "--sort", "name", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    r = live.launch("top", live.name, "--once", "--sort", "bogus")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_ctrl_c_ends_top_cleanly(live):
    env = dict(os.environ, HVSTACK_RUN_DIR=live.run_root)
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "top", live.name, "--json", "--interval", "0.3"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        wait_until(lambda: first, 30, what="the first sample")
        assert json.loads(first[0])["run"] == live.name
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()


# -- stats -------------------------------------------------------------------------------


def test_stats_json_has_percentiles_stages_exits_and_counters(live):
    wait_for_samples(live)
    r = live.launch("stats", live.name, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["run"] == live.name and s["unit"] == "us"
    assert s["hypervisor"]["counters"]["malformed"] == 0
    alpha = s["partitions"]["alpha"]  # by the manifest's name
    assert alpha["id"] == live.manifest()["partitions"]["alpha"]["id"] and alpha["vps"] == 1
    assert alpha["exits"]["io_port"] > 0 and alpha["exits"]["cpuid"] > 0
    assert alpha["counters"]["worker_timeouts"] == 0 and alpha["counters"]["faults"] == 0
    for name in ("io_port", "cpuid", "hypercall"):
        p = alpha["paths"][name]
        assert p["count"] > 0
        assert 0 < p["p50_us"] <= p["p90_us"] <= p["p99_us"] <= p["p999_us"] <= p["max_us"]
        assert p["mean_us"] > 0
    io_stages = alpha["paths"]["io_port"]["stages"]
    assert list(io_stages) == list(EMULATED_STAGES)
    assert list(alpha["paths"]["cpuid"]["stages"]) == list(HANDLED_STAGES)
    for st in io_stages.values():
        assert set(st) == {"p50_us", "p99_us", "mean_us"} and st["p50_us"] <= st["p99_us"]
    # The stage means add up to the total mean (each is the mean of stamps' differences).
    assert sum(st["mean_us"] for st in io_stages.values()) == pytest.approx(alpha["paths"]["io_port"]["mean_us"],
                                                                          abs=0.01 * len(io_stages))


def test_stats_tables(live):
    wait_for_samples(live)
    r = live.launch("stats", live.name)
    assert r.returncode == 0, r.stderr
    for text in ("partition alpha", "p99.9 µs", "mean µs", "emulated port I/O (worker), per stage:",
                 "hv dispatch", "worker emulate", "CPUID intercept (hv), per stage:", "hv handle", "exits:"):
        assert text in r.stdout, text


def test_top_and_stats_on_a_run_that_has_ended_fail_clearly():
    root = short_run_root()
    run = start_run(ONE, root)
    try:
        r = run.launch("stop", run.name)
        assert r.returncode == 0, r.stderr
    finally:
        run.stop()
    for args in (("top", run.name, "--once"), ("top", run.name, "--once", "--json"), ("stats", run.name, "--json"),
                 ("stats", run.name)):
        r = launch(*args, run_root=root)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"run {run.name} is not running" in r.stderr and "launch.py stop" in r.stderr, r.stderr
        assert r.stdout == "" and "Traceback" not in r.stderr
    r = launch("top", "nosuch", run_root=root)
    assert r.returncode == 1 and "no run 'nosuch'" in r.stderr


def test_top_notices_the_run_ending_under_it(live):
    env = dict(os.environ, HVSTACK_RUN_DIR=live.run_root)
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "top", live.name, "--json", "--interval", "0.3"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first: list[str] = []
        threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True).start()
        wait_until(lambda: first, 30, what="the first sample")
        r = live.launch("stop", live.name)
        assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 1
    assert f"run {live.name} is not running" in err and "Traceback" not in err


def test_attaching_does_not_change_the_runs_outcome(live):
    wait_for_samples(live)
    before = status(live)
    for args in (("top", live.name, "--once", "--interval", "0.3"),
                 ("top", live.name, "--json", "--iterations", "3", "--interval", "0.2"),
                 ("stats", live.name, "--json"), ("stats", live.name), ("status", live.name, "--json")):
        r = live.launch(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert live.proc.poll() is None, "the run is still going"
    def exits(st):
        return sum(sum(vp["exits"].values()) for p in st["partitions"] for vp in p["vps"])

    def more_exits():
        st = status(live)
        return st if exits(st) > exits(before) else None

    after = wait_until(more_exits, 20, what="the guest to keep making exits")
    c = after["counters"]
    assert c["malformed"] == c["not_authenticated"] == c["refused_hellos"] == c["not_permitted"] == 0, c
    assert c["stale_completions"] == 0 and c["unroutable_replies"] == 0, c
    part = after["partitions"][0]
    assert part["state"] == "active" and part["worker_timeouts"] == 0
    assert sum(vp["faults"] for vp in part["vps"]) == 0
    pids = live.pids()
    r = live.launch("stop", live.name)
    assert r.returncode == 0, r.stderr
    live.proc.wait(30)
    assert live.proc.returncode == 0
    wait_until(lambda: not alive(pids), 10, what="every process gone")
    ended = live.manifest()["ended"]
    assert "launch.py stop" in ended["reason"] and ended["exit_code"] == 0 and ended["left_running"] == []


# -- bench --plot --------------------------------------------------------------------------

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _fake_hist(center_ns: int, n: int = 2000) -> Histogram:
    h = Histogram()
    for i in range(n):
        h.record(center_ns + (i % 97) * center_ns // 200 + (center_ns * 3 if i % 101 == 0 else 0))
    return h


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[plot]')")
def test_plot_draws_each_path_beside_its_floor(tmp_path):
    from benchmarks.plot import plot

    out = tmp_path / "fake.png"
    paths = {"io_port": PathStats(_fake_hist(250_000)).to_wire(), "cpuid": PathStats(_fake_hist(110_000)).to_wire(),
             "hypercall": PathStats(_fake_hist(115_000)).to_wire()}
    floor = {4: _fake_hist(220_000), 2: _fake_hist(100_000), "irq": _fake_hist(100_000)}
    drawn = plot(str(out), paths, floor)
    assert drawn == ["io_port", "cpuid", "hypercall"]  # no interrupt samples: no row for it
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install -e '.[plot]')")
def test_bench_plot_writes_a_png(tmp_path):
    out = tmp_path / "bench.png"
    r = launch("bench", "--plot", str(out), "--duration", "1", "--samples", "600", "--rounds", "1",
               "--no-experiments", run_root=short_run_root(),
               timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "emulated port I/O" in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_bench_plot_without_matplotlib_says_how_to_install_it_before_measuring(tmp_path, monkeypatch, capsys):
    import benchmarks.bench
    import launch as launch_py

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    monkeypatch.setattr(benchmarks.bench, "run_bench", lambda args: pytest.fail("the bench ran"))
    with pytest.raises(SystemExit) as e:
        launch_py.main(["bench", "--plot", str(tmp_path / "x.png")])
    assert e.value.code == 2
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# -- the pytest plugin's assertions, on made-up statistics ---------------------------------


def fake_status(**paths_ns: int) -> dict:
    """A status reply with one partition whose paths have 1000 samples around the given ns."""
    return {"partitions": [{"id": 1, "paths": {k: PathStats(_fake_hist(v, 1000)).to_wire()
                                               for k, v in paths_ns.items()}}]}


def test_assert_faster_fails_with_both_figures():
    from proto.pytest_plugin import assert_faster

    st = fake_status(io_port=300_000, cpuid=120_000)
    figures = assert_faster(st, "cpuid", "io_port")
    assert figures["cpuid"] < figures["io_port"]
    with pytest.raises(AssertionError) as e:
        assert_faster(st, "io_port", "cpuid", percentile=99)
    msg = str(e.value)
    assert "io_port is not faster than cpuid at p99" in msg
    assert "µs (1000 samples) vs cpuid" in msg and msg.count("1000 samples") == 2


def test_assert_percentile_fails_with_the_value_and_the_bound():
    from proto.pytest_plugin import assert_percentile

    st = fake_status(cpuid=120_000)
    assert assert_percentile(st, "cpuid", 99, under_ms=100) < 100
    with pytest.raises(AssertionError, match=r"cpuid p99 is 0\.\d{3} ms, not under 0\.05 ms \(1000 samples; p50 "):
        assert_percentile(st, "cpuid", 99, under_ms=0.05)


def test_assert_ratio_to_floor_fails_with_stack_floor_and_ratio(monkeypatch):
    import proto.pytest_plugin
    from proto.pytest_plugin import Floor, assert_ratio_to_floor

    monkeypatch.setattr(proto.pytest_plugin, "_session_floor", None)  # as if no test asked for hvstack_floor

    st = fake_status(io_port=300_000, cpuid=100_000)
    floor = Floor({4: _fake_hist(100_000), 2: _fake_hist(100_000)})
    assert assert_ratio_to_floor(st, "cpuid", at_most=1.5, floor=floor) == pytest.approx(1.0, rel=0.05)
    with pytest.raises(AssertionError) as e:
        assert_ratio_to_floor(st, "io_port", at_most=1.5, floor=floor)
    assert re.fullmatch(r"io_port p50 is (2\.9|3\.0)\d× its floor, more than the 1\.5× allowed: "
                        r"stack 3\d\d\.\d µs \(1000 samples\), floor \(4 hops\) 1\d\d\.\d µs \(2000 samples\)",
                        str(e.value)), str(e.value)
    with pytest.raises(RuntimeError, match="hvstack_floor fixture"):
        assert_ratio_to_floor(st, "io_port", at_most=1.5)


def test_assertions_need_enough_samples_and_say_what_they_got():
    from proto.pytest_plugin import assert_faster

    class FewSamples:  # anything with stats() will do
        def stats(self):
            return fake_status(cpuid=100_000)

    with pytest.raises(AssertionError, match="need 500 samples of each of cpuid, io_port; got cpuid 1000, io_port 0"):
        assert_faster(FewSamples(), "cpuid", "io_port")


def test_a_runs_waits_time_out_with_what_they_saw(hvstack_run):
    run = hvstack_run(ONE)
    run.wait_for_console("alpha", "hvstack guest kernel", timeout=30)
    with pytest.raises(AssertionError, match=r"(?s)'never printed' did not appear on partition alpha's console "
                                             r"within 0\.5 s; the console so far:\n.*hvstack guest kernel"):
        run.wait_for_console("alpha", "never printed", timeout=0.5)
    with pytest.raises(AssertionError, match=r"waited 0\.5 s for 10000000 samples of each of io_port in run one-"):
        run.wait_for_samples("io_port", n=10_000_000, timeout=0.5)
    assert run.io("alpha", "inb", "0x1234", "cpuid", 0x40000001) == ["OK 0xff", "OK eax=0x31237648 ebx=0x00000000 "
                                                                      "ecx=0x00000000 edx=0x00000000"]
    with pytest.raises(ValueError, match="unknown operation 'bogus'"):
        run.io("alpha", "bogus", "1")


# -- the plugin inside a user's pytest session ---------------------------------------------

USER_TESTS = f"""
import json
from pathlib import Exit

ONE = {str(REPO / ONE)!r}


def test_passes(hvstack_run):
    run = hvstack_run(ONE)
    run.wait_for_console("alpha", "hvstack guest kernel", timeout=30)
    Exit("passing.json").write_text(json.dumps({{"pids": run.pids(), "root": str(run.run_root)}}))


def test_fails(hvstack_run):
    run = hvstack_run(ONE)
    run.wait_for_console("alpha", "hvstack guest kernel", timeout=30)
    Exit("failing.json").write_text(json.dumps({{"pids": run.pids(), "root": str(run.run_root)}}))
    assert run.io("alpha", "inb", "0x3ff") == ["OK 0x1234"]
"""


def _plugin_args() -> list[str]:
    installed = any(ep.name == "hvstack" for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "proto.pytest_plugin"]


def test_a_failing_users_test_gets_the_runs_logs_and_consoles_and_no_process_is_left(pytester, monkeypatch):
    import shutil

    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "hvstack run one-" in out and "run directory: " in out
    assert ": console alpha" in out and "hvstack guest kernel" in out
    assert ": log hypervisor" in out and ": log worker-alpha" in out and ": launcher output" in out
    passing = json.loads((pytester.path / "passing.json").read_text())
    failing = json.loads((pytester.path / "failing.json").read_text())
    try:
        for run in (passing, failing):
            assert not alive(run["pids"]), "teardown leaves no process of a run"
        assert not os.path.exists(passing["root"]), "a passing test's run directory is removed"
        assert os.path.isdir(failing["root"]), "a failing test's run directory is kept to look at"
    finally:
        shutil.rmtree(failing["root"], ignore_errors=True)


def test_the_plugin_is_registered_by_entry_point_and_matplotlib_is_an_extra():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"hvstack": "proto.pytest_plugin"}
    assert project["optional-dependencies"]["plot"] == ["matplotlib>=3.7"]
