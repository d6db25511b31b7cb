"""The SynIC in live runs (issue 10): synthetic timer messages reach a guest's SINT handler,
the reference time is read from the TSC page, and a hostile partition's junk reaches
neither the hypervisor's guard nor the other partition."""

from __future__ import annotations

import pytest

from root.client import RootClient
from root.testrun import handler_errors_in_logs
from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration


def by_name(run, name: str) -> dict:
    """The partition's status (proto.status.PartitionStatus's wire form), by its name."""
    pid = run.manifest()["partitions"][name]["id"]
    with RootClient(run.manifest()["endpoint"], run.secret()) as root:
        return next(p for p in root.status()["partitions"] if p["id"] == pid)


@pytest.fixture
def run_of():
    """Start a topology (``run_of(config)``); at the end every process must be gone and no
    handler may have raised."""
    runs = []

    def start(config: str):
        runs.append(start_run(config, short_run_root()))
        return runs[-1]

    yield start
    for run in runs:
        pids = run.pids()
        run.stop()
        assert wait_until(lambda: not alive(pids), 10, what="every process of the run to exit") is True
        assert not handler_errors_in_logs(run.path), "a handler raised in the hypervisor or a worker"


def test_synthetic_timer_messages_reach_the_guest_and_time_comes_from_the_tsc_page(run_of):
    run = run_of("tests/configs/synic.toml")

    def ticking():
        p = by_name(run, "timed")
        return p["guest"].get("stimer_ticks", 0) >= 200 and p["guest"].get("reftime_page_reads", 0) > 0 and p
    timed = wait_until(ticking, 60, 0.5, what="200 synthetic timer ticks handled in the guest")
    syn = timed["synic"]
    assert syn["stimer_fired"] >= 200 and syn["messages_delivered"] >= 200 and syn["eom"] >= 0
    # Every tick's handler read the reference time from the page: no MSR exit for it.
    assert timed["guest"].get("stimer_time_by_msr", 0) == 0 and timed["guest"]["stimer_time_by_page"] >= 200
    plain = by_name(run, "plain")
    assert plain["guest"].get("stimer_ticks", 0) == 0 and not any(plain["synic"].values())
    assert plain["guest"].get("reftime_page_reads", 0) == 0 and plain["guest"]["reftime_msr_reads"] > 0
    assert "stimer: STIMER0 periodic at 1 kHz" in run.console("timed")
    assert "stimer: the SynIC and synthetic timers are not offered" in run.console("plain")
    r = run.launch("status", run.name)
    assert r.returncode == 0 and "synic: messages posted" in r.stdout, r.stdout


def test_a_hostile_partition_posting_junk_does_not_stop_the_other(run_of):
    run = run_of("tests/configs/synic-hostile.toml")

    def junk_and_ticks():
        h, t = by_name(run, "hostile"), by_name(run, "timed")
        return h["guest"].get("hostile_refused", 0) >= 100 and t["guest"].get("stimer_ticks", 0) >= 100 and (h, t)
    hostile, timed = wait_until(junk_and_ticks, 60, 0.5, what="junk posted and the other partition ticking")
    # The other partition goes on: its ticks keep coming while the junk does.
    before = timed["guest"]["stimer_ticks"]
    wait_until(lambda: by_name(run, "timed")["guest"].get("stimer_ticks", 0) >= before + 100, 30, 0.5,
               what="100 more ticks in the timed partition")
    assert hostile["guest"].get("hostile_faults", 0) > 0  # SINT vector 5, SVERSION written: #GP
    assert hostile["synic"]["stimer_clamped"] >= 1  # a period of 100 ns ran at 200 µs
    with RootClient(run.manifest()["endpoint"], run.secret()) as root:
        st = root.status()
    assert st["counters"]["handler_errors"] == 0
    fails = st["hypercalls"]["failures"]
    assert fails.get("HV_STATUS_INVALID_CONNECTION_ID", 0) > 0 and fails.get("HV_STATUS_INVALID_PARAMETER", 0) > 0
    assert fails.get("HV_STATUS_INVALID_HYPERCALL_INPUT", 0) > 0
