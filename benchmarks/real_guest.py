"""Real x86 guests measured (issue 11): ``python -m benchmarks.real_guest [--json] [--duration S]``.

* The port-I/O round trip of a real guest (a 32-bit loop of ``out``/``in`` on the UART's
  scratch register, the Python guest's ``portio`` workload in machine code) on each
  real-CPU backend this host has, beside the Python guest's and the pure-pyzmq floor's
  (4 hops), all through the full stack.
* The in-process limit: the same loop on the same backend with every exit answered in the
  VP's own thread (no hypervisor, no worker), as a one-process VMM (kvmtool, Firecracker)
  would: what the multiprocess stack costs over it is the ratio.
* SeaBIOS (where installed): from the VP's start to the boot sector's first COM1 byte, and
  port exits by port over the boot.

````bench --real-guests`` calls :func:`measure`; this module is also its own command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from time import perf_counter_ns

from partitions.cpu import BACKENDS, unavailable
from proto.stats import Histogram



def portio_loop(iterations: int) -> bytes:
    """At 1 MiB, 32-bit: mov $N,%ecx; mov $0x3ff,%dx; 1: out %al,(%dx); in (%dx),%al;
    inc %al; loop 1b; cli; 2: hlt; jmp 2b — then the run ends (the guest is done)."""
    return b"\xb9" + iterations.to_bytes(4, "little") + bytes.fromhex("66baff03eeecfec0e2fafaf4ebfd")


SCRATCH = 0x3FF
REAL = """
[run]
name = "bench-real-{cpu}"
logical_processors = 1

[[partition]]
name = "real"
cpu = "{cpu}"
kernel = "{kernel}"
memory_mb = 2
"""
PYTHON = """
[run]
name = "bench-real-python"
logical_processors = 1

[[partition]]
name = "real"
memory_mb = 2
workloads = ["portio"]
"""
SEABIOS_TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "seabios.toml"


def _p(h: Histogram) -> dict:
    return {"samples": h.n, "p50_us": round(h.percentile(50) / 1000, 1), "p99_us": round(h.percentile(99) / 1000, 1)}


def stack_round_trips(duration_s: float) -> dict:
    """io_port through the stack: the Python guest and every real backend available."""
    from benchmarks.bench import measure_stack

    out = {"python": _p(measure_stack(PYTHON, duration_s).paths["io_port"].total)}
    with tempfile.TemporaryDirectory(prefix="hvreal") as d:
        kernel = Path(d) / "portio.bin"
        kernel.write_bytes(portio_loop(max(100, int(duration_s * 500))))
        for cpu in BACKENDS[1:]:
            why = unavailable(cpu)
            if why:
                out[cpu] = {"unavailable": why}
                continue
            part = measure_stack(REAL.format(cpu=cpu, kernel=kernel), duration_s * 10)  # ends when the loop does
            out[cpu] = _p(part.paths["io_port"].total)
    return out


class InProcessPort:
    """An ExitPort stand-in answering every exit in the VP's thread: the scratch
    register's value back, each round trip timed; stops after ``n`` exits."""

    def __init__(self, n: int) -> None:
        from partitions.vp import VpStopped

        self._stopped = VpStopped
        self.counters: dict = {}
        self.stop = threading.Event()
        self._pending: list = []
        self.n = n
        self.value = 0
        self.times: list[int] = []
        self.last = perf_counter_ns()

    interrupt_pending = property(lambda self: False)
    boundary_wanted = False
    exit_wanted = property(lambda self: len(self.times) >= self.n)
    quantum_left_ns = property(lambda self: 0 if self.exit_wanted else 10_000_000)

    def _tick(self) -> None:
        """Time since the last exit: the guest's two instructions, the exit and its
        answer.  (A hook does not raise: the backend stops at its next quantum check.)"""
        now = perf_counter_ns()
        if len(self.times) < self.n:
            self.times.append(now - self.last)
        self.last = now

    def quantum_exit(self) -> None:
        if len(self.times) >= self.n:
            raise self._stopped()

    def port_in(self, port: int, size: int) -> int:
        self._tick()
        return self.value

    def port_out(self, port: int, size: int, value: int) -> None:
        self._tick()
        self.value = value

    def cpuid(self, leaf: int, subleaf: int):
        return (0, 0, 0, 0)

    def halt(self, interrupts_enabled: bool) -> bool:
        raise self._stopped()  # the loop is over


def in_process(cpu: str, exits: int) -> dict:
    """``portio_loop`` on backend ``cpu`` with its exits answered in-process."""
    from partitions.cpu.boot import KERNEL_BASE, Boot
    from partitions.cpu.run import backend_class, scratch_memory
    from partitions.vp import VpStopped

    with tempfile.TemporaryDirectory(prefix="hvinproc") as d:
        mem = scratch_memory(d)
        boot = Boot(False, 0, KERNEL_BASE, load=[(KERNEL_BASE, portio_loop(exits))])
        if cpu == "kvm":
            from partitions.cpu.kvm_cpu import before_confinement
            before_confinement(boot)
        made = {}
        backend = backend_class(cpu)(lambda regs: made.setdefault("port", InProcessPort(exits)), mem, boot)
        try:
            backend.run()
        except VpStopped:
            pass
        finally:
            backend.close()
            if boot.kvm_fd is not None:
                os.close(boot.kvm_fd)
    h = Histogram()
    for t in made["port"].times[100:]:  # the first ones include translation / entry
        h.record(t)
    return _p(h)


