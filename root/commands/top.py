"""``top RUN [--interval S] [--sort …] [--once] [--iterations N] [--json]``: a live view of a
run, as xentop and kvm_stat give one — per partition its state, VPs running / in an
intercept / halted, exits per second by reason (the difference of two status replies), each
path's round-trip p50 and p99 (overall and over the last interval); per process its pid,
CPU %, RSS, threads and context switches.  Where the run has a VSP process, per partition
its VMBus channels (packets, signals sent and suppressed, guest signals per second, ring
occupancy, refusals) and the virtual switch's forwarding table, from the
``vsp-status.json`` the VSP writes every 0.5 s (root/vsp/status.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

import psutil

from proto.exits import label as path_label
from proto.stats import Histogram, bucket_upper
from proto.status import HypervisorStatus
from root import follow
from root.cluster import host_runs
from root.client import RootClient
from root.commands.common import complain, status_while_live
from root.report import exit_totals, indent, path_order, table, us_value
from root.rundir import find_run, live_run, partition_names
from root.vsp import status as vsp_status

NAME = "top"
HELP = "a live view of a run: VPs, exits/s by reason, latency, processes"
TOP_SORTS = ("exits", "name", "cpu", "rss", "ctxsw")
CLEAR_SCREEN = "\x1b[H\x1b[2J"
# A channel's counters shown as rates (root/vsp/channel.py ChannelStats).
VMBUS_RATES = ("packets_in", "packets_out", "signals_out", "signals_suppressed", "events_in")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--sort", choices=TOP_SORTS, default="exits", help="order of partitions and processes")
    p.add_argument("--once", action="store_true", help="one sample (two status reads --interval apart), then exit")
    p.add_argument("--iterations", type=int, default=0, help="exit after this many samples (0: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per sample, one per line")


def hist_since(now: Histogram, before: Histogram | None) -> Histogram:
    """The samples ``now`` has that ``before`` had not (histograms only grow; a smaller one
    means the VP started over, and then everything in ``now`` is new)."""
    if before is None or now.n < before.n or any(now.counts.get(b, 0) < k for b, k in before.counts.items()):
        return now
    counts = {b: k - before.counts.get(b, 0) for b, k in now.counts.items() if k > before.counts.get(b, 0)}
    if not counts:
        return Histogram()
    return Histogram(counts, now.n - before.n, now.total - before.total, 0,
                     min(now.hi, bucket_upper(max(counts))))


def thread_ctx_switches(h: psutil.Process) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of a process (psutil's
    num_ctx_switches of the process counts its main thread only on Linux)."""
    vol = invol = 0
    try:
        tids = [t.id for t in h.threads()]
    except psutil.Error:
        tids = []
    for tid in tids:
        try:
            c = psutil.Process(tid).num_ctx_switches() if tid != h.pid else h.num_ctx_switches()
        except psutil.Error:
            continue
        vol, invol = vol + c.voluntary, invol + c.involuntary
    if not tids:
        c = h.num_ctx_switches()
        vol, invol = c.voluntary, c.involuntary
    return vol, invol


class ProcSampler:
    """pid, CPU %, RSS, threads and context switches of each process of a run, between
    one sample and the next (as top and xentop show them)."""

    def __init__(self) -> None:
        self.handles: dict[tuple[str, int], psutil.Process | None] = {}
        self.last_ctx: dict[tuple[str, int], int] = {}
        self.last_t = time.monotonic()

    @staticmethod
    def processes(man: dict) -> dict[str, int]:
        return {"launcher": man.get("launcher_pid"), **{k: v.get("pid") for k, v in man.get("processes", {}).items()}}

    def _handle(self, key: tuple[str, int]) -> psutil.Process | None:
        if key not in self.handles:
            try:
                h = psutil.Process(key[1])
                h.cpu_percent(None)
            except (psutil.Error, TypeError, ValueError):
                h = None
            self.handles[key] = h
        return self.handles[key]

    def prime(self, man: dict) -> None:
        for key in self.processes(man).items():
            h = self._handle(key)
            if h is not None:
                try:
                    self.last_ctx[key] = sum(thread_ctx_switches(h))
                except psutil.Error:
                    pass
        self.last_t = time.monotonic()

    def sample(self, man: dict) -> list[dict]:
        now = time.monotonic()
        dt, self.last_t = now - self.last_t, now
        rows = []
        for key in self.processes(man).items():
            name, pid = key
            row = {"name": name, "pid": pid, "alive": False, "cpu_percent": None, "rss_bytes": None,
                   "threads": None, "ctx_switches": None, "ctx_switches_per_s": None}
            h = self._handle(key)
            try:
                if h is not None and h.is_running() and h.status() != psutil.STATUS_ZOMBIE:
                    with h.oneshot():
                        row.update(alive=True, cpu_percent=round(h.cpu_percent(None), 1),
                                   rss_bytes=h.memory_info().rss, threads=h.num_threads())
                    vol, invol = thread_ctx_switches(h)
                    row["ctx_switches"] = {"voluntary": vol, "involuntary": invol}
                    before = self.last_ctx.get(key)
                    if before is not None and dt > 0:
                        row["ctx_switches_per_s"] = round(max(0, vol + invol - before) / dt, 1)
                    self.last_ctx[key] = vol + invol
            except psutil.Error:
                row["alive"] = False
            rows.append(row)
        return rows


