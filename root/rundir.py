"""Run directories: where a run keeps its manifest, secret, ipc socket, logs and consoles,
and how another shell finds a run by name.

Runs live in ``$HVSTACK_RUN_DIR``, else ``$XDG_RUNTIME_DIR/hvstack-UID`` or
``/tmp/hvstack-UID``.  The runs root must be a directory of ours that no one else can
enter or write (mode 0700, no symlink in the shared temporary directory): another user who
pre-created it could plant a "live" run there whose manifest names any pid, so a root that
is not ours is refused, never used.  Each run directory is private (0700) and every file in
it 0600.  ``manifest.json`` holds the launcher's pid and identity (its start time and
command line, so that a pid reused by another process is never taken for it), the endpoint,
each process and partition, the topology, the state (starting, running, ended) and, once
ended, why.  A run whose launcher died without ending it (SIGKILL) is "launcher died" until
``ls --prune`` removes what it left (guest memory) and records how it ended.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from proto import confine
from proto.errors import HvstackError

# What an ended run's manifest says when nothing else does.
LAUNCHER_GONE = "its launcher is gone"
# A run whose manifest still says starting/running but whose launcher is not alive.
LAUNCHER_DIED = "its launcher died without ending the run"
PRIVATE_FILE = 0o600
# Guest memory dies with the run; the manifest, logs, consoles, NVRAM and disk images stay.
GUEST_MEMORY_FILES = ("mem-*.bin", "slat-*.bin", "tlb-*.bin", "dirty-*.bin")


class UnsafeRunsRoot(HvstackError):
    """The runs root is not a private directory of ours; nothing is read from it or made in it."""

    exit_code = 2


def runs_root() -> Path:
    """Where run directories live: $HVSTACK_RUN_DIR, else a per-user directory."""
    base = os.environ.get("HVSTACK_RUN_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"hvstack-{os.getuid()}"


def checked_runs_root(create: bool = False) -> Path | None:
    """The runs root, once it is known to be ours and private (created 0700 if ``create``);
    None if it does not exist and is not to be created.  Raises UnsafeRunsRoot otherwise.
    The per-user default sits in a directory every user can write, so it must not be a
    symlink either; $HVSTACK_RUN_DIR is the user's own choice and may be one."""
    root = runs_root()
    chosen = bool(os.environ.get("HVSTACK_RUN_DIR"))
    if create:
        try:
            root.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as e:
            raise UnsafeRunsRoot(f"cannot create the runs directory {root}: {e.strerror}") from e
    try:
        st = os.stat(root) if chosen else os.lstat(root)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UnsafeRunsRoot(f"cannot use the runs directory {root}: {e.strerror}") from e
    fix = "remove it or set HVSTACK_RUN_DIR to a directory of your own"
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRunsRoot(f"the runs directory {root} is not a directory (a symlink?): refused; {fix}")
    if st.st_uid != os.geteuid():
        raise UnsafeRunsRoot(f"the runs directory {root} belongs to uid {st.st_uid}, not to you "
                             f"(uid {os.geteuid()}): refused; {fix}")
    if st.st_mode & 0o077:
        raise UnsafeRunsRoot(f"the runs directory {root} has mode {stat.S_IMODE(st.st_mode):04o}, "
                             f"not 0700: refused (chmod 700 it if it is yours)")
    return root


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that only its owner may read (0600 whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, PRIVATE_FILE)  # an existing file keeps its mode through O_CREAT
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON (0600) so that a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    write_private(tmp, json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def launcher_identity(pid: int | None = None) -> dict:
    """What tells a process apart from a later one given the same pid: its start time and
    command line (psutil), as the manifest keeps them for the launcher."""
    p = psutil.Process(pid)
    with p.oneshot():
        return {"pid": p.pid, "create_time": p.create_time(), "cmdline": p.cmdline()}


def launcher_process(man: dict) -> psutil.Process | None:
    """The run's launcher if it is alive and is the process the manifest names (same pid,
    start time and command line); None otherwise."""
    ident = man.get("launcher")
    pid = man.get("launcher_pid")
    if not isinstance(ident, dict) or not pid or ident.get("pid") != pid:
        return None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            if abs(p.create_time() - float(ident.get("create_time", -1))) > 0.01 \
                    or p.cmdline() != ident.get("cmdline"):
                return None
    except (psutil.Error, TypeError, ValueError):
        return None
    return p


def launcher_alive(man: dict) -> bool:
    """Whether a run's launcher is alive: the process its identity names, or — for a
    manifest written before launchers recorded one — any live process with its pid (only
    ever shown, never signalled: ``stop`` needs the identity)."""
    if isinstance(man.get("launcher"), dict):
        return launcher_process(man) is not None
    return pid_alive(man.get("launcher_pid"))


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
        return man.get("state") == "running" and launcher_alive(man)

    def launcher_died(self, man: dict | None = None) -> bool:
        """The manifest says the run is starting or running, but its launcher is gone."""
        man = self.manifest() if man is None else man
        return man.get("state") in ("starting", "running") and not launcher_alive(man)

    def state(self) -> str:
        """'running', 'launcher died', or how the run ended."""
        man = self.manifest()
        if self.launcher_died(man):
            return "launcher died"
        if man.get("state") == "running":
            return "running"
        return man.get("ended", {}).get("reason", man.get("state", "?"))

    def prune(self) -> bool:
        """For a run whose launcher died: remove the guest memory it left and record in the
        manifest how the run ended.  False if the run is not such a run."""
        man = self.manifest()
        if not self.launcher_died(man):
            return False
        for pattern in GUEST_MEMORY_FILES:
            for f in self.path.glob(pattern):
                f.unlink(missing_ok=True)
        left = [v.get("pid") for v in man.get("processes", {}).values() if pid_alive(v.get("pid"))]
        man.update(state="ended", ended={
            "reason": f"{LAUNCHER_DIED} (pid {man.get('launcher_pid')}); pruned", "exit_code": None,
            "at": datetime.now().astimezone().isoformat(), "exits": {}, "left_running": left})
        write_json(self.manifest_path, man)
        return True

    def ended_reason(self, default: str = LAUNCHER_GONE) -> str:
        """Why the run ended, as its manifest says."""
        man = self.manifest()
        if self.launcher_died(man):
            return f"{LAUNCHER_DIED}; `launch.py ls --prune` cleans it up"
        return man.get("ended", {}).get("reason", default)


def new_run_dir(topology_name: str) -> RunDir:
    root = checked_runs_root(create=True)
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
    root = checked_runs_root() or runs_root()
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
        how = run.ended_reason()
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
