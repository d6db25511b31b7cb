"""``bench --instructions`` (benchmarks/instructions.py): cachegrind's count parsed, each
driver driving real round trips of its process's code, and — where valgrind runs — one real
measurement."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks import instructions
from root.cli import main

# cachegrind's output file (valgrind 3.19, --cache-sim=no) and its report on standard error
OUT_FILE = """desc: I1 cache:         32768 B, 64 B, 8-way associative
cmd: python -m benchmarks.instructions drive worker io_port 200 400
events: Ir
fl=(1) ???
fn=(1) 0x0000000000001100
0 3
summary: 1080855448
"""
STDERR = """==14029== Cachegrind, a cache and branch-prediction profiler
==14029== Command: python -c import\\ proto.messages
==14029==
==14029== I   refs:      1,080,855,448
"""


def test_ir_is_parsed_from_the_summary_line_and_from_the_report():
    assert instructions.parse_ir(OUT_FILE) == 1_080_855_448
    assert instructions.parse_ir(STDERR) == 1_080_855_448
    assert instructions.parse_ir("events: Dr Ir\nsummary: 5 7\n") == 7  # Ir wherever it is
    with pytest.raises(ValueError):
        instructions.parse_ir("==1== ERROR SUMMARY: 0 errors\n")


@pytest.mark.parametrize("path, kind", instructions.CASES)
def test_each_driver_drives_real_round_trips(path, kind):
    # In a subprocess, as under valgrind (the drivers set their module's clocks for good).
    proc = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "drive", kind, path, "30", "60"],
                          capture_output=True, text=True, timeout=60, cwd=instructions.REPO)
    assert proc.returncode == 0, proc.stderr
    # the count is what the fake socket saw: resumes to the VP, the VP's exits, the worker's answers
    assert re.search(rf"^{kind} {path}: 30 round trips$", proc.stderr, re.M), proc.stderr


def test_without_valgrind_it_says_so_and_measures_nothing(monkeypatch, capsys):
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    monkeypatch.setattr(instructions, "measure", lambda *a, **k: pytest.fail("measured without valgrind"))
    assert main(["bench", "--instructions"]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_cachegrind_counts_the_workers_and_the_floor_relays_instructions_per_round_trip():
    why = instructions.missing()
    if why is not None:
        pytest.skip(f"--instructions cannot run here: {why}")
    # the two cases side by side, as the bench runs them (valgrind is one thread)
    per = instructions.measure(200, [("io_port", "worker", False), ("io_port", "relay", False)])
    # a port write or read through Worker.serve, the bus and the UART: tens of thousands of
    # instructions (37 k on main 607345b), never the ~1e9 of the interpreter's start-up
    assert 5_000 < per[("io_port", "worker", False)] < 500_000, per
    # the relay's two messages in and two out, routed by dict lookups: about ten thousand
    # (10.7k on ca467ff), a ninth of the hypervisor's
    assert 3_000 < per[("io_port", "relay", False)] < 40_000, per


# --- the floor beside the stack ---------------------------------------------------------------

FLOOR_DRIVES = [(path, kind, decode) for path, kind in [*instructions.FLOOR_CASES, ("hypercall", "relay")]
                for decode in (False, True)]


@pytest.fixture
def sigusr1():
    """The counting client's loop sets its SIGUSR1 handler (its count on demand): put back."""
    import signal

    old = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, old)


@pytest.mark.parametrize("path, kind, decode", FLOOR_DRIVES)
def test_each_floor_driver_drives_real_round_trips(path, kind, decode, sigusr1, capsys):
    # In-process (the floor's drivers leave no module changed behind them): counted from
    # what the fake socket was sent, the relay's answers to the client, the echo's answers,
    # the client's requests that were answered — each the floor's real frame.
    assert instructions.DRIVERS[kind](path, 30, 60, decode) == 30


def test_a_floor_drive_runs_from_the_command_line_as_under_valgrind():
    run = [sys.executable, "-m", "benchmarks.instructions", "drive"]
    proc = subprocess.run([*run, "relay", "io_port", "30", "60", "--decode"],
                          capture_output=True, text=True, timeout=60, cwd=instructions.REPO)
    assert proc.returncode == 0 and "relay decode io_port: 30 round trips" in proc.stderr, proc.stderr
    proc = subprocess.run([*run, "hypervisor", "io_port", "30", "--decode"],
                          capture_output=True, text=True, timeout=60, cwd=instructions.REPO)
    assert proc.returncode == 2 and "the decoding floor's" in proc.stderr, proc.stderr


