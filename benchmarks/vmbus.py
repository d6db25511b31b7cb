"""The synthetic disk (and NIC: benchmarks/vmbus_net.py) measured (issue 10):
``python -m benchmarks.vmbus [--json] [--net]`` (and
``bench --vmbus``).

One run of a one-VP enlightened partition with both an emulated ATA disk and a synthetic
(VMBus) disk, whose guest runs ``vmbus_diskbench`` once (partitions/vmbus_disk.py): 64 KiB
sequential writes at queue depth 1 and 8 and 4 KiB random writes at queue depth 1, each
phase ending with SYNCHRONIZE CACHE, then 64 KiB of ATA PIO writes and FLUSH CACHE; the
guest's counters carry the figures back.  Beside them, in the same invocation: the host's
own write throughput on the same file system (64 KiB pwrites of the same total, then
fsync), the 4-hop floor (benchmarks/floor.py) for the latency, and a second run with
signal suppression off in guest and VSP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager

from benchmarks import vmbus_net
from proto.errors import HvstackError
from root.report import Output
from root.run import RUN_UMASK, Run
from root.topology import load_topology

TOPOLOGY = """\
[run]
name = "bench-vmbus"
duration_s = 0
logical_processors = 2

[[partition]]
name = "bench"
vps = 1
memory_mb = 16
enlightenments = ["hypercall", "vp_index", "reference_counter", "apic", "synic"]
workloads = ["vmbus_diskbench"]
disk = {{ image = "{dir}/ata.img", size_mb = 4 }}
vmbus = {{ disk = {{ image = "{dir}/synthetic.img", size_mb = 64 }}, signal_suppression = {suppression} }}
"""
TIMEOUT_S = 180.0


def guest_run(directory: str, suppression: bool, ata: bool = True) -> dict:
    """Run the bench partition until its guest has reported every phase; its counters,
    and the VSP process's figures."""
    text = TOPOLOGY.format(dir=directory, suppression=str(suppression).lower())
    if not ata:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("disk ="))
    topology = load_topology(text, "<bench-vmbus>")
    last = "vmbus_ata_ns" if ata else "vmbus_lat4k_ns"
    old_umask = os.umask(RUN_UMASK)
    with open(os.devnull, "w") as devnull:
        run = Run(topology, Output(devnull), duration_s=TIMEOUT_S)
        reason, code = "bench finished", 0
        try:
            run.start()
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                run._check_procs()
                part = run.status().partitions[0]
                guest = part.vps[0].guest
                if last in guest:
                    break
                if time.monotonic() > deadline:
                    raise HvstackError(f"the guest did not finish vmbus_diskbench in {TIMEOUT_S:.0f} s "
                                       f"(see {run.run.path / 'logs'})")
                time.sleep(0.25)
            console = (run.run.path / "console-bench.log").read_text(errors="replace")
        except HvstackError as e:
            reason, code = str(e), 1
            raise
        finally:
            if hasattr(run, "run"):
                run.finish(reason, code)
            os.umask(old_umask)
    vsp = json.loads((run.run.path / "vsp-status.json").read_text())
    paths = {name: {"n": st.total.n, "p50_us": st.total.percentile(50) / 1e3, "p99_us": st.total.percentile(99) / 1e3}
             for name, st in part.paths.items()}
    return {"guest": dict(guest), "vsp": vsp, "console": console, "paths": paths}


