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
def test_cachegrind_counts_the_workers_instructions_per_round_trip():
    why = instructions.missing()
    if why is not None:
        pytest.skip(f"--instructions cannot run here: {why}")
    per = instructions.per_round_trip("worker", "io_port", 200)
    # a port write or read through Worker.serve, the bus and the UART: tens of thousands of
    # instructions (37 k on main 607345b), never the ~1e9 of the interpreter's start-up
    assert 5_000 < per < 500_000, per
