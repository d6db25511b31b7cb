"""``stats RUN [--json]``: a live run's full statistics — per partition and path the count,
p50/p90/p99/p99.9/max/mean in µs and each stage's p50/p99/mean, exits by reason, counters."""

from __future__ import annotations

import argparse
import json

from proto.exits import EMULATED_STAGES, HANDLED_STAGES
from proto.exits import label as path_label
from proto.status import HypervisorStatus
from root import follow
from root.client import RootClient
from root.commands.common import status_while_live
from root.report import exit_totals, indent, path_order, path_summary, stage_rows, table
from root.rundir import RunDir, partition_names

NAME = "stats"
HELP = "a live run's full statistics: percentiles, stages, exits, counters"
PARTITION_COUNTERS = ("unclaimed_reads", "unclaimed_writes", "unmapped_gpa", "worker_timeouts", "resets")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--json", action="store_true")


def run_stats(run: RunDir, man: dict, status: HypervisorStatus) -> dict:
    """The full statistics of a run as one JSON-ready object (µs)."""
    names = partition_names(man)
    parts = {}
    for p in status.partitions:
        parts[names.get(p.id, str(p.id))] = {
            "id": p.id, "state": p.state, "vps": len(p.vps),
            "exits": exit_totals(p),
            "counters": {"faults": sum(vp.faults for vp in p.vps),
                         **{k: getattr(p, k) for k in PARTITION_COUNTERS},
                         "guest": p.guest},
            "paths": {k: path_summary(k, p.paths[k]) for k in path_order(p.paths)},
        }
    return {"run": run.name, "unit": "us",
            "hypervisor": {"uptime_s": status.uptime_s, "peers": status.peers, "counters": status.counters,
                           "hypercalls": status.hypercalls.to_wire()},
            "partitions": parts}


def run(args) -> int:
    run, man = follow.live_run_following(args.run)
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        status = HypervisorStatus.from_wire(status_while_live(root, run))
    stats = run_stats(run, man, status)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    hv = stats["hypervisor"]
    print(f"run {run.name}: hypervisor up {hv['uptime_s']:.1f} s, "
          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in hv["counters"].items()))
    for name, p in stats["partitions"].items():
        print(f"\npartition {name} (id {p['id']}, {p['vps']} VPs): {p['state']}")
        print("  exits: " + (", ".join(f"{k} {v}" for k, v in p["exits"].items() if v) or "none"))
        counters = {k: v for k, v in p["counters"].items() if k != "guest"}
        print("  counters: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items()))
        rows = [[path_label(k), str(v["count"]), *(f"{v[f]:.1f}" for f in
                 ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"))] for k, v in p["paths"].items()]
        if rows:
            print(indent(table(["path", "count", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "mean µs"],
                               rows)))
        paths = status.partition(p["id"]).paths
        for k, v in p["paths"].items():
            if len(v.get("stages", {})) in (len(EMULATED_STAGES), len(HANDLED_STAGES)):
                print(f"  {path_label(k)}, per stage:")
                print(indent(table(["stage", "mean µs", "p50 µs", "p99 µs", "share"], stage_rows(paths, k)), 4))
    return 0
