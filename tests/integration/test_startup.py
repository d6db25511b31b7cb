"""Start-up (issue 12): a run's hypervisor and zygotes start before the launcher imports
itself (root/prestart.py); its workers and partition processes are forked by the zygotes
(root/zygote.py) and confined exactly as a fresh ``python -m`` was — each under its own
uid (or namespaces), seccomp, no privileges, an empty network namespace, the launcher its
parent — and they no longer pay for their imports; a run outlives its zygotes."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.support import REPO, alive, short_run_root, start_run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPOLOGY = """\
[run]
name = "startup"
duration_s = 0
logical_processors = 2
""" + "".join(f"""
[[partition]]
name = "p{i}"
vps = 1
memory_mb = 4
chipset = "gen1"
workloads = ["serial"]
""" for i in range(2))
BANNER = "hvstack guest kernel"
# A fresh `python -m partitions` spends ≈ 0.25–0.35 CPU-s importing before its first guest
# instruction (README, Scaling and start-up); a forked one ≈ 0.03–0.07 s up to its banner.
FORKED_PARTITION_CPU_S = 0.2
ALL_BANNERS_S = 20.0  # generous: ≈ 1–2 s on an idle 2-core host


def status_of(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_forked_workers_and_partitions_are_confined_as_before_and_skip_their_imports(tmp_path):
    cfg = tmp_path / "startup.toml"
    cfg.write_text(TOPOLOGY)
    t0 = time.monotonic()
    live = start_run(str(cfg), short_run_root())
    try:
        wait_until(lambda: all(BANNER in live.console(f"p{i}") for i in range(2)), ALL_BANNERS_S,
                   what="both banners")
        assert time.monotonic() - t0 < ALL_BANNERS_S
        man = live.manifest()
        procs = {k: v["pid"] for k, v in man["processes"].items()}
        zygotes = man["zygotes"]
        assert {k: (z["forked"], z["failure"]) for k, z in zygotes.items()} == \
            {"worker": (2, None), "partitions": (2, None)}
        hv = psutil.Process(procs["hypervisor:hv"]).cmdline()
        assert "--args-first" in hv and hv[hv.index("--run-tag") + 1] == man["run_tag"], \
            "started before the launcher's imports (root/prestart.py), known by the run's tag"
        hv_net = os.readlink(f"/proc/{procs['hypervisor:hv']}/ns/net")
        uids = set()
        for role in ("worker", "partition"):
            for name in ("p0", "p1"):
                pid = procs[f"{role}:{name}"]
                p = psutil.Process(pid)
                assert p.ppid() == man["launcher_pid"], "the launcher adopted it: it supervises and reaps it"
                assert p.name() == f"{role}-{name}"
                st = status_of(pid)
                assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1" and int(st["CapEff"], 16) == 0, (role, st)
                assert os.readlink(f"/proc/{pid}/ns/net") != hv_net, "an empty network namespace of its own"
                if man["isolation"] == "uids":
                    uids |= {int(x) for x in st["Uid"].split()}
                if role == "partition":
                    cpu = p.cpu_times()
                    assert cpu.user + cpu.system < FORKED_PARTITION_CPU_S, (name, cpu)
        if man["isolation"] == "uids":
            assert len(uids) == 4 and 0 not in uids
    finally:
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone, the zygotes too")


def test_a_run_outlives_its_zygotes_and_still_restarts_a_worker():
    """The zygotes' deaths end nothing (what they forked is the launcher's); a worker
    restarted afterwards starts fresh, as every successor does (servicing's timing is as
    before: root/run.py spawn_worker)."""
    live = start_run(str(REPO / "tests" / "configs" / "servicing.toml"), short_run_root())
    try:
        wait_until(lambda: BANNER in live.console("alpha"), 30, what="the banner")
        man = live.manifest()
        for z in man["zygotes"].values():
            os.kill(z["pid"], signal.SIGKILL)
        wait_until(lambda: not alive([z["pid"] for z in man["zygotes"].values()]), 10, what="the zygotes to die")
        seen = len(live.console("alpha"))
        wait_until(lambda: len(live.console("alpha")) > seen, 20, what="the guest to go on without its zygotes")
        assert live.manifest()["state"] == "running" and live.proc.poll() is None
        old = man["processes"]["worker:alpha"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: live.manifest().get("worker_restarts", {}).get("alpha") == 1, 30,
                   what="the launcher to restart the worker")
        new = live.manifest()["processes"]["worker:alpha"]["pid"]
        assert new != old and alive([new])
        assert "-m" in psutil.Process(new).cmdline() and "worker" in psutil.Process(new).cmdline(), \
            "a fresh python -m worker"
        seen = len(live.console("alpha"))
        wait_until(lambda: len(live.console("alpha")) > seen, 30, what="the guest to go on after the restart")
    finally:
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")
