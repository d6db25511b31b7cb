"""``bench --cpu-layers`` (benchmarks/cpu_layers.py): the layer of a shared object, the shares
arithmetic, and — where perf runs — a real recording of a process that spends its CPU in
the interpreter, and of one that spends it in the kernel."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from benchmarks import cpu, cpu_layers
from benchmarks.cpu_layers import LAYERS, Recorder, layer_of, per_round_trip
from root.cli import main


@pytest.mark.parametrize("dso, layer", [
    ("([kernel.kallsyms])", "kernel"),
    ("[vdso]", "kernel"),
    ("(/usr/lib/libpython3.11.so.1.0)", "Python"),
    ("(/usr/bin/python3.11)", "Python"),
    ("(/x/site-packages/msgpack/_cmsgpack.cpython-311-x86_64-linux-gnu.so)", "msgpack"),
    ("(/x/pyzmq.libs/libzmq-2f02442c.so.5.2.5)", "ZeroMQ"),
    ("(/x/zmq/backend/cython/_zmq.cpython-311-x86_64-linux-gnu.so)", "ZeroMQ"),
    ("(/usr/lib/x86_64-linux-gnu/libc.so.6)", "libc"),
    ("(/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)", "libc"),
    ("([unknown])", "other"),
    ("(/x/array.cpython-311-x86_64-linux-gnu.so)", "other"),
])
def test_each_shared_object_has_its_layer(dso, layer):
    assert layer_of(dso) == layer


def test_a_kinds_cpu_is_cut_in_the_shares_of_its_processes_samples():
    samples = {"hypervisor:hv": Counter(Python=30, kernel=10),
               "worker:a": Counter(Python=1, kernel=3), "worker:b": Counter(kernel=4)}
    out = per_round_trip(samples, {"hypervisor": 100.0, "worker": 40.0}, cpu.process_kind)
    assert out["hypervisor"]["Python"] == 75.0 and out["hypervisor"]["kernel"] == 25.0
    assert out["worker"]["Python"] == 5.0 and out["worker"]["kernel"] == 35.0  # 1 and 7 of 8 samples
    for kind, total in (("hypervisor", 100.0), ("worker", 40.0)):
        assert sum(out[kind][layer] for layer in LAYERS) == pytest.approx(total)
    assert out["worker"]["samples"] == 8


def test_layers_need_the_cpu_measurement(capsys):
    assert main(["bench", "--cpu-layers", "--no-cpu"]) == 2
    assert "--cpu-layers needs the CPU per round trip" in capsys.readouterr().err


SPIN_PYTHON = "import time\nt = time.monotonic() + 30\nwhile time.monotonic() < t: sum(range(1000))"
SPIN_KERNEL = "import os, time\nt = time.monotonic() + 30\nwhile time.monotonic() < t: os.getppid()"


@pytest.mark.timeout(60)
def test_perf_puts_an_interpreters_work_in_python_and_system_calls_in_the_kernel():
    why = cpu_layers.missing()
    if why is not None:
        pytest.skip(f"--cpu-layers cannot run here: {why}")
    procs = {name: subprocess.Popen([sys.executable, "-c", code])
             for name, code in (("py:spin", SPIN_PYTHON), ("sys:spin", SPIN_KERNEL))}
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        rec = Recorder({name: p.pid for name, p in procs.items()})
        rec.start()
        time.sleep(1.0)
        samples = rec.stop()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    assert rec.error is None
    py, sysc = samples["py:spin"], samples["sys:spin"]
    assert sum(py.values()) > 50 and sum(sysc.values()) > 50
    assert py["Python"] > 0.6 * sum(py.values())
    assert sysc["kernel"] > py["kernel"] and sysc["kernel"] / sum(sysc.values()) > 0.2
