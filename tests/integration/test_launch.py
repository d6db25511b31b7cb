"""launch.py as a user runs it: the default topology, configs, bad configs, bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_launch_py, short_run_root

pytestmark = pytest.mark.integration


def test_the_default_topology_runs_and_prints_banners_and_tables():
    root = short_run_root()
    r = run_launch_py("--duration", "1", run_root=root)
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert out.count("hvstack guest kernel") == 2
    assert "partition enlightened" in out and "partition legacy" in out
    for label in ("emulated port I/O (worker)", "CPUID intercept (hv)", "hypercall (hv)", "synthetic MSR (hv)"):
        assert label in out
    assert "hv dispatch" in out and "worker emulate" in out
    assert "ended: guests finished their workloads" in out
    run = next(Path(root).glob("default-*"))
    assert (run.stat().st_mode & 0o777) == 0o700
    man = json.loads((run / "manifest.json").read_text())
    assert man["state"] == "ended" and man["ended"]["exit_code"] == 0 and man["ended"]["left_running"] == []


@pytest.mark.parametrize("text, where, what", [
    ("[run]\nduration_s = 'soon'\n[[partition]]\nname='a'\n", ":2:", "duration_s: expected float"),
    ("[run]\n[[partition]]\nname = 'a'\nvps = 0\n", ":4:", "vps: 0 is outside 1..128"),
    ("[[partition]]\nname = 'a'\n\n[[partition]]\nname = 'b'\nworkloads = ['dance']\n", ":6:", "unknown 'dance'"),
    ("[[partition]]\nname = 'a'\ncolour = 'red'\n", ":3:", "colour: unknown key"),
    ("[[partition]]\nname = 'a'\n[[partition.device]]\ntype = 'sb16'\n", ":4:", "unknown device 'sb16'"),
    ("[run]\nname = 'x'\n", "", "at least one [[partition]]"),
    ("[run\n", "", "not valid TOML"),
])
def test_a_bad_config_names_file_line_and_key_and_exits_2(tmp_path, text, where, what):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = run_launch_py("run", str(cfg), run_root=short_run_root())
    assert r.returncode == 2
    assert str(cfg) in r.stderr and what in r.stderr and where in r.stderr, r.stderr


def test_a_missing_config_file_is_a_config_error():
    r = run_launch_py("run", "configs/nope.toml", run_root=short_run_root())
    assert r.returncode == 2 and "configs/nope.toml: cannot read" in r.stderr


def test_bench_reports_each_path_beside_its_floor_as_json():
    r = run_launch_py("bench", "--json", "--duration", "2", "--samples", "1000", "--rounds", "1",
                      "--cpu-window", "0.3", run_root=short_run_root(), timeout=240)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result["paths"]) == {"io_port", "cpuid", "hypercall", "interrupt", "interrupt_busy", "apic_timer"}
    assert result["paths"]["apic_timer"]["hops"] == 1
    # CPU per round trip, stack and floor, by process (issue 12).
    assert set(result["cpu"]) == {"io_port", "cpuid", "hypercall"}
    io_cpu = result["cpu"]["io_port"]
    assert {"hypervisor", "worker", "partition", "launcher"} <= set(io_cpu["stack"]["by_process_us"])
    assert {"client", "relay", "echo"} == set(io_cpu["floor"]["by_process_us"])
    assert io_cpu["stack"]["round_trips"] > 0 and io_cpu["stack"]["cpu_us"] > 0 and io_cpu["ratio"] > 0
    paced = io_cpu["floor_at_stack_pace"]  # the floor held to the stack's pace: no faster
    assert paced["round_trips"] > 0 and paced["per_s"] <= io_cpu["stack"]["per_s"] * 1.1 + 20
    assert io_cpu["ratio_at_stack_pace"] == pytest.approx(io_cpu["stack"]["cpu_us"] / paced["cpu_us"], rel=0.01)
    decoding = io_cpu["floor_decoding"]  # the floor that also packs and unpacks every message
    assert {"client", "relay", "echo"} == set(decoding["by_process_us"]) and decoding["round_trips"] > 0
    assert io_cpu["ratio_decoding"] == pytest.approx(io_cpu["stack"]["cpu_us"] / decoding["cpu_us"], rel=0.01)
    assert "bench: [1/" in r.stderr  # progress, as plain lines on a pipe
    io = result["paths"]["io_port"]
    assert io["hops"] == 4 and result["paths"]["cpuid"]["hops"] == 2
    assert result["paths"]["interrupt"]["one_way"] is True
    for p in result["paths"].values():
        assert p["samples"] > (10 if p["label"].startswith("interrupt → busy") else 50), p and p["floor_p50_us"] > 0 and p["p50_us"] > 0
        assert p["ratio_p50"] == pytest.approx(p["p50_us"] / p["floor_p50_us"], rel=0.01)
    disk = result["disk"]
    assert disk["errors"] == 0 and disk["bytes"] > 0 and disk["mb_per_s"] > 0
    # A sector is one REP INSD or OUTSD (128 elements, one string exit), its status reads
    # and interrupt, plus the taskfile set-up: not 128 data-port exits a sector.
    assert 8 < disk["exits_per_4k"] < 8 * 16
    ex = result["experiments"]
    assert set(ex["spinlock"]) == {"on", "off"} and ex["spinlock"]["on"]["notifications"] > 0
    assert ex["eoi"]["assist"]["eoi_exits_per_interrupt"] == 0 < ex["eoi"]["msr"]["eoi_exits_per_interrupt"]