def _per_s(now: dict, was: dict, keys, dt: float) -> dict | None:
    """Rates of counters over ``dt`` s (None when dt is 0); a counter that went down started
    over (a channel reopened): all of it is new."""
    if dt <= 0:
        return None
    out = {}
    for k in keys:
        n, w = now.get(k, 0), was.get(k, 0)
        out[k] = round((n - w if n >= w else n) / dt, 1)
    return out


def vmbus_sample(before: dict | None, after: dict | None) -> tuple[dict[int, dict], dict | None]:
    """Per partition id its VMBus figures, and the switch's, from two ``vsp-status.json``
    reads: rates over the VSP's own clock between the two writes (None when the VSP has
    not written since the last sample).  ({}, None) for a run without a VSP."""
    if not after:
        return {}, None
    before = before or {}
    dt = (after.get("written_ns", 0) - before.get("written_ns", 0)) / 1e9 if before.get("written_ns") else 0.0
    out = {}
    for pid, bus in after.get("partitions", {}).items():
        old = before.get("partitions", {}).get(pid, {})
        devices = after.get("devices", {}).get(pid, {})
        old_devices = before.get("devices", {}).get(pid, {})
        chans = {}
        for relid, ch in bus.get("channels", {}).items():
            c = {k: v for k, v in ch.items() if k not in ("work_ns", "drains")}
            c["per_s"] = _per_s(ch, old.get("channels", {}).get(relid, {}), VMBUS_RATES, dt) if "packets_in" in ch \
                else None
            for ring in ("to_host", "to_guest"):
                used, size = ch.get(f"{ring}_bytes"), ch.get(f"{ring}_size")
                if isinstance(used, int) and size:
                    c[f"{ring}_percent"] = round(100 * used / size, 1)
            c["refused"] = sum((devices.get(relid) or {}).get("errors", {}).values())
            chans[relid] = c
        refused = sum(bus.get("errors", {}).values()) + sum(c["refused"] for c in chans.values())
        was_refused = sum(old.get("errors", {}).values()) + sum(
            sum((d or {}).get("errors", {}).values()) for d in old_devices.values())
        rate = _per_s({"refused": refused}, {"refused": was_refused}, ("refused",), dt)
        out[int(pid)] = {"version": bus.get("version", 0), "messages": bus.get("messages", 0),
                         "gpadls": bus.get("gpadls", 0), "errors": bus.get("errors", {}), "channels": chans,
                         "refused": refused, "refused_per_s": rate and rate["refused"]}
    sw = after.get("switch")
    switch = None
    if sw:
        rates = _per_s(sw, before.get("switch") or {}, ("forwarded", "flooded"), dt) or {}
        switch = {"table_size": len(sw.get("table", {})), "table": sw.get("table", {}),
                  "forwarded": sw.get("forwarded", 0), "flooded": sw.get("flooded", 0),
                  "forwarded_per_s": rates.get("forwarded"), "flooded_per_s": rates.get("flooded")}
        if "external" in sw:
            switch["external"] = sw["external"]
    return out, switch


