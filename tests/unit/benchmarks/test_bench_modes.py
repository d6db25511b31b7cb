"""bench's new modes in seconds (issue 12): progress on stderr, --save / --compare, CPU per
round trip's arithmetic, the scale floor's keyed echoes, the checked arguments; the long
measurements themselves are commands, tried briefly in tests/integration."""

from __future__ import annotations

import io
import json
import time

import pytest

import benchmarks.bench as bench
from benchmarks import baseline, cpu
from benchmarks.bench_command import bounded
from benchmarks.progress import Progress
from benchmarks.scale import FloorSide, _row, _window
from proto.stats import Histogram
from root.cli import main
from tests.support import wait_until
from tests.unit.root.test_bench_cli import fake_cpu, fake_round


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_on_a_pipe_and_a_bar_on_a_terminal():
    pipe = io.StringIO()
    p = Progress([("round 1/2", 1.0), ("round 2/2", 1.0)], stream=pipe)
    p.step()
    p.step()
    p.close()
    lines = pipe.getvalue().splitlines()
    assert lines[0] == "bench: [1/2] round 1/2 (estimating)"
    assert lines[1].startswith("bench: [2/2] round 2/2 (~") and lines[1].endswith(" s left)")
    tty = Tty()
    p = Progress([("a", 1.0), ("b", 3.0)], stream=tty)
    p.step()
    p.step()
    p.close()
    out = tty.getvalue()
    assert "\n" not in out and out.count("\r") >= 3 and "[######" in out  # a quarter done: 6 of 24
    quiet = io.StringIO()
    Progress([("a", 1.0)], stream=quiet, enabled=False).step()
    assert quiet.getvalue() == ""


def result_with(io_p50: float, cpu_ratio: float) -> dict:
    return {"paths": {"io_port": {"ratio_p50": io_p50, "ratio_p99": 2.0}},
            "cpu": {"io_port": {"ratio": cpu_ratio}}, "started": "then"}


def test_compare_flags_only_what_moved_beyond_the_noise(tmp_path):
    f = tmp_path / "base.json"
    baseline.save(result_with(1.2, 1.1), str(f))
    same = baseline.compare(result_with(1.3, 1.15), str(f))  # +8 %, +5 %: inside the noise
    assert same["moved"] == [] and len(same["figures"]) == 3
    worse = baseline.compare(result_with(1.2, 1.1 * (1 + baseline.NOISE["cpu"] + 0.05)), str(f))
    assert worse["moved"] == ["io_port CPU ratio"]
    assert [r["worse"] for r in worse["figures"] if r["moved"]] == [True]


def test_a_file_that_is_not_a_baseline_is_refused_before_measuring(tmp_path, rounds_and_cpu, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"paths": 3}')
    assert main(["bench", "--compare", str(bad)]) == 2
    assert "not a bench baseline" in capsys.readouterr().err
    assert rounds_and_cpu == []


@pytest.fixture
def rounds_and_cpu(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "measure_round", lambda s, d: seen.append(s) or fake_round(s, d))
    monkeypatch.setattr(bench, "measure_cpu", fake_cpu)
    return seen


def test_save_then_compare_round_trips_and_a_moved_ratio_is_status_3(tmp_path, rounds_and_cpu, capsys, monkeypatch):
    f = tmp_path / "b.json"
    argv = ["bench", "--no-experiments", "--no-progress", "--rounds", "1", "--samples", "10"]
    assert main([*argv, "--save", str(f)]) == 0
    saved = json.loads(f.read_text())
    assert saved["format"] == baseline.FORMAT and "io_port" in saved["paths"] and "cpu" in saved
    capsys.readouterr()
    assert main([*argv, "--compare", str(f)]) == 0
    out = capsys.readouterr().out
    assert "against the baseline" in out and "0 of " in out and "CPU per round trip (user + system" in out
    slower = lambda s, d: (lambda r: (r[0], {**r[1], "io_port": bench.PathStats(total=_h(400_000))}, r[2]))(
        fake_round(s, d))
    monkeypatch.setattr(bench, "measure_round", slower)
    assert main([*argv, "--compare", str(f)]) == 3
    assert "io_port p50 ratio" in capsys.readouterr().out


def _h(*ns: int) -> Histogram:
    h = Histogram()
    for v in ns:
        h.record(v)
    return h


