"""``bench --instructions``: instructions per round trip of each process's own code — a
figure the host's load does not move.

On a shared 2-core host the CPU per round trip (``benchmarks/cpu.py``) swings up to 2x
between consecutive runs, so it cannot show a 15-25 % change in one process.  Here each
process's real code is driven in-process with a fake socket and real encoded frames — the
hypervisor's loop (``Hypervisor.serve``), a partition's VP (``partitions.vp.Vp`` on a
``Dealer``), a worker's ``Worker.serve`` with a chipset — under valgrind's cachegrind
(``--cache-sim=no``: it only counts instructions), and

    instructions per round trip = (Ir at 2N - Ir at N) / N

so that start-up, imports and warm-up cancel.  Each run builds the frames of 2N round trips
whichever N it drives, so the building (msgpack encoding, stamps) cancels too.  Each driver
runs as ``python -m benchmarks.instructions drive KIND PATH N BUILT`` in a subprocess.

The floor's processes (``benchmarks/floor.py``: relay, echo, counting client, plain and
decoding) are driven the same way, their own loops on a fake socket with the floor's frames
(``drive relay|echo|client PATH N BUILT [--decode]``), so each figure of the stack has its
floor's beside it and a ratio, as the bench's other figures do.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("hypervisor", "partition", "worker")
# (path, process kind) pairs measured: the worker is only on the port I/O path.
CASES = [("io_port", "hypervisor"), ("io_port", "partition"), ("io_port", "worker"),
         ("cpuid", "hypervisor"), ("cpuid", "partition"),
         ("hypercall", "hypervisor"), ("hypercall", "partition")]
N = 1000  # round trips; under valgrind Python's start-up (~1e9 instructions) dominates anyway
TIMEOUT_S = 300.0  # one valgrind run (~15 s on an idle core)
SEED = 12
# vp_stats as the bench's pace sends them: a VP files every 250 ms, so one VpStats per
# (round trips/s) / 4 round trips, not by wall clock (valgrind runs ~50x slower).
STATS_EVERY = {"io_port": 430, "cpuid": 1000, "hypercall": 900}


def missing() -> str | None:
    """Why instructions cannot be counted here, or None."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt install valgrind): it counts the instructions"
    return None


_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def parse_ir(text: str) -> int:
    """Instructions executed, from cachegrind's output file (its ``summary:`` line, Ir
    first) or from its report on standard error (``I   refs:  1,234``)."""
    events = None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            values = line.split()[1:]
            return int(values[events.index("Ir") if events and "Ir" in events else 0])
    if (found := _IREFS.search(text)) is not None:
        return int(found.group(1).replace(",", ""))
    raise ValueError("no instruction count (summary: or I refs:) in cachegrind's output")


# --- the drivers: each process's real code, a fake socket, N round trips -----------------

