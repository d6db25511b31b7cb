"""Posted interrupts through the VP's descriptor (proto/posted.py), in the real processes:
a VP busy in guest code takes the PIC's tick from its descriptor, and with
HVSTACK_POSTED_DESCRIPTOR=0 by message as before."""

from __future__ import annotations

import os
import stat

import pytest

from proto.stats import PathStats
from root.client import RootClient

from tests.support import alive, short_run_root, start_run, wait_until

pytestmark = pytest.mark.integration

BUSY = """\
[run]
name = "posted"
duration_s = 0

[[partition]]
name = "busy"
vps = 1
memory_mb = 4
workloads = ["compute", "timer"]  # "timer": the PIT's tick, through the PIC (partitions/tick.py)
"""
TICKS = 20  # the PIC's 100 Hz tick: 0.2 s of them


def busy_run(tmp_path):
    cfg = tmp_path / "busy.toml"
    cfg.write_text(BUSY)
    live = start_run(str(cfg), short_run_root())
    client = RootClient(live.manifest()["endpoint"], live.secret())

    def ticked():
        status = client.status()
        wire = status["partitions"][0]["paths"].get("interrupt")
        return status if wire and PathStats.from_wire(wire).total.n >= TICKS else None

    try:
        status = wait_until(ticked, 60, what=f"{TICKS} ticks taken by the busy VP")
        return live, status
    finally:
        client.close()
        pids = live.pids()
        live.stop()
        wait_until(lambda: not alive(pids), 10, what="every process gone")


def test_a_busy_vp_takes_its_ticks_from_its_descriptor(tmp_path, monkeypatch):
    monkeypatch.setenv("HVSTACK_POSTED_DESCRIPTOR", "1")  # (the default; set against the environment)
    live, status = busy_run(tmp_path)
    c = status["counters"]
    # (busy: a vector posted again before the VP took the last one, sent by message)
    assert c["posted_descriptor"] > 0
    assert c["posted_descriptor"] + c["posted_descriptor_busy"] == c["posted_interrupts"]
    assert c["posted_descriptor_refused"] == 0 and c["handler_errors"] == 0


def test_turned_off_the_ticks_come_by_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HVSTACK_POSTED_DESCRIPTOR", "0")
    live, status = busy_run(tmp_path)
    c = status["counters"]
    assert c["posted_interrupts"] > 0 and c["posted_descriptor"] == 0 and c["handler_errors"] == 0
    assert not list(live.path.glob("pi-*.bin"))
