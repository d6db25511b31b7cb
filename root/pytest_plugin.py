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

A run is a ``launch.py run …`` process and :class:`root.testrun.HvstackRun` its handle
(``run.io`` answers with the ``io`` command's own functions).  The floor is the benchmarks
package's, found through the ``hvstack.floor`` entry point when it is measured: root never
imports benchmarks.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from proto.stats import Histogram
from root.testrun import (DEFAULT_MIN_SAMPLES, DEFAULT_WAIT_S, START_TIMEOUT_S, HvstackRun, fmt_counts, tail,
                          launch_script, paths_of, start_run)

# The paths a partition's status reports (root.report labels them).
PATHS = ("io_port", "io_unclaimed", "cpuid", "msr", "hypercall")
# Which floor a path is held against: emulated paths make 4 hops, handled ones 2.
FOUR_HOP_PATHS = ("io_port", "mmio")
FLOOR_ATTEMPTS = 3

RUNS_KEY = pytest.StashKey[list]()
REPORTS_KEY = pytest.StashKey[dict]()
_session_floor: "Floor | None" = None

# What a test may import from here, besides the fixtures (which need no import).
__all__ = ["HvstackRun", "Floor", "assert_faster", "assert_ratio_to_floor", "assert_percentile", "launch_script",
           "measure_floor", "paths_of", "start_run"]


# ======================================================================================
# Statistics and the floor
# ======================================================================================


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
    # The floor is the benchmarks package's (which builds on root, never the reverse): it
    # offers its measurement through an entry point.
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="hvstack.floor") if ep.name == "measure"]
    if not found:
        raise ImportError("no hvstack.floor entry point: install hvstack (pip install -e .)")
    measure = found[0].load()

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
                                 f"got {fmt_counts(counts)}")
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
            text = tail(path)
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

    left, errors = {}, {}
    for run in runs:
        gone = run.stop()
        if gone:
            left[run.name] = gone
        if run.handler_errors and not run.fuzzed:
            errors[run.name] = run.handler_errors[:5]
    reports = request.node.stash.get(REPORTS_KEY, {})
    failed = bool(left) or bool(errors) or any(r.failed for r in reports.values())
    if not failed and not request.config.getoption("hvstack_keep_runs", False):
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    if left:
        raise AssertionError(f"processes of a run were still alive after it ended, and were killed: {left}")
    if errors:
        # A handler raised in a run nobody fuzzed: a bug of ours that the loops' guards
        # survived (and counted as handler_errors in status), so nothing else would show it.
        raise AssertionError(f"a handler raised in the hypervisor or a worker: {errors}")


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