def host_write_mb_s(directory: str, total: int, chunk: int = 64 * 1024) -> float:
    """The host's own sequential write throughput on the images' file system: ``total``
    bytes in ``chunk`` pwrites, then fsync (as the guest's phase ends with a flush)."""
    path = os.path.join(directory, "host-write.bin")
    data = os.urandom(chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter_ns()
        for off in range(0, total, chunk):
            os.pwrite(fd, data, off)
        os.fsync(fd)
        ns = time.perf_counter_ns() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return total / ns * 1e3


def phase(guest: dict, name: str) -> dict:
    g = {k[len(f"vmbus_{name}_"):]: v for k, v in guest.items() if k.startswith(f"vmbus_{name}_")}
    if not g:
        return {}
    g["mb_s"] = g["bytes"] / g["ns"] * 1e3
    g["signals_per_request"] = (g["guest_signals"] + g["host_interrupts"]) / g["requests"]
    return g


def floor_4hop(samples: int) -> dict:
    from benchmarks.bench import measure_floor

    h = measure_floor(samples, 1)[4]
    return {"p50_us": h.percentile(50) / 1e3, "p99_us": h.percentile(99) / 1e3, "n": h.n}


@contextmanager
def private_runs(directory: str):
    """The bench's runs in a runs root of their own (0700, inside ``directory``), not the
    user's: nobody else's ``ls --prune`` or clean-up reaches them, and nothing is left."""
    root = os.path.join(directory, "runs")
    os.mkdir(root, 0o700)
    old = os.environ.get("HVSTACK_RUN_DIR")
    os.environ["HVSTACK_RUN_DIR"] = root
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HVSTACK_RUN_DIR", None)
        else:
            os.environ["HVSTACK_RUN_DIR"] = old


def measure(samples: int = 2000) -> dict:
    with tempfile.TemporaryDirectory(prefix="hvvmbus") as d, private_runs(d):
        on = guest_run(d, suppression=True)
        qd8 = phase(on["guest"], "qd8")
        host = host_write_mb_s(d, qd8["bytes"])
        off = guest_run(d, suppression=False, ata=False)
    net = vmbus_net.measure(floor_samples=samples)
    g = on["guest"]
    ata = g["vmbus_ata_bytes"] / g["vmbus_ata_ns"] * 1e3
    qd1, lat = phase(g, "qd1"), phase(g, "lat4k")
    chans = on["vsp"]["partitions"]
    return {
        "synthetic_qd1": qd1, "synthetic_qd8": qd8, "latency_4k": lat,
        "ata": {"mb_s": ata, "bytes": g["vmbus_ata_bytes"], "exits": g["vmbus_ata_exits"]},
        "host_write_mb_s": host,
        "ratio_qd8_vs_ata": qd8["mb_s"] / ata, "ratio_qd1_vs_ata": qd1["mb_s"] / ata,
        "ratio_qd8_vs_host": qd8["mb_s"] / host,
        "floor_4hop": floor_4hop(samples),
        "suppression_off_qd8": phase(off["guest"], "qd8"),
        "vsp_channels": {pid: p["channels"] for pid, p in chans.items()},
        "vsp_devices": on["vsp"].get("devices", {}),
        "paths": on["paths"],
        "net": net,
    }


def measure_or_error(samples: int) -> dict:
    """:func:`measure`, or what stopped it (for bench's JSON)."""
    try:
        return measure(samples)
    except HvstackError as e:
        return {"error": str(e)}


def report(r: dict) -> str:
    if "error" in r:
        return f"synthetic disk: not measured: {r['error']}"
    q1, q8, lat = r["synthetic_qd1"], r["synthetic_qd8"], r["latency_4k"]
    off, fl = r["suppression_off_qd8"], r["floor_4hop"]
    lines = [
        "synthetic disk (VMBus, storvsp in the root's VSP process) vs the emulated ATA disk",
        f"  64 KiB sequential writes + flush, QD1: {q1['mb_s']:8.2f} MB/s  ({r['ratio_qd1_vs_ata']:.0f}× ATA)",
        f"  64 KiB sequential writes + flush, QD8: {q8['mb_s']:8.2f} MB/s  "
        f"({r['ratio_qd8_vs_ata']:.0f}× ATA; goal ≥ 100×)",
        f"  emulated ATA PIO writes + flush:       {r['ata']['mb_s'] * 1e3:8.2f} KB/s  "
        f"({r['ata']['exits'] / (r['ata']['bytes'] / 4096):.0f} exits per 4 KiB)",
        f"  host's own 64 KiB writes + fsync:      {r['host_write_mb_s']:8.2f} MB/s  "
        f"(synthetic QD8 = {r['ratio_qd8_vs_host']:.3f}× host; goal ≥ 0.3×)",
        f"  4 KiB random write + completion, QD1:  p50 {lat['p50_ns'] / 1e3:.0f} µs, p99 {lat['p99_ns'] / 1e3:.0f} µs "
        f"(4-hop floor p50 {fl['p50_us']:.0f} µs, p99 {fl['p99_us']:.0f} µs)",
        f"  signals per request at QD8: {q8['signals_per_request']:.3f} ({q8['guest_signals']} guest→host, "
        f"{q8['host_interrupts']} host→guest interrupts, {q8['requests']} requests; goal < 0.2)",
        f"  with signal suppression off: {off['signals_per_request']:.3f} per request, {off['mb_s']:.2f} MB/s at QD8",
    ]
    ch = next(iter(next(iter(r["vsp_channels"].values())).values()), {})
    batches = q8["requests"] // 8
    if ch.get("packets_in") and batches:
        hc = r.get("paths", {}).get("hypercall", {})
        # The channel's work includes the fsyncs (SYNCHRONIZE CACHE), which are not a batch's:
        # they are said apart.
        dev = next(iter(next(iter(r.get("vsp_devices", {}).values()), {}).values()), {})
        flushes, flush_ns = dev.get("flushes", 0), dev.get("flush_ns", 0)
        lines += [
            "  where a QD8 batch (8 × 64 KiB) goes, per batch:",
            f"    guest: ring write + HvCallSignalEvent {q8['submit_ns'] / batches / 1e6:6.2f} ms "
            f"(hypercall round trip p50 {hc.get('p50_us', 0):.0f} µs; {q8['guest_signals']} signals in "
            f"{batches} batches)",
            f"    guest: waiting for completions      {q8['wait_ns'] / batches / 1e6:6.2f} ms "
            f"({q8['halts']} HLTs; the rest polling and reading the ring)",
            f"    VSP: ring + storvsp + completions  "
            f"{8 * (ch['work_ns'] - flush_ns) / max(1, ch['packets_in'] - flushes) / 1e6:6.2f} ms "
            f"(its mean per packet × 8 but fsync, over {ch['drains']} drains of the whole run)",
            f"    a batch's turnaround in the guest: p50 {q8['p50_ns'] / 1e6:.2f} ms, p99 {q8['p99_ns'] / 1e6:.2f} ms; "
            f"the phase {q8['ns'] / 1e6:.1f} ms",
        ]
        if flushes:
            lines.append(f"  VSP: fsync (SYNCHRONIZE CACHE): mean {flush_ns / flushes / 1e6:.2f} ms over {flushes} "
                         f"(each phase ends with one)")
    return "\n".join(lines) + ("\n" + vmbus_net.report(r["net"]) if "net" in r else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vmbus")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--samples", type=int, default=2000, help="round trips of the 4-hop floor")
    ap.add_argument("--net", action="store_true", help="the synthetic NIC alone (benchmarks/vmbus_net.py)")
    ap.add_argument("--duration", type=float, default=20.0, help="with --net: seconds of the ping run (the stream run: at least 12)")
    args = ap.parse_args(argv)
    try:
        if args.net:
            r = vmbus_net.measure(args.duration, args.samples)
            print(json.dumps(r, indent=1) if args.json else vmbus_net.report(r))
            return 0
        r = measure(args.samples)
    except HvstackError as e:
        print(f"benchmarks.vmbus: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=1, default=str) if args.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
