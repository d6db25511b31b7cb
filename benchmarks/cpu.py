"""CPU per round trip: the CPU time (user + system, every thread) every process of a run
spent, divided by the round trips it made, beside the same figure for the floor's processes.

CPU time is far less noisy than latency on a shared machine — a process waiting for a core
is not charged for it — so this is the figure that holds regressions.  Stack and floor are
measured the same way: every process whole (its ZeroMQ I/O thread included — the floor's
client is a process of its own, as the partition is), by the kernel's per-process CPU
clock (to the ns; /proc's ticks are 10 ms), over a window of steady state of the same
length, cut into :data:`SLICES` slices of which the cheapest is the figure (contention
only ever adds CPU time).  The stack's window starts after its guests are going (a
partition's boot, the Python imports of every process, is no round trip), the floor's
after its client's first round trips.  The stack and its floor run at once and their
slices take turns (:func:`measure_in_turns`), the other side paused, so that both
minimums come from the same minutes of a shared host; the paced and the decoding floors,
and ``--cpu-layers`` (perf samples a side's whole window), are measured after, each alone.

The stack runs as ``launch.py run`` (``root.testrun``), so that its processes are found by
the run's manifest and its round trips counted from the hypervisor's status: one topology per
path, its workload making only that path's exits.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.floor import start_floor, stop_floor
from root import REPO
from root.procs import die_with_parent

# One workload per path, on an idle one-VP topology without a timer (the PIC tick would add
# exits of its own).
PATH_WORKLOADS = {"io_port": ("portio", 4), "cpuid": ("cpuid", 2), "hypercall": ("hypercall", 2)}
TOPOLOGY = """\
[run]
name = "bench-cpu-{workload}"
duration_s = 0

[[partition]]
name = "bench"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
chipset = "minimal"
workloads = ["{workload}"]
"""
WARMUP_EXITS = 200  # exits of the path seen before the window starts: the guest is going
# The window is cut into this many slices and the cheapest slice is the figure: other load
# on the host only ever adds CPU time (caches, frequency, steal), so the minimum is the
# steadiest estimate of what a round trip costs.
SLICES = 4
SETTLE_S = 0.2  # after a side is resumed (measure_in_turns), before its slice


def _process_clock(pid: int) -> int:
    """The clock ID of process ``pid``'s CPU time (glibc's clock_getcpuclockid: the kernel's
    CPUCLOCK_SCHED clock of the whole thread group)."""
    return (~pid << 3) | 2


def _precise_clock_works() -> bool:
    try:
        time.clock_gettime(_process_clock(os.getpid()))
        return True
    except (OSError, AttributeError):
        return False


# Every thread's user + system time to the nanosecond, where the kernel gives it (Linux).
# /proc's utime and stime, which psutil reads, come in 10 ms clock ticks: over a slice of
# a few thousand round trips that is ±10 µs per round trip per process, and taking the
# cheapest slice picked the luckiest rounding (the floor's relay read exactly 40.0 µs in
# every slice).
PRECISE = _precise_clock_works()


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Each live process's user + system CPU seconds so far, all its threads, by name (a
    gone one: absent)."""
    out = {}
    for name, pid in pids.items():
        try:
            if PRECISE:
                out[name] = time.clock_gettime(_process_clock(pid))
            else:
                t = psutil.Process(pid).cpu_times()
                out[name] = t.user + t.system
        except (OSError, psutil.Error):
            pass
    return out


def process_kind(name: str) -> str:
    """``hypervisor:hv`` → hypervisor, ``worker:bench`` → worker, ``launcher`` → launcher."""
    return name.split(":", 1)[0]


def _path_exits(status: dict, path: str) -> int:
    return sum(vp["exits"].get(path, 0) for p in status["partitions"] for vp in p["vps"])


def run_pids(run) -> dict[str, int]:
    """The run's processes by manifest name, the launcher's and the zygotes' included."""
    man = run.manifest()
    return {"launcher": man["launcher_pid"], **{k: v["pid"] for k, v in man.get("processes", {}).items()},
            **{f"zygote:{k}": v["pid"] for k, v in man.get("zygotes", {}).items()}}


