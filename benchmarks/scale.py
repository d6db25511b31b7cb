"""``bench --scale``: how the stack behaves as partitions are added, beside a floor that
grows the same way; and ``bench --startup``: launch to banners and memory per process.

At each N (1, 2, 4, 8, 16 by default) the stack runs N partitions of one VP each doing
emulated port I/O (4 hops through its own worker) on N logical processors (at least 2); the
floor runs N client processes through one relay to N echo processes (4 hops each: the same
2N + 1 processes, minus the launcher).  One LP per VP, because the floor's N clients are
never kept from sending: a VP holds its LP from its dispatch to its next exit, and here
that is a resume's and an exit's transport through a loaded host (about a millisecond),
not the microseconds of a VM entry — on 2 LPs, 2 VPs at a time could have an exit under
way, and at N = 8 four to five of them waited for an LP at any moment (half the exits/s of
8 LPs, 06:30 UTC 2026-11-30).  Over a window of steady state: aggregate round trips per
second, each partition's (client's) p50 and p99, CPU per round trip of all processes, the
hypervisor's (relay's) RSS; and the stack's launch to all banners.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.cpu import (cpu_seconds, per_round_trip, print_profile, process_kind, profile_from_now, profiled,
                            run_pids)
from benchmarks.floor import start_floor, stop_floor
from benchmarks.progress import Progress
from benchmarks.saturation import compare, snapshot
from proto.stats import Histogram, PathStats
from root import REPO
from root.commands.common import complain
from root.procs import die_with_parent
from root.report import table

BANNER = "hvstack guest kernel"
WARMUP_S = 1.0  # after the banners, before the first window
SETTLE_S = 0.3  # after a side is resumed, before its window
SCALE_ROUNDS = 3  # pairs of windows at each N (bench --scale-rounds)


def topology(n: int, workload: str = "portio", chipset: str = "minimal", lps: int | None = None) -> str:
    """N one-VP partitions on ``lps`` logical processors (by default one each, at least 2)."""
    parts = "".join(f"""
[[partition]]
name = "p{i}"
vps = 1
memory_mb = 4
chipset = "{chipset}"
workloads = ["{workload}"]
""" for i in range(n))
    return f"""[run]