def drive_hypervisor(path: str, n: int, built: int) -> int:
    """The hypervisor's real loop over ``n`` round trips of ``path`` (the VP's exit and, for
    io_port, the worker's access_complete); one VpStats per STATS_EVERY.  Returns the
    resumes sent to the VP."""
    # The hypervisor's in-process fake socket is the one its unit tests maintain
    # (tests/unit/hypervisor/fake_stack.py): imported, not copied.
    sys.path.insert(0, str(REPO))  # tests/ is not installed: importable from the checkout only
    from proto import messages as m
    from proto.codes import HypercallCode, control_value
    from proto.hvcall import HV_INPUT_NOTIFY_LONG_SPIN_WAIT
    from proto.stats import PathStats
    import hypervisor.service as service
    from tests.unit.hypervisor.fake_stack import COM1, REGS, Stack, vp_id, worker_id

    service.HOUSEKEEPING_INTERVAL_MS = 10 ** 9  # housekeeping's pace is wall time, not per round trip
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="hvstack-instr-") as tmp:
        st = Stack(tmp, lps=2)
        st.hello(b"root", "root")
        pid = st.partition(vps=1)
        vp, w = vp_id(pid), worker_id(pid)
        st.enable_hypercalls(vp)
        spin = HV_INPUT_NOTIFY_LONG_SPIN_WAIT.pack(1)
        control = control_value(HypercallCode.HvCallNotifyLongSpinWait, True)
        every = STATS_EVERY[path]

        def stats_frame() -> bytes:
            hops = 8 if path == "io_port" else 4
            rounds = []
            for _ in range(every):
                stamps = list(itertools.accumulate([10 ** 12] + [int(rng.lognormvariate(10.5, 0.7))
                                                                  for _ in range(hops)]))
                rounds.append(tuple(stamps))
            ps = PathStats()
            ps.record_many(rounds)
            return m.VpStats({path: ps.to_wire()}, {"exits": 12345, "interrupts": 3}).encode()

        def rounds(count: int, first_seq: int, first_ref: int) -> list[list]:
            out, t = [], time.perf_counter_ns()
            for i in range(count):
                seq, t = first_seq + i, t + 300_000
                if path == "io_port":
                    write = i % 2 == 0
                    one = [(vp, m.IoPortIntercept(seq, COM1 + 7, 1, write, i & 0xFF if write else 0, (t,),
                                                  REGS).encode()),
                           (w, m.AccessComplete(first_ref + i, 0 if write else 0x5A,
                                                (t, t + 50_000, t + 60_000, t + 100_000, t + 120_000)).encode())]
                elif path == "cpuid":
                    one = [(vp, m.CpuidIntercept(seq, 0x40000001, 0, (t,), REGS).encode())]
                else:
                    one = [(vp, m.HypercallIntercept(seq, control, spin, (t,), REGS).encode())]
                if i % every == every - 1:
                    one.append((vp, stats_frame()))
                # each identity its own bytes object, as the transport's recv gives them
                out.append([(bytes(bytearray(who)), f) for who, f in one])
            return out

        # Warm-up (the first housekeeping pings the worker: a reference taken).
        st.router.inbox.extend(f for one in rounds(3, 10_000, st.hv.forwarding._next_ref) for f in one)
        st.run()
        frames = rounds(built, 20_000, st.hv.forwarding._next_ref)
        st.router.inbox.extend(f for one in frames[:n] for f in one)
        st.router.sent.clear()
        st.hv.running = True
        st.hv.serve()
        sent = st.router.sent
        errors = [m.decode(f) for _, f in sent if f[1] == m.ErrorReply.TYPE]
        if errors or st.hv.counters["handler_errors"] or st.hv.forwarding.pending:
            raise RuntimeError(f"hypervisor {path}: errors {errors[:3]}, "
                               f"handler errors {st.hv.counters['handler_errors']}")
        return sum(1 for who, f in sent if who == vp and f[1] == m.VpResume.TYPE)


class _FakeZmqSocket:
    """What ``Dealer`` calls on its socket: recv gives the next queued frame, send counts."""

    def __init__(self, frames) -> None:
        self.recv = (lambda flags=0, nxt=iter(frames).__next__: nxt())
        self.sent = 0

    def send(self, frame, flags=0) -> None:
        self.sent += 1

    def setsockopt(self, *args) -> None:
        pass


