"""Issue 9's run-directory and bad-input findings that need real processes: a launcher killed
by SIGKILL, `stats | head`, `io` and `keys` where nothing would happen, and `bench` stopped
by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import REPO, alive, run_launch_py, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration

MINIMAL = """\
[run]
name = "nokbd"
duration_s = 0
logical_processors = 1

[[partition]]
name = "alpha"
vps = 1
memory_mb = 2
chipset = "minimal"
workloads = ["serial"]
"""


def test_a_launcher_killed_by_sigkill_shows_as_dead_and_prune_cleans_up(tmp_path):
    cfg = tmp_path / "nokbd.toml"
    cfg.write_text(MINIMAL)
    run = start_run(str(cfg), short_run_root())
    pids = run.pids()
    assert list(run.path.glob("mem-*.bin"))
    run.proc.kill()  # SIGKILL: the launcher cannot end the run or write the manifest
    run.proc.wait(10)
    wait_until(lambda: not alive(pids), 10, what="the run's processes to die with their launcher")
    assert run.manifest()["state"] == "running"
    r = run.launch("ls")
    assert r.returncode == 0 and run.name in r.stdout and "launcher died" in r.stdout, r.stdout
    r = run.launch("status", run.name)
    assert r.returncode == 1 and "its launcher died without ending the run" in r.stderr, r.stderr
    r = run.launch("ls", "--prune")
    assert r.returncode == 0 and f"pruned {run.name}" in r.stdout, r.stdout + r.stderr
    assert not list(run.path.glob("mem-*.bin")) and not list(run.path.glob("slat-*.bin"))
    ended = run.manifest()
    assert ended["state"] == "ended" and "its launcher died without ending the run" in ended["ended"]["reason"]


def test_prune_removes_the_cgroups_a_launcher_killed_by_sigkill_left(tmp_path):
    """The partition's cpu cgroup outlived its launcher (nobody removed it): prune does."""
    from root import cgroups
    cfg = tmp_path / "capped.toml"
    cfg.write_text(MINIMAL + "cpu = { limit = 50 }\n")
    run = start_run(str(cfg), short_run_root())
    group = (run.manifest().get("cpu_cgroups", {}).get("alpha") or {}).get("cgroup")
    if group is None:
        run.stop()
        pytest.skip("no cgroup v1 cpu controller to write here: the limit holds only on the LPs")
    pids = run.pids()
    run.proc.kill()
    run.proc.wait(10)
    wait_until(lambda: not alive(pids), 10, what="the run's processes to die with their launcher")
    assert os.path.isdir(group), "left behind by the launcher's death"
    r = run.launch("ls", "--prune")
    assert r.returncode == 0 and "1 cgroup(s) removed" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(group) and not (cgroups.CPU_CONTROLLER / "hvstack" / run.name).exists()


def test_stats_into_a_pipe_whose_reader_has_gone_ends_quietly(live):
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # `| head` that has already exited
    env = dict(os.environ, HVSTACK_RUN_DIR=live.run_root)
    try:
        p = subprocess.run([sys.executable, str(REPO / "launch.py"), "stats", live.name], cwd=REPO, env=env,
                           stdout=w_fd, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w_fd)
    assert p.stderr == "" and p.returncode == 1


def test_io_on_a_stopped_partition_and_keys_without_a_keyboard_do_nothing_and_say_so(tmp_path):
    cfg = tmp_path / "two.toml"
    cfg.write_text(MINIMAL + "\n[[partition]]\nname = \"beta\"\nvps = 1\nmemory_mb = 2\nchipset = \"minimal\"\n"
                             "workloads = [\"serial\"]\n")
    run = start_run(str(cfg), short_run_root())
    try:
        r = run.launch("keys", run.name, "alpha", "hello")
        assert r.returncode == 1 and r.stderr == (f"launch.py keys: partition alpha of run {run.name} has no "
                                                  f"keyboard (no i8042 in its devices): nothing typed\n")
        assert run.launch("ctl", run.name, "stop", "alpha").returncode == 0
        r = run.launch("io", run.name, "alpha", "inb", "0x3fd")
        assert r.returncode == 1 and "nothing executed" in r.stderr and "OK" not in r.stdout, r.stdout + r.stderr
        r = run.launch("io", run.name, "beta", "inb", "0x3fd")
        assert r.returncode == 0 and r.stdout.startswith("OK "), r.stdout + r.stderr
    finally:
        run.stop()


@pytest.mark.timeout(120)
def test_bench_stops_on_sigterm_without_a_traceback_or_orphans():
    env = dict(os.environ, HVSTACK_RUN_DIR=short_run_root())
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "bench", "--no-experiments", "--duration", "30",
                             "--samples", "600", "--rounds", "1", "--no-progress",
                             # port I/O only: its floor takes a second, where the interrupt paths' take one
                             # slice each (the idle and the busy client: over 60 s at this duration)
                             "--paths", "io_port"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    me = psutil.Process(proc.pid)
    # Wait until it is measuring the stack (a run of the bench is up), then SIGTERM it.
    wait_until(lambda: any(Path(env["HVSTACK_RUN_DIR"]).glob("*/manifest.json")), 60, what="a bench run")
    children = me.children(recursive=True)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 15
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("launch.py bench: stopped by SIGTERM"), err
    assert wait_until(lambda: not alive([c.pid for c in children]), 10, what="the bench's processes to exit") is True
