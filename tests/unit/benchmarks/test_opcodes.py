"""``bench --opcodes`` (benchmarks/opcodes.py): bytecodes per round trip by function, exact —
the same twice — with the harness apart, and the command's table and JSON."""

from __future__ import annotations

import json

from benchmarks import opcodes
from root.cli import main


def test_a_worker_round_trip_is_counted_by_function_exactly_and_the_same_twice():
    one = opcodes.per_round_trip("worker", "io_port", n=40)
    assert one == opcodes.per_round_trip("worker", "io_port", n=40)  # exact: no host's noise in it
    s = opcodes.summary(one)
    assert "worker/service.py Worker.handle" in s["functions"]
    assert any(w.startswith("proto (generated) decode") for w in s["functions"])  # the codec's own
    assert not any(opcodes.harness(w) for w in s["functions"]) and s["harness"] > 0
    assert 100 < s["own"] < 5000 and s["own"] == round(sum(s["functions"].values()), 1)


def test_the_command_prints_a_table_per_case_and_json(monkeypatch, capsys):
    fake = {"io_port worker": {"worker/service.py Worker.handle": 80.0, "proto (generated) decode": 40.0,
                               "tests/unit/worker/fake.py FakeEndpoint.send": 9.0}}
    monkeypatch.setattr(opcodes, "measure", lambda: fake)
    assert main(["bench", "--opcodes", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "io_port worker" in out and "Worker.handle" in out and "67%" in out and "harness" in out
    assert main(["bench", "--opcodes", "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)["opcodes"]
    assert got["cases"]["io_port worker"] == {"own": 120.0, "harness": 9.0,
                                              "functions": {"worker/service.py Worker.handle": 80.0,
                                                            "proto (generated) decode": 40.0}}
