"""Run directories: where a run keeps its manifest, secret, ipc socket, logs and consoles,
and how another shell finds a run by name.

Runs live in ``$HVSTACK_RUN_DIR``, else ``$XDG_RUNTIME_DIR/hvstack-UID`` or
``/tmp/hvstack-UID``; each run directory is private (mode 0700).  ``manifest.json`` holds
the launcher's pid, the endpoint, each process and partition, the topology, the state
(starting, running, ended) and, once ended, why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from proto import confine
from proto.errors import HvstackError

# What an ended run's manifest says when nothing else does.
LAUNCHER_GONE = "its launcher is gone"


def runs_root() -> Path:
    """Where run directories live: $HVSTACK_RUN_DIR, else a per-user directory."""
    base = os.environ.get("HVSTACK_RUN_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"hvstack-{os.getuid()}"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON so that a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise HvstackError(f"run {self.name}: cannot read its manifest: {e}") from e

    def secret(self) -> str:
        """The run secret; whoever holds it is made not dumpable (no process of its uid can
        read it out of this one's memory)."""
        confine.set_dumpable(False)
        return (self.path / "secret").read_text().strip()

    def is_live(self) -> bool:
        try:
            man = self.manifest()
        except HvstackError:
            return False
        return man.get("state") == "running" and pid_alive(man.get("launcher_pid"))

    def ended_reason(self, default: str = LAUNCHER_GONE) -> str:
        """Why the run ended, as its manifest says."""
        return self.manifest().get("ended", {}).get("reason", default)


def new_run_dir(topology_name: str) -> RunDir:
    root = runs_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{topology_name}-{stamp}-{os.urandom(2).hex()}"
    path.mkdir(mode=0o700)
    (path / "logs").mkdir(mode=0o700)
    return RunDir(path)


def find_run(ref: str) -> RunDir:
    """A run by path, by name, or by a unique prefix of its name."""
    p = Path(ref)
    if (p / "manifest.json").exists():
        return RunDir(p.resolve())
    root = runs_root()
    if (root / ref / "manifest.json").exists():
        return RunDir(root / ref)
    matches = sorted(d for d in root.glob(f"{ref}*") if (d / "manifest.json").exists()) if root.exists() else []
    live = [d for d in matches if RunDir(d).is_live()]
    if len(live) == 1 or (len(matches) == 1):
        return RunDir((live or matches)[0])
    if not matches:
        raise HvstackError(f"no run {ref!r} in {root} (see `python launch.py ls`)")
    raise HvstackError(f"{ref!r} matches {len(matches)} runs: {', '.join(d.name for d in matches[:5])}")


def live_run(ref: str) -> tuple[RunDir, dict]:
    """A running run and its manifest; an error saying how it ended if it is not running."""
    run = find_run(ref)
    man = run.manifest()
    if not run.is_live():
        how = man.get("ended", {}).get("reason", LAUNCHER_GONE)
        raise HvstackError(f"run {run.name} is not running ({how})")
    return run, man


def partition_of(run: RunDir, man: dict, name: str) -> int:
    """The ID of the partition called ``name`` in a run's manifest."""
    parts = man.get("partitions", {})
    if name not in parts:
        raise HvstackError(f"run {run.name} has no partition {name!r} (it has {', '.join(parts)})")
    return parts[name]["id"]


def partition_names(man: dict) -> dict[int, str]:
    """Partition ID → name, from a run's manifest."""
    return {v["id"]: k for k, v in man.get("partitions", {}).items()}