def top_sample(run_name: str, man: dict, before: HypervisorStatus, after: HypervisorStatus, procs: list[dict],
               sort: str, fallback_dt: float, vsp_before: dict | None = None, vsp_after: dict | None = None) -> dict:
    """One frame of `top` from two status replies: rates are their difference over the
    hypervisor's own uptime between them (and, for VMBus, two reads of the VSP's
    ``vsp-status.json``)."""
    dt = after.uptime_s - before.uptime_s
    if dt <= 0:
        dt = fallback_dt
    names = partition_names(man)
    vmbus, switch = vmbus_sample(vsp_before, vsp_after)
    prev = {p.id: p for p in before.partitions}
    by_name = {p["name"]: p for p in procs}
    parts = []
    for p in after.partitions:
        name = names.get(p.id, str(p.id))
        old = prev.get(p.id)
        exits, old_exits = exit_totals(p), exit_totals(old) if old else {}
        rates = {k: round(max(0, v - old_exits.get(k, 0)) / dt, 1) for k, v in exits.items()}
        states: dict[str, int] = {"running": 0, "intercept": 0, "halted": 0}
        for vp in p.vps:
            states[vp.state] = states.get(vp.state, 0) + 1
        paths = {}
        old_paths = old.paths if old else {}
        for path in path_order(p.paths):
            total = p.paths[path].total
            was = old_paths[path].total if path in old_paths else None
            new = hist_since(total, was)
            paths[path] = {"count": total.n, "per_s": round(new.n / dt, 1),
                           "p50_us": us_value(total.percentile(50)), "p99_us": us_value(total.percentile(99)),
                           "interval": {"count": new.n, "p50_us": us_value(new.percentile(50)),
                                        "p99_us": us_value(new.percentile(99))}}
        mine = [by_name[k] for k in (f"worker:{name}", f"partition:{name}") if k in by_name]
        parts.append({
            "name": name, "id": p.id, "state": p.state, "worker": p.worker,
            "vps": {"total": len(p.vps), **states}, "exits": exits, "exits_per_s": rates,
            "exits_per_s_total": round(sum(rates.values()), 1), "faults": sum(vp.faults for vp in p.vps),
            "worker_timeouts": p.worker_timeouts,
            "cpu_percent": round(sum(r["cpu_percent"] or 0 for r in mine), 1),
            "rss_bytes": sum(r["rss_bytes"] or 0 for r in mine),
            "ctx_switches_per_s": round(sum(r["ctx_switches_per_s"] or 0 for r in mine), 1),
            "paths": paths,
            # SynIC counters and their rates (issue 10).
            "synic": dict(p.synic), "synic_per_s": {k: round(max(0, v - (old.synic.get(k, 0) if old else 0)) / dt, 1)
                                                    for k, v in p.synic.items() if k != "queued"},
            "vmbus": vmbus.get(p.id)})
    part_key = {
        "name": lambda p: p["name"], "exits": lambda p: (-p["exits_per_s_total"], p["name"]),
        "cpu": lambda p: (-p["cpu_percent"], p["name"]), "rss": lambda p: (-p["rss_bytes"], p["name"]),
        "ctxsw": lambda p: (-p["ctx_switches_per_s"], p["name"]),
    }[sort]
    parts.sort(key=part_key)
    part_rate = {f"{role}:{p['name']}": p["exits_per_s_total"] for p in parts for role in ("worker", "partition")}
    part_rate["hypervisor:hv"] = sum(p["exits_per_s_total"] for p in parts)
    proc_key = {
        "name": lambda r: r["name"], "exits": lambda r: (-part_rate.get(r["name"], -1), r["name"]),
        "cpu": lambda r: (-(r["cpu_percent"] or 0), r["name"]), "rss": lambda r: (-(r["rss_bytes"] or 0), r["name"]),
        "ctxsw": lambda r: (-(r["ctx_switches_per_s"] or 0), r["name"]),
    }[sort]
    counters = after.counters
    return {
        "run": run_name, "time": datetime.now(timezone.utc).isoformat(), "interval_s": round(dt, 3), "sort": sort,
        "hypervisor": {"pid": after.pid, "uptime_s": round(after.uptime_s, 3), "peers": after.peers,
                       "counters": counters,
                       "messages_per_s": round(max(0, counters.get("messages", 0)
                                                   - before.counters.get("messages", 0)) / dt, 1)},
        "partitions": parts, "switch": switch, "processes": sorted(procs, key=proc_key)}


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f} MiB"


