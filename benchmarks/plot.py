"""``python launch.py bench --plot FILE.png``: each path's latency histogram and CDF, the
stack beside its floor, as one picture.

matplotlib is an optional extra (``pip install -e '.[plot]'``); nothing here imports it
until a plot is drawn, and ``require_matplotlib`` says how to get it before a bench runs.
The histograms are proto.stats ones: counts by log-linear bucket, each read at its upper
edge (``bucket_upper``) as the percentiles are, then re-binned on a log axis.
"""

from __future__ import annotations

import bisect
import math

from proto.stats import Histogram, PathStats, bucket_upper

INSTALL_HINT = "pip install -e '.[plot]'"
STACK_COLOR = "#c0392b"
FLOOR_COLOR = "#2e6da4"
BINS = 60


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> None:
    """Raise PlotUnavailable with the install command if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise PlotUnavailable(f"needs matplotlib, which is not installed: {INSTALL_HINT}") from e


def plot_formats() -> list[str]:
    """The file types matplotlib can write (by suffix), without choosing a backend."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def values_us(h: Histogram) -> tuple[list[float], list[int]]:
    """Each non-empty bucket's value (its upper edge, capped at the maximum seen) in µs, and
    its count, in increasing order."""
    xs, ks = [], []
    for b in sorted(h.counts):
        k = h.counts[b]
        if k:
            xs.append(min(bucket_upper(b), h.hi) / 1000)
            ks.append(k)
    return xs, ks


def log_bins(lo_us: float, hi_us: float, n: int = BINS) -> list[float]:
    lo, hi = math.log10(max(lo_us, 0.001)), math.log10(max(hi_us, lo_us * 1.01, 0.002))
    return [10 ** (lo + (hi - lo) * i / n) for i in range(n + 1)]


def binned_percent(h: Histogram, edges_us: list[float]) -> list[float]:
    """The % of ``h``'s samples in each bin between ``edges_us``, each bucket's count spread
    evenly over the values it covers (so bins that catch one bucket or two do not alternate
    in height)."""
    out = [0.0] * (len(edges_us) - 1)
    n = sum(h.counts.values()) or 1
    for b, k in h.counts.items():
        lo = (bucket_upper(b - 1) + 1 if b > 0 else 0) / 1000
        hi = (bucket_upper(b) + 1) / 1000
        i = max(0, bisect.bisect_right(edges_us, lo) - 1)
        while i < len(out) and edges_us[i] < hi:
            overlap = min(hi, edges_us[i + 1]) - max(lo, edges_us[i])
            if overlap > 0:
                out[i] += 100 * k / n * overlap / (hi - lo)
            i += 1
    return out


def cdf(h: Histogram) -> tuple[list[float], list[float]]:
    xs, ks = values_us(h)
    total, seen, ys = sum(ks) or 1, 0, []
    for k in ks:
        seen += k
        ys.append(seen / total)
    return xs, ys


def _total(v) -> Histogram | None:
    """A path's round-trip histogram from what bench has: wire stats, PathStats or a Histogram."""
    if v is None or isinstance(v, Histogram):
        return v
    if isinstance(v, PathStats):
        return v.total
    return PathStats.from_wire(v).total


def _floor_legend(key, h: Histogram) -> str:
    hops = {"irq": "2 hops one way", "irqbusy": "2 hops one way, to a computing client",
            "timer": "1 hop one way, after a timer"}.get(key, f"{key} hops")
    return f"floor, {hops} ({h.n} samples)"


def plot(path: str, paths: dict, floor: dict, spec=None) -> list[str]:
    """What ``bench --plot`` calls: ``paths`` as the status reply has them (name → wire
    stats), ``floor`` keyed as bench.PATHS names each path's floor."""
    if spec is None:
        from benchmarks.bench import PATHS as spec
    return write_plot(path, {k: _total(v) for k, v in paths.items()}, floor, spec)


