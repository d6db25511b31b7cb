"""A run of two hosts (issue 13, root/cluster.py): ``[[host]]`` sections make one network
namespace and one run per host; ``migrate RUN alpha --to b`` moves the guest across the
veths over CURVE tcp, its serial counter, disk rounds and memory passes going on there;
``status``, ``console`` and ``ctl`` naming the run find alpha on b.  Stopping the run — or
SIGKILL of its launcher — leaves no process and no namespace.  Skipped, saying why, where
namespaces cannot be made."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from root.hosts import unavailable
from root.testrun import handler_errors_in_logs
from tests.integration.test_migration import RESUMED, SERIAL
from tests.support import REPO, alive, short_run_root, start_run, wait_until

CONFIG = str(REPO / "tests" / "configs" / "hosts.toml")
pytestmark = [pytest.mark.timeout(150),
              pytest.mark.skipif(unavailable() is not None, reason=f"hosts as namespaces: {unavailable()}")]


def host_run(top, name: str) -> Path:
    return Path(top.manifest()["cluster"]["hosts"][name]["run"])


def console(top, host: str, partition: str) -> str:
    p = host_run(top, host) / f"console-{partition}.log"
    return p.read_text(errors="replace") if p.exists() else ""


def every_pid(top) -> list[int]:
    """The top launcher, and each host's launcher and processes."""
    pids = [top.manifest()["launcher_pid"]]
    for h in top.manifest()["cluster"]["hosts"].values():
        man = json.loads((Path(h["run"]) / "manifest.json").read_text())
        pids += [h["pid"], *(p["pid"] for p in man.get("processes", {}).values()),
                 *(z["pid"] for z in man.get("zygotes", {}).values())]
    return pids


def namespaces(top) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [n for n in top.manifest()["cluster"]["namespaces"] if n in listed]


def test_a_partition_moves_to_another_host_and_attach_commands_follow_it():
    top = start_run(CONFIG, short_run_root())
    try:
        man = top.manifest()
        assert sorted(man["cluster"]["hosts"]) == ["a", "b"] and len(namespaces(top)) == 3
        wait_until(lambda: len(SERIAL.findall(console(top, "a", "alpha"))) >= 2
                   and "round 0" in console(top, "a", "alpha") and "memwrite: pass 1" in console(top, "a", "alpha"),
                   60, interval=0.2, what="alpha's workloads under way on host a")
        r = top.launch("migrate", top.name, "alpha", "--to", "b", timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        b_address = man["cluster"]["hosts"]["b"]["address"]
        assert f"migrated to tcp://{b_address}:" in r.stdout, r.stdout  # across the veth
        summary = re.search(r"downtime ([\d.]+) ms.*disk round (\d+)", r.stdout)
        resumed = wait_until(lambda: RESUMED.search(console(top, "b", "alpha")), 30, interval=0.2,
                             what="alpha's resume line on host b")
        assert int(resumed.group(2)) == int(summary.group(2))
        exits = int(resumed.group(3))
        wait_until(lambda: any(int(e) > exits for e, _ in SERIAL.findall(console(top, "b", "alpha"))), 30,
                   interval=0.2, what="alpha's serial counter to go on on host b")
        wait_until(lambda: re.search(r"memwrite: pass [2-9]\d* of \d+ pages verified", console(top, "b", "alpha")),
                   60, interval=0.2, what="a memory pass verified on host b")
        assert "MISMATCH" not in console(top, "a", "alpha") + console(top, "b", "alpha")

        st = top.launch("status", top.name)
        assert st.returncode == 0, st.stderr
        on_a, on_b = st.stdout.split("\nhost b ")
        assert re.search(rf"partition alpha \(id \d+\): moved → {host_run(top, 'b').name}", on_a), st.stdout
        assert re.search(r"partition alpha \(id \d+\): active", on_b), st.stdout
        t = top.launch("top", top.name, "--once", "--json", "--interval", "0.5", timeout=30)
        assert t.returncode == 0, t.stderr
        frame = json.loads(t.stdout)
        by_host = {h: {p["name"]: p["state"] for p in s["partitions"]} for h, s in frame["hosts"].items()}
        assert by_host["b"]["alpha"] == "active" and by_host["b"]["beta"] == "active", by_host
        con = top.launch("console", top.name, "alpha", "--linger", "1", stdin="", timeout=30)
        assert f"Connected to partition alpha of run {host_run(top, 'b').name}" in con.stderr, con.stderr
        c = top.launch("ctl", top.name, "pause", "alpha", timeout=30)
        assert c.returncode == 0 and "alpha moved to run" in c.stderr, c.stdout + c.stderr
        assert top.launch("ctl", top.name, "resume", "alpha", timeout=30).returncode == 0

        # And back: host a makes alpha anew (its first copy was stopped there) and takes it in.
        r = top.launch("migrate", top.name, "alpha", "--to", "a", timeout=90)
        assert r.returncode == 0 and "alpha moved to run" in r.stderr, r.stdout + r.stderr
        back = wait_until(lambda: RESUMED.search(console(top, "a", "alpha")), 30, interval=0.2,
                          what="alpha's resume line back on host a")
        wait_until(lambda: any(int(e) > int(back.group(3)) for e, _ in SERIAL.findall(console(top, "a", "alpha"))),
                   30, interval=0.2, what="alpha's serial counter to go on back on host a")
        st = top.launch("status", top.name).stdout
        assert re.search(r"partition alpha \(id 2\): active", st.split("\nhost b ")[0]), st
        assert "MISMATCH" not in console(top, "a", "alpha") + console(top, "b", "alpha")

        pids = every_pid(top)
        top.stop()
        assert wait_until(lambda: not alive(pids), 30, what="every process of every host to exit") is True
        ended = top.manifest()["ended"]
        assert ended["reason"] == "SIGTERM" and set(ended["hosts"]) == {"a", "b"}, ended
        assert ended["namespaces_left"] == [] and namespaces(top) == []
        for h in ("a", "b"):
            assert not handler_errors_in_logs(host_run(top, h)), f"a handler raised on host {h}"
    finally:
        top.stop()


def test_sigkill_of_the_launcher_leaves_no_process_and_no_namespace():
    top = start_run(CONFIG, short_run_root())
    try:
        wait_until(lambda: "[beta] vp0:" in console(top, "b", "beta"), 60, interval=0.2, what="beta to run")
        pids = every_pid(top)
        assert len(namespaces(top)) == 3
        os.kill(top.manifest()["launcher_pid"], signal.SIGKILL)
        assert wait_until(lambda: not alive(pids), 40, what="every process of every host to exit") is True
        assert wait_until(lambda: namespaces(top) == [], 20, what="the janitor to remove the namespaces") is True
    finally:
        top.stop()