def _rate(per_s: dict | None, key: str) -> str:
    """A rate as top shows it: "-" when there is none yet; tenths below 10 (signals are rare)."""
    if per_s is None or per_s.get(key) is None:
        return "-"
    v = per_s[key]
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


def _ring(c: dict, ring: str) -> str:
    if c.get("occupancy") == "corrupt":
        return "corrupt"
    used = c.get(f"{ring}_bytes")
    if used is None:
        return "-"
    pct = c.get(f"{ring}_percent")
    return f"{used} B" + (f" {pct:.0f}%" if pct is not None else "")


def vmbus_lines(v: dict) -> list[str]:
    version = v["version"]
    refused = v["refused"]
    head = (f"  vmbus {f'{version >> 16}.{version & 0xFFFF}' if version else 'not connected'}: "
            f"{len(v['channels'])} channel(s), {v['gpadls']} GPADLs, refused {refused}"
            + f" ({_rate(v, 'refused_per_s')}/s)")
    if v.get("errors"):
        head += ": " + ", ".join(f"{k} {n}" for k, n in v["errors"].items())
    rows = [[str(relid), c.get("device", "?"), c.get("state", "?"), _rate(c.get("per_s"), "packets_in"),
             _rate(c.get("per_s"), "packets_out"), _rate(c.get("per_s"), "signals_out"),
             _rate(c.get("per_s"), "signals_suppressed"), _rate(c.get("per_s"), "events_in"),
             _ring(c, "to_host"), _ring(c, "to_guest"), str(c.get("backlog", "-")), str(c["refused"])]
            for relid, c in v["channels"].items()]
    out = [head]
    if rows:
        out.append(indent(table(["chan", "device", "state", "in/s", "out/s", "sig/s", "suppr/s", "guest sig/s",
                                 "ring to host", "ring to guest", "backlog", "refused"], rows, "lll" + "r" * 9)))
    return out


def switch_line(sw: dict) -> str:
    table_text = ", ".join(f"{mac} → {port}" for mac, port in sw["table"].items()) or "empty"
    return (f"virtual switch: {sw['table_size']} MAC(s), forwarded {sw['forwarded']} "
            f"({_rate(sw, 'forwarded_per_s')}/s), flooded {sw['flooded']} ({_rate(sw, 'flooded_per_s')}/s); "
            f"{table_text}")