def write_plot(path: str, stack: dict[str, Histogram], floor: dict, paths: tuple[tuple[str, object, str], ...]) -> list[str]:
    """Draw one row per path (histogram | CDF, the stack and its floor on each) into
    ``path``; returns the names of the paths drawn."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def us_axis(ax) -> None:
        # Ticks at 1, 2 and 5 of each decade, as plain µs: "200", not "2×10²".
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())

    rows = [(name, hops, label) for name, hops, label in paths
            if stack.get(name) is not None and stack[name].n and floor.get(hops) is not None]
    if not rows:
        raise ValueError("the bench measured no path to plot")
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 3.6 * len(rows)), squeeze=False)
    fig.suptitle("hvstack bench: each path's latency, the stack beside its pure-pyzmq floor", fontsize=13)
    for (name, hops, label), (ax_h, ax_c) in zip(rows, axes):
        s, f = stack[name], floor[hops]
        series = ((f"stack ({s.n} samples)", s, STACK_COLOR), (_floor_legend(hops, f), f, FLOOR_COLOR))
        lo = min(min(values_us(h)[0]) for _, h, _ in series if h.n)
        hi = max(max(values_us(h)[0]) for _, h, _ in series if h.n)
        bins = log_bins(lo * 0.95, hi * 1.05)
        for legend, h, color in series:
            if not h.n:
                continue
            heights = binned_percent(h, bins)
            ax_h.stairs(heights, bins, fill=True, alpha=0.35, color=color, label=legend)
            ax_h.stairs(heights, bins, color=color, linewidth=1.2)
            for p, style in ((50, "-"), (99, ":")):
                ax_h.axvline(h.percentile(p) / 1000, color=color, linestyle=style, linewidth=1.2)
            cx, cy = cdf(h)
            ax_c.step(cx, cy, where="post", color=color, linewidth=1.6,
                      label=f"{legend.split(' (')[0]}: p50 {h.percentile(50) / 1000:.1f} µs, "
                            f"p99 {h.percentile(99) / 1000:.1f} µs")
        ratio = s.percentile(50) / f.percentile(50) if f.n and f.percentile(50) else float("nan")
        ax_h.set_title(f"{label}: p50 {ratio:.2f}× its floor  (solid: p50, dotted: p99)", fontsize=10)
        us_axis(ax_h)
        ax_h.set_xlabel("latency (µs, log scale)")
        ax_h.set_ylabel("% of samples")
        ax_h.legend(fontsize=8, loc="upper right")
        ax_h.grid(True, which="both", alpha=0.25)
        ax_c.set_title(f"{label}: cumulative distribution", fontsize=10)
        us_axis(ax_c)
        ax_c.set_xlabel("latency (µs, log scale)")
        ax_c.set_ylabel("fraction of samples ≤ x")
        ax_c.set_ylim(0, 1.01)
        for q in (0.5, 0.99):
            ax_c.axhline(q, color="grey", linestyle="--", linewidth=0.8)
        ax_c.legend(fontsize=8, loc="lower right")
        ax_c.grid(True, which="both", alpha=0.25)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [name for name, _, _ in rows]


def plot_scale(path: str, rows: list[dict]) -> None:
    """``bench --scale --plot``: aggregate round trips per second against N, the stack's and
    the floor's (the median pair's), the CPU per round trip of each, and every pair's
    ratio beside the goal (0.8)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("the bench measured no partition count to plot")
    ns = [r["n"] for r in rows]
    fig, (ax, ax_cpu, ax_ratio) = plt.subplots(1, 3, figsize=(15, 4))
    fig.suptitle("hvstack bench --scale: N partitions × 1 VP of emulated port I/O, beside the floor", fontsize=11)
    for key, label, color in (("stack", "stack", STACK_COLOR), ("floor", "floor (N clients → relay → N echoes)",
                                                                 FLOOR_COLOR)):
        ax.plot(ns, [r[key]["per_s"] for r in rows], marker="o", color=color, label=label)
        ax_cpu.plot(ns, [r[key]["cpu_us_per_round_trip"] for r in rows], marker="o", color=color, label=label)
    for r in rows:  # every pair of windows: the spread is the host's, the median the row's
        ratios = r.get("ratios") or [r["ratio"]]
        ax_ratio.scatter([r["n"]] * len(ratios), ratios, color=STACK_COLOR, alpha=0.5, s=18)
    ax_ratio.plot(ns, [r["ratio"] for r in rows], marker="o", color=STACK_COLOR, label="stack / floor (median pair)")
    ax_ratio.axhline(0.8, color=FLOOR_COLOR, linestyle="--", linewidth=1, label="goal 0.8")
    for a, title, ylabel in ((ax, "aggregate round trips per second", "round trips / s"),
                             (ax_cpu, "CPU per round trip (all processes)", "µs"),
                             (ax_ratio, "stack / floor, each pair of windows", "ratio")):
        a.set_xscale("log", base=2)
        a.set_xticks(ns)
        a.set_xticklabels([str(n) for n in ns])
        a.set_xlabel("partitions (N)")
        a.set_ylabel(ylabel)
        a.set_title(title, fontsize=10)
        a.set_ylim(bottom=0)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=80)
    plt.close(fig)
