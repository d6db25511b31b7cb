"""Fixtures for driving launch.py's commands in-process: a private runs directory, and fake
runs (a manifest, and for a 'live' one a launcher pid that is alive)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from root.rundir import launcher_identity


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs directory, as $HVSTACK_RUN_DIR (private, as a runs root must be)."""
    root = tmp_path / "runs"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(root))
    return root


@pytest.fixture
def fake_run(runs):
    """``fake_run(name, state=…, launcher_pid=…, …)``: a run directory with a manifest and a
    secret but no processes.  A 'running' run whose launcher_pid is alive and is the
    process the manifest's launcher identity names (by default this test process) counts
    as live; ``identity=False`` leaves the identity out."""

    def make(name: str, state: str = "running", launcher_pid: int | None = None, partitions=("alpha",),
             reason: str | None = None, stopped: tuple[str, ...] = (), identity: bool = True) -> Path:
        path = runs / name
        (path / "logs").mkdir(parents=True)
        (path / "secret").write_text("not-a-secret")
        man = {"name": name, "state": state, "launcher_pid": os.getpid() if launcher_pid is None else launcher_pid,
               "endpoint": f"ipc://{path}/hv.sock", "processes": {},
               "partitions": {p: {"id": i + 1, "console": str(path / f"console-{p}.log")}
                              for i, p in enumerate(partitions)},
               "config": {"partitions": [{"name": p, "chipset": "gen1", "devices": []} for p in partitions]}}
        if identity and man["launcher_pid"] > 0:
            try:
                man["launcher"] = launcher_identity(man["launcher_pid"])
            except psutil.Error:
                man["launcher"] = {"pid": man["launcher_pid"], "create_time": 0.0, "cmdline": []}
        if reason is not None:
            man["ended"] = {"reason": reason, "exit_code": 0}
        if stopped:
            man["stopped_partitions"] = list(stopped)
        (path / "manifest.json").write_text(json.dumps(man))
        return path

    return make