def render_top(s: dict) -> str:
    hv = s["hypervisor"]
    c = hv["counters"]
    lines = [f"hvstack top — run {s['run']}   hypervisor up {hv['uptime_s']:.1f} s, {hv['peers']} peers, "
             f"{hv['messages_per_s']:.0f} messages/s   every {s['interval_s']:.1f} s, sorted by {s['sort']}",
             "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items() if k != "messages"), ""]
    rows = [[p["name"], str(p["id"]), p["state"], str(p["vps"]["total"]), str(p["vps"]["running"]),
             str(p["vps"]["intercept"]), str(p["vps"]["halted"]), f"{p['exits_per_s_total']:.0f}",
             str(sum(p["exits"].values())), str(p["faults"]), str(p["worker_timeouts"]), f"{p['cpu_percent']:.0f}%",
             _mib(p["rss_bytes"])] for p in s["partitions"]]
    lines.append(table(["partition", "id", "state", "VPs", "run", "icpt", "halt", "exits/s", "exits", "faults",
                        "wto", "CPU", "RSS"], rows, "lrlrrrrrrrrrr"))
    for p in s["partitions"]:
        total = sum(p["exits"].values()) or 1
        erows = [[k, str(v), f"{100 * v / total:.1f}", f"{p['exits_per_s'].get(k, 0):.0f}"]
                 for k, v in sorted(p["exits"].items(), key=lambda kv: (-p["exits_per_s"].get(kv[0], 0), -kv[1]))
                 if v]
        lines += ["", f"{p['name']}: exits by reason"]
        if erows:
            lines.append(indent(table(["reason", "total", "%total", "now/s"], erows)))
        syn = p.get("synic", {})
        if any(syn.values()):
            rate = p.get("synic_per_s", {})
            lines.append(f"  synic: messages posted {syn.get('messages_posted', 0)} ({rate.get('messages_posted', 0):.0f}/s), "
                         f"slots busy {syn.get('slots_busy', 0)}, signals {syn.get('signals', 0)} "
                         f"({rate.get('signals', 0):.0f}/s), queued {syn.get('queued', 0)}, "
                         f"stimer fired {syn.get('stimer_fired', 0)} ({rate.get('stimer_fired', 0):.0f}/s) "
                         f"missed {syn.get('stimer_missed', 0)}")
        if p.get("vmbus"):
            lines += vmbus_lines(p["vmbus"])
        prows = [[path_label(k), str(v["count"]), f"{v['per_s']:.0f}", f"{v['p50_us']:.1f}",
                  f"{v['p99_us']:.1f}", *((f"{v['interval']['p50_us']:.1f}", f"{v['interval']['p99_us']:.1f}")
                                           if v["interval"]["count"] else ("-", "-"))]
                 for k, v in p["paths"].items()]
        if prows:
            lines.append(indent(table(["path", "count", "now/s", "p50 µs", "p99 µs", "now p50", "now p99"], prows)))
    if s.get("switch"):
        lines += ["", switch_line(s["switch"])]
    prows = []
    for r in s["processes"]:
        if not r["alive"]:
            prows.append([r["name"], str(r["pid"]), "gone", "", "", "", ""])
            continue
        ctx = r["ctx_switches"]
        prows.append([r["name"], str(r["pid"]), f"{r['cpu_percent']:.0f}%", _mib(r["rss_bytes"]), str(r["threads"]),
                      f"{ctx['voluntary']}/{ctx['involuntary']}",
                      "" if r["ctx_switches_per_s"] is None else f"{r['ctx_switches_per_s']:.0f}"])
    lines += ["", table(["process", "pid", "CPU", "RSS", "threads", "ctxsw vol/invol", "ctxsw/s"], prows, "lrrrrrr")]
    return "\n".join(lines)


class Watched:
    """One run that `top` samples: its client, its processes, its last status read."""

    def __init__(self, run, man: dict) -> None:
        self.run, self.man = run, man
        self.root = RootClient(man["endpoint"], run.secret(), server_key=man.get("server_key"))
        self.sampler = ProcSampler()
        self.sampler.prime(man)
        try:
            self.before = HypervisorStatus.from_wire(status_while_live(self.root, run))
        except BaseException:
            self.root.close()
            raise
        self.t_before = time.monotonic()
        self.vsp_before = vsp_status.load(run.path)  # None: the run has no VSP process

    def sample(self, sort: str) -> dict:
        after, t_after = HypervisorStatus.from_wire(status_while_live(self.root, self.run)), time.monotonic()
        vsp_after = vsp_status.load(self.run.path)
        man = self.run.manifest()
        sample = top_sample(self.run.name, man, self.before, after, self.sampler.sample(man), sort,
                            t_after - self.t_before, self.vsp_before, vsp_after)
        self.before, self.t_before, self.vsp_before = after, t_after, vsp_after
        return sample


def run(args) -> int:
    """A live view of a run, as xentop and kvm_stat give one: refreshed every --interval.
    Of a run of hosts (root/cluster.py), each host's run, one after the other."""
    top = find_run(args.run)
    top_man = top.manifest()
    if top_man.get("cluster"):
        live_run(args.run)  # (an error if the run of hosts has ended)
        runs = {name: live_run(str(r.path)) for name, r in host_runs(top_man).items()}
    else:
        runs = {None: follow.live_run_following(args.run)}
    if args.interval <= 0:
        complain(NAME, "--interval must be > 0")
        return 2
    clear = sys.stdout.isatty() and not args.json
    shown = 0
    watched: dict = {}
    try:
        for host, (run, man) in runs.items():
            watched[host] = Watched(run, man)
        while True:
            time.sleep(args.interval)
            samples = {host: w.sample(args.sort) for host, w in watched.items()}
            if None in samples:
                text = json.dumps(samples[None], ensure_ascii=False) if args.json else render_top(samples[None])
            elif args.json:
                text = json.dumps({"run": top.name, "hosts": samples}, ensure_ascii=False)
            else:
                text = "\n\n".join(f"host {host}\n{render_top(s)}" for host, s in samples.items())
            sys.stdout.write((CLEAR_SCREEN if clear else "") + text + ("\n" if args.json or clear else "\n\n"))
            sys.stdout.flush()
            shown += 1
            if args.once or (args.iterations and shown >= args.iterations):
                return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`top --json | head -1`): not an error, and nothing more to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for w in watched.values():
            w.root.close()