def test_a_drained_fake_socket_ends_the_relays_loop_after_exactly_its_frames():
    from benchmarks import floor

    frames = floor.hop_frames()
    # the relay sends the client nothing for a request whose echo answer never came
    sock = instructions._run_floor(floor.serve_relay, [[b"e", b"echo"], [b"c", b"hop4"],
                                                       [b"c", frames["io_intercept"]]])
    assert (sock.sent_to, sock.sent) == ([b"e"], [frames["port_notify"]])


@pytest.mark.parametrize("role, loop, args", [("relay", "serve_relay", ("decode",)),
                                              ("echo", "serve_echo", ("", "decode")),
                                              ("counting_client", "count_round_trips", ("4", "0", "decode"))])
def test_the_real_floor_runs_the_loop_the_driver_runs(role, loop, args, monkeypatch, tmp_path):
    # the floor's process hands its own zmq socket to the same function the driver drives
    from benchmarks import floor

    handed = []
    monkeypatch.setattr(floor, loop, lambda sock, *rest: handed.append((sock, rest)))
    getattr(floor, role)(f"ipc://{tmp_path}/floor.sock", *args)
    (sock, rest), = handed
    try:
        assert sock.closed is False and rest[-1] == "decode"
    finally:
        sock.close(0)


def test_ratios_are_the_stacks_over_its_counterparts_and_over_the_round_trip():
    stack = {"hypervisor": 90_000, "partition": 60_000, "worker": 30_000}
    floor = {"relay": 10_000, "client": 20_000, "echo": 30_000}
    assert instructions.ratios(stack, floor) == {"hypervisor": 9.0, "partition": 3.0, "worker": 1.0, "total": 3.0}


def _result() -> dict:
    """measure()'s counts, made up: the stack's k per process and path, the floors' below."""
    stack = {("io_port", "hypervisor"): 100e3, ("io_port", "partition"): 60e3, ("io_port", "worker"): 40e3,
             ("cpuid", "hypervisor"): 50e3, ("cpuid", "partition"): 50e3,
             ("hypercall", "hypervisor"): 70e3, ("hypercall", "partition"): 50e3}
    floor = {("io_port", "relay"): 10e3, ("io_port", "client"): 6e3, ("io_port", "echo"): 4e3,
             ("cpuid", "relay"): 5e3, ("cpuid", "client"): 4e3}
    return {**{(p, k, False): v for (p, k), v in stack.items()},
            **{(p, k, False): v for (p, k), v in floor.items()},
            **{(p, k, True): 2 * v for (p, k), v in floor.items()}}


def test_figures_set_each_path_beside_its_floor_and_hypercall_beside_cpuids():
    fig = instructions.figures(_result())
    assert fig["per_round_trip"]["io_port"] == {"hypervisor": 100_000, "partition": 60_000, "worker": 40_000}
    assert fig["floor"]["hypercall"] == fig["floor"]["cpuid"] == {"relay": 5_000, "client": 4_000}
    assert fig["ratio"]["io_port"] == {"hypervisor": 10.0, "partition": 10.0, "worker": 10.0, "total": 10.0}
    assert fig["ratio_decoding"]["hypercall"] == {"hypervisor": 7.0, "partition": 6.25, "total": 6.67}


def test_the_table_and_json_carry_the_floors_and_say_what_they_leave_out(monkeypatch, capsys):
    import json

    monkeypatch.setattr(instructions.shutil, "which", lambda name: "/valgrind")
    monkeypatch.setattr(instructions, "measure", _result)
    assert main(["bench", "--instructions"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^io_port\s+round trip\s+200\.0\s+20\.0\s+40\.0\s+10\.00×\s+5\.00×$", out, re.M), out
    assert re.search(r"^cpuid\s+partition / client\s+50\.0\s+4\.0\s+8\.0\s+12\.50×\s+6\.25×$", out, re.M), out
    assert "pyzmq, libzmq and the kernel" in out
    assert main(["bench", "--instructions", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["instructions"]
    assert got["decoding_floor"]["io_port"] == {"relay": 20_000, "client": 12_000, "echo": 8_000}
    assert got["ratio"]["cpuid"]["total"] == round(100 / 9, 2) and "kernel" in got["left_out"]

