"""``status RUN [--json]``: a live run's partitions and their state, each VP's state and exits
by reason, unclaimed I/O, worker timeouts, per-path latency, and each process's pid, CPU %,
RSS and threads."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

import psutil

from proto import confine, seccomp
from proto.status import HypervisorStatus
from root import follow
from root.cluster import host_runs
from root.client import RootClient
from root.report import indent, path_rows, table
from root.rundir import find_run, live_run, partition_names
from root.vsp import status as vsp_status

NAME = "status"
HELP = "a live run's partitions, VPs, counters, processes"
CPU_SAMPLE_S = 0.2  # CPU % is measured over this long


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--json", action="store_true")


def process_rows(man: dict) -> list[list[str]]:
    """name, pid, CPU %, RSS and threads of the launcher and each process of a run."""
    rows = []
    procs = {"launcher": {"pid": man.get("launcher_pid")}, **man.get("processes", {})}
    handles = {}
    for name, info in procs.items():
        try:
            h = psutil.Process(info["pid"])
            h.cpu_percent(None)
            handles[name] = h
        except (psutil.Error, TypeError):
            handles[name] = None
    time.sleep(CPU_SAMPLE_S)
    for name, info in procs.items():
        h = handles[name]
        if h is None:
            rows.append([name, str(info.get("pid")), "gone", "", ""])
            continue
        try:
            with h.oneshot():
                rows.append([name, str(h.pid), f"{h.cpu_percent(None):.0f}%",
                             f"{h.memory_info().rss / 2**20:.1f} MiB", str(h.num_threads())])
        except psutil.Error:
            rows.append([name, str(info.get("pid")), "gone", "", ""])
    return rows


def seccomp_line(man: dict) -> str:
    """Which worker and partition processes run under the filter that keeps them off every
    other process (proto.seccomp), read from each one's /proc/PID/status."""
    confined = [(name, info["pid"]) for name, info in man.get("processes", {}).items()
                if name.split(":")[0] in ("worker", "partition")]
    on = []
    for name, pid in confined:
        try:
            if seccomp.in_force(pid):
                on.append(name)
        except OSError:  # gone
            pass
    if confined and len(on) == len(confined):
        return (f"in force in all {len(on)} worker and partition processes: none may signal, trace "
                "or read the memory of another process")
    off = sorted({name for name, _ in confined} - set(on))
    return f"in force in {len(on)} of {len(confined)} worker and partition processes (not in: {', '.join(off)})"


def network_line(man: dict) -> str:
    """Which worker and partition processes are in a network namespace of their own (the
    hypervisor's is the host's): over ipc they need none."""
    procs = man.get("processes", {})
    hv = (procs.get("hypervisor:hv") or {}).get("pid")
    confined = [(name, info["pid"]) for name, info in procs.items() if name.split(":")[0] in ("worker", "partition")]
    try:
        host = os.readlink(f"/proc/{hv}/ns/net")
    except (OSError, TypeError):
        return "not known (the hypervisor's network namespace cannot be read)"
    own = []
    for name, pid in confined:
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != host:
                own.append(name)
        except OSError:  # gone, or not ours to look at
            pass
    return f"{len(own)} of {len(confined)} worker and partition processes in an empty network namespace of their own"


def run(args) -> int:
    top = find_run(args.run)
    if top.manifest().get("cluster"):
        return _hosts(args, *live_run(args.run))
    run, man = follow.live_run_following(args.run)
    return show(run, man, args.json)


def _hosts(args, top, man) -> int:
    """A run of hosts (root/cluster.py): each host's run, as ``status`` shows a run."""
    hosts = man["cluster"]["hosts"]
    runs = host_runs(man)
    if args.json:
        out = {}
        for name, run in runs.items():
            with contextlib.redirect_stdout(io.StringIO()) as text:
                show(*live_run(str(run.path)), True)
            out[name] = {**hosts[name], "status": json.loads(text.getvalue())}
        print(json.dumps({"run": top.name, "hosts": out}, indent=2))
        return 0
    for name, run in runs.items():
        h = hosts[name]
        print(f"host {name} (network namespace {h['netns']}, {h['address']}, {h['lps']} LPs): run {run.name}")
        show(*live_run(str(run.path)), False)
        print()
    return 0