def drive_partition(path: str, n: int, built: int) -> int:
    """A real ``partitions.vp.Vp`` on a real ``Dealer`` whose socket answers each exit with
    the VpResume the hypervisor would send.  Returns the exits the VP made after warm-up."""
    import threading
    from proto import messages as m
    from proto import transport
    from proto.codes import HypercallCode
    from proto.exits import Exit
    from proto.hvcall import HV_INPUT_NOTIFY_LONG_SPIN_WAIT
    from proto.posted import FILE_SIZE, VpDescriptor
    import partitions.vp as vpmod

    warm, stats_every, t0 = 200, 1000, 7 * 10 ** 13
    rng = random.Random(SEED)
    exit_of = {"io_port": Exit.IO_PORT, "cpuid": Exit.CPUID, "hypercall": Exit.HYPERCALL}[path]

    def resume(seq: int) -> bytes:
        # stage latencies as a loaded 2-core host gives them: ~10-200 µs, a tail to ms
        g = [int(rng.lognormvariate(10.5, 0.8)) for _ in range(7 if exit_of is Exit.IO_PORT else 3)]
        stamps = tuple(itertools.accumulate([t0 - sum(g)] + g[:-1]))
        rax = {Exit.IO_PORT: 0x5A, Exit.CPUID: 0x31237648}.get(exit_of, 0)
        return m.VpResume.pack(seq, 0, rax, 0, 0, 0, b"", stamps, 0, (), t0 + 10 ** 7, 0, exit_of.code, (0x202, 0))

    frames = [resume(i + 1) for i in range(warm + built)]
    # A Dealer around the fake socket, made as Dealer.__init__ makes one minus the connect
    # (the benchmark reaches into proto.transport here so that the VP's receive path is real).
    sock = _FakeZmqSocket(frames)
    dealer = transport.Dealer.__new__(transport.Dealer)
    dealer._sock, dealer.endpoint, dealer._closed = sock, "fake", False
    dealer.send = sock.send
    dealer._poll_items = [(sock, 1)]
    dealer._ready = transport._TimedReceive(sock, dealer._poll_items)
    dealer.wait, dealer.recv_ready = dealer._ready.wait, dealer._ready.take
    with tempfile.TemporaryFile() as f:
        os.ftruncate(f.fileno(), FILE_SIZE)
        posted = VpDescriptor(f.fileno(), 0)  # (mmap keeps its own descriptor)
    vpmod.perf_counter_ns = itertools.repeat(t0).__next__  # the VP's clock: each stage is the gap drawn
    vp = vpmod.Vp(dealer, 0, None, threading.Event(), posted=posted)
    vp.if_flag = True
    vp._next_stats = 1 << 62  # stats flushed every stats_every exits below, not by the clock
    spin = HV_INPUT_NOTIFY_LONG_SPIN_WAIT.pack(1)
    code = HypercallCode.HvCallNotifyLongSpinWait
    done, total = 0, warm + n
    while done < total:
        step = min(stats_every, total - done)
        for i in range(step):
            if path == "io_port":
                vp.outb(0x3FF, i & 0xFF) if i % 2 == 0 else vp.inb(0x3FF)
            elif path == "cpuid":
                vp.cpuid(0x40000001)
            else:
                vp.hypercall(code, spin, fast=True)
        done += step
        vp.flush_stats()
    return vp.exits - warm


def drive_worker(path: str, n: int, built: int) -> int:
    """The worker's real ``Worker.serve`` over a minimal chipset: ``n`` PortNotify frames
    (the UART's scratch register, write and read alternating) through a fake endpoint.
    Returns the frames the worker answered with."""
    if path != "io_port":
        raise ValueError("the worker is only on the io_port path")
    from proto import messages as m
    from worker.backends import ConsoleLog
    from worker.chipset import Chipset
    from worker.devices.base import FakeClock
    from worker.devices.config import CHIPSETS
    from worker.service import Worker

    t = 1_700_000_000_000
    # The devices' time moves per frame, from a fixed start, not with the host's clock: a
    # clocked device's deadlines then fall at the same round trips in every run (valgrind's
    # slowness and the start's phase would move them).
    clock = FakeClock(10 ** 12)

    class Endpoint:
        def __init__(self, frames) -> None:
            self.inbox, self.sent = deque(frames), 0

        def send(self, frame) -> None:
            self.sent += 1

        def wait(self, timeout) -> bool:
            if not self.inbox:
                worker.running = False  # all frames served: the loop ends
            return bool(self.inbox)

        def recv_ready(self):
            clock.advance(500_000)  # the bench's pace: ~2000 round trips/s
            return self.inbox.popleft()

        def close(self) -> None:
            pass

    frames = [m.PortNotify.pack(i + 1, 0, 0x3FF, 1, i % 2 == 0, i & 0xFF if i % 2 == 0 else 0,
                                (t, t + 50_000, t + 90_000)) for i in range(built)]
    with tempfile.TemporaryDirectory(prefix="hvstack-instr-") as tmp:
        console = ConsoleLog(os.path.join(tmp, "console.log"))
        chipset = Chipset(CHIPSETS["minimal"], console, clock=clock)
        ep = Endpoint(frames[:n])
        worker = Worker(ep, chipset, console)
        worker.serve()
        if worker.handler_errors:
            raise RuntimeError(f"worker: {worker.handler_errors} handler errors")
        return ep.sent