def seabios(timeout_s: float = 180.0) -> dict:
    """SeaBIOS to the boot sector on each backend: the VP's start to the boot sector's
    first COM1 byte, exits by reason and port exits by port (the guest's counters)."""
    from partitions.cpu.boot import seabios_missing
    from benchmarks.runs import measure_run

    why = seabios_missing()
    if why:
        return {"unavailable": why}
    out = {}
    for cpu in BACKENDS[1:]:
        if unavailable(cpu):
            out[cpu] = {"unavailable": unavailable(cpu)}
            continue
        text = SEABIOS_TOPOLOGY.read_text().replace('cpu = "unicorn"', f'cpu = "{cpu}"')
        t0 = perf_counter_ns()
        status = measure_run(text, timeout_s)  # ends when the boot sector halts
        wall = (perf_counter_ns() - t0) / 1e9
        part = status.partitions[0]
        vp = part.vps[0]
        ports = {k[4:]: v for k, v in sorted(vp.guest.items(), key=lambda kv: -kv[1]) if k.startswith("pio_")}
        out[cpu] = {"vp_start_to_boot_sector_ms": vp.guest.get("first_com1_ms"), "run_wall_s": round(wall, 2),
                    "exits": {k: v for k, v in vp.exits.items() if v}, "port_exits_by_port": ports}
    return out


def measure(duration_s: float = 2.0, in_process_exits: int = 20000, with_seabios: bool = True) -> dict:
    from benchmarks.bench import measure_floor

    floor = measure_floor(2000, 1)[4]
    result = {"unit": "us", "floor_4_hops": _p(floor), "io_port_through_the_stack": stack_round_trips(duration_s),
              "in_process": {}}
    for cpu in BACKENDS[1:]:
        result["in_process"][cpu] = ({"unavailable": unavailable(cpu)} if unavailable(cpu)
                                     else in_process(cpu, in_process_exits))
    for cpu, got in result["io_port_through_the_stack"].items():
        inproc = result["in_process"].get(cpu, {})
        if "p50_us" in got and inproc.get("p50_us"):
            got["over_in_process_p50"] = round(got["p50_us"] / inproc["p50_us"], 1)
        if "p50_us" in got:
            got["over_floor_p50"] = round(got["p50_us"] / result["floor_4_hops"]["p50_us"], 2)
    if with_seabios:
        result["seabios"] = seabios()
    return result


def print_result(r: dict) -> None:
    print("port I/O round trip (UART scratch register), µs:")
    print(f"  {'':28} {'samples':>8} {'p50':>8} {'p99':>8}  p50 vs floor  vs in-process")
    f = r["floor_4_hops"]
    print(f"  {'floor (pyzmq, 4 hops)':28} {f['samples']:>8} {f['p50_us']:>8} {f['p99_us']:>8}")
    for cpu, got in r["io_port_through_the_stack"].items():
        name = f"{cpu} guest, through the stack"
        if "unavailable" in got:
            print(f"  {name:28} not measured: {got['unavailable']}")
            continue
        print(f"  {name:28} {got['samples']:>8} {got['p50_us']:>8} {got['p99_us']:>8}  "
              f"{got.get('over_floor_p50', '-'):>11}×  {got.get('over_in_process_p50', '-')}×")
    for cpu, got in r["in_process"].items():
        name = f"{cpu}, exit handled in-process"
        if "unavailable" in got:
            print(f"  {name:28} not measured: {got['unavailable']}")
            continue
        print(f"  {name:28} {got['samples']:>8} {got['p50_us']:>8} {got['p99_us']:>8}")
    sb = r.get("seabios")
    if sb:
        print("SeaBIOS → boot sector:")
        if "unavailable" in sb:
            print(f"  not measured: {sb['unavailable']}")
        for cpu, got in sb.items():
            if not isinstance(got, dict):
                continue
            if "unavailable" in got:
                print(f"  {cpu}: not measured: {got['unavailable']}")
                continue
            top = ", ".join(f"{p} {n}" for p, n in list(got["port_exits_by_port"].items())[:10])
            print(f"  {cpu}: VP start → boot sector's first COM1 byte {got['vp_start_to_boot_sector_ms']} ms "
                  f"(run {got['run_wall_s']} s); exits {got['exits']}")
            print(f"    port exits by port: {top}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_guest", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of each through-the-stack run")
    ap.add_argument("--exits", type=int, default=20000, help="exits of each in-process loop")
    ap.add_argument("--no-seabios", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.duration, args.exits, not args.no_seabios)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_result(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
