"""Fixtures for driving launch.py's commands in-process: a private runs directory, and fake
runs (a manifest, and for a 'live' one a launcher pid that is alive)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """An empty runs directory, as $HVSTACK_RUN_DIR."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("HVSTACK_RUN_DIR", str(root))
    return root


@pytest.fixture
def fake_run(runs):
    """``fake_run(name, state=…, launcher_pid=…, …)``: a run directory with a manifest and a
    secret but no processes.  A 'running' run whose launcher_pid is alive counts as live."""

    def make(name: str, state: str = "running", launcher_pid: int | None = None, partitions=("alpha",),
             reason: str | None = None, stopped: tuple[str, ...] = ()) -> Path:
        path = runs / name
        (path / "logs").mkdir(parents=True)
        (path / "secret").write_text("not-a-secret")
        man = {"name": name, "state": state, "launcher_pid": os.getpid() if launcher_pid is None else launcher_pid,
               "endpoint": f"ipc://{path}/hv.sock", "processes": {},
               "partitions": {p: {"id": i + 1, "console": str(path / f"console-{p}.log")}
                              for i, p in enumerate(partitions)},
               "config": {"partitions": [{"name": p, "chipset": "gen1", "devices": []} for p in partitions]}}
        if reason is not None:
            man["ended"] = {"reason": reason, "exit_code": 0}
        if stopped:
            man["stopped_partitions"] = list(stopped)
        (path / "manifest.json").write_text(json.dumps(man))
        return path

    return make