DRIVERS = {"hypervisor": drive_hypervisor, "partition": drive_partition, "worker": drive_worker}


# --- the floor's drivers: benchmarks/floor.py's own loops on a fake socket --------------------
#
# The floor (a relay, an echo, a client: pure pyzmq) is the stack's ratio everywhere else in
# the bench; here its processes' loops run on a fake socket with the frames of the real floor
# (``hop_frames()``), ``decode`` the decoding floor (``Codec``).  Each loop is the real
# floor's function (``serve_relay``, ``serve_echo``, ``count_round_trips``), not a copy; it
# ends when the fake socket has no frame left to give (StopIteration out of its receive).

PAIRS = {"hypervisor": "relay", "partition": "client", "worker": "echo"}  # the stack's process → the floor's
FLOOR_KINDS = tuple(PAIRS.values())
FLOOR_CASES = [("io_port", "relay"), ("io_port", "client"), ("io_port", "echo"),
               ("cpuid", "relay"), ("cpuid", "client")]
# hypercall's floor is cpuid's (2 hops, the same frames), as in the CPU bench (one floor per hop count)
FLOOR_OF = {"io_port": "io_port", "cpuid": "cpuid", "hypercall": "cpuid"}


class _FakeFloorSocket:
    """What the floor's loops call on their pyzmq socket: a receive gives the next queued
    frame (StopIteration once all are taken), a send is kept, a poll finds a frame.  A
    multipart send keeps its parts, not the tuple the loop made: kept, that tuple would add
    a garbage collector's pass per 700 sends that the real floor, whose pyzmq frees it,
    does not make (the relay's count then moved 5 % with N)."""

    def __init__(self, frames) -> None:
        self.recv = self.recv_multipart = iter(frames).__next__
        self.sent: list[bytes] = []
        self.sent_to: list[bytes] = []  # a multipart send's first part: the peer's identity

    def send(self, frame, flags=0) -> None:
        self.sent.append(frame)

    def send_multipart(self, parts, flags=0) -> None:
        self.sent_to.append(parts[0])
        self.sent.append(parts[1])

    def poll(self, timeout=None, flags=1) -> int:
        return 1


def _copy(b: bytes) -> bytes:
    """A bytes object of its own, as each receive gives one (an identity's hash not cached)."""
    return bytes(bytearray(b))


def _run_floor(loop, frames, *args) -> _FakeFloorSocket:
    sock = _FakeFloorSocket(frames)
    try:
        loop(sock, *args)
    except StopIteration:  # every queued frame taken
        pass
    return sock


def drive_relay(path: str, n: int, built: int, decode: bool = False) -> int:
    """The floor's relay (the hypervisor's counterpart) over ``n`` round trips: for io_port a
    client's request and the echo's answer each (relayed to the echo, answered to the
    client), for cpuid and hypercall a request answered by the relay.  Returns the answers
    it sent the client."""
    from benchmarks import floor

    f = floor.hop_frames()
    client, echo = b"\x00k\x8bEg", b"\x00k\x8bEh"  # identities as a ROUTER makes them (5 bytes)
    if path == "io_port":
        hellos = [[_copy(echo), b"echo"], [_copy(client), b"hop4"]]
        one, answer = [(client, f["io_intercept"]), (echo, f["access_complete"])], f["io_resume"]
    else:
        hellos = [[_copy(client), b"hop2"]]
        one, answer = [(client, f["cpuid_intercept"])], f["cpuid_resume"]
    frames = hellos + [[_copy(who), _copy(frame)] for _ in range(built) for who, frame in one]
    sock = _run_floor(floor.serve_relay, frames[:len(hellos) + n * len(one)], "decode" if decode else "")
    return sum(1 for who, frame in zip(sock.sent_to, sock.sent) if who == client and frame == answer)


