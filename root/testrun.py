"""A run started from a test: ``launch.py run CONFIG --duration 0`` in the background, and a
handle on it — its files, its statistics, a root's hand on its VPs, and a teardown that
leaves no process behind.  The pytest plugin (root.pytest_plugin) hands these out through
its ``hvstack_run`` fixture; nothing here needs pytest.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from proto.stats import PathStats, merge_paths
from root import REPO
from root.client import RootClient
from root.commands.io import result_line, run_ops
from root.procs import PR_SET_PDEATHSIG

DEFAULT_MIN_SAMPLES = 500
DEFAULT_WAIT_S = 60.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
ATTACH_TAIL_CHARS = 12000
# What the hypervisor's and the workers' loops log when a handler raised (their guard's
# line): a bug of ours, which fails a test whose run was not fuzzed (hvstack_run).
HANDLER_ERROR = "handler error:"


def handler_errors_in_logs(run_path: Path) -> list[str]:
    """The guards' lines in a run's process logs (``logs/*.log``): one per handler error
    logged (they are rate-limited, so at least the first of each burst)."""
    lines = []
    for p in sorted((run_path / "logs").glob("*.log")):
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        lines += [f"{p.name}: {line}" for line in text.splitlines() if HANDLER_ERROR in line]
    return lines


# ======================================================================================
# Finding launch.py
# ======================================================================================


def launch_script() -> Path:
    """hvstack's launch.py, which a run is started through: beside the root package (a
    checkout, an editable install and a wheel all put it there: pyproject's
    py-modules = ["launch"])."""
    script = REPO / "launch.py"
    if not script.is_file():
        raise RuntimeError(f"cannot find hvstack's launch.py beside the root package in {REPO} "
                           f"(is hvstack installed? `pip install -e .`)")
    return script


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM if the test process dies, so that a killed
    pytest does not leave a run behind (the launcher then ends its own processes)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _alive(handles: list[psutil.Process]) -> list[int]:
    out = []
    for h in handles:
        try:
            if h.is_running() and h.status() != psutil.STATUS_ZOMBIE:
                out.append(h.pid)
        except psutil.Error:
            pass
    return out


def tail(path: Path, limit: int = ATTACH_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else f"[… {len(text) - limit} characters before]\n" + text[-limit:]


# ======================================================================================
# A run
# ======================================================================================


class HvstackRun:
    """A live run started by ``hvstack_run``: its files, its statistics, and a root's hand
    on its VPs."""

    def __init__(self, proc: subprocess.Popen, run_root: Path, path: Path) -> None:
        self.proc = proc
        self.run_root = run_root
        self.path = path
        self._client = None
        self.ended: dict | None = None
        self.left_running: list[int] = []
        # Set by a test that sends hostile messages on purpose (the fuzzer): handler errors
        # are then counted results, not a failure of the teardown.
        self.fuzzed = False
        self.handler_errors: list[str] = []  # the guards' log lines, read at stop()

    def __repr__(self) -> str:
        return f"<HvstackRun {self.name} {'ended' if self.ended else 'running'}>"

    # -- what it is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name

    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def partitions(self) -> dict[str, int]:
        """Partition name → partition ID."""
        return {name: p["id"] for name, p in self.manifest().get("partitions", {}).items()}

    def partition_id(self, partition: str | int) -> int:
        if isinstance(partition, int):
            return partition
        parts = self.partitions
        if partition not in parts:
            raise KeyError(f"run {self.name} has no partition {partition!r} (it has {', '.join(parts)})")
        return parts[partition]

    def pids(self) -> list[int]:
        man = self.manifest()
        return [man["launcher_pid"], *(p["pid"] for p in man.get("processes", {}).values()),
                *(z["pid"] for z in man.get("zygotes", {}).values())]

    def files(self) -> dict[str, Path]:
        """Every file worth reading when something went wrong: the launcher's output, each
        process's log, each partition's console."""
        out = {"launcher output": self.run_root / "launcher.out", "launcher errors": self.run_root / "launcher.err"}
        for p in sorted((self.path / "logs").glob("*.log")):
            out[f"log {p.stem}"] = p
        for p in sorted(self.path.glob("console-*.log")):
            out[f"console {p.stem[len('console-'):]}"] = p
        return out

    # -- attach ----------------------------------------------------------------------------

    def client(self):
        """The root's client of this run's hypervisor (one, reused; closed at teardown)."""
        if self._client is None:
            man = self.manifest()
            self._client = RootClient(man["endpoint"], (self.path / "secret").read_text().strip(),
                                      server_key=man.get("server_key"))
        return self._client

    def stats(self) -> dict:
        """The hypervisor's status reply: partitions, VPs, exits, counters, path histograms."""
        if self.ended is not None:
            raise RuntimeError(f"run {self.name} has ended ({self.ended.get('reason', '?')})")
        return self.client().status()

    def io(self, partition: str | int, *ops, vp: int = 0) -> list[str]:
        """Execute instructions on behalf of a VP, as ``launch.py io`` does: ``run.io("alpha",
        "outb", "0x3ff", "0x5a", "inb", "0x3ff")`` → ``["OK", "OK 0x5a"]``.  An operation the
        hypervisor refuses gives an ``ERR CODE text`` line; a malformed one raises ValueError.
        One call is one io session (``wait_irq`` keeps what else it saw for the next
        ``irqs``)."""
        tokens = [str(t) for t in ops]
        if not tokens:
            raise ValueError("io needs at least one operation")
        return [result_line(r) for r in run_ops(self.client(), self.partition_id(partition), vp, tokens)]

    @contextlib.contextmanager
    def paused(self, partition: str | int):
        """Hold the partition's VPs at their next exit for the ``with`` block, as ``ctl pause``
        does, and resume them after: an ``io`` on a register the guest's workloads also use
        (the UART's scratch register, say) then reads back what it wrote."""
        pid = self.partition_id(partition)
        self.client().control(pid, "pause")
        try:
            yield
        finally:
            self.client().control(pid, "resume")

    def console(self, partition: str) -> str:
        """What the partition's console (its first UART) has printed so far."""
        p = self.path / f"console-{partition}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_for_console(self, partition: str, text: str, timeout: float = 30.0) -> str:
        """Wait until ``text`` appears on the partition's console; returns the console so
        far.  Fails with the last console text seen."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            seen = self.console(partition)
            if text in seen:
                return seen
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                why = f"the run ended (launcher exit {self.proc.returncode})" if self.proc.poll() is not None \
                    else f"within {timeout:g} s"
                shown = seen[-2000:] if seen else "(nothing)"
                raise AssertionError(f"{text!r} did not appear on partition {partition}'s console {why}; "
                                     f"the console so far:\n{shown}")
            time.sleep(0.05)

    def paths(self, partition: str | int | None = None, status: dict | None = None) -> dict[str, PathStats]:
        """Each path's statistics: of one partition, or merged over every partition."""
        return paths_of(self.stats() if status is None else status,
                        None if partition is None else self.partition_id(partition))

    def wait_for_samples(self, *paths: str, n: int = DEFAULT_MIN_SAMPLES, partition: str | int | None = None,
                         timeout: float = DEFAULT_WAIT_S) -> dict[str, PathStats]:
        """Wait until every one of ``paths`` has at least ``n`` samples; fails with the
        counts reached."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            got = self.paths(partition)
            counts = {p: got[p].total.n if p in got else 0 for p in paths}
            if all(c >= n for c in counts.values()):
                return got
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                why = f"the run ended (launcher exit {self.proc.returncode})" if self.proc.poll() is not None \
                    else f"waited {timeout:g} s"
                raise AssertionError(f"{why} for {n} samples of each of {', '.join(paths)} in run {self.name}; "
                                     f"got {fmt_counts(counts)}")
            time.sleep(0.25)

    def launch(self, *args: str, timeout: float = 60.0, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run a ``launch.py`` command (``status``, ``top``, ``stats``, ``io``…) against this
        run's directory: ``run.launch("stats", run.name, "--json")``."""
        env = dict(os.environ, HVSTACK_RUN_DIR=str(self.run_root))
        return subprocess.run([sys.executable, str(launch_script()), *args], env=env, capture_output=True,
                              text=True, timeout=timeout, input=stdin)

    # -- the end ---------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[int]:
        """End the run as Ctrl-C would (SIGTERM to the launcher), wait, and make sure that
        no process of it is left; returns the pids that had to be killed (none, normally)."""
        if self.ended is not None:
            return self.left_running
        if self._client is not None:
            self._client.close()
            self._client = None
        handles = []
        try:
            pids = self.pids()
        except (OSError, ValueError, KeyError):
            pids = [self.proc.pid]
        for pid in pids:
            try:
                handles.append(psutil.Process(pid))
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        left = _alive(handles)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = _alive(handles)
        for h in handles:
            if h.pid in left:
                try:
                    h.kill()
                except psutil.Error:
                    pass
        self.left_running = left
        self.handler_errors = handler_errors_in_logs(self.path)
        try:
            self.ended = self.manifest().get("ended", {})
        except (OSError, ValueError):
            self.ended = {}
        return left


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def start_run(config: Path, run_root: Path, duration: float = 0, timeout: float = START_TIMEOUT_S,
              extra: tuple = ()) -> HvstackRun:
    """``launch.py run CONFIG --duration D`` in the background, until its manifest says
    running.  The launcher's output goes to files in ``run_root`` (a pipe nobody reads
    would fill and stop the run)."""
    env = dict(os.environ, HVSTACK_RUN_DIR=str(run_root))
    script = launch_script()
    with open(run_root / "launcher.out", "wb") as out, open(run_root / "launcher.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), "run", str(config), "--duration", f"{duration:g}",
                                 *extra],
                                cwd=script.parent, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while True:
        for m in run_root.glob("*/manifest.json"):
            try:
                if json.loads(m.read_text()).get("state") == "running":
                    return HvstackRun(proc, run_root, m.parent)
            except (OSError, ValueError):
                pass  # being written
        if proc.poll() is not None or time.monotonic() >= deadline:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                why = f"did not start within {timeout:g} s"
            else:
                why = f"exited with status {proc.returncode}"
            logs = "".join(f"\n--- {log.name}\n{tail(log, 2000)}" for log in sorted(run_root.glob("*/logs/*.log")))
            raise RuntimeError(f"launch.py run {config} {why} (run directory kept in {run_root}):\n"
                               f"{tail(run_root / 'launcher.err', 4000)}{tail(run_root / 'launcher.out', 4000)}{logs}")
        time.sleep(0.05)


def paths_of(status: dict, partition: int | None = None) -> dict[str, PathStats]:
    """Each path's statistics in a status reply: one partition's, or all merged."""
    out: dict[str, PathStats] = {}
    for p in status["partitions"]:
        if partition is not None and p["id"] != partition:
            continue
        merge_paths(out, {name: PathStats.from_wire(wire) for name, wire in p["paths"].items()})
    return out