@contextlib.contextmanager
def profiled(stats_file: str | None):
    """Runs started inside run their hypervisor loop under cProfile, its statistics written
    to ``stats_file`` when the hypervisor ends (``HVSTACK_PROFILE_HV``, which root passes to
    the hypervisor alone)."""
    if not stats_file:
        yield
        return
    old = os.environ.get("HVSTACK_PROFILE_HV")
    os.environ["HVSTACK_PROFILE_HV"] = os.path.abspath(stats_file)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HVSTACK_PROFILE_HV", None)
        else:
            os.environ["HVSTACK_PROFILE_HV"] = old


def profile_from_now(pids: dict[str, int]) -> None:
    """The profiled hypervisor forgets what it profiled so far (SIGUSR2): start-up and the
    guests' boot are no steady state.  A hypervisor out of reach (another user's, in the
    strictest isolation) keeps it all."""
    for name, pid in pids.items():
        if process_kind(name) == "hypervisor":
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR2)


def print_profile(stats_file: str, top: int = 20, stream=None) -> None:
    """The functions the hypervisor's loop spent most time in (their own time)."""
    out = stream or sys.stdout
    print(f"\nthe hypervisor's loop from the window's start to its end, cProfile by thread CPU time ({stats_file}; "
          f"`python -m pstats {stats_file}`):", file=out)
    st = pstats.Stats(stats_file, stream=out)
    st.strip_dirs().sort_stats("tottime").print_stats(top)


class StackCounter:
    """A one-partition run of ``path``'s workload, past its first :data:`WARMUP_EXITS`
    exits of that path (a ``with`` block; the run stops at its end); ``pause`` holds its VP
    at its next exit (``ctl pause``) while the floor is measured."""

    def __init__(self, path: str, timeout_s: float = 60.0, profile: str | None = None) -> None:
        from root.testrun import start_run

        workload, _ = PATH_WORKLOADS[path]
        self.path = path
        self._dir = tempfile.TemporaryDirectory(prefix="hvcpu")
        try:
            config = Path(self._dir.name) / "cpu.toml"
            config.write_text(TOPOLOGY.format(workload=workload))
            run_root = Path(self._dir.name) / "runs"
            run_root.mkdir(mode=0o700)
            with profiled(profile):
                self.run = start_run(config, run_root, 0, timeout_s)
        except BaseException:
            self._dir.cleanup()
            raise
        try:
            deadline = time.monotonic() + timeout_s
            while self.made() < WARMUP_EXITS:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: fewer than {WARMUP_EXITS} exits within {timeout_s:g} s")
                time.sleep(0.05)
            self.pids = run_pids(self.run)
            self._id = self.run.partition_id("bench")
            if profile:
                profile_from_now(self.pids)
        except BaseException:
            self.close()
            raise

    def made(self) -> int:
        return _path_exits(self.run.stats(), self.path)

    def pause(self) -> None:
        self.run.client().control(self._id, "pause")

    def resume(self) -> None:
        self.run.client().control(self._id, "resume")

    def close(self) -> None:
        try:
            self.run.stop()
        finally:
            self._dir.cleanup()

    def __enter__(self) -> StackCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_stack_cpu(path: str, window_s: float, timeout_s: float = 60.0, profile: str | None = None,
                      layers: bool = False) -> dict:
    """CPU per round trip of ``path`` (io_port, cpuid, hypercall) on the stack, by process
    kind; with ``profile``, the hypervisor's loop profiled into that file."""
    with StackCounter(path, timeout_s, profile) as stack:
        return measure_window(stack.pids, stack.made, window_s, layers)


def measure_window(pids: dict[str, int], made, window_s: float, layers: bool = False) -> dict:
    """CPU per round trip of the processes ``pids`` over ``window_s`` seconds cut into
    :data:`SLICES` slices, the cheapest the figure; ``made()`` counts the round trips so far.
    ``layers``: also where each process kind's CPU went over the whole window
    (``benchmarks/cpu_layers.py``; perf samples it meanwhile)."""
    recorder = None
    if layers:
        from benchmarks.cpu_layers import Recorder

        recorder = Recorder(pids)
        recorder.start()
    slices, first, n_first = [], cpu_seconds(pids), made()
    try:
        for _ in range(SLICES):
            before, n0 = cpu_seconds(pids), made()
            time.sleep(window_s / SLICES)
            n1, after = made(), cpu_seconds(pids)
            slices.append(per_round_trip(before, after, n1 - n0, window_s / SLICES))
    finally:
        samples = recorder.stop() if recorder is not None else None
    out = cheapest(slices)
    if recorder is not None:
        from benchmarks.cpu_layers import per_round_trip as layer_shares

        whole = per_round_trip(first, after, n1 - n_first, window_s)
        out["layers"] = layer_shares(samples, whole["by_process_us"], process_kind)
        if recorder.error:
            out["layers_error"] = recorder.error
    return out


