"""``bench --service``: ``ctl service``'s blackout (issue 13: "the same for ctl service's
blackout"), in rounds.  One run of a partition running the serial counter and the verified
ATA disk loop (servicing's own test topology); ``--service-rounds N`` times, a
``launch.py ctl RUN service alpha`` — each hands the partition's devices to a new worker
(root/servicing.py) — a short while apart; the figures are the launcher's for each (the
manifest's ``services``): the blackout (the pause to the resume's acknowledgement) and its
stages, the new worker's start-up before the pause, the saved bytes; then p50 and max of each.
The guest must have gone on through them all (more disk rounds, exits and ticks; no disk
error), or the bench fails."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from proto.status import HypervisorStatus
from root.testrun import start_run

TOPOLOGY = """[run]
name = "service-bench"
duration_s = 0
logical_processors = 2

[[partition]]
name = "alpha"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
disk = { size_mb = 1 }
workloads = ["serial", "diskbench"]
"""
STAGES = (("blackout_ms", "blackout"), ("pause_save_ms", "pause + save"),
          ("restore_hello_commit_ms", "restore + hello + commit"), ("restore_ms", "of which restore"),
          ("spawn_ready_ms", "new worker's start-up (before the pause)"))
GAP_S = 0.3  # between services: the guest runs a while on each new worker


def _guest(run) -> dict:
    return HypervisorStatus.from_wire(run.client().status()).partitions[0].vps[0].guest


def measure(rounds: int, progress=None) -> dict:
    """``rounds`` services of one run's partition: each's figures, and p50/max per stage."""
    with tempfile.TemporaryDirectory(prefix="hvsvc") as d:
        config = Path(d) / "service.toml"
        config.write_text(TOPOLOGY)
        root = Path(d) / "runs"
        root.mkdir(mode=0o700)
        run = start_run(config, root)
        try:
            run.wait_for_console("alpha", "round 0", 60)  # the disk loop under way
            before = _guest(run)
            services = []
            for i in range(rounds):
                r = run.launch("ctl", run.name, "service", "alpha", timeout=60)
                if r.returncode != 0:
                    raise RuntimeError(f"service {i + 1}: {r.stderr.strip()}")
                services.append(run.manifest()["services"][-1])
                if progress:
                    progress(f"service {i + 1}/{rounds}: blackout {services[-1]['blackout_ms']:.1f} ms")
                time.sleep(GAP_S)
            deadline = time.monotonic() + 30
            while True:  # the guest went on through them all
                after = _guest(run)
                if after.get("disk_errors", 0) or "MISMATCH" in run.console("alpha"):
                    raise RuntimeError(f"a disk round failed across the services: {after}")
                if all(after.get(k, 0) > before.get(k, 0) for k in ("disk_bytes", "exits", "ticks")):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the guest did not go on after the services: {before} → {after}")
                time.sleep(0.2)
        finally:
            run.stop()
    return {"rounds": rounds, "services": services, "summary": summarize(services)}


def summarize(services: list[dict]) -> dict:
    """Per stage: p50 (the median, the lower of the middle two) and max, ms."""
    out = {}
    for key, _ in STAGES:
        values = sorted(s[key] for s in services if s.get(key) is not None)
        if values:
            out[key] = {"p50": values[(len(values) - 1) // 2], "max": values[-1]}
    return out


def run_service(args) -> int:
    from root.commands.common import complain

    try:
        result = measure(args.service_rounds,
                         (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None)
    except (RuntimeError, OSError, AssertionError) as e:
        complain("bench", f"--service: {e}")
        return 1
    if args.json:
        print(json.dumps({"service": result}, indent=2), flush=True)
        return 0
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    from root.report import table

    s = result["summary"]
    print(f"ctl service: {result['rounds']} worker handovers under a running guest (serial counter and verified "
          "ATA disk loop):")
    print(table(["stage", "p50 ms", "max ms"],
                [[label, f"{s[key]['p50']:.1f}", f"{s[key]['max']:.1f}"] for key, label in STAGES if key in s],
                "lrr"))
    saved = {x.get("saved_bytes") for x in result["services"]}
    print(f"(blackout: the pause to the commit's acknowledgement, the partition resumed; saved bytes per service: "
          f"{', '.join(str(b) for b in sorted(b for b in saved if b is not None))})")
