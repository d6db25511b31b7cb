"""Issue 9: nothing a peer sends can crash a process — the fuzzer's short run against a live
run (`launch.py fuzz`, benchmarks/fuzz.py): every message type, well-formed, malformed and
out of turn, from strangers, from a partition's own worker and VP connections, and as the
root.  The run must survive (every process alive, status answering) with its guest making
progress, and no handler may have raised (hostile input is refused before a handler runs;
a handler error is a bug of ours, even in a fuzzed run)."""

from __future__ import annotations

import json

import pytest

from proto import messages as m
from root.client import RootClient
from tests.support import alive, wait_until

pytestmark = pytest.mark.integration


def test_the_run_survives_3000_fuzzed_messages_and_its_guest_makes_progress(live):
    live.fuzzed = True
    wait_until(lambda: "enlightenments:" in live.console("alpha"), 30, what="the guest's banner")
    out = live.launch("fuzz", live.name, "--messages", "3000", "--seed", "1", "--duration", "60", "--json",
                      timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    assert rep["messages"] == 3000
    assert (rep["crashes"], rep["hangs"], rep["dead"]) == (0, 0, [])
    assert rep["exits_per_s_before"] > 0 and rep["exits_per_s_after"] > 0
    assert rep["undecodable"] == []  # everything the hypervisor answered was a message
    # Every message type was sent, and each kind of refusal came back.
    assert len(rep["sent_by_type"]) == len(m.REGISTRY)
    for code in ("MALFORMED", "INVALID_FIELD", "NOT_AUTHENTICATED", "NOT_PERMITTED", "OUT_OF_TURN"):
        assert rep["errors_by_code"].get(code, 0) > 0, code
    counters = rep["hypervisor_counters"]
    assert counters["handler_errors"] == 0 and counters["out_of_turn"] > 0
    # The run goes on: every process alive, status answering, the guest still exiting.
    assert len(alive(live.pids())) == len(live.pids())
    with RootClient(live.manifest()["endpoint"], live.secret()) as root:
        first = root.status()
        exits = lambda st: sum(sum(vp["exits"].values()) for p in st["partitions"] if p["id"] == 1 for vp in p["vps"])
        wait_until(lambda: exits(root.status()) > exits(first), 10, what="the guest to exit again")


def test_the_runs_own_worker_survives_fuzzed_device_accesses(live):
    """--devices: the run's own worker gets what its guest could send it through the
    hypervisor (port and VGA accesses, console and keyboard input, queries); its loop's
    guard must never have to catch anything, and the guest must go on exiting."""
    live.fuzzed = True
    wait_until(lambda: "enlightenments:" in live.console("alpha"), 30, what="the guest's banner")
    out = live.launch("fuzz", live.name, "--messages", "2000", "--seed", "5", "--duration", "60", "--devices",
                      "--json", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    assert (rep["crashes"], rep["hangs"], rep["handler_error_lines"]) == (0, 0, [])
    assert rep["devices"] and rep["exits_per_s_after"] > 0
    assert rep["replies"].get("worker_query_reply", 0) > 0  # the real worker answered the fuzzer's queries
    assert len(alive(live.pids())) == len(live.pids())
