"""Attach commands follow a migrated partition (issue 13: "the partition's identity, console
and attach commands follow it").

After ``migrate RUN P --to DEST`` the source run keeps a record of the move, ``moved-P.json``
in its run directory (a list: P may leave the same run more than once), which its launcher
also copies into its manifest (``moved``) — and which stays after the source run has ended.
``status``, ``top``, ``console``, ``ctl``, ``trace``, ``io`` … naming the source run and P
find P where it runs now: :func:`live_partition` follows the records from run to run (a
chain of moves, at most :data:`MAX_HOPS`, never the same run twice at the same time) and
says on stderr in one line where P went.

A move counts only if it is later than P's last arrival in that run (its manifest's
``incoming.migrations``): a partition that left a run and came back is that run's again.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from proto.errors import HvstackError
from root.rundir import RunDir, find_run, live_run, write_json

MAX_HOPS = 8
PREFIX = "moved-"


def record_path(run_dir: Path, partition: str) -> Path:
    return Path(run_dir) / f"{PREFIX}{partition}.json"


def record_move(run_dir: Path, partition: str, dest: RunDir | None, endpoint: str) -> dict:
    """Record in the source run that ``partition`` now runs in ``dest`` (None: a run this
    machine does not know, only its ``endpoint``); the record."""
    rec = {"partition": partition, "to": dest.name if dest else None,
           "path": str(dest.path) if dest else None, "endpoint": endpoint,
           "at": datetime.now(timezone.utc).isoformat()}
    path = record_path(run_dir, partition)
    write_json(path, {"moves": [*_read(path), rec][-100:]})
    return rec


def moves(run_dir: Path) -> dict[str, list[dict]]:
    """Partition name → its moves out of this run, oldest first."""
    out = {}
    for path in sorted(Path(run_dir).glob(f"{PREFIX}*.json")):
        recs = _read(path)
        if recs:
            out[path.name[len(PREFIX):-len(".json")]] = recs
    return out


def _read(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    recs = data.get("moves") if isinstance(data, dict) else None
    return [r for r in recs if isinstance(r, dict) and isinstance(r.get("at"), str)] if isinstance(recs, list) else []


def arrivals(man: dict, partition: str) -> list[str]:
    """When ``partition`` came into this run by migration (ISO times)."""
    done = (man.get("incoming") or {}).get("migrations") or []
    return [d["at"] for d in done if isinstance(d, dict) and d.get("partition") == partition and "at" in d]


def moved_out(run: RunDir, man: dict, partition: str) -> dict | None:
    """The move that took ``partition`` out of this run, if it is not here any more."""
    recs = moves(run.path).get(partition) or (man.get("moved") or {}).get(partition) or []
    if not recs:
        return None
    last = recs[-1]
    back = [a for a in arrivals(man, partition) if _time(a) > _time(last["at"])]
    return None if back else last


def _time(at: str) -> datetime:
    try:
        t = datetime.fromisoformat(at)
    except ValueError:  # (a record that is not ours: as old as can be)
        return datetime.min.replace(tzinfo=timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _destination(rec: dict) -> RunDir:
    if rec.get("path") and (Path(rec["path"]) / "manifest.json").exists():
        return RunDir(Path(rec["path"]))
    if rec.get("to"):
        return find_run(rec["to"])
    raise HvstackError(f"partition {rec['partition']} moved to {rec.get('endpoint')} at {_clock(rec['at'])}, "
                       "a run this machine does not know: attach to it there")


def where(ref: str, partition: str) -> tuple[RunDir, dict, list[dict]]:
    """The run ``partition`` of run ``ref`` is in now, its manifest, and the moves followed.
    In a run of hosts (root/cluster.py), the search starts at its host's run."""
    run = find_run(ref)
    man = run.manifest()
    if man.get("cluster"):
        run = host_run(run, man, partition)
        man = run.manifest()
    followed, seen = [], set()
    while True:
        rec = moved_out(run, man, partition)
        if rec is None:
            return run, man, followed
        if len(followed) >= MAX_HOPS or (run.path, rec["at"]) in seen:
            raise HvstackError(f"partition {partition}: its moves from run {ref} form a chain longer than "
                               f"{MAX_HOPS} runs or a loop (last: run {run.name} at {rec['at']})")
        seen.add((run.path, rec["at"]))
        followed.append(rec)
        run = _destination(rec)
        man = run.manifest()


def host_run(run: RunDir, man: dict, partition: str) -> RunDir:
    """Of a run of hosts: the run of the host ``partition`` was placed on."""
    from root.cluster import host_runs

    placed = {p.get("name"): p.get("host") for p in man.get("config", {}).get("partitions", [])}
    if partition not in placed:
        raise HvstackError(f"run {run.name} has no partition {partition!r} (it has {', '.join(placed)})")
    runs = host_runs(man)
    if placed[partition] not in runs:
        raise HvstackError(f"run {run.name}: host {placed[partition]} has not started its run")
    return runs[placed[partition]]


def _clock(at: str) -> str:
    try:
        return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return at


def moved_line(rec: dict) -> str:
    """How ``status`` shows a partition that moved out: "moved → RUN at HH:MM:SS"."""
    return f"moved → {rec.get('to') or rec.get('endpoint')} at {_clock(rec['at'])}"


def say_moves(partition: str, followed: list[dict]) -> None:
    for rec in followed:
        print(f"{partition} moved to run {rec['to']} at {_clock(rec['at'])}", file=sys.stderr)


def live_partition(ref: str, partition: str) -> tuple[RunDir, dict]:
    """As :func:`root.rundir.live_run`, but of the run ``partition`` is in now (saying
    where it went, if it moved)."""
    run, _, followed = where(ref, partition)
    say_moves(partition, followed)
    return live_run(str(run.path))


def live_run_following(ref: str) -> tuple[RunDir, dict]:
    """As :func:`root.rundir.live_run`; for a run that has ended after its partitions moved
    out (to one run), that run, saying so."""
    run = find_run(ref)
    man = run.manifest()
    if man.get("cluster"):
        from root.cluster import host_runs
        hosts = ", ".join(f"{n}: {r.path}" for n, r in host_runs(man).items())
        raise HvstackError(f"run {run.name} is a run of hosts: name one host's run by its directory ({hosts}), "
                           "or a partition")
    if run.is_live():
        return live_run(ref)
    gone = {}
    for name in man.get("partitions", {}):
        if moved_out(run, man, name) is not None:
            there, _, followed = where(str(run.path), name)
            gone[name] = (there, followed)
    live = {there.path for there, _ in gone.values() if there.is_live()}
    if len(live) != 1:
        if gone:
            raise HvstackError(f"run {run.name} is not running ({run.ended_reason()}); its partitions moved: "
                               + ", ".join(f"{n} to {t.name}" for n, (t, _) in gone.items()))
        return live_run(ref)  # (its error)
    for name, (there, followed) in gone.items():
        say_moves(name, followed)
    return live_run(str(live.pop()))