name = "bench-scale-{n}"
duration_s = 0
logical_processors = {lps if lps is not None else max(2, n)}
{parts}"""


def _window(h1: Histogram, h0: Histogram) -> Histogram:
    """The samples recorded between two snapshots of one cumulative histogram."""
    counts = {b: k - h0.counts.get(b, 0) for b, k in h1.counts.items() if k - h0.counts.get(b, 0) > 0}
    return Histogram(counts, h1.n - h0.n, h1.total - h0.total, h0.lo, h1.hi)


def _io(status: dict) -> dict[int, tuple[int, Histogram]]:
    """Each partition's io_port exits and round-trip histogram."""
    out = {}
    for p in status["partitions"]:
        exits = sum(vp["exits"].get("io_port", 0) for vp in p["vps"])
        wire = p["paths"].get("io_port")
        out[p["id"]] = (exits, PathStats.from_wire(wire).total if wire else Histogram())
    return out


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    """The largest RSS (MB) per process kind."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            rss = psutil.Process(pid).memory_info().rss / 1e6
        except psutil.Error:
            continue
        kind = process_kind(name)
        out[kind] = round(max(out.get(kind, 0.0), rss), 1)
    return out


def start_and_wait_for_banners(n: int, run_root: Path, timeout_s: float, workload: str = "portio",
                               chipset: str = "minimal"):
    """Start N partitions; the run and the seconds from launch to every banner."""
    from root.testrun import start_run

    config = run_root.parent / f"scale-{n}.toml"
    config.write_text(topology(n, workload, chipset))
    t0 = time.monotonic()
    run = start_run(config, run_root, 0, timeout_s)
    try:
        deadline = t0 + timeout_s
        waiting = {f"p{i}" for i in range(n)}
        while waiting:
            waiting = {p for p in waiting if BANNER not in run.console(p)}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no banner from {', '.join(sorted(waiting))} within {timeout_s:g} s")
            time.sleep(0.01)
    except BaseException:
        run.stop()
        raise
    return run, time.monotonic() - t0


class StackSide:
    """N one-VP partitions doing port I/O, started and past their banners; between its
    windows its partitions are paused (``ctl pause``: each VP held at its next exit), so
    that the floor's windows have the cores."""

    kind = "stack"

    def __init__(self, n: int, run_root: Path, timeout_s: float = 120.0, profile: str | None = None) -> None:
        self.n = n
        with profiled(profile):
            self.run, self.banners_s = start_and_wait_for_banners(n, run_root, timeout_s)
        try:
            self.pids = run_pids(self.run)
            self.ids = [self.run.partition_id(f"p{i}") for i in range(n)]
        except BaseException:
            self.run.stop()
            raise

    def pause(self) -> None:
        for pid in self.ids:
            self.run.client().control(pid, "pause")

    def resume(self) -> None:
        for pid in self.ids:
            self.run.client().control(pid, "resume")

    def window(self, window_s: float) -> dict:
        s0, c0, t0 = _io(self.run.stats()), cpu_seconds(self.pids), snapshot(self.pids)
        time.sleep(window_s)
        t1, c1, s1 = snapshot(self.pids), cpu_seconds(self.pids), _io(self.run.stats())
        per = {pid: (s1[pid][0] - s0[pid][0], _window(s1[pid][1], s0.get(pid, (0, Histogram()))[1])) for pid in s1}
        total = sum(k for k, _ in per.values())
        rss = _rss_mb(self.pids)
        return _figures(self.n, total, window_s, [h.percentile(50) for _, h in per.values()],
                        [h.percentile(99) for _, h in per.values()], _cpu(c0, c1), rss.get("hypervisor", 0.0),
                        banners_s=round(self.banners_s, 2), rss_mb=rss,
                        cpu_us_by_process=per_round_trip(c0, c1, total, window_s)["by_process_us"],
                        saturation=compare(t0, t1, window_s, total, process_kind))

    def close(self) -> None:
        self.run.stop()


class FloorSide:
    """N floor clients → one relay → N echoes (benchmarks/floor.py ``scale_client``); between
    its windows its clients are paused (each after its round trip under way), which leaves
    the relay and the echoes waiting in their polls: the stack's windows have the cores."""

    kind = "floor"

    def __init__(self, n: int) -> None:
        self.n = n
        self.relay, self.echoes, endpoint, self._dir = start_floor([])
        self.clients: list[subprocess.Popen] = []
        try:
            cmd = [sys.executable, "-m", "benchmarks.floor"]
            self.echoes += [subprocess.Popen([*cmd, "echo", endpoint, str(i)], cwd=REPO, preexec_fn=die_with_parent,
                                             start_new_session=True) for i in range(n)]
            self.clients = [subprocess.Popen([*cmd, "client", endpoint, str(i)], cwd=REPO, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, preexec_fn=die_with_parent,
                                             start_new_session=True) for i in range(n)]
            for c in self.clients:
                _line(c, "READY", 60)
        except BaseException:
            self.close()
            raise
        self.pids = {"relay": self.relay.pid, **{f"echo:{i}": p.pid for i, p in enumerate(self.echoes)},
                     **{f"client:{i}": p.pid for i, p in enumerate(self.clients)}}

    def _signal(self, signum: int) -> None:
        for c in self.clients:
            c.send_signal(signum)

    def pause(self) -> None:
        self._signal(signal.SIGUSR2)
        for c in self.clients:
            _line(c, "PAUSED", 10)

    def resume(self) -> None:
        for c in self.clients:
            c.stdin.write(b"\n")
            c.stdin.flush()

    def window(self, window_s: float) -> dict:
        self._signal(signal.SIGUSR1)  # the window starts
        for c in self.clients:
            _line(c, "{}", 10)
        c0, t0 = cpu_seconds(self.pids), snapshot(self.pids)
        time.sleep(window_s)
        t1, c1 = snapshot(self.pids), cpu_seconds(self.pids)
        self._signal(signal.SIGUSR1)  # … and ends
        got = [json.loads(_line(c, None, 10)) for c in self.clients]
        total = sum(g["n"] for g in got)
        return _figures(self.n, total, window_s, [g["p50_ns"] for g in got], [g["p99_ns"] for g in got],
                        _cpu(c0, c1), _rss_mb(self.pids).get("relay", 0.0),
                        cpu_us_by_process=per_round_trip(c0, c1, total, window_s)["by_process_us"],
                        saturation=compare(t0, t1, window_s, total, process_kind))

    def close(self) -> None:
        for c in self.clients:
            if c.poll() is None:
                c.kill()
            c.wait()
            c.stdin.close()
            c.stdout.close()
        stop_floor(self.relay, self.echoes, self._dir)


