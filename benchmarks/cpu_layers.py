"""``bench --cpu-layers``: where each process's CPU per round trip goes, layer by layer —
the Python interpreter, msgpack, ZeroMQ (libzmq and pyzmq's binding), the C library and the
kernel — for the stack's processes and the floor's alike.

``benchmarks/cpu.py`` says how much CPU a round trip costs each process; this says what in
the process spends it.  The floor's relay does almost no Python of its own, so a layer
that is larger in the hypervisor than in the relay per round trip is the stack's own work,
and a layer that is as large (the kernel's wake-ups and socket calls, libzmq) is the price
of the transport both pay.

How: ``perf record`` samples every thread of the measured processes on the ``cpu-clock``
software event (this machine's virtual CPUs have no hardware counters) for the CPU window,
and ``perf script`` names the shared object each sample was in.  Only the *shares* come from
the samples: each process's share of a layer is multiplied by the process's CPU per round trip
over the same window, which the kernel's per-process CPU clock gives to the nanosecond — so
perf's start-up and the exact edges of its window do not matter.  Without ``perf`` (or where
the kernel refuses it) the bench says so and measures the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from root.report import table

LAYERS = ("Python", "msgpack", "ZeroMQ", "libc", "kernel", "other")
SAMPLE_HZ = 997  # not a multiple of the kernel's tick, so samples do not lock step with it
STOP_TIMEOUT_S = 30.0  # perf writes its file after SIGINT; a large one takes a moment


def layer_of(dso: str) -> str:
    """The layer a sample's shared object belongs to."""
    name = os.path.basename(dso.strip("[]() \t"))
    if name.startswith("kernel") or name in ("vdso", "vsyscall"):
        return "kernel"
    if name.startswith("libpython") or name.startswith("python"):
        return "Python"
    if "msgpack" in name:
        return "msgpack"
    if "zmq" in name:
        return "ZeroMQ"
    if name.startswith(("libc.", "libc-", "ld-linux", "libm.", "libpthread")):
        return "libc"
    return "other"


def missing() -> str | None:
    """Why layers cannot be measured here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (linux-perf / linux-tools)"
    try:
        out = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", os.devnull, "--", "true"],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"perf does not run: {e}"
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        return f"perf record failed: {lines[0]}"
    return None


class Recorder:
    """``perf record`` of the processes ``pids`` (name → pid), every thread, from
    :meth:`start` to :meth:`stop`, which gives the samples of each process by layer."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._dir = tempfile.TemporaryDirectory(prefix="hvperf")
        self._data = Path(self._dir.name) / "perf.data"
        self._perf: subprocess.Popen | None = None

    def start(self) -> None:
        self._perf = subprocess.Popen(
            ["perf", "record", "--quiet", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-o", str(self._data),
             "-p", ",".join(str(p) for p in self.pids.values())],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def stop(self) -> dict[str, Counter]:
        """Samples by process name and layer (empty when perf failed: see :attr:`error`)."""
        self.error = None
        perf, self._perf = self._perf, None
        try:
            if perf is None:
                return {}
            if perf.poll() is None:
                perf.send_signal(signal.SIGINT)
            try:
                _, err = perf.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                perf.kill()
                _, err = perf.communicate()
            if not self._data.exists():
                self.error = f"perf wrote no samples: {err.decode(errors='replace').strip()[:200]}"
                return {}
            return self._read()
        finally:
            self._dir.cleanup()

    def _read(self) -> dict[str, Counter]:
        out = subprocess.run(["perf", "script", "-i", str(self._data), "-F", "pid,ip,dso"],
                             capture_output=True, timeout=120)
        names = {pid: name for name, pid in self.pids.items()}
        by_name: dict[str, Counter] = {}
        for line in out.stdout.decode(errors="replace").splitlines():
            fields = line.split(None, 2)  # "PID IP (DSO)"
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            name = names.get(int(fields[0]))
            if name is not None:
                by_name.setdefault(name, Counter())[layer_of(fields[2])] += 1
        return by_name


def per_round_trip(samples: dict[str, Counter], cpu_us: dict[str, float], kind_of) -> dict[str, dict[str, float]]:
    """µs per round trip of each process kind in each layer: the kind's CPU per round trip
    (``cpu_us``, by kind) cut in the shares of its samples."""
    by_kind: dict[str, Counter] = {}
    for name, counts in samples.items():
        by_kind.setdefault(kind_of(name), Counter()).update(counts)
    out = {}
    for kind, counts in sorted(by_kind.items()):
        total = sum(counts.values())
        if total and kind in cpu_us:
            out[kind] = {layer: round(cpu_us[kind] * counts[layer] / total, 1) for layer in LAYERS}
            out[kind]["samples"] = total
    return out


def print_layers(cpu: dict) -> None:
    """The layers of every path's stack and floor, a row per process kind."""
    rows = []
    for path, v in cpu.items():
        for side in ("stack", "floor"):
            if v[side].get("layers_error"):
                print(f"\n{path}, {side}: no layers: {v[side]['layers_error']}")
            layers = v[side].get("layers")
            if not layers:
                continue
            for kind, cells in layers.items():
                total = sum(cells[layer] for layer in LAYERS)
                rows.append([path, side, kind, *(f"{cells[layer]:.0f}" for layer in LAYERS), f"{total:.0f}",
                             str(cells["samples"])])
    if not rows:
        return
    print("\nwhere CPU per round trip goes, by layer (µs; perf's cpu-clock samples of the whole CPU window, "
          "each process's share of a layer times its CPU per round trip over that window):")
    print(table(["path", "side", "process", *LAYERS, "all", "samples"], rows, "lll" + "r" * (len(LAYERS) + 2)))