def cheapest(slices: list[dict]) -> dict:
    """The slice with the least CPU per round trip (of those that made round trips)."""
    made = [s for s in slices if s["round_trips"] > 0] or slices
    return dict(min(made, key=lambda s: s["cpu_us"]), slices=[s["cpu_us"] for s in slices])


def per_round_trip(before: dict[str, float], after: dict[str, float], round_trips: int, window_s: float) -> dict:
    """µs of CPU per round trip, in all and by process kind; round trips per second."""
    by_kind: dict[str, float] = {}
    for name in after:
        if name in before:
            kind = process_kind(name)
            by_kind[kind] = by_kind.get(kind, 0.0) + after[name] - before[name]
    n = max(1, round_trips)
    return {"round_trips": round_trips, "per_s": round(round_trips / window_s, 1),
            "cpu_us": round(sum(by_kind.values()) / n * 1e6, 1),
            "by_process_us": {k: round(v / n * 1e6, 1) for k, v in sorted(by_kind.items())}}


class FloorCounter:
    """The floor with ``hops`` hops — relay, echo and counting client, each a process —
    past its client's first :data:`WARMUP_EXITS` round trips (a ``with`` block); with
    ``pace``, at most that many round trips a second; ``decode``: the decoding floor (each
    process packs and unpacks every message with msgpack: benchmarks/floor.py ``Codec``).
    ``pause`` holds the client after its round trip under way while the stack is measured."""

    def __init__(self, hops: int, timeout_s: float = 30.0, pace: float = 0.0, decode: bool = False) -> None:
        codec = ("decode",) if decode else ()
        self.relay, self.echoes, endpoint, self._dir = start_floor(["echo"], ("relay", *codec), ("", *codec))
        self.client = None
        try:
            self.client = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", "count", endpoint, str(hops),
                                            str(pace), *codec],
                                           cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           preexec_fn=die_with_parent, start_new_session=True)
            if _client_line(self.client, timeout_s) != "READY":
                raise RuntimeError("the floor's client did not start")
            self.pids = {"relay": self.relay.pid, "echo": self.echoes[0].pid, "client": self.client.pid}
            deadline = time.monotonic() + timeout_s
            while self.made() < WARMUP_EXITS:  # every peer connected and warm
                if time.monotonic() > deadline:
                    raise TimeoutError(f"floor: fewer than {WARMUP_EXITS} round trips within {timeout_s:g} s")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def made(self) -> int:
        return _floor_round_trips(self.client)

    def pause(self) -> None:
        self.client.send_signal(signal.SIGUSR2)
        if _client_line(self.client) != "PAUSED":
            raise RuntimeError("the floor's client did not pause")

    def resume(self) -> None:
        self.client.stdin.write(b"\n")
        self.client.stdin.flush()

    def close(self) -> None:
        if self.client is not None:
            self.client.kill()
            self.client.wait()
            self.client.stdin.close()
            self.client.stdout.close()
        stop_floor(self.relay, self.echoes, self._dir)

    def __enter__(self) -> FloorCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_floor_cpu(hops: int, window_s: float, timeout_s: float = 30.0, pace: float = 0.0,
                      decode: bool = False, layers: bool = False) -> dict:
    """CPU per round trip of the floor (:class:`FloorCounter`) over a window of ``window_s``
    seconds cut into as many slices as the stack's, the cheapest slice the figure."""
    with FloorCounter(hops, timeout_s, pace, decode) as floor:
        return measure_window(floor.pids, floor.made, window_s, layers)


