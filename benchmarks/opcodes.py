"""``bench --opcodes``: where each process's own code spends a round trip, by Python function.

``bench --instructions`` counts each process's instructions per round trip, but cachegrind
names the interpreter's C functions, not the Python functions that ran; ``bench --profile``
(cProfile) names them, but its cost per call is as large as the small functions it times.
Here each driver of ``benchmarks/instructions.py`` — the process's real code on a fake
socket with real frames — runs under ``sys.settrace`` with opcode events, and

    bytecodes per round trip of a function = (count at 2N - count at N) / N

both runs building the frames of 2N round trips in a fresh interpreter, so that start-up,
warm-up and the building cancel.  The count is exact and the same on any host, idle or
loaded: a change to one function shows as that function's row.  It says where the Python
code of a round trip runs, not what it costs: a bytecode may be a load or a whole C call
(msgspec's decoding counts as one), and a loop moved into C iterators drops its bytecodes
but not its work — the hypervisor's histogram merge, so moved, went from 56.7 to 1.6
bytecodes per io_port round trip and its instructions did not move (``--instructions``,
2026-11-30 22:12 UTC), while in wall time the new form was slower (118 against 92 µs for
300 buckets).  Read a cut's cost in ``--instructions``.  The drivers' own code and the fake
sockets (``benchmarks/``, ``tests/``) are the harness, counted apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from benchmarks.instructions import CASES, DRIVERS, REPO, SEED, git_commit

N = 500  # round trips (tracing runs the code ~30x slower)
TOP = 12  # functions shown per case
TIMEOUT_S = 300.0
GENERATED = "<string>"  # the codec's generated functions (proto/messages.py: exec)


def _where(code) -> str:
    """A function's name as the table shows it: its file relative to the repository."""
    name = code.co_filename
    if name == GENERATED:
        return f"proto (generated) {code.co_name}"
    try:
        rel = os.path.relpath(name, REPO)
    except ValueError:
        rel = name
    if rel.startswith(".."):  # the standard library or a package: its module's file
        rel = os.path.basename(name)
    return f"{rel} {code.co_qualname}"


def harness(where: str) -> bool:
    return where.startswith(("benchmarks/", "tests/"))


def count(kind: str, path: str, n: int, built: int) -> Counter:
    """Bytecodes executed by each function while one driver runs ``n`` round trips."""
    counts: Counter = Counter()
    names: dict = {}

    def on_call(frame, event, arg):
        frame.f_trace_opcodes = True
        code = frame.f_code
        where = names.get(code)
        if where is None:
            where = names[code] = _where(code)

        def on_event(frame, event, arg):
            if event == "opcode":
                counts[where] += 1
            return on_event

        return on_event

    sys.settrace(on_call)
    try:
        DRIVERS[kind](path, n, built)
    finally:
        sys.settrace(None)
    return counts


def _count_in_subprocess(kind: str, path: str, n: int, built: int) -> Counter:
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.opcodes", "count", kind, path, str(n), str(built)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {path} N={n}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-5:]}")
    return Counter(json.loads(proc.stdout))


def per_round_trip(kind: str, path: str, n: int = N) -> dict[str, float]:
    """Each function's bytecodes per round trip, (count at 2N − count at N) / N; functions
    whose difference is under 0.05 a round trip (start-up's, warm-up's) are left out."""
    two, one = _count_in_subprocess(kind, path, 2 * n, 2 * n), _count_in_subprocess(kind, path, n, 2 * n)
    rows = {where: (two[where] - one[where]) / n for where in two.keys() | one.keys()}
    return {where: round(v, 1) for where, v in sorted(rows.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05}


def measure(n: int = N, cases=CASES, jobs: int = 2) -> dict:
    with ThreadPoolExecutor(jobs) as pool:
        futures = {case: pool.submit(per_round_trip, case[1], case[0], n) for case in cases}
        return {f"{path} {kind}": f.result() for (path, kind), f in futures.items()}


def summary(rows: dict[str, float]) -> dict:
    own = {w: v for w, v in rows.items() if not harness(w)}
    return {"own": round(sum(own.values()), 1), "harness": round(sum(rows.values()) - sum(own.values()), 1),
            "functions": own}


def cases_table(result: dict, top: int = TOP) -> str:
    from root.report import table

    out = []
    for case, rows in result.items():
        s = summary(rows)
        out.append([case, "all of the process's own code", f"{s['own']:.1f}", "100%"])
        for where, v in list(s["functions"].items())[:top]:
            out.append(["", where, f"{v:.1f}", f"{100 * v / s['own']:.0f}%" if s["own"] else "-"])
        out.append(["", f"(harness: fake sockets and the driver, {s['harness']:.1f})", "", ""])
    return table(["path / process", "function", "bytecodes / rt", "share"], out, "llrr")


def run_opcodes(args) -> int:
    from benchmarks.bench_command import NAME, complain

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if getattr(args, "progress", True):
        print(f"bench: counting the bytecodes of {len(CASES)} cases by function, two traced runs each "
              f"(about a minute)…", file=sys.stderr, flush=True)
    try:
        result = measure()
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
        complain(NAME, f"--opcodes: {e}")
        return 1
    head = {"command": "bench --opcodes", "time": started, "commit": git_commit(), "n": N}
    if args.json:
        print(json.dumps({"opcodes": {**head, "cases": {c: summary(r) for c, r in result.items()}}}, indent=2),
              flush=True)
        return 0
    print(f"bytecodes per round trip by function, each process's code in-process under sys.settrace, "
          f"(count(2N) - count(N)) / N, N = {N}; {head['command']}, {started}, commit {head['commit']}:")
    print(cases_table(result))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.opcodes")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("count", help="one driver's bytecodes by function, as JSON on standard output")
    c.add_argument("kind", choices=sorted(DRIVERS))
    c.add_argument("path", choices=["io_port", "cpuid", "hypercall"])
    c.add_argument("n", type=int)
    c.add_argument("built", type=int)
    args = p.parse_args(argv)
    random.seed(SEED)
    print(json.dumps(count(args.kind, args.path, args.n, max(args.built, args.n))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
