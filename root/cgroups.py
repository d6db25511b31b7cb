"""A partition's CPU limit, enforced on the host too: a cgroup (v1 ``cpu`` controller) per
partition process.

The hypervisor's scheduler caps what a VP runs on its *logical* processors (``cpu.limit``,
percent of an LP per VP), but a partition process is a host process: guest code that never
exits keeps a host core busy whatever the scheduler decides.  So the root puts each
partition process whose topology sets a limit below 100 % into a cgroup of its own,
``/sys/fs/cgroup/cpu/hvstack/RUN/PARTITION``, with CFS bandwidth control:
``cpu.cfs_quota_us`` = limit × VPs × ``cpu.cfs_period_us`` (100 ms) — the same share of
host CPU as the scheduler gives it of LPs.  It is removed when the partition or the run
ends.  Where the controller is missing or not writable (not root, cgroup v2 only), the
limit holds only on the LPs, and the run says so (launcher output and manifest) and goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_CONTROLLER = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller cfs_quota_us


def limit_cpu(run_name: str, partition: str, pid: int, limit_percent: float, vps: int,
              controller: Path = CPU_CONTROLLER) -> tuple[Path | None, str]:
    """Confine process ``pid`` to ``limit_percent`` of a host CPU per VP.  Returns the
    cgroup's path (None when not enforced) and a line saying what was done or why not."""
    quota = max(MIN_QUOTA_US, round(CFS_PERIOD_US * limit_percent / 100 * vps))
    path = controller / "hvstack" / run_name / partition
    try:
        if not (controller / "cpu.cfs_quota_us").exists():
            return None, f"cpu limit not enforced on the host: no cgroup v1 cpu controller at {controller}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        remove(path)
        return None, f"cpu limit not enforced on the host: cgroup {path}: {e.strerror or e}"
    return path, (f"cpu limit {limit_percent:g}% × {vps} VP(s) enforced on the host: cgroup {path}, "
                  f"cfs_quota_us {quota} per cfs_period_us {CFS_PERIOD_US}")


def remove(path: Path | None) -> None:
    """Remove a partition's cgroup (its process has ended) and its run's and hvstack's
    directories once empty.  A cgroup that still holds a process stays (rmdir says EBUSY)."""
    if path is None:
        return
    for d in (path, path.parent, path.parent.parent):
        try:
            os.rmdir(d)
        except OSError:
            return


def remove_run(run_name: str, controller: Path = CPU_CONTROLLER) -> list[Path]:
    """Remove every cgroup of run ``run_name`` (its launcher died before it could): the
    ones whose processes are gone.  Returns the cgroups removed."""
    run_dir = controller / "hvstack" / run_name
    if not run_name or "/" in run_name or run_name in (".", ".."):
        return []
    removed = []
    try:
        children = [d for d in run_dir.iterdir() if d.is_dir() and not d.is_symlink()]
    except OSError:
        return []
    for d in children:
        try:
            os.rmdir(d)
            removed.append(d)
        except OSError:  # EBUSY: a process is still in it
            pass
    for d in (run_dir, run_dir.parent):  # the run's and hvstack's directories, once empty
        try:
            os.rmdir(d)
        except OSError:
            break
    return removed
