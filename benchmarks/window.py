"""A stack path's latency over a window of steady state, as its floor is measured.

The floor's clients drop their first round trips (``IrqFloorClient``: 20 interrupts) and
measure the rest; a stack run's final status holds every round trip from the guest's boot
to its end.  For the interrupt paths that was not the same thing: a hundred ticks a second
over a 2 s run is ~200 samples, so its p99 is its second-worst — and the boot (the first
ticks arrive while the partition's Python is still warming up: 5–150 ms each in a run at
09:18 UTC) and the run's end (the guest's "workloads done" line, the last vp_stats) gave
those.  So these paths are read as the CPU figures are (``benchmarks/cpu.py``): the run is
started, its path's histograms read once the guest has taken :data:`WARMUP` of them, and
again a window later; the figure is the difference.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from proto.stats import Histogram, PathStats, bucket_upper

# Samples of the path the guest must have reported before the window opens: as many as
# the interrupt floor drops (benchmarks/floor.py IrqFloorClient.measure's warm-up).
WARMUP = 20


def histogram_since(before: Histogram, after: Histogram) -> Histogram:
    """What ``after`` recorded since ``before`` (an earlier state of the same histogram):
    counts subtract exactly; the extremes are those of the buckets left (a bucket is at
    most 1.6 % wide), since the exact ones may be older."""
    counts = {b: k - before.counts.get(b, 0) for b, k in after.counts.items()}
    counts = {b: k for b, k in counts.items() if k > 0}
    if not counts:
        return Histogram()
    lo_b, hi_b = min(counts), max(counts)
    lo = max(after.lo, bucket_upper(lo_b - 1) + 1 if lo_b else 0)
    return Histogram(counts, after.n - before.n, after.total - before.total, lo, min(after.hi, bucket_upper(hi_b)))


def path_since(before: PathStats | None, after: PathStats) -> PathStats:
    """A path's round trips (total and every stage) since ``before``."""
    if before is None:
        return after
    stages = [histogram_since(before.stages[i] if i < len(before.stages) else Histogram(), h)
              for i, h in enumerate(after.stages)]
    return PathStats(histogram_since(before.total, after.total), stages)


def paths_of(status: dict) -> dict[str, PathStats]:
    """The first partition's paths from a status reply."""
    return {k: PathStats.from_wire(v) for k, v in status["partitions"][0]["paths"].items()}


@contextmanager
def warmed_up(topology_text: str, path: str, warmup: int = WARMUP, timeout_s: float = 60.0):
    """A run of a one-partition bench topology until the stop (``duration_s = 0`` is put
    in its place by the caller), once its guest has reported ``warmup`` samples of
    ``path``: ``(the run, its paths then)``; the run stops when the block ends."""
    from root.testrun import start_run

    with tempfile.TemporaryDirectory(prefix="hvwindow") as d:
        config = Path(d) / "bench.toml"
        config.write_text(topology_text)
        run_root = Path(d) / "runs"
        run_root.mkdir(mode=0o700)
        run = start_run(config, run_root, 0, timeout_s)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                before = paths_of(run.stats())
                if path in before and before[path].total.n >= warmup:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: fewer than {warmup} samples within {timeout_s:g} s")
                time.sleep(0.05)
            yield run, before
        finally:
            run.stop()


def measure_stack_window(topology_text: str, window_s: float, path: str, warmup: int = WARMUP,
                         timeout_s: float = 60.0) -> dict[str, PathStats]:
    """Every path's round trips over ``window_s`` seconds of a run once it is warmed up
    (:func:`warmed_up`)."""
    with warmed_up(topology_text, path, warmup, timeout_s) as (run, before):
        time.sleep(window_s)
        after = paths_of(run.stats())
    return {k: path_since(before.get(k), v) for k, v in after.items()}