def drive_echo(path: str, n: int, built: int, decode: bool = False) -> int:
    """The floor's echo (the worker's counterpart): ``n`` port_notify-sized frames answered.
    Returns the answers it sent."""
    if path != "io_port":
        raise ValueError("the echo is only on the io_port path")
    from benchmarks import floor

    f = floor.hop_frames()
    frames = [_copy(f["port_notify"]) for _ in range(built)]
    sock = _run_floor(floor.serve_echo, frames[:n], "decode" if decode else "")
    return sum(1 for frame in sock.sent if frame == f["access_complete"])


def drive_client(path: str, n: int, built: int, decode: bool = False) -> int:
    """The floor's counting client (the partition's counterpart) at its own pace: ``n``
    requests, each answered with the resume the relay sends.  Returns the requests answered."""
    from benchmarks import floor

    f = floor.hop_frames()
    request, answer = ((f["io_intercept"], f["io_resume"]) if path == "io_port"
                       else (f["cpuid_intercept"], f["cpuid_resume"]))
    frames = [_copy(answer) for _ in range(built)]
    sock = _run_floor(floor.count_round_trips, frames[:n], request, "0", "decode" if decode else "")
    # Its loop sends, then receives: the request after the last answer found none (the end).
    return sum(1 for frame in sock.sent if frame == request) - 1


DRIVERS.update(relay=drive_relay, echo=drive_echo, client=drive_client)


# --- measuring ------------------------------------------------------------------------------

def count_ir(kind: str, path: str, n: int, built: int, decode: bool = False) -> int:
    """Instructions of one driver run under cachegrind (``decode``: the decoding floor's)."""
    with tempfile.TemporaryDirectory(prefix="hvstack-cg-") as tmp:
        out = os.path.join(tmp, "cachegrind.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                               sys.executable, "-m", "benchmarks.instructions", "drive", kind, path, str(n),
                               str(built), *(["--decode"] if decode else [])],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind}{' decode' if decode else ''} {path} N={n} under valgrind: "
                               f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-5:]}")
        return parse_ir(Path(out).read_text())


def per_round_trip(kind: str, path: str, n: int, decode: bool = False) -> float:
    """(Ir at 2N − Ir at N) / N, both runs building the frames of 2N round trips."""
    return (count_ir(kind, path, 2 * n, 2 * n, decode) - count_ir(kind, path, n, 2 * n, decode)) / n


# Every case measured, (path, kind, decode): the stack's, the floor's, the decoding floor's.
ALL_CASES = ([(path, kind, False) for path, kind in CASES]
             + [(path, kind, decode) for decode in (False, True) for path, kind in FLOOR_CASES])


