"""How to test against a live stack with hvstack's pytest plugin: copy this file.

The plugin comes with hvstack (`pip install -e .`); the fixtures need no import. Each
`hvstack_run(...)` starts a run that lasts until the test ends, and is always torn down;
when a test fails, the run's logs and consoles are attached to its report.
"""

from __future__ import annotations

import pytest

from root.pytest_plugin import assert_faster, assert_percentile, assert_ratio_to_floor

pytestmark = pytest.mark.integration

ONE = "tests/configs/one.toml"  # one partition, "alpha", one VP, COM1 at 0x3F8

# Inline topologies work too; each partition gets the generation-1 chipset (COM1 included).
TWO_PARTITIONS = """
[run]
name = "pair"
logical_processors = 2

[[partition]]
name = "web"
vps = 1
memory_mb = 4
enlightenments = ["hypercall", "vp_index", "reference_counter"]
workloads = ["serial", "cpuid", "hypercall"]

[[partition]]
name = "db"
vps = 1
memory_mb = 4
enlightenments = []
workloads = ["serial", "portio"]
"""


def test_the_guest_boots_and_its_uart_answers(hvstack_run):
    run = hvstack_run(ONE)
    banner = run.wait_for_console("alpha", "enlightenments:", timeout=30)
    assert "Microsoft Hv (Hv#1)" in banner
    # Instructions on the VP's behalf, answered as `launch.py io` answers them. The guest's
    # portio workload writes the same scratch register: hold its VPs while we use it.
    with run.paused("alpha"):
        assert run.io("alpha", "outb", "0x3ff", "0x5a", "inb", "0x3ff") == ["OK", "OK 0x5a"]
    assert run.io("alpha", "rdmsr", "HV_X64_MSR_VP_INDEX") == ["OK 0x0"]
    assert run.io("alpha", "hypercall", "HvCallCreatePartition") == ["OK HV_STATUS_ACCESS_DENIED reps=0"]


def test_hypervisor_handled_paths_beat_the_worker_round_trip(hvstack_run):
    run = hvstack_run(ONE)
    # Two hops against four, read from the same status reply: holds however busy the machine.
    assert_faster(run, "cpuid", "io_port", percentile=50, min_samples=1000)
    assert_faster(run, "hypercall", "io_port", percentile=50, min_samples=1000)


def test_emulated_io_against_its_floor_and_a_sanity_bound(hvstack_run, hvstack_floor):
    # hvstack_floor is a session fixture: it is measured once, before this test's run starts,
    # so the floor and the stack never compete for the cores.
    run = hvstack_run(ONE)
    # Generous bounds: a check that nothing is pathologically slow, not a benchmark.
    ratio = assert_ratio_to_floor(run, "io_port", at_most=25, percentile=50, floor=hvstack_floor)
    assert ratio > 0
    assert_percentile(run, "cpuid", 50, under_ms=250)


def test_an_inline_topology_with_two_partitions(hvstack_run):
    run = hvstack_run(toml=TWO_PARTITIONS)
    assert set(run.partitions) == {"web", "db"}
    run.wait_for_console("db", "hvstack guest kernel", timeout=30)
    paths = run.wait_for_samples("io_port", n=100, partition="db", timeout=60)
    assert paths["io_port"].total.n >= 100
    run.wait_for_samples("hypercall", n=100, partition="web", timeout=60)
    status = run.stats()
    assert {p["state"] for p in status["partitions"]} == {"active"}