def measure_in_turns(stack, floor, window_s: float) -> tuple[dict, dict]:
    """The stack's and the floor's CPU per round trip over :data:`SLICES` slices each of
    ``window_s / SLICES`` seconds, taking turns (the other paused; each pair's order the
    reverse of the last's), the cheapest slice of each its figure: the two minimums come
    from the same minutes of the host, not from two windows a minute apart — between which
    the host's pace, hence both figures, moved by up to a third (s13: the port-I/O ratio
    1.22 → 1.47× in an hour)."""
    slice_s = window_s / SLICES
    slices: dict[int, list[dict]] = {id(stack): [], id(floor): []}
    stack.pause()
    floor.pause()
    for k in range(SLICES):
        for side in ((stack, floor) if k % 2 == 0 else (floor, stack)):
            side.resume()
            time.sleep(SETTLE_S)
            before, n0 = cpu_seconds(side.pids), side.made()
            time.sleep(slice_s)
            n1, after = side.made(), cpu_seconds(side.pids)
            slices[id(side)].append(per_round_trip(before, after, n1 - n0, slice_s))
            side.pause()
    return cheapest(slices[id(stack)]), cheapest(slices[id(floor)])


def _client_line(client: subprocess.Popen, timeout_s: float = 10.0) -> str:
    if not select.select([client.stdout], [], [], timeout_s)[0]:
        raise TimeoutError(f"the floor's client said nothing within {timeout_s:g} s")
    return client.stdout.readline().decode().strip()


def _floor_round_trips(client: subprocess.Popen) -> int:
    """The round trips the floor's client has made so far (it prints them on SIGUSR1)."""
    client.send_signal(signal.SIGUSR1)
    line = _client_line(client)
    if not line.isdigit():
        raise RuntimeError(f"the floor's client said {line!r}, not a count")
    return int(line)


def measure_cpu(window_s: float, progress=None, profile: str | None = None, layers: bool = False) -> dict:
    """Every intercept path's CPU per round trip beside its floor's, each over a window of
    ``window_s`` seconds; ``profile``: the hypervisor's loop of the emulated port I/O run,
    profiled into that file."""
    out = {}
    for i, (path, (_, hops)) in enumerate(PATH_WORKLOADS.items()):
        if progress:
            progress(f"CPU per round trip: {path}", i, len(PATH_WORKLOADS))
        path_profile = profile if path == "io_port" else None
        if layers:  # perf samples each side over a window of its own
            stack = measure_stack_cpu(path, window_s, profile=path_profile, layers=True)
            floor = measure_floor_cpu(hops, window_s, layers=True)
        else:
            with StackCounter(path, profile=path_profile) as stack_run, FloorCounter(hops) as floor_run:
                stack, floor = measure_in_turns(stack_run, floor_run, window_s)
        # The same floor held to the stack's pace: CPU per round trip depends on it (a
        # process that sleeps between messages pays more for each wake-up — the 2-hop relay
        # 40 µs at 13,000 round trips a second, 60–69 at 4,000, 128 at 2,000), and the
        # stack, slower, sleeps more.  Its client also sleeps to keep the pace (a timer's
        # wake-up the partition does not pay), so this figure favours the stack a little;
        # the goal is judged against the floor at its own pace.
        paced = measure_floor_cpu(hops, window_s, pace=stack["per_s"])
        # The decoding floor: the relay's work plus msgpack's unpack and pack of every
        # message in every process — the least a stack in Python does per message, so the
        # stack's ratio to it is what its checks, dispatch and bookkeeping cost.
        decoding = measure_floor_cpu(hops, window_s, decode=True)
        out[path] = {"stack": stack, "floor": floor, "floor_at_stack_pace": paced, "floor_decoding": decoding,
                     "ratio": _ratio(stack, floor), "ratio_at_stack_pace": _ratio(stack, paced),
                     "ratio_decoding": _ratio(stack, decoding)}
    return out


def _ratio(stack: dict, floor: dict) -> float | None:
    return round(stack["cpu_us"] / floor["cpu_us"], 3) if floor["cpu_us"] else None


__all__ = ["measure_cpu", "measure_stack_cpu", "measure_floor_cpu", "measure_in_turns", "StackCounter", "FloorCounter", "per_round_trip", "cpu_seconds", "run_pids",
           "PATH_WORKLOADS"]
