"""Per-LP TLBs through the real processes: whose entries each kind of flush takes."""

from __future__ import annotations

import struct
import time

import pytest

from root.client import RootClient
from proto.codes import HvStatus, HypercallCode as C, control_value

from benchmarks.bench import tlb_experiment
from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration


def test_enlightened_flushes_leave_the_other_partition_fewer_tlb_misses():
    hc, cr3 = tlb_experiment("hypercall", 2.0), tlb_experiment("mov_cr3", 2.0)
    assert hc["reads"] > 1000 and cr3["reads"] > 1000, "the reader ran"
    assert hc["flushes"]["address_list"] > 0 and hc["flushes"]["invlpg"] == 0
    assert cr3["flushes"]["invlpg"] > 0 and cr3["flushes"]["address_list"] == 0
    assert hc["misses_per_1000"] < cr3["misses_per_1000"], (hc, cr3)


TOPOLOGY = """
[run]
name = "tlb"
duration_s = 0
logical_processors = 1

[[partition]]
name = "reader"
vps = 1
memory_mb = 4
chipset = "minimal"
enlightenments = ["hypercall"]
workloads = ["tlb_reader"]

[[partition]]
name = "other"
vps = 1
memory_mb = 4
chipset = "minimal"
enlightenments = ["hypercall"]
workloads = ["timer"]
"""
FLUSH_ALL = struct.pack("<QQQ", 0, 0b11, 0)  # all processors, all address spaces


def test_a_flush_hypercall_never_clears_another_partitions_entries(tmp_path):
    cfg = tmp_path / "tlb.toml"
    cfg.write_text(TOPOLOGY)
    live = start_run(str(cfg), short_run_root())
    client = RootClient(live.manifest()["endpoint"], live.secret())
    try:
        def reader():
            return client.status()["partitions"][0]["guest"]

        def settled():
            a = reader()
            time.sleep(0.6)
            b = reader()
            return b.get("tlb_reads", 0) > a.get("tlb_reads", 0) > 0 and a["tlb_misses"] == b["tlb_misses"]

        wait_until(settled, 30, what="the reader's TLB warm and its misses steady")
        before = reader()["tlb_misses"]
        flush = control_value(C.HvCallFlushVirtualAddressSpace)
        for _ in range(20):  # the other partition flushes all its address spaces, everywhere
            r = client.io(2, 0, "hypercall", flush, data=FLUSH_ALL)
            assert HvStatus(r.rax & 0xFFFF) == HvStatus.HV_STATUS_SUCCESS
            time.sleep(0.02)
        assert client.status()["tlb"]["lps"][0]["valid"].get("1") == 64
        time.sleep(0.6)
        assert reader()["tlb_misses"] == before, "another partition's flush cost the reader TLB entries"
        # The same flush by the reader's own partition does take its entries.
        for _ in range(5):
            client.io(1, 0, "hypercall", flush, data=FLUSH_ALL)
            time.sleep(0.05)
        wait_until(lambda: reader()["tlb_misses"] >= before + 64, 10, what="the reader's own flush to cost misses")
        assert client.status()["tlb"]["lps"][0]["flushes"]["address_space"] == 25
    finally:
        client.close()
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")