def show(run, man, as_json: bool) -> int:
    """One run's status, as text or JSON."""
    with RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key")) as root:
        status = root.status()
    procs = process_rows(man)
    # Partitions that live-migrated out of this run: where each went (root/follow.py).
    moved = {n: rec for n in man.get("partitions", {}) if (rec := follow.moved_out(run, man, n)) is not None}
    vsp = vsp_status.load(run.path)  # the VSP process's figures (issue 10), where it runs
    if as_json:
        print(json.dumps({"run": run.name, "isolation": man.get("isolation"), "seccomp": seccomp_line(man),
                          "hypervisor": {k: v for k, v in status.items() if k != "partitions"},
                          "partitions": status["partitions"], "names": man.get("partitions", {}),
                          "processes": procs, "vmbus": vsp,
                          "worker_restarts": man.get("worker_restarts", {}), "moved": moved}, indent=2))
        return 0
    names = partition_names(man)
    st = HypervisorStatus.from_wire(status)
    print(f"run {run.name}: hypervisor up {st.uptime_s:.1f} s, {st.peers} peers, "
          f"{st.counters['messages']} messages, {st.counters['malformed']} malformed, "
          f"{st.counters['refused_hellos']} refused hellos, "
          f"{st.counters.get('handshakes_refused', 0)} handshakes refused, "
          f"{st.counters.get('connections_evicted', 0)} idle connections shut down")
    level = man.get("isolation", "unknown")
    print(f"isolation: {level}: {confine.LEVELS.get(level, 'not recorded by this run')}")
    print(f"seccomp: {seccomp_line(man)}")
    print(f"network: {network_line(man)}")
    waiting = (man.get("incoming") or {}).get("partitions", [])
    for p in st.partitions:
        if p.id not in names and p.state == "finalized":  # a partition that left and came back is a new one
            print(f"\npartition id {p.id}: finalized (an earlier copy of a partition of this run)")
            continue
        if names.get(p.id) in moved:
            print(f"\npartition {names[p.id]} (id {p.id}): {follow.moved_line(moved[names[p.id]])}")
            continue
        if names.get(p.id) in waiting:
            print(f"\npartition {names[p.id]} (id {p.id}): waits to migrate in (created, no processes)")
            continue
        health = " (worker unresponsive: its device accesses wait for it)" if p.unresponsive else ""
        print(f"\npartition {names.get(p.id, p.id)} (id {p.id}): {p.state}{health}, "
              f"worker {'up' if p.worker else 'missing'}, unclaimed I/O {p.unclaimed_reads}r/"
              f"{p.unclaimed_writes}w, worker timeouts {p.worker_timeouts}")
        if any(p.coalesced_mmio.values()):
            print("  coalesced MMIO: " + ", ".join(f"{k} {v}" for k, v in p.coalesced_mmio.items()))
        if any(p.synic.values()):
            print("  synic: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in p.synic.items()))
        for line in vsp_status.partition_lines(vsp, p.id):
            print("  " + line)
        cg = man.get("cpu_cgroups", {}).get(names.get(p.id, ""))
        if cg:
            print(f"  {cg['note']}")
        served = [s for s in man.get("services", []) if s.get("partition") == names.get(p.id) and "error" not in s]
        if served:  # worker servicing (root/servicing.py)
            restarts = man.get("worker_restarts", {}).get(names.get(p.id, ""), 0)
            print(f"  worker replaced {len(served)} times ({restarts} restarted after dying); "
                  f"last blackout {served[-1]['blackout_ms']:.1f} ms")
        if p.worker_handovers or p.worker_rollbacks:  # as the hypervisor counted them
            print(f"  hypervisor: {p.worker_handovers} worker handovers, {p.worker_rollbacks} rolled back")
        rows = [[str(vp.index), vp.state, *(str(v) for v in vp.exits.values()), str(vp.faults)] for vp in p.vps]
        if p.vps:
            headers = ["vp", "state", *p.vps[0].exits.keys(), "faults"]
            print(indent(table(headers, rows, "ll" + "r" * (len(headers) - 2))))
        prow = path_rows(p.paths)
        if prow:
            print(indent(table(["path", "count", "p50 µs", "p99 µs", "max µs"], prow)))
    for name in sorted(set(moved) - {names.get(p.id) for p in st.partitions}):
        print(f"\npartition {name}: {follow.moved_line(moved[name])}")
    if vsp_status.switch_line(vsp):
        print("\n" + vsp_status.switch_line(vsp))
    print()
    print(table(["process", "pid", "CPU", "RSS", "threads"], procs, "lrrrr"))
    return 0