def measure(n: int = N, cases=ALL_CASES, jobs: int = 2) -> dict:
    with ThreadPoolExecutor(jobs) as pool:  # valgrind is one thread: two runs use the 2 cores
        futures = {case: pool.submit(per_round_trip, case[1], case[0], n, case[2]) for case in cases}
        return {case: f.result() for case, f in futures.items()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# What neither side's figure holds (both run on fake sockets), said with every table.
LEFT_OUT = ("both sides run on fake sockets: pyzmq, libzmq and the kernel (socket calls, ZeroMQ's I/O "
            "threads, wake-ups) are in neither figure; hypercall's floor is cpuid's (2 hops, the same frames)")


def ratios(stack: dict[str, int], floor: dict[str, int]) -> dict[str, float]:
    """The stack's instructions over the floor's, per process pair (``stack`` by the stack's
    process, ``floor`` by its counterpart's: :data:`PAIRS`) and for the whole round trip."""
    out = {kind: round(ir / floor[PAIRS[kind]], 2) for kind, ir in stack.items()}
    out["total"] = round(sum(stack.values()) / sum(floor.values()), 2)
    return out


def figures(result: dict) -> dict:
    """:func:`measure`'s counts as per-path figures (instructions per round trip): the
    stack's by process, the floor's and the decoding floor's by theirs, and the ratios."""
    paths = list(dict.fromkeys(p for p, _ in CASES))
    rows = {p: {k: round(result[(p, k, False)]) for q, k in CASES if q == p} for p in paths}
    floors = {name: {p: {PAIRS[k]: round(result[(FLOOR_OF[p], PAIRS[k], decode)]) for k in rows[p]} for p in paths}
              for name, decode in (("floor", False), ("decoding_floor", True))}
    return {"per_round_trip": rows, **floors,
            "ratio": {p: ratios(rows[p], floors["floor"][p]) for p in paths},
            "ratio_decoding": {p: ratios(rows[p], floors["decoding_floor"][p]) for p in paths}}


def figures_table(fig: dict) -> str:
    """A row per path and process pair, and one for the whole round trip (k instructions)."""
    from root.report import table

    out = []
    for p, stack in fig["per_round_trip"].items():
        floor, decoding = fig["floor"][p], fig["decoding_floor"][p]
        pairs = [(f"{k} / {PAIRS[k]}", stack[k], floor[PAIRS[k]], decoding[PAIRS[k]], k) for k in stack]
        pairs.append(("round trip", sum(stack.values()), sum(floor.values()), sum(decoding.values()), "total"))
        out += [[p, name, f"{s / 1000:.1f}", f"{f / 1000:.1f}", f"{d / 1000:.1f}",
                 f"{fig['ratio'][p][key]:.2f}×", f"{fig['ratio_decoding'][p][key]:.2f}×"]
                for name, s, f, d, key in pairs]
    return table(["path", "process", "stack", "floor", "decoding floor", "stack / floor", "stack / decoding"],
                 out, "llrrrrr")


def run_instructions(args) -> int:
    from benchmarks.bench_command import NAME, complain

    if (why := missing()) is not None:
        complain(NAME, f"--instructions: {why}")
        return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if getattr(args, "progress", True):
        print(f"bench: counting instructions of {len(ALL_CASES)} cases (the stack's, the floor's, the decoding "
              f"floor's) under valgrind, two runs each (about 3 minutes on an idle 2-core host)…",
              file=sys.stderr, flush=True)
    try:
        fig = figures(measure())
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
        complain(NAME, f"--instructions: {e}")
        return 1
    head = {"command": "bench --instructions", "time": started, "commit": git_commit(), "n": N}
    if args.json:
        print(json.dumps({"instructions": {**head, **fig, "left_out": LEFT_OUT}}, indent=2), flush=True)
        return 0
    print(f"instructions per round trip (k), each process's code in-process under cachegrind, "
          f"(Ir(2N) - Ir(N)) / N, N = {N}, beside the floor's processes (benchmarks/floor.py) driven the same "
          f"way; {head['command']}, {started}, commit {head['commit']}:")
    print(figures_table(fig))
    print(f"(not counted: {LEFT_OUT})")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drive", help="drive one process kind's real code N round trips (under valgrind)")
    d.add_argument("kind", choices=[*KINDS, *FLOOR_KINDS])
    d.add_argument("path", choices=["io_port", "cpuid", "hypercall"])
    d.add_argument("n", type=int)
    d.add_argument("built", type=int, nargs="?", help="round trips whose frames are built (default N)")
    d.add_argument("--decode", action="store_true", help="the decoding floor (a floor's kind only)")
    args = p.parse_args(argv)
    if args.decode and args.kind not in FLOOR_KINDS:
        p.error("--decode is the decoding floor's: relay, client or echo")
    random.seed(SEED)
    built = max(args.built or args.n, args.n)
    extra = (args.decode,) if args.kind in FLOOR_KINDS else ()
    done = DRIVERS[args.kind](args.path, args.n, built, *extra)
    print(f"{args.kind}{' decode' if args.decode else ''} {args.path}: {done} round trips", file=sys.stderr)
    return 0 if done == args.n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
