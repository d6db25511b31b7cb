"""hvstack's pytest plugin: start a topology inside a test, drive it, assert on its timings.

Installing hvstack registers it (entry point ``pytest11``: ``hvstack``), so a user's tests
get, with no conftest:

- ``hvstack_run`` — a factory: ``run = hvstack_run("topology.toml")`` or
  ``hvstack_run(toml="…")`` starts ``launch.py run … --duration 0`` and returns a
  :class:`HvstackRun`; every run a test started is torn down after it (SIGTERM to the
  launcher, wait, and no process of the run may be left), and when the test fails its
  logs and consoles are attached to the report.
- ``hvstack_floor`` — session-scoped: the pure-pyzmq floor (benchmarks/floor.py), measured
  once per session, for :func:`assert_ratio_to_floor`.
- :func:`assert_faster`, :func:`assert_ratio_to_floor`, :func:`assert_percentile` —
  timing assertions meant to hold on a noisy machine: each waits (with a timeout) until
  every path it reads has enough samples, compares figures measured together rather than
  against this machine's absolute speed where it can, and fails with the figures it saw.

Runs are started as ``launch.py run …`` processes; ``run.io`` answers with the ``io``
command's own functions (root.commands.io).  benchmarks (for the floor) is imported only
when the floor is measured: root never depends on benchmarks at import time.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from proto.errors import Refused
from proto.stats import Histogram, PathStats
from root import REPO
from root.client import RootClient
from root.commands.io import parse_ops, run_op

# The paths a partition's status reports (root.report labels them).
PATHS = ("io_port", "io_unclaimed", "cpuid", "msr", "hypercall")
# Which floor a path is held against: emulated paths make 4 hops, handled ones 2.
FOUR_HOP_PATHS = ("io_port", "mmio")
DEFAULT_MIN_SAMPLES = 500
DEFAULT_WAIT_S = 60.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
ATTACH_TAIL_CHARS = 12000
FLOOR_ATTEMPTS = 3

RUNS_KEY = pytest.StashKey[list]()
REPORTS_KEY = pytest.StashKey[dict]()
_session_floor: "Floor | None" = None


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
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
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


def _tail(path: Path, limit: int = ATTACH_TAIL_CHARS) -> str:
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
        return [man["launcher_pid"], *(p["pid"] for p in man.get("processes", {}).values())]

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
            self._client = RootClient(man["endpoint"], (self.path / "secret").read_text().strip())
        return self._client

    def stats(self) -> dict:
        """The hypervisor's status reply: partitions, VPs, exits, counters, path histograms."""
        if self.ended is not None:
            raise RuntimeError(f"run {self.name} has ended ({self.ended.get('reason', '?')})")
        return self.client().status()

    def io(self, partition: str | int, *ops, vp: int = 0) -> list[str]:
        """Execute instructions on behalf of a VP, as ``launch.py io`` does: ``run.io("alpha",
        "outb", "0x3ff", "0x5a", "inb", "0x3ff")`` → ``["OK", "OK 0x5a"]``.  An operation the
        hypervisor refuses gives an ``ERR …`` line; a malformed one raises ValueError."""
        tokens = [str(t) for t in ops]
        parsed = parse_ops(tokens)
        if not parsed:
            raise ValueError("io needs at least one operation")
        pid = self.partition_id(partition)
        out = []
        for op, operands in parsed:
            try:
                out.append(run_op(self.client(), pid, vp, op, operands))
            except (ValueError, Refused) as e:
                out.append(f"ERR {e}")
        return out

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
                                     f"got {_fmt_counts(counts)}")
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
        try:
            self.ended = self.manifest().get("ended", {})
        except (OSError, ValueError):
            self.ended = {}
        return left


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def start_run(config: Path, run_root: Path, duration: float = 0, timeout: float = START_TIMEOUT_S) -> HvstackRun:
    """``launch.py run CONFIG --duration D`` in the background, until its manifest says
    running.  The launcher's output goes to files in ``run_root`` (a pipe nobody reads
    would fill and stop the run)."""
    env = dict(os.environ, HVSTACK_RUN_DIR=str(run_root))
    script = launch_script()
    with open(run_root / "launcher.out", "wb") as out, open(run_root / "launcher.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), "run", str(config), "--duration", f"{duration:g}"],
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
            logs = "".join(f"\n--- {log.name}\n{_tail(log, 2000)}" for log in sorted(run_root.glob("*/logs/*.log")))
            raise RuntimeError(f"launch.py run {config} {why} (run directory kept in {run_root}):\n"
                               f"{_tail(run_root / 'launcher.err', 4000)}{_tail(run_root / 'launcher.out', 4000)}{logs}")
        time.sleep(0.05)


# ======================================================================================
# Statistics and the floor
# ======================================================================================


def paths_of(status: dict, partition: int | None = None) -> dict[str, PathStats]:
    """Each path's statistics in a status reply: one partition's, or all merged."""
    out: dict[str, PathStats] = {}
    for p in status["partitions"]:
        if partition is not None and p["id"] != partition:
            continue
        for name, wire in p["paths"].items():
            out.setdefault(name, PathStats()).merge(PathStats.from_wire(wire))
    return out


@dataclass
class Floor:
    """The pure-pyzmq floor's round trips, keyed as benchmarks.bench.measure_floor keys
    them: 4 (hops), 2, and maybe "irq"."""

    hists: dict

    def key_for(self, path: str):
        if path == "interrupt" and "irq" in self.hists:
            return "irq"
        return 4 if path in FOUR_HOP_PATHS else 2

    def for_path(self, path: str) -> Histogram:
        return self.hists[self.key_for(path)]


def measure_floor(samples: int = 3000) -> Floor:
    """Measure the floor now, with benchmarks.bench's own relay (the same one `bench`
    uses)."""
    from benchmarks.bench import measure_floor as measure

    # Any further required argument (a sample count for another kind of floor) gets a
    # tenth of the samples.
    extra = [p for p in list(inspect.signature(measure).parameters.values())[1:] if p.default is p.empty]
    args = (samples, *([max(200, samples // 10)] * len(extra)))
    # The relay's peers start as separate processes; on a loaded machine one can miss the
    # first request (the relay then gives up), so a failed measurement is tried again.
    for attempt in range(FLOOR_ATTEMPTS):
        try:
            return Floor(measure(*args))
        except (RuntimeError, OSError) as e:
            if attempt == FLOOR_ATTEMPTS - 1:
                raise RuntimeError(f"the floor could not be measured in {FLOOR_ATTEMPTS} attempts: {e}") from e
    raise AssertionError("unreachable")


def _pct(p: float) -> str:
    return f"p{p:g}"


def _us(ns: float) -> str:
    return f"{ns / 1000:.1f} µs"


def _gather(source, paths: tuple[str, ...], partition, min_samples: int, timeout: float) -> dict[str, Histogram]:
    """The round-trip histograms of ``paths`` from a run (waiting, up to ``timeout``, for
    ``min_samples`` each), a status dict, or anything with a ``stats()`` method."""
    __tracebackhide__ = True
    if isinstance(source, HvstackRun):
        got = source.wait_for_samples(*paths, n=min_samples, partition=partition, timeout=timeout)
    else:
        status = source if isinstance(source, dict) else source.stats()
        if partition is not None and not isinstance(partition, int):
            raise TypeError("with a status dict, name the partition by its ID")
        got = paths_of(status, partition)
        counts = {p: got[p].total.n if p in got else 0 for p in paths}
        if any(c < min_samples for c in counts.values()):
            raise AssertionError(f"need {min_samples} samples of each of {', '.join(paths)}; "
                                 f"got {_fmt_counts(counts)}")
    return {p: got[p].total for p in paths}


def assert_faster(run, path_a: str, path_b: str, percentile: float = 50, *, partition: str | int | None = None,
                  min_samples: int = DEFAULT_MIN_SAMPLES, timeout: float = DEFAULT_WAIT_S) -> dict:
    """``path_a``'s round trip is shorter than ``path_b``'s at ``percentile``.  Both are read
    from one status reply, so whatever load the machine has weighs on both.  Returns the
    figures (ns)."""
    __tracebackhide__ = True
    h = _gather(run, (path_a, path_b), partition, min_samples, timeout)
    a, b = h[path_a].percentile(percentile), h[path_b].percentile(percentile)
    figures = {path_a: a, path_b: b}
    if not a < b:
        raise AssertionError(
            f"{path_a} is not faster than {path_b} at {_pct(percentile)}: {path_a} {_us(a)} "
            f"({h[path_a].n} samples) vs {path_b} {_us(b)} ({h[path_b].n} samples)")
    return figures


def assert_ratio_to_floor(run, path: str, at_most: float, percentile: float = 50, *, floor: Floor | None = None,
                          partition: str | int | None = None, min_samples: int = DEFAULT_MIN_SAMPLES,
                          timeout: float = DEFAULT_WAIT_S) -> float:
    """``path``'s round trip at ``percentile`` is at most ``at_most`` times the floor's (the
    pure-pyzmq relay with the same hop count, measured in this session by the
    ``hvstack_floor`` fixture, or ``floor=``).  Returns the ratio."""
    __tracebackhide__ = True
    floor = floor or _session_floor
    if floor is None:
        raise RuntimeError("assert_ratio_to_floor needs the floor: add the hvstack_floor fixture to the "
                           "test's arguments (it is measured once per session, before any run starts)")
    h = _gather(run, (path,), partition, min_samples, timeout)[path]
    f = floor.for_path(path)
    stack_ns, floor_ns = h.percentile(percentile), f.percentile(percentile)
    if floor_ns <= 0:
        raise AssertionError(f"the floor for {path} has no samples")
    ratio = stack_ns / floor_ns
    if ratio > at_most:
        key = floor.key_for(path)
        raise AssertionError(
            f"{path} {_pct(percentile)} is {ratio:.2f}× its floor, more than the {at_most:g}× allowed: "
            f"stack {_us(stack_ns)} ({h.n} samples), floor ({key} hops) {_us(floor_ns)} ({f.n} samples)")
    return ratio


def assert_percentile(run, path: str, percentile: float, under_ms: float, *, partition: str | int | None = None,
                      min_samples: int = DEFAULT_MIN_SAMPLES, timeout: float = DEFAULT_WAIT_S) -> float:
    """``path``'s round trip at ``percentile`` is under ``under_ms`` milliseconds (an
    absolute bound: keep it generous).  Returns the value in ms."""
    __tracebackhide__ = True
    h = _gather(run, (path,), partition, min_samples, timeout)[path]
    ms = h.percentile(percentile) / 1e6
    if not ms < under_ms:
        raise AssertionError(f"{path} {_pct(percentile)} is {ms:.3f} ms, not under {under_ms:g} ms "
                             f"({h.n} samples; p50 {h.percentile(50) / 1e6:.3f} ms, max {h.hi / 1e6:.3f} ms)")
    return ms


# ======================================================================================
# pytest hooks and fixtures
# ======================================================================================


def pytest_addoption(parser) -> None:
    group = parser.getgroup("hvstack", "hvstack runs started by tests")
    group.addoption("--hvstack-keep-runs", action="store_true", default=False,
                    help="keep the run directories of passing tests too (failing ones are always kept)")
    group.addoption("--hvstack-floor-samples", type=int, default=3000,
                    help="round trips per floor for the hvstack_floor fixture (default 3000)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    item.stash.setdefault(REPORTS_KEY, {})[rep.when] = rep
    runs = item.stash.get(RUNS_KEY, [])
    if not rep.failed or not runs:
        return
    for run in runs:
        state = "ended: " + run.ended.get("reason", "?") if run.ended is not None else "running"
        lines = [f"run directory: {run.path}", f"state: {state}"]
        if run.left_running:
            lines.append(f"left running (killed): {run.left_running}")
        rep.sections.append((f"hvstack run {run.name}", "\n".join(lines)))
        for label, path in run.files().items():
            text = _tail(path)
            if text.strip():
                rep.sections.append((f"hvstack {run.name}: {label}", text))


@pytest.fixture
def hvstack_run(request):
    """A factory: ``run = hvstack_run("topology.toml")`` or ``hvstack_run(toml="…")`` starts a
    run (until stopped) and returns it; every run is torn down after the test."""
    runs: list[HvstackRun] = []
    roots: list[Path] = []
    request.node.stash[RUNS_KEY] = runs

    def start(config: str | os.PathLike | None = None, *, toml: str | None = None, duration: float = 0,
              timeout: float = START_TIMEOUT_S) -> HvstackRun:
        if (config is None) == (toml is None):
            raise TypeError("hvstack_run takes a topology file or toml='…', one of them")
        # ipc socket paths are at most 107 bytes: pytest's tmp_path is often deeper than that.
        root = Path(tempfile.mkdtemp(prefix="hvp"))
        roots.append(root)
        if toml is not None:
            path = root / "topology.toml"
            path.write_text(toml)
        else:
            path = _resolve(Path(config), request)
        run = start_run(path, root, duration, timeout)
        runs.append(run)
        return run

    yield start

    left = {}
    for run in runs:
        gone = run.stop()
        if gone:
            left[run.name] = gone
    reports = request.node.stash.get(REPORTS_KEY, {})
    failed = bool(left) or any(r.failed for r in reports.values())
    if not failed and not request.config.getoption("hvstack_keep_runs", False):
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    if left:
        raise AssertionError(f"processes of a run were still alive after it ended, and were killed: {left}")


def _resolve(config: Path, request) -> Path:
    if config.is_absolute():
        return config
    for base in (Path.cwd(), request.config.rootpath, Path(request.node.path).parent):
        if (base / config).is_file():
            return (base / config).resolve()
    raise FileNotFoundError(f"no topology {config} (looked in the current directory, the rootdir and the test's)")


@pytest.fixture(scope="session")
def hvstack_floor(request) -> Floor:
    """The pure-pyzmq floor, measured once per session (session fixtures are set up before
    a test's own, so before its runs start and compete for the cores)."""
    global _session_floor
    samples = request.config.getoption("hvstack_floor_samples", 3000)
    try:
        floor = measure_floor(samples)
    except ImportError as e:
        pytest.skip(f"hvstack's benchmarks package is not importable, so there is no floor: {e}")
    _session_floor = floor
    yield floor
    _session_floor = None
