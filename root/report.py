"""Reporting: the tables and lines a run, `status`, `top` and `stats` print.

They read the hypervisor's status by attribute (proto.status: ``HypervisorStatus.from_wire``
of the reply; a ``--json`` output prints the reply itself).  The vocabulary is proto.exits':
a path's label, its place in a table (:func:`path_order`) and its stage names come from
there, and a partition's exits are added up over its VPs in one place (:func:`exit_totals`).
"""

from __future__ import annotations

import sys

from proto.exits import Exit, label, order_key, stage_names
from proto.stats import Histogram, PathStats
from proto.status import HypervisorStatus, PartitionStatus


def us(ns: float) -> str:
    """Nanoseconds as microseconds with one decimal, for a table."""
    return f"{ns / 1000:.1f}"


def us_value(ns: float) -> float:
    """Nanoseconds as microseconds rounded to 3 decimals, for JSON."""
    return round(ns / 1000, 3)


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Columns as wide as their widest cell; ``align`` has an ``l`` or ``r`` per column
    (default: the first left, the rest right)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(row, widths, align))

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def exit_totals(part: PartitionStatus) -> dict[str, int]:
    """A partition's exits by reason, summed over its VPs (in the order the status has them)."""
    exits: dict[str, int] = {}
    for vp in part.vps:
        for k, v in vp.exits.items():
            exits[k] = exits.get(k, 0) + v
    return exits


def path_order(paths) -> list[str]:
    """Path names in the order every table lists them: proto.exits' (unknown ones last)."""
    return sorted(paths, key=order_key)


def path_rows(paths: dict[str, PathStats]) -> list[list[str]]:
    """One row per path of a partition's ``paths``: label, count, p50, p99, max (µs)."""
    rows = []
    for name in path_order(paths):
        t = paths[name].total
        rows.append([label(name), str(t.n), us(t.percentile(50)), us(t.percentile(99)), us(t.hi)])
    return rows


def stage_rows(paths: dict[str, PathStats], path: str = "io_port") -> list[list[str]]:
    """One row per stage of ``path`` (mean, p50, p99 in µs, share of the mean total), then
    the total; none when the path is missing or its stages are not the vocabulary's."""
    if path not in paths:
        return []
    st = paths[path]
    try:
        names = Exit(path).stages
    except ValueError:
        names = ()
    if len(names) != len(st.stages):
        return []
    total_mean = st.total.mean or 1
    rows = []
    for name, h in zip(names, st.stages):
        rows.append([name, us(h.mean), us(h.percentile(50)), us(h.percentile(99)), f"{100 * h.mean / total_mean:.0f}%"])
    rows.append(["total", us(st.total.mean), us(st.total.percentile(50)), us(st.total.percentile(99)), "100%"])
    return rows


def hist_summary(h: Histogram) -> dict:
    """count, percentiles, max and mean (µs) of one proto.stats.Histogram."""
    return {"count": h.n, "p50_us": us_value(h.percentile(50)), "p90_us": us_value(h.percentile(90)),
            "p99_us": us_value(h.percentile(99)), "p999_us": us_value(h.percentile(99.9)),
            "max_us": us_value(h.hi), "min_us": us_value(h.lo), "mean_us": us_value(h.mean)}


def path_summary(path: str, st: PathStats) -> dict:
    """A path's total and, for a multi-stage path, each stage's p50/p99/mean (µs)."""
    out = hist_summary(st.total)
    if len(st.stages) > 1:
        out["stages"] = {name: {"p50_us": us_value(h.percentile(50)), "p99_us": us_value(h.percentile(99)),
                                "mean_us": us_value(h.mean)}
                         for name, h in zip(stage_names(path, len(st.stages)), st.stages)}
    return out


