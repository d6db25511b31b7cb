"""``bench --migrate``: live migration between two runs (issue 13), each a host of its own
(its own run root, launcher, hypervisor and processes), for guests of 16, 64 and 256 MiB
(``--migrate-sizes``) running the memory-writing workload at two rates (``memwrite``: 1 MiB/s;
``memwrite_fast``: 16 MiB/s) beside the serial counter.  The guest first fills its memory
(its first memwrite pass), then ``launch.py migrate SRC alpha --to … --json`` moves it; the
figures are that command's: total time, pre-copy rounds and the pages of each, the pages of
the stop-and-copy, the downtime, the bytes on the wire, where the time went (its
``phases_ms``), and the link's throughput measured by the same command just before its
begin (random bytes, each MiB acknowledged; outside the total, as its bytes are outside the
bytes on the wire) — sending the memory once at that rate is the physical limit the total
is compared with."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from root.testrun import start_run

TOPOLOGY = """[run]
name = "migrate-bench"
duration_s = 0
logical_processors = 1

[[partition]]
name = "alpha"
vps = 1
memory_mb = {memory_mb}
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic"]
workloads = ["serial", "{workload}"]
"""
WORKLOADS = (("memwrite", "1 MiB/s"), ("memwrite_fast", "16 MiB/s"))
FILL_TIMEOUT_S = 240.0


def measure(memory_mb: int, workload: str, progress=None) -> dict:
    """One migration of a ``memory_mb`` guest running ``workload``: the migrate command's figures."""
    with tempfile.TemporaryDirectory(prefix="hvmig") as d:
        config = Path(d) / "migrate.toml"
        config.write_text(TOPOLOGY.format(memory_mb=memory_mb, workload=workload))
        roots = [Path(d) / "source", Path(d) / "destination"]
        for r in roots:
            r.mkdir(mode=0o700)
        src = start_run(config, roots[0])
        dst = None
        try:
            dst = start_run(config, roots[1], extra=("--incoming", "alpha"))
            src.wait_for_console("alpha", "memwrite: pass 1 of", FILL_TIMEOUT_S)  # its memory filled
            time.sleep(1.0)  # and writing at its rate
            inc = dst.manifest()["incoming"]
            r = src.launch("migrate", src.name, "alpha", "--to", inc["endpoint"], f"--key={inc['server_key']}", "--json",
                           timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"migrate {memory_mb} MiB {workload}: {r.stderr.strip()}")
            figures = json.loads(r.stdout)
            dst.wait_for_console("alpha", "resumed from a saved state", 30)
            figures.update(memory_mb=memory_mb, workload=workload)
            return figures
        finally:
            for run in (dst, src):
                if run is not None:
                    run.stop()


def run_migrate(args) -> int:
    from root.commands.common import complain

    rows = []
    try:
        for mb in args.migrate_sizes:
            for workload, _ in WORKLOADS:
                if args.progress:
                    print(f"migrating a {mb} MiB guest running {workload}…", file=sys.stderr, flush=True)
                rows.append(measure(mb, workload))
    except (RuntimeError, OSError, AssertionError) as e:
        complain("bench", f"--migrate: {e}")
        return 1
    if args.json:
        print(json.dumps({"migrate": rows}, indent=2), flush=True)
        return 0
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    """What ``bench --migrate`` prints (``--json``'s rows, too)."""
    from root.report import table

    rates = dict(WORKLOADS)
    print("live migration between two runs (two hosts on this machine, CURVE tcp on loopback):")
    print(table(["MiB", "workload", "total s", "begin + pre-copy + wait + stop-and-copy ms", "rounds",
                 "pages per round", "stop-and-copy pages", "downtime ms", "state + pages + commit + go ms",
                 "bytes on the wire", "link MB/s", "send once s", "total / send once"],
                [[str(r["memory_mb"]), f"{r['workload']} ({rates[r['workload']]})", f"{r['total_ms'] / 1000:.2f}",
                  _phases(r["phases_ms"]), str(r["precopy_rounds"]), " ".join(str(x["pages"]) for x in r["rounds"]), str(r["final_pages"]),
                  f"{r['downtime_ms']:.1f}",
                  f"{r['state_ms']:.0f} + {r['final_pages_ms']:.0f} + {r['commit_ms']:.0f} + {r['go_ms']:.0f}",
                  str(r["bytes_on_wire"]), f"{r['link_bytes_per_s'] / 1e6:.0f}",
                  f"{r['send_once_ms'] / 1000:.2f}", f"{r['total_ms'] / max(r['send_once_ms'], 1e-3):.1f}"]
                 for r in rows], "rlrrrlrrrrrrr"))
    print("(downtime: the source's pause to the destination's VPs started; of which taking the state, sending the "
          "last pages, the destination's commit — its restore, its worker's go — and the go. Total: from the begin "
          "(the destination starts the partition's processes then, beside the pre-copy; wait: for them to be "
          "ready, before the pause) to the source's copy stopped; the link is measured with 16 MiB of random "
          "bytes just before the begin, outside the total and the bytes on the wire)")


def _phases(p: dict) -> str:
    return (f"{p['begin']:.0f} + {p['precopy'] + p['precopy_after_wait']:.0f} + {p['switchover_wait']:.0f} + "
            f"{p['stop_and_copy']:.0f}")