def _cpu(c0: dict[str, float], c1: dict[str, float]) -> float:
    return sum(c1[k] - c0[k] for k in c1 if k in c0)


def measure_pair(n: int, window_s: float, rounds: int = SCALE_ROUNDS, profile: str | None = None,
                 progress: Progress | None = None) -> dict:
    """The stack and the floor at N, both started, measured in ``rounds`` pairs of windows
    that take turns (the other side paused; each pair's order the reverse of the last's,
    so a drift of the host's pace falls on both): on a shared host the pace moves by a
    quarter within seconds, and two windows a minute apart compared that, not the stack.
    The row holds the pair whose ratio is the median, and every pair's ratio."""
    with tempfile.TemporaryDirectory(prefix="hvscale") as d:
        run_root = Path(d) / "runs"
        run_root.mkdir(mode=0o700)
        stack = StackSide(n, run_root, profile=profile)
        try:
            floor = FloorSide(n)
            try:
                stack.pause()
                floor.pause()
                time.sleep(SETTLE_S)
                if profile:
                    profile_from_now(stack.pids)
                pairs = []
                for k in range(rounds):
                    if progress is not None:
                        progress.step()
                    got = {}
                    for side, other in ((stack, floor), (floor, stack))[::1 if k % 2 == 0 else -1]:
                        side.resume()
                        time.sleep(SETTLE_S + (WARMUP_S if k == 0 else 0.0))
                        o0 = cpu_seconds(other.pids)
                        got[side.kind] = fig = side.window(window_s)
                        # What the paused side still took meanwhile (its timers, health checks).
                        fig["other_side_cores"] = round(_cpu(o0, cpu_seconds(other.pids)) / window_s, 3)
                        side.pause()
                    pairs.append(got)
            finally:
                floor.close()
        finally:
            stack.close()
    return _row(n, pairs)