def interrupt_line(p: PartitionStatus) -> str:
    """Interrupts delivered, by vector, and the exits each one cost the guest."""
    delivered, by_vector = 0, {}
    for vp in p.vps:
        delivered += vp.interrupts.injected
        for k, v in vp.interrupts.by_vector.items():
            by_vector[k] = by_vector.get(k, 0) + v
    if not delivered:
        return ""
    guest = p.guest
    taken = guest.get("interrupts", 0)
    per = f"; {guest.get('handler_exits', 0) / taken:.2f} exits per interrupt in handlers" if taken else ""
    ticks = f"; {guest['ticks']} timer ticks" if guest.get("ticks") else ""
    # Lost: the platform dropped ticks that fell while one was in service.  Stopped: the
    # periods VP 0 slept with its tick stopped (NO_HZ idle, partitions/tick.py).
    parts = [f"{guest[k]} {word}" for k, word in (("lost_ticks", "lost"), ("idle_ticks", "with the tick stopped"))
             if guest.get(k)]
    if parts:
        ticks += f" ({guest.get('tick_interrupts', 0)} taken, {', '.join(parts)})"
    vectors = ", ".join(f"{k}: {v}" for k, v in sorted(by_vector.items()))
    return f"interrupts: {delivered} delivered ({vectors}){per}{ticks}"


def spinlock_line(p: PartitionStatus, duration_s: float) -> str:
    g = p.guest
    if not g.get("acquisitions"):
        return ""
    rate = g["acquisitions"] / duration_s if duration_s else 0
    return (f"spinlock: {g['acquisitions']} acquisitions ({rate:.0f}/s), {g.get('spin_ns', 0) / 1e6:.0f} ms "
            f"spinning, {g.get('spin_notifies', 0)} long-spin-wait notifications")


def scheduler_line(p: PartitionStatus) -> str:
    vps = [vp.sched for vp in p.vps if vp.sched is not None]
    if not vps:
        return ""
    run = sum(v.run_s for v in vps)
    wait = sum(v.wait_s for v in vps)
    return (f"scheduler: {run:.2f} s on LPs, {wait:.2f} s waiting for one, "
            f"{sum(v.dispatches for v in vps)} dispatches, {sum(v.preemptions for v in vps)} quantum ends, "
            f"{sum(v.yields for v in vps)} yields"
            + (f", {forced} forced preemptions (quantum + grace overrun)" if (forced := sum(v.forced for v in vps)) else ""))


# Multi-stage paths whose stages a run's report breaks down, and the title of each.
STAGE_TABLES = (("io_port", "emulated port I/O"), ("interrupt", "interrupt path"))


class Output:
    """What a run prints while it goes: its start, console lines, and the final report."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def print(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def started(self, run) -> None:
        self.print(f"run {run.run.name}: {len(run.topology.partitions)} partition(s), "
                   f"{run.topology.logical_processors} LPs — directory {run.run.path}")

    def console(self, partition: str, line: str) -> None:
        self.print(f"  {partition:>12} | {line}")

    def report(self, run, status: HypervisorStatus | None) -> None:
        """Per partition: its exits, each path's round trip, the stages of the emulated and
        interrupt paths, and its interrupt, spinlock and scheduler lines."""
        if not status:
            return
        names = {v: k for k, v in run.partition_ids.items()}
        for p in status.partitions:
            name = names.get(p.id, str(p.id))
            exits = exit_totals(p)
            self.print()
            self.print(f"partition {name} (id {p.id}, {len(p.vps)} VPs, privileges {p.privileges:#x}, "
                       f"hypercall page {'on' if p.hypercalls_enabled else 'off'})")
            self.print("  exits: " + ", ".join(f"{k} {v}" for k, v in exits.items() if v))
            rows = path_rows(p.paths)
            if rows:
                self.print(indent(table(["path", "count", "p50 µs", "p99 µs", "max µs"], rows)))
            for path, title in STAGE_TABLES:
                srows = stage_rows(p.paths, path)
                if srows:
                    self.print(f"  {title}, per stage:")
                    self.print(indent(table(["stage", "mean µs", "p50 µs", "p99 µs", "share"], srows), 4))
            for line in (interrupt_line(p), spinlock_line(p, run.duration), scheduler_line(p)):
                if line:
                    self.print("  " + line)
