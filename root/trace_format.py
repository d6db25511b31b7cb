"""What `launch.py trace` (root.commands.trace) makes of the hypervisor's ``trace_event`` stream.

Each event is one exit as the hypervisor saw it, with the ``perf_counter_ns`` stamps its
hops appended (CLOCK_MONOTONIC, so stamps from different processes compare).  This module
names the stages between consecutive stamps, turns an event into a record (for text, CSV
and JSON lines) and keeps a per-reason summary as ``perf kvm stat report`` prints one:
samples, share of samples and of time, min/avg/p50/p99/max of each event's total (first
stamp to last).  Nothing here touches a socket.

Beside the exits, `trace` shows the VSP process's VMBus events (root/vsp/events.py: channel
offered/opened/closed/rescinded, GPADLs, refusals with their reason, sampled signal
counts, MACs the switch learned) as records of reason ``vmbus``; the summary counts them
by event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto.exits import EMULATED_STAGES, HANDLED_STAGES, INTERRUPT_STAGES, Exit, order_key
from proto.stats import Histogram

# Reasons whose event is an access with a direction (event.write).
ACCESS_REASONS = frozenset(p.value for p in Exit if p.is_access)
# Every stage name an event can have, in path order: the CSV's stage columns.
STAGE_COLUMNS = tuple(dict.fromkeys((*EMULATED_STAGES[:-1], *HANDLED_STAGES[:-1], *INTERRUPT_STAGES[:-1])))


def stage_names(reason: str, n_stamps: int) -> tuple[str, ...]:
    """Names of the ``n_stamps - 1`` stages of an event.

    The hypervisor traces an exit before it resumes the VP, so the last hop (hv→guest, or
    hv→guest handler for an interrupt) is never in the stamps.  A port or MMIO access the
    root made through `io` has no guest stamp: its stages start at hv dispatch.
    """
    k = max(0, n_stamps - 1)
    path = Exit._value2member_map_.get(reason)
    names = path.stages[:-1] if path is not None else ()
    if path is not None and path.stages is EMULATED_STAGES and n_stamps < 6:
        names = EMULATED_STAGES[1:-1]
    names = tuple(names[:k])
    return names + tuple(f"stage {i + 1}" for i in range(len(names), k))


def slug(stage: str) -> str:
    """A stage name as a CSV/identifier-friendly column: ``guest→hv`` → ``guest_to_hv_us``."""
    return stage.replace("→", "_to_").replace(" ", "_").lower() + "_us"


def _us(ns: float) -> float:
    return round(ns / 1000, 3)


def event_record(ev, names: dict[int, str], t0_ns: int) -> dict:
    """One ``trace_event`` as a JSON-ready dict.  ``t`` is seconds since ``t0_ns`` (the
    trace's start) at the event's last stamp, when the hypervisor recorded it."""
    stamps = list(ev.stamps)
    t = max(0, stamps[-1] - t0_ns) / 1e9 if stamps else 0.0
    stages = {name: _us(b - a) for name, a, b in zip(stage_names(ev.reason, len(stamps)), stamps, stamps[1:])}
    return {
        "t": round(t, 6),
        "partition": names.get(ev.partition, str(ev.partition)),
        "partition_id": ev.partition,
        "vp": ev.vp,
        "reason": ev.reason,
        "a": f"{ev.a:#x}",
        "b": f"{ev.b:#x}",
        "direction": ("write" if ev.write else "read") if ev.reason in ACCESS_REASONS else None,
        "total_ns": stamps[-1] - stamps[0] if len(stamps) > 1 else 0,
        "total_us": _us(stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0,
        "stages_us": stages,
        "stamps": stamps,
    }


TEXT_HEADER = f"{'time s':>11}  {'partition':<12} {'vp':>3}  {'reason':<12} {'port/gpa/leaf':>13} " \
              f"{'value':>18}  {'dir':<5} {'total µs':>9}  stages µs"


def text_line(rec: dict) -> str:
    stages = "  ".join(f"{k} {v:.1f}" for k, v in rec["stages_us"].items())
    return (f"{rec['t']:11.6f}  {rec['partition']:<12} {rec['vp']:>3}  {rec['reason']:<12} {rec['a']:>13} "
            f"{rec['b']:>18}  {rec['direction'] or '-':<5} {rec['total_us']:9.1f}  {stages}")


VMBUS_REASON = "vmbus"
# A VMBus event's fields that are not its details.
_VMBUS_KEYS = frozenset(("ns", "partition", "event"))


def vmbus_record(ev: dict, names: dict[int, str], t0_ns: int) -> dict:
    """One line of the VSP's events file (root/vsp/events.py) as a JSON-ready dict, on the
    same time axis as :func:`event_record`."""
    ns = ev.get("ns")
    details = {k: v for k, v in ev.items() if k not in _VMBUS_KEYS}
    return {"t": round(max(0, ns - t0_ns) / 1e9, 6) if isinstance(ns, int) else 0.0,
            "partition": names.get(ev["partition"], str(ev["partition"])) if ev["partition"] else "root",
            "partition_id": ev["partition"], "reason": VMBUS_REASON, "event": ev["event"], "details": details}


def vmbus_details(rec: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in rec["details"].items())


def vmbus_text_line(rec: dict) -> str:
    return (f"{rec['t']:11.6f}  {rec['partition']:<12} {'-':>3}  {VMBUS_REASON:<12} {rec['event']:<16} "
            f"{vmbus_details(rec)}")


def vmbus_csv_row(rec: dict) -> list:
    """``a`` is the event, ``b`` its details; no stages."""
    return [f"{rec['t']:.6f}", rec["partition"], "", VMBUS_REASON, rec["event"], vmbus_details(rec), "", "",
            *("" for _ in STAGE_COLUMNS)]


CSV_FIELDS = ("time_s", "partition", "vp", "reason", "a", "b", "direction", "total_us",
              *(slug(s) for s in STAGE_COLUMNS))


def csv_row(rec: dict) -> list:
    stages = {slug(k): v for k, v in rec["stages_us"].items()}
    return [f"{rec['t']:.6f}", rec["partition"], rec["vp"], rec["reason"], rec["a"], rec["b"],
            rec["direction"] or "", rec["total_us"], *(stages.get(slug(s), "") for s in STAGE_COLUMNS)]


@dataclass
class TraceSummary:
    """Per-reason histograms of event totals (bounded memory however long the trace)."""

    by_reason: dict[str, Histogram] = field(default_factory=dict)
    vmbus: dict[str, int] = field(default_factory=dict)  # VMBus events by event

    def add_vmbus(self, event: str) -> None:
        self.vmbus[event] = self.vmbus.get(event, 0) + 1

    def add(self, reason: str, total_ns: int) -> None:
        h = self.by_reason.get(reason)
        if h is None:
            h = self.by_reason[reason] = Histogram()
        h.record(total_ns)

    @property
    def samples(self) -> int:
        return sum(h.n for h in self.by_reason.values())

    @property
    def total_ns(self) -> int:
        return sum(h.total for h in self.by_reason.values())

    def _order(self) -> list[str]:
        return sorted(self.by_reason, key=lambda r: (-self.by_reason[r].n, order_key(r), r))

    def rows(self) -> dict[str, dict]:
        """reason → samples, samples_pct, time_pct, min/avg/p50/p99/max/total (µs), most
        samples first."""
        n, total = self.samples or 1, self.total_ns or 1
        out = {}
        for r in self._order():
            h = self.by_reason[r]
            out[r] = {"samples": h.n, "samples_pct": round(100 * h.n / n, 2),
                      "time_pct": round(100 * h.total / total, 2), "min_us": _us(h.lo), "avg_us": _us(h.mean),
                      "p50_us": _us(h.percentile(50)), "p99_us": _us(h.percentile(99)), "max_us": _us(h.hi),
                      "total_us": _us(h.total)}
        return out

    def to_json(self, **extra) -> dict:
        return {**extra, "total_samples": self.samples, "total_time_us": _us(self.total_ns), "reasons": self.rows(),
                "vmbus_events": dict(self.vmbus)}

    def text(self) -> str:
        headers = ["reason", "samples", "samples%", "time%", "min µs", "avg µs", "p50 µs", "p99 µs", "max µs"]
        rows = [[r, str(v["samples"]), f"{v['samples_pct']:.2f}%", f"{v['time_pct']:.2f}%",
                 *(f"{v[k]:.1f}" for k in ("min_us", "avg_us", "p50_us", "p99_us", "max_us"))]
                for r, v in self.rows().items()]
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]

        def fmt(row):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

        lines = [fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
        lines += ["", f"Total Samples: {self.samples}, Total events handled time: {self.total_ns / 1000:.2f} us"]
        if self.vmbus:
            lines.append("VMBus events: " + ", ".join(f"{k} {n}" for k, n in sorted(self.vmbus.items())))
        return "\n".join(lines)

    CSV_FIELDS = ("reason", "samples", "samples_pct", "time_pct", "min_us", "avg_us", "p50_us", "p99_us",
                  "max_us", "total_us")

    def csv_rows(self) -> list[list]:
        rows = [[r, *(v[k] for k in self.CSV_FIELDS[1:])] for r, v in self.rows().items()]
        everything = Histogram()
        for h in self.by_reason.values():
            everything.merge(h)
        rows.append(["total", everything.n, 100.0 if everything.n else 0.0, 100.0 if everything.n else 0.0,
                     _us(everything.lo), _us(everything.mean), _us(everything.percentile(50)),
                     _us(everything.percentile(99)), _us(everything.hi), _us(everything.total)])
        rows += [[f"{VMBUS_REASON} {k}", n, *("" for _ in self.CSV_FIELDS[2:])] for k, n in sorted(self.vmbus.items())]
        return rows