def _row(n: int, pairs: list[dict]) -> dict:
    """The median pair's figures (by aggregate ratio), and every pair's ratios."""
    def ratio(p: dict) -> float:
        return p["stack"]["per_s"] / p["floor"]["per_s"] if p["floor"]["per_s"] else 0.0

    def ratio_per_cpu(p: dict) -> float:
        return p["floor"]["cpu_us_per_round_trip"] / p["stack"]["cpu_us_per_round_trip"] \
            if p["stack"]["cpu_us_per_round_trip"] else 0.0

    ranked = sorted(pairs, key=ratio)
    mid = ranked[(len(ranked) - 1) // 2]
    return {"n": n, "stack": mid["stack"], "floor": mid["floor"], "ratio": round(ratio(mid), 3),
            "ratio_per_cpu": round(ratio_per_cpu(mid), 3),
            "ratios": [round(ratio(p), 3) for p in pairs], "ratios_per_cpu": [round(ratio_per_cpu(p), 3) for p in pairs]}


def _line(proc: subprocess.Popen, expected: str | None, timeout_s: float) -> str:
    """The next line a floor client prints (``expected`` if given), within ``timeout_s``."""
    import select

    if not select.select([proc.stdout], [], [], timeout_s)[0]:
        raise TimeoutError(f"a floor client said nothing within {timeout_s:g} s")
    line = proc.stdout.readline().decode().strip()
    if expected is not None and line != expected:
        raise RuntimeError(f"a floor client said {line!r}, not {expected!r}")
    return line


def _figures(n: int, round_trips: int, window_s: float, p50s: list[int], p99s: list[int], cpu_s: float,
             server_rss_mb: float, **more) -> dict:
    p50s, p99s = sorted(p50s), sorted(p99s)
    return {"n": n, "round_trips": round_trips, "per_s": round(round_trips / window_s, 1),
            "p50_us_median": round(p50s[len(p50s) // 2] / 1000, 1) if p50s else 0.0,
            "p50_us_max": round(p50s[-1] / 1000, 1) if p50s else 0.0,
            "p99_us_max": round(p99s[-1] / 1000, 1) if p99s else 0.0,
            "cpu_us_per_round_trip": round(cpu_s / max(1, round_trips) * 1e6, 1),
            "cpu_s_per_s": round(cpu_s / window_s, 2), "server_rss_mb": server_rss_mb, **more}


def run_scale(args) -> int:
    window = min(3.0, max(0.5, args.duration / 3))
    counts, rounds = args.scale_partitions, args.scale_rounds
    progress = Progress([(f"N = {n}: round {k + 1} of {rounds}", 2 * (window + SETTLE_S) + (WARMUP_S + 2.0 + n * 0.3
                                                                                            if k == 0 else 0.0))
                         for n in counts for k in range(rounds)], enabled=args.progress)
    rows = []
    try:
        for n in counts:
            rows.append(measure_pair(n, window, rounds, profile=args.profile if n == counts[-1] else None,
                                     progress=progress))
    except (TimeoutError, RuntimeError, OSError) as e:
        progress.close()
        complain("bench", f"--scale: {e}")
        return 1
    finally:
        progress.close()
    result = {"scale": rows, "window_s": window, "rounds": rounds, "cores": psutil.cpu_count(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print_scale(result)
        if args.profile:
            try:
                print_profile(args.profile)
            except (OSError, TypeError, ValueError) as e:
                complain("bench", f"--profile {args.profile}: no statistics: {e}")
    if args.plot:
        from benchmarks.plot import plot_scale

        try:
            plot_scale(args.plot, rows)
        except (OSError, ValueError, RuntimeError) as e:
            complain("bench", f"--plot {args.plot}: not drawn: {e}")
            return 1
    return 0


def print_scale(result: dict) -> None:
    rows = []
    for r in result["scale"]:
        st, fl = r["stack"], r["floor"]
        rows.append([str(r["n"]), f"{st['per_s']:.0f}", f"{fl['per_s']:.0f}",
                     _spread(r["ratio"], r["ratios"]), _spread(r["ratio_per_cpu"], r["ratios_per_cpu"]),
                     f"{st['p50_us_median']:.0f} / {st['p99_us_max']:.0f}", f"{fl['p50_us_median']:.0f} / {fl['p99_us_max']:.0f}",
                     f"{st['cpu_us_per_round_trip']:.0f}", f"{fl['cpu_us_per_round_trip']:.0f}",
                     f"{st['cpu_s_per_s']:.2f} / {fl['cpu_s_per_s']:.2f}",
                     f"{st['server_rss_mb']:.0f}", f"{st['banners_s']:.2f}"])
    print(f"scaling, N partitions × 1 VP of emulated port I/O beside N floor clients → 1 relay → N echoes "
          f"({result['cores']} cores; at each N both started, then {result['rounds']} pairs of {result['window_s']:.2f} s "
          f"windows taking turns, the other side paused; the pair of the median ratio, all pairs' range in brackets; "
          f"{result['started']}):")
    print(table(["N", "stack exits/s", "floor /s", "ratio", "ratio per CPU-s", "stack p50 / p99 µs", "floor p50 / p99 µs",
                 "stack CPU µs/rt", "floor CPU µs/rt", "cores busy stack / floor", "hv RSS MB",
                 "launch → banners s"], rows, "r" * 12))
    print("\nwhere the CPU per round trip goes (µs, by process kind), the stack's beside the floor's "
          "(its relay is the hypervisor's part, its clients the partitions', its echoes the workers'):")
    kinds = sorted({k for r in result["scale"] for k in r["stack"].get("cpu_us_by_process", {})})
    floor_kinds = ("relay", "client", "echo")
    print(table(["N", *kinds, *(f"floor {k}" for k in floor_kinds)],
                [[str(r["n"]), *(f"{r['stack'].get('cpu_us_by_process', {}).get(k, 0):.0f}" for k in kinds),
                  *(f"{r['floor'].get('cpu_us_by_process', {}).get(k, 0):.0f}" for k in floor_kinds)]
                 for r in result["scale"]], "r" * (1 + len(kinds) + len(floor_kinds))))
    print_saturation(result["scale"])
    sys.stdout.flush()


def _spread(value: float, values: list[float]) -> str:
    """``0.78× (0.70–0.85)``: the median pair's ratio and the range of all pairs'."""
    if len(values) < 2:
        return f"{value:.2f}×"
    return f"{value:.2f}× ({min(values):.2f}–{max(values):.2f})"


def _sum(sat: dict, field: str) -> float:
    return sum(k[field] for k in sat.get("by_kind", {}).values())


def print_saturation(rows: list[dict]) -> None:
    """Which resource runs out first: the host's cores (busy, and the run-queue wait of our
    threads: ready, no core free), or the one loop (the hypervisor's busiest thread against
    the relay's: 1.00 is a core of its own, all the time)."""
    out = []
    for r in rows:
        st, fl = r["stack"].get("saturation"), r["floor"].get("saturation")
        if not st or not fl:
            continue
        sk, fk = st["by_kind"], fl["by_kind"]
        hv, relay = sk.get("hypervisor", {}), fk.get("relay", {})
        out.append([str(r["n"]), f"{st.get('host_busy', 0):.2f} / {fl.get('host_busy', 0):.2f}",
                    f"{_sum(st, 'cpu_cores'):.2f} / {_sum(fl, 'cpu_cores'):.2f}",
                    f"{_sum(st, 'runq_cores'):.2f} / {_sum(fl, 'runq_cores'):.2f}",
                    f"{hv.get('busiest_thread_cores', 0):.2f} / {relay.get('busiest_thread_cores', 0):.2f}",
                    f"{hv.get('runq_cores', 0):.2f} / {relay.get('runq_cores', 0):.2f}",
                    f"{_sum(st, 'vol_per_rt'):.1f} / {_sum(fl, 'vol_per_rt'):.1f}",
                    f"{_sum(st, 'invol_per_rt'):.2f} / {_sum(fl, 'invol_per_rt'):.2f}"])
    if not out:
        return
    print("\nwhat saturates (cores = CPU seconds per second of wall; stack / floor): the host's busy cores "
          "(every process on it), ours, our threads' run-queue wait (ready, no core free), the hypervisor's "
          "loop thread / the relay's, their run-queue wait, context switches per round trip:")
    print(table(["N", "host busy", "our CPU", "our run-queue wait", "hv loop / relay thread",
                 "hv / relay run-queue wait", "voluntary sw/rt", "involuntary sw/rt"], out, "r" * 8))


def run_startup(args) -> int:
    """Launch to first banner (and to all), RSS per process kind, at 1, 4 and 16 partitions
    of the default chipset."""
    counts = [n for n in (1, 4, 16) if n <= max(args.scale_partitions)] or [1]
    rounds = args.startup_rounds
    # N taken in turn, round after round: a shift in the host's load falls on every N alike.
    progress = Progress([(f"N = {n}" + (f", round {k + 1}" if rounds > 1 else ""), 3.0 + n * 0.4)
                         for k in range(rounds) for n in counts], enabled=args.progress)
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        for _ in range(rounds):
            for n in counts:
                progress.step()
                runs[n].append(startup(n))
    except (RuntimeError, OSError) as e:
        progress.close()
        complain("bench", f"--startup: {e}")
        return 1
    finally:
        progress.close()
    rows = [startup_median(runs[n]) for n in counts]
    if args.json:
        print(json.dumps({"startup": rows, **({"rounds": runs} if rounds > 1 else {})}, indent=2), flush=True)
        return 0
    kinds = sorted({k for r in rows for k in r["rss_mb"]})
    print(f"start-up and footprint (gen-1 chipset, serial workload; RSS is each kind's largest process; "
          f"{bytecode_caches()}" + (f"; the median of {rounds} launches, their range in brackets" if rounds > 1
                                    else "") + "):")
    print(table(["N", "launch → first banner s", "launch → all banners s", *(f"{k} MB" for k in kinds)],
                [[str(r["n"]), _secs(r["first_banner_s"], r, "first_range"), _secs(r["all_banners_s"], r, "all_range"),
                  *(f"{r['rss_mb'].get(k, 0):.1f}" for k in kinds)] for r in rows], "r" * (3 + len(kinds))))
    cpu_kinds = sorted({k for r in rows for k in r["cpu_s"]})
    print("\nCPU seconds from launch to the last banner (all processes of a kind), and each partition's exits by then:")
    print(table(["N", *(f"{k} s" for k in cpu_kinds), "total s", "exits median / max", "stores coalesced"],
                [[str(r["n"]), *(f"{r['cpu_s'].get(k, 0):.2f}" for k in cpu_kinds), f"{sum(r['cpu_s'].values()):.2f}",
                  f"{r['exits_per_partition'].get('median', '?')} / {r['exits_per_partition'].get('max', '?')}",
                  str(r["exits_per_partition"].get("coalesced_writes", "?"))] for r in rows],
                "r" * (4 + len(cpu_kinds))))
    return 0


STARTUP_TIMEOUT_S = 60.0


def bytecode_caches() -> str:
    """Whether the processes find their modules compiled: without ``__pycache__`` (a fresh
    checkout run with PYTHONDONTWRITEBYTECODE=1) every process compiles every module it
    imports from source, each start — 1.97 s of the launcher's wall clock at N = 16 on a
    loaded host (2026-11-30 13:03 UTC), the hypervisor and each zygote the same."""
    import importlib.util

    cached = Path(importlib.util.cache_from_source(str(REPO / "hypervisor" / "service.py"))).exists()
    if cached:
        return "bytecode caches present"
    why = " (PYTHONDONTWRITEBYTECODE is set)" if sys.flags.dont_write_bytecode else ""
    return f"no bytecode caches{why}: every process compiles its modules as it starts"


def _secs(value: float | None, r: dict, spread: str = "") -> str:
    text = f"{value:.2f}" if value is not None else f"> {r['timeout_s']:g} ({r['banners']} of {r['n']})"
    if spread in r:
        low, high = r[spread]
        text += f" ({low:.2f}–{high:.2f})" if high is not None else f" ({low:.2f}–> {r['timeout_s']:g})"
    return text


def startup_median(runs: list[dict]) -> dict:
    """One N's launches as one row: the median of each time (a launch that timed out counts
    as the longest), with their range (``first_range``, ``all_range``) when there are several;
    the median of each kind's CPU seconds and of the exits; the largest RSS of each kind."""
    if len(runs) == 1:
        return runs[0]

    def middle(values: list) -> float | None:
        ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
        return ordered[len(ordered) // 2]

    row = dict(runs[len(runs) // 2])  # (n, timeout_s; coalesced stores are alike)
    for key, spread in (("first_banner_s", "first_range"), ("all_banners_s", "all_range")):
        values = [r[key] for r in runs]
        row[key] = middle(values)
        done = sorted(v for v in values if v is not None)
        row[spread] = (done[0] if done else None, done[-1] if len(done) == len(values) else None)
    row["banners"] = middle([r["banners"] for r in runs])
    row["cpu_s"] = {k: middle([r["cpu_s"].get(k, 0.0) for r in runs]) for k in {k for r in runs for k in r["cpu_s"]}}
    row["rss_mb"] = {k: max(r["rss_mb"].get(k, 0.0) for r in runs) for k in {k for r in runs for k in r["rss_mb"]}}
    exits = [r["exits_per_partition"] for r in runs if "median" in r["exits_per_partition"]]
    if exits:
        row["exits_per_partition"] = {**exits[len(exits) // 2],
                                      "median": middle([e["median"] for e in exits]),
                                      "max": max(e["max"] for e in exits)}
    return row


def startup(n: int, timeout_s: float = STARTUP_TIMEOUT_S) -> dict:
    from root.testrun import start_run

    with tempfile.TemporaryDirectory(prefix="hvstart") as d:
        run_root = Path(d) / "runs"
        run_root.mkdir(mode=0o700)
        config = Path(d) / f"start-{n}.toml"
        config.write_text(topology(n, "serial", "gen1", lps=2))  # the default topology's 2 LPs
        t0 = time.monotonic()
        run = start_run(config, run_root, 0, timeout_s)
        try:
            first, every, waiting = None, None, {f"p{i}" for i in range(n)}
            while waiting and time.monotonic() - t0 < timeout_s:
                waiting = {p for p in waiting if not _has_banner(run, p)}
                if first is None and len(waiting) < n:
                    first = time.monotonic() - t0
                # (The watching shares the run's 2 cores: reading 16 consoles every 5 ms
                # took 0.2 CPU-s a second; a stat every 10 ms, a twentieth of that.)
                time.sleep(0.01)
            if not waiting:
                every = time.monotonic() - t0
            # CPU is what a loaded host's waiting does not inflate: every process's user +
            # system seconds from launch to now (all banners, or the timeout), by kind.
            cpu: dict[str, float] = {}
            for name, secs in cpu_seconds(run_pids(run)).items():
                cpu[process_kind(name)] = round(cpu.get(process_kind(name), 0.0) + secs, 2)
            exits = _boot_exits(run)
            time.sleep(0.5)  # settled
            rss = _rss_mb(run_pids(run))
        finally:
            run.stop()
    # A banner that did not come within the timeout is None: measured as "more than".
    return {"n": n, "first_banner_s": round(first, 3) if first else None,
            "all_banners_s": round(every, 3) if every else None, "banners": n - len(waiting),
            "timeout_s": timeout_s, "rss_mb": rss, "cpu_s": cpu, "exits_per_partition": exits}


def _has_banner(run, partition: str) -> bool:
    """Whether the partition's console shows the banner: read only once it has grown to
    the banner's length."""
    try:
        size = (run.path / f"console-{partition}.log").stat().st_size
    except FileNotFoundError:
        return False
    return size >= len(BANNER) and BANNER in run.console(partition)


def _boot_exits(run) -> dict:
    """At the last banner: each partition's exits so far (the boot's, give or take the
    ticks since), their median and the most, and the stores coalesced in all."""
    try:
        parts = run.stats()["partitions"]
    except Exception as e:  # a status that fails must not lose the timings
        return {"error": str(e)}
    counts = sorted(sum(sum(vp["exits"].values()) for vp in p["vps"]) for p in parts)
    return {"median": counts[len(counts) // 2] if counts else 0, "max": counts[-1] if counts else 0,
            "coalesced_writes": sum(p.get("coalesced_mmio", {}).get("writes", 0) for p in parts)}
