"""The SynIC's figures (issue 10): a 1 kHz timer's expiry → guest handler, by the local APIC
timer, by a synthetic timer's message (SINT) and by a synthetic timer in direct mode; and
the reference time read by the TSC page beside the MSR exit.

    python -m benchmarks.synic_bench [--duration S] [--json]

Each case is its own one-partition run (``benchmarks.bench.experiment``: minimal chipset,
one VP, 2 LPs).  "timer → handler" is the interrupt path's stamps (the hypervisor's timer
fire → the guest's handler, ``apic_timer`` path); for the SINT message the guest also
measures it in reference time (ExpirationTime → the handler's read of the TSC page).
"""

from __future__ import annotations

import argparse
import json

from benchmarks.bench import ALL_ENLIGHTENMENTS, experiment

SYNIC_ENLIGHTENMENTS = ALL_ENLIGHTENMENTS[:-1] + ', "synic", "stimer", "tsc_page"]'


def _timer_case(name: str, workload: str, duration_s: float, vector: int, counter: str) -> dict:
    p = experiment(f"synic-{name}", workload, duration_s, 1, SYNIC_ENLIGHTENMENTS)
    g, vp = p.guest, p.vps[0]
    ticks = max(1, g.get(counter, 0))
    path = p.paths.get("apic_timer")
    handler_exits = g.get(f"vector_{vector:#04x}_exits", 0)
    return {"ticks": g.get(counter, 0),
            "ticks_per_s": round(g.get(counter, 0) / duration_s, 1),
            "timer_to_handler_p50_us": round(path.total.percentile(50) / 1000, 1) if path else None,
            "timer_to_handler_p99_us": round(path.total.percentile(99) / 1000, 1) if path else None,
            "exits_per_tick": round((handler_exits + vp.exits["halt"]) / ticks, 2),
            "guest_expiry_to_handler_p50_us": g.get("stimer_latency_p50_us"),
            "guest_expiry_to_handler_p99_us": g.get("stimer_latency_p99_us"),
            "missed": p.synic.get("stimer_missed", 0)}


def _reftime_case(name: str, enlightenments: str, duration_s: float) -> dict:
    p = experiment(f"synic-reftime-{name}", "reftime", duration_s, 1, enlightenments)
    g = p.guest
    page, msr = g.get("reftime_page_reads", 0), g.get("reftime_msr_reads", 0)
    return {"page_reads": page, "msr_reads": msr, "msr_exits": p.vps[0].exits["msr"],
            "page_ns_per_read": round(g.get("reftime_page_ns", 0) / page) if page else None,
            "msr_ns_per_read": round(g.get("reftime_msr_ns", 0) / msr) if msr else None,
            "exits_saved": page}


def measure(duration_s: float) -> dict:
    from partitions.drivers.synic import SINT_VECTOR_BASE, STIMER_SINT
    from partitions.synic_workloads import STIMER_DIRECT_VECTOR
    from partitions.workloads import APIC_TIMER_VECTOR
    return {
        "timer_1khz": {
            "apic_timer (eoi by MSR)": _timer_case("apic", "eoi_msr", duration_s, APIC_TIMER_VECTOR, "apic_ticks"),
            "stimer message (SINT)": _timer_case("stimer", "stimer", duration_s, SINT_VECTOR_BASE + STIMER_SINT,
                                                 "stimer_ticks"),
            "stimer direct": _timer_case("direct", "stimer_direct", duration_s, STIMER_DIRECT_VECTOR, "stimer_ticks"),
        },
        "reference_time": {
            "tsc page": _reftime_case("page", SYNIC_ENLIGHTENMENTS, duration_s),
            "msr only": _reftime_case("msr", ALL_ENLIGHTENMENTS, duration_s),
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.synic_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per case (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = measure(args.duration)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"1 kHz timer → guest handler ({args.duration:.0f} s each, one VP, 2 LPs)")
    print(f"  {'case':26} {'ticks/s':>8} {'p50 µs':>8} {'p99 µs':>9} {'exits/tick':>10} {'guest p50/p99 µs':>17}")
    for k, v in out["timer_1khz"].items():
        guest = (f"{v['guest_expiry_to_handler_p50_us']}/{v['guest_expiry_to_handler_p99_us']}"
                 if v["guest_expiry_to_handler_p50_us"] is not None else "-")
        print(f"  {k:26} {v['ticks_per_s']:8.0f} {v['timer_to_handler_p50_us']!s:>8} "
              f"{v['timer_to_handler_p99_us']!s:>9} {v['exits_per_tick']:10.2f} {guest:>17}")
    print("reference time reads")
    for k, v in out["reference_time"].items():
        print(f"  {k:10} page reads {v['page_reads']} ({v['page_ns_per_read']} ns each), "
              f"MSR reads {v['msr_reads']} ({v['msr_ns_per_read']} ns each), MSR exits {v['msr_exits']}, "
              f"exits saved {v['exits_saved']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
