"""A run on several hosts (issue 13): a topology with ``[[host]]`` sections, each a
hypervisor with its own LPs and its own workers, and ``host = "NAME"`` on every partition.

Each host is a network namespace of its own (root/hosts.py ``make_cluster``: one veth per
host to a bridge in a namespace of its own, 10.214.0.0/24), and runs as a run of its own
inside it — ``launch.py run TOPOLOGY --host NAME``: its hypervisor, its LPs, its workers and
partition processes, in a sub-run directory under this run's (``hosts/NAME/RUN``, a runs
root of its own).  A host's run also listens for migrations (its CURVE endpoint on its veth
address) and has ``memory_mb`` of room in its pool (default: the other hosts' partitions):
``migrate RUN PARTITION --to HOST`` (root/commands/migrate.py) moves a partition there over
the veth, the host's live run creating it when the migration begins (root/arrivals.py).  Within a host the stack talks as the topology says (ipc by default: the
filesystem is shared, as a cluster's shared storage would be); between hosts only over
CURVE tcp.

This launcher supervises: it relays each host's output with the host's name, and the first
host run that ends ends the whole (the others get SIGTERM and end theirs as a run ends
today); the manifest says each host's end.  Nothing outlives it: the hosts' launchers get
SIGTERM if it dies (PR_SET_PDEATHSIG; their own processes die with them), and a janitor
(root/cluster_janitor.py) removes the namespaces once it is gone, SIGKILL included.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from proto.errors import HvstackError
from root import REPO, hosts as hostnet, prestart
from root.procs import describe_exit
from root.rundir import RunDir, launcher_identity, new_run_dir, write_json

if TYPE_CHECKING:
    from root.topology import Topology

HOST_START_TIMEOUT_S = 60.0  # for each host's run to say it is running
HOST_STOP_GRACE_S = 40.0  # for a host's launcher to end its run after SIGTERM
PR_SET_PDEATHSIG = 1


def host_topology(topology: Topology, name: str) -> tuple[Topology, dict, int]:
    """What host ``name`` runs: its own partitions; every partition of the topology (name →
    config), which it may create while it runs for a migration that brings it (another
    host's, or one of its own coming back; root/arrivals.py); and the pages of room its pool
    has for them (its ``memory_mb``; default: the other hosts' partitions, all at once)."""
    host = next(h for h in topology.hosts or () if h["name"] == name)
    own = [pc for pc in topology.partitions if pc.host == name]
    room_mb = host["memory_mb"] if host["memory_mb"] is not None else \
        sum(pc.memory_mb for pc in topology.partitions if pc.host != name)
    return dataclasses.replace(topology, name=f"{topology.name}-{name}", logical_processors=host["lps"],
                               partitions=own, hosts=None), {pc.name: pc for pc in topology.partitions}, room_mb << 8


def host_runs(man: dict) -> dict[str, RunDir]:
    """Host name → its run, from a cluster run's manifest (those that have started)."""
    return {name: RunDir(Path(h["run"])) for name, h in (man.get("cluster") or {}).get("hosts", {}).items()
            if h.get("run")}


def _term_with_parent() -> None:
    """In a host's launcher, before exec: SIGTERM when this launcher dies (it then ends its
    run as on `stop`, and its processes die with it)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclasses.dataclass
class HostProc:
    name: str
    host: hostnet.Host
    runs_root: Path
    popen: subprocess.Popen
    run: RunDir | None = None
    partial: bytes = b""


class Cluster:
    def __init__(self, topology: Topology, out, duration_s: float | None) -> None:
        self.topology, self.out = topology, out
        self.duration = topology.duration_s if duration_s is None else duration_s
        self.namespaces: list[str] = []
        self.procs: list[HostProc] = []
        self.janitor: subprocess.Popen | None = None
        self.stop_reason: str | None = None
        self.run = new_run_dir(topology.name)

    def manifest_update(self, **changes) -> None:
        path = self.run.manifest_path
        man = json.loads(path.read_text()) if path.exists() else {
            "name": self.run.name, "created": datetime.now(timezone.utc).isoformat(),
            "launcher_pid": os.getpid(), "launcher": launcher_identity(), "config": self.topology.to_dict(),
            "endpoint": None, "partitions": {}, "processes": {}}
        man["cluster"] = {"namespaces": self.namespaces, "hosts": {
            p.name: {"netns": p.host.netns, "address": p.host.address, "pid": p.popen.pid,
                     "runs_root": str(p.runs_root), "run": str(p.run.path) if p.run else None,
                     "lps": next(h["lps"] for h in self.topology.hosts if h["name"] == p.name)}
            for p in self.procs}}
        man.update(changes)
        write_json(path, man)

    def start(self) -> None:
        self.manifest_update(state="starting")
        names = [h["name"] for h in self.topology.hosts]
        tag = self.run.name.rsplit("-", 1)[-1] + format(os.getpid() % 4096, "03x")
        self.namespaces, placed = hostnet.make_cluster(tag, names)
        # The janitor first: from here on, the namespaces go however this process ends.
        read, write = os.pipe()
        self.janitor = subprocess.Popen(
            [sys.executable, "-m", "root.cluster_janitor", *(a for n in self.namespaces for a in ("--namespace", n))],
            stdin=read, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(read)
        self._janitor_pipe = write  # (inherited by no child: os.pipe descriptors are not inheritable)
        duration = ["--duration", repr(self.duration)]
        source = str(Path(self.topology.source).resolve())  # (each host's launcher starts in hvstack's directory)
        for name in names:
            runs_root = self.run.path / "hosts" / name
            runs_root.mkdir(mode=0o700, parents=True)
            (self.run.path / "hosts").chmod(0o700)
            argv = placed[name].command([sys.executable, str(REPO / "launch.py"), "run", source,
                                         "--host", name, "--listen", placed[name].address, *duration])
            env = dict(os.environ, HVSTACK_RUN_DIR=str(runs_root))
            popen = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_term_with_parent)
            self.procs.append(HostProc(name, placed[name], runs_root, popen))
        self.manifest_update()
        deadline = time.monotonic() + HOST_START_TIMEOUT_S
        while any(p.run is None for p in self.procs):
            self._relay(0.1)
            self._check_hosts()
            for p in self.procs:
                if p.run is None:
                    p.run = _started_run(p.runs_root)
                    if p.run is not None:
                        self.manifest_update()
            if time.monotonic() > deadline:
                raise HvstackError(f"hosts {', '.join(p.name for p in self.procs if p.run is None)} did not start "
                                   f"their runs within {HOST_START_TIMEOUT_S:.0f} s")
        self.manifest_update(state="running")

    def supervise(self) -> tuple[str, int]:
        while self.stop_reason is None:
            self._relay(0.2)
            ended = self._check_hosts()
            if ended:
                return ended
        return self.stop_reason, 130 if "SIGINT" in self.stop_reason else 0

    def _check_hosts(self) -> tuple[str, int] | None:
        if self.stop_reason is not None:
            raise _Stop()
        for p in self.procs:
            code = p.popen.poll()
            if code is not None:
                return f"host {p.name}: {self._host_end(p)}", (code if code > 0 else 1) if code else 0
        return None

    def _host_end(self, p: HostProc) -> str:
        if p.run is not None:
            try:
                return p.run.manifest().get("ended", {}).get("reason") or describe_exit(p.popen.returncode)
            except HvstackError:
                pass
        return f"its launcher {describe_exit(p.popen.returncode)}"

    def _relay(self, timeout: float) -> None:
        """Each host's output, line by line, with its name."""
        fds = {p.popen.stdout.fileno(): p for p in self.procs if p.popen.stdout and not p.popen.stdout.closed}
        if not fds:
            time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select(list(fds), [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            p = fds[fd]
            data = os.read(fd, 65536)
            if not data:
                p.popen.stdout.close()
                data = b"\n" if p.partial else b""
            *lines, p.partial = (p.partial + data).split(b"\n")
            for line in lines:
                self.out.print(f"[host {p.name}] {line.decode(errors='replace')}")

    def finish(self, reason: str, code: int) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + HOST_STOP_GRACE_S
        while any(p.popen.poll() is None for p in self.procs) and time.monotonic() < deadline:
            self._relay(0.1)
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait(5)
            while p.popen.stdout and not p.popen.stdout.closed:
                self._relay(0.1)
        left = hostnet.remove_namespaces(self.namespaces)
        if self.janitor is not None:
            os.close(self._janitor_pipe)  # (it finds the namespaces gone and exits)
            try:
                self.janitor.wait(15)
            except subprocess.TimeoutExpired:
                self.janitor.kill()
                self.janitor.wait(5)
        self.manifest_update(state="ended", ended={
            "reason": reason, "exit_code": code, "at": datetime.now(timezone.utc).isoformat(),
            "hosts": {p.name: {"reason": self._host_end(p), "launcher": describe_exit(p.popen.returncode)}
                      for p in self.procs},
            "namespaces_left": left, "exits": {}, "left_running": []})


class _Stop(Exception):
    """SIGINT or SIGTERM while starting."""


def _started_run(runs_root: Path) -> RunDir | None:
    for d in sorted(runs_root.glob("*/manifest.json")):
        try:
            state = json.loads(d.read_text()).get("state")
        except (OSError, ValueError):
            continue
        if state in ("running", "ended"):
            return RunDir(d.parent)
    return None


def execute(topology: Topology, out, duration_s: float | None = None) -> tuple[Cluster | None, str, int]:
    """Start the hosts, supervise them, end them all; (cluster, reason, exit code)."""
    prestart.dismiss()  # (what launch.py started ahead is for a run of one host)
    why = hostnet.unavailable()
    if why:
        return None, f"a topology with [[host]] sections runs each host in a network namespace: {why}", 2
    cluster = Cluster(topology, out, duration_s)

    def on_signal(signum, frame):
        cluster.stop_reason = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    reason, code = "?", 1
    try:
        try:
            cluster.start()
            out.print(f"run {cluster.run.name}: {len(topology.hosts)} hosts ("
                      + ", ".join(f"{p.name} at {p.host.address}: run {p.run.name}" for p in cluster.procs)
                      + f") — directory {cluster.run.path}")
            reason, code = cluster.supervise()
        except _Stop:
            reason, code = cluster.stop_reason, 130 if "SIGINT" in cluster.stop_reason else 0
        except (HvstackError, OSError) as e:
            reason, code = f"launcher error: {e}", 1
        finally:
            cluster.finish(reason, code)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return cluster, reason, code