def test_cpu_per_round_trip_is_split_by_process_kind():
    before = {"hypervisor:hv": 1.0, "worker:a": 2.0, "worker:b": 2.0, "launcher": 0.5}
    after = {"hypervisor:hv": 1.3, "worker:a": 2.1, "worker:b": 2.1, "launcher": 0.5, "partition:a": 9.0}
    r = cpu.per_round_trip(before, after, 1000, 2.0)
    assert r["by_process_us"] == {"hypervisor": 300.0, "launcher": 0.0, "worker": 200.0}  # a new one: no start
    assert r["cpu_us"] == 500.0 and r["per_s"] == 500.0


def test_a_histograms_window_is_what_was_recorded_between_two_snapshots():
    h0 = _h(1000, 2000)
    h1 = _h(1000, 2000, 500_000, 600_000)
    w = _window(h1, h0)
    assert w.n == 2 and w.percentile(50) >= 500_000


def test_bounded_argument_types():
    import argparse

    assert bounded(int, 1)("3") == 3
    for bad in ("0", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            bounded(int, 1)(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0 and at most 10 seconds"):
        bounded(float, 0, 10, low_open=True)("nan")


@pytest.mark.timeout(60)
def test_the_scale_floor_runs_n_clients_through_one_relay_to_n_echoes_and_pauses_between_windows():
    floor = FloorSide(2)
    try:
        r = floor.window(0.3)
        assert r["n"] == 2 and r["round_trips"] > 10 and r["cpu_us_per_round_trip"] > 0 and r["p50_us_median"] > 0
        assert set(r["cpu_us_by_process"]) == {"relay", "client", "echo"}
        floor.pause()  # while the stack has the cores: not one round trip, the floor's CPU about nil
        idle = floor.window(0.3)
        assert idle["round_trips"] == 0 and idle["cpu_s_per_s"] < 0.1, idle
        floor.resume()
        assert floor.window(0.3)["round_trips"] > 10
    finally:
        floor.close()
    assert all(c.poll() is not None for c in floor.clients)


def test_a_scale_row_holds_the_pair_of_the_median_ratio_and_every_pairs_ratio():
    def side(per_s: float, cpu_us: float) -> dict:
        return {"per_s": per_s, "cpu_us_per_round_trip": cpu_us}

    pairs = [{"stack": side(900, 300), "floor": side(1000, 240)},   # 0.90
             {"stack": side(600, 400), "floor": side(1000, 240)},   # 0.60
             {"stack": side(750, 320), "floor": side(1000, 240)}]   # 0.75
    row = _row(4, pairs)
    assert row["ratio"] == 0.75 and row["stack"] is pairs[2]["stack"] and row["floor"] is pairs[2]["floor"]
    assert row["ratios"] == [0.9, 0.6, 0.75] and row["ratio_per_cpu"] == 0.75
    # An even count: the lower of the two middle pairs (the figure errs against the stack).
    assert _row(4, pairs[:2])["ratio"] == 0.6


# A process that burns CPU in a thread other than its main one, then says how much CPU it
# has used (its own process clock) and waits: what cpu_seconds must see, all threads, to
# the millisecond (/proc's ticks are 10 ms, and the floor's client once counted its main
# thread alone).
_BURNER = """
import sys, threading, time
def burn(s):
    end = time.thread_time() + s
    while time.thread_time() < end:
        pass
t = threading.Thread(target=burn, args=(float(sys.argv[1]),))
t.start(); t.join()
print(time.process_time(), flush=True)
sys.stdin.readline()
"""


@pytest.mark.timeout(60)
def test_cpu_seconds_counts_every_thread_of_a_process_to_the_millisecond():
    import subprocess
    import sys

    if not cpu.PRECISE:
        pytest.skip("no per-process CPU clock on this system (psutil's 10 ms ticks instead)")
    for burn_s in (0.013, 0.027, 0.045):
        p = subprocess.Popen([sys.executable, "-c", _BURNER, str(burn_s)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            reported = float(p.stdout.readline())
            seen = cpu.cpu_seconds({"burner": p.pid})["burner"]
        finally:
            p.stdin.close()
            p.wait(10)
        assert reported >= burn_s  # the burning thread's time is the process's
        # Read after the report, while the process waits: at most its print and its wait more.
        assert reported <= seen < reported + 0.003, (burn_s, reported, seen)


@pytest.mark.timeout(60)
def test_the_cpu_floor_measures_its_client_as_a_process_over_a_window():
    r = cpu.measure_floor_cpu(2, 0.4)
    assert r["round_trips"] > 10 and len(r["slices"]) == cpu.SLICES
    by = r["by_process_us"]
    assert set(by) == {"client", "relay", "echo"}
    # Two hops: the relay answers, the echo peer is idle; the client and the relay each
    # send and receive once per round trip, so neither is free.
    assert by["client"] > 0 and by["relay"] > 0 and by["echo"] < by["relay"]
    assert r["cpu_us"] == pytest.approx(sum(by.values()), abs=0.5)


@pytest.mark.timeout(60)
def test_the_cpu_floor_pauses_between_round_trips_and_goes_on_when_told():
    with cpu.FloorCounter(2) as floor:
        floor.pause()
        held = floor.made()
        time.sleep(0.3)
        assert floor.made() == held  # not one round trip while the stack would be measured
        floor.resume()
        assert wait_until(lambda: floor.made() > held + 10, 5, what="round trips after the resume")


@pytest.mark.timeout(60)
def test_two_sides_measured_in_turns_each_get_every_slice_of_their_own():
    """measure_in_turns (the bench's stack against its floor) on two floors: each side's
    figure is the cheapest of its own SLICES slices, made while the other was paused."""
    with cpu.FloorCounter(4) as four, cpu.FloorCounter(2) as two:
        a, b = cpu.measure_in_turns(four, two, 0.8)
    for r in (a, b):
        assert len(r["slices"]) == cpu.SLICES and r["round_trips"] > 10 and r["cpu_us"] == min(r["slices"])
    assert a["by_process_us"]["echo"] > b["by_process_us"]["echo"]  # four hops reach the echo, two do not


def test_the_scale_topology_gives_each_partition_an_lp_and_startup_keeps_two():
    """A VP holds its LP from its dispatch to its next exit — a transport each way here — so
    on 2 LPs at most 2 of --scale's N VPs could have an exit under way, while the floor's N
    clients all send (issue 12).  --startup measures the default topology's 2."""
    from benchmarks.scale import topology
    from root.topology import load_topology

    for n, lps in ((1, 2), (2, 2), (8, 8), (16, 16)):
        t = load_topology(topology(n), "<scale>")
        assert (len(t.partitions), t.logical_processors) == (n, lps)
    assert load_topology(topology(16, "serial", "gen1", lps=2), "<startup>").logical_processors == 2


@pytest.mark.timeout(60)
def test_the_cpu_floor_can_be_held_to_a_pace():
    """The floor at the stack's pace (issue 12): its client sends at most ``pace`` round
    trips a second, so that relay and client sleep between messages as the stack's do."""
    r = cpu.measure_floor_cpu(2, 0.8, pace=400)
    slice_s = 0.8 / cpu.SLICES
    assert 0.3 * 400 < r["per_s"] <= 400 + 2 / slice_s, r


def test_the_decoding_floors_codec_packs_what_the_stack_packs_and_unpacks_every_frame():
    from benchmarks.floor import Codec, hop_frames
    from proto import messages as m

    frame = hop_frames()["cpuid_resume"]
    make = Codec("decode").frame(frame)
    assert make() == frame and make() is not make()  # packed anew each time, the same bytes
    assert isinstance(m.decode(make()), m.VpResume)
    plain = Codec().frame(frame)
    assert plain() is frame
    with pytest.raises(Exception):
        Codec("decode").received(b"\xc1")  # it does unpack (0xc1 is never a msgpack value)
    Codec().received(b"\xc1")


@pytest.mark.timeout(60)
def test_the_decoding_floor_runs_every_process_with_its_codec():
    r = cpu.measure_floor_cpu(4, 0.4, decode=True)
    assert r["round_trips"] > 10 and set(r["by_process_us"]) == {"client", "relay", "echo"}
    assert all(v > 0 for v in r["by_process_us"].values())


def test_the_decoding_floors_ratio_is_compared_when_the_baseline_has_it(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    baseline.save(result_with(1.2, 1.1), str(old))  # a baseline from before the decoding floor
    now = result_with(1.2, 1.1)
    now["cpu"]["io_port"]["ratio_decoding"] = 0.9
    assert [r["figure"] for r in baseline.compare(now, str(old))["figures"]] == [
        "io_port p50 ratio", "io_port p99 ratio", "io_port CPU ratio"]
    baseline.save(now, str(new))
    assert "io_port CPU ratio, decoding floor" in [r["figure"] for r in baseline.compare(now, str(new))["figures"]]


def test_saturation_is_cores_per_kind_switches_per_round_trip_and_the_busiest_thread():
    """What saturates first (benchmarks/saturation.py): each kind's CPU and run-queue wait in
    cores, switches per round trip, its busiest thread; the host's busy cores."""
    from benchmarks.saturation import compare

    before = {"threads": {("hypervisor:hv", "1"): (0, 0, 10, 1, "python"),
                          ("hypervisor:hv", "2"): (0, 0, 0, 0, "ZMQbg/IO/0"),
                          ("worker:a", "3"): (1_000_000_000, 0, 0, 0, "worker-a")},
              "host": (100, 200)}
    after = {"threads": {("hypervisor:hv", "1"): (1_500_000_000, 500_000_000, 2010, 101, "python"),
                         ("hypervisor:hv", "2"): (300_000_000, 0, 1000, 0, "ZMQbg/IO/0"),
                         ("worker:a", "3"): (1_400_000_000, 2_000_000_000, 1000, 400, "worker-a"),
                         ("worker:b", "4"): (200_000_000, 0, 0, 0, "worker-b")},  # new: counted from 0
             "host": (300, 400)}
    r = compare(before, after, 2.0, 1000, lambda name: name.split(":")[0])
    hv, worker = r["by_kind"]["hypervisor"], r["by_kind"]["worker"]
    assert hv == {"cpu_cores": 0.9, "runq_cores": 0.25, "vol_per_rt": 3.0, "invol_per_rt": 0.1,
                  "busiest_thread_cores": 0.75, "busiest_thread": "python"}
    assert worker["cpu_cores"] == 0.3 and worker["runq_cores"] == 1.0 and worker["invol_per_rt"] == 0.4
    assert worker["busiest_thread"] == "worker-a"
    import os
    assert r["host_busy"] == round(1.0 * os.cpu_count(), 2)


def test_saturation_snapshots_read_this_process_threads():
    import os
    import threading

    from benchmarks.saturation import snapshot

    if not os.path.exists(f"/proc/{os.getpid()}/task"):
        pytest.skip("no /proc: the figures are absent")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="sat-test")
    t.start()
    try:
        snap = snapshot({"me": os.getpid(), "gone": 2**22 + 12345})
    finally:
        stop.set()
        t.join()
    mine = [v for k, v in snap["threads"].items() if k[0] == "me"]
    assert len(mine) >= 2 and all(k[0] == "me" for k in snap["threads"])  # the gone one: absent
    assert sum(v[0] for v in mine) > 0
    assert snap["host"][1] >= snap["host"][0] > 0


def test_startup_rounds_are_reported_as_their_median_and_range():
    from benchmarks.scale import _secs, startup_median

    def launch(first, every, cpu, exits, rss):
        return {"n": 4, "first_banner_s": first, "all_banners_s": every, "banners": 4 if every else 3,
                "timeout_s": 60.0, "rss_mb": {"worker": rss}, "cpu_s": {"worker": cpu, "hypervisor": 0.5},
                "exits_per_partition": {"median": exits, "max": exits + 5, "coalesced_writes": 100}}

    runs = [launch(1.2, 1.5, 0.4, 120, 23.0), launch(0.9, 1.1, 0.3, 110, 24.0), launch(1.0, None, 0.9, 300, 22.0)]
    row = startup_median(runs)
    assert row["first_banner_s"] == 1.0 and row["first_range"] == (0.9, 1.2)
    assert row["all_banners_s"] == 1.5 and row["all_range"] == (1.1, None)  # the timeout counts as the longest
    assert row["cpu_s"] == {"worker": 0.4, "hypervisor": 0.5} and row["rss_mb"] == {"worker": 24.0}
    assert row["exits_per_partition"]["median"] == 120 and row["exits_per_partition"]["max"] == 305
    assert _secs(row["first_banner_s"], row, "first_range") == "1.00 (0.90–1.20)"
    assert _secs(row["all_banners_s"], row, "all_range") == "1.50 (1.10–> 60)"
    assert startup_median(runs[:1]) is runs[0]  # one launch: its own figures, no range
    assert _secs(1.25, runs[0], "first_range") == "1.25"
