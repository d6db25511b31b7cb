"""What `top` and `trace` make of the VSP process's figures and events (issue 10): top's
VMBus rates from two reads of vsp-status.json, trace's records of reason ``vmbus``."""

from __future__ import annotations

import dataclasses
import json

from proto import vmbus as vb
from proto import vstor as vs
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import (
    VM_PKT_DATA_INBAND,
    VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
    encode_packet,
)
from root.commands.top import render_top, top_sample
from root.trace_format import (
    CSV_FIELDS,
    TraceSummary,
    vmbus_csv_row,
    vmbus_record,
    vmbus_text_line,
)
from root.vsp import status as vsp_status
from root.vsp.netvsp import NetVsp, VirtualSwitch
from root.vsp.service import VspService
from tests.unit.proto.test_status import sample as hv_status
from tests.unit.vsp.support import contact, open_channel, send, storage_bus

MAN = {"partitions": {"alpha": {"id": 1}}, "processes": {}}


def two_vsp_reads(tmp_path):
    """vsp-status.json before and after one storvsp request, 2 s apart on the VSP's clock."""
    server, hv, mems, _ = storage_bus()
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    ch = open_channel(server, hv, 1, mems[1])
    svc = VspService(dealer=None, status_path=str(tmp_path / vsp_status.STATUS_FILE))
    svc.server = server
    svc.switch = VirtualSwitch()
    nic = NetVsp(svc.switch, b"\0\x15\x5d\0\0\x01", "alpha")
    svc.switch.table[nic.mac] = nic
    svc.write_status()
    before = vsp_status.load(tmp_path)
    ch.to_host.write([encode_packet(VM_PKT_DATA_INBAND, vs.packet(vs.VstorOperation.BEGIN_INITIALIZATION, 0, b""),
                                    1, VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED)])
    server.on_event(1, vb.channel_connection_id(1))
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)  # refused: twice
    svc.switch.forwarded = 4
    svc.write_status()
    after = vsp_status.load(tmp_path)
    after["written_ns"] = before["written_ns"] + 2_000_000_000
    return before, after


def frame(vsp_before, vsp_after):
    before = hv_status()
    after = dataclasses.replace(before, uptime_s=before.uptime_s + 2)
    return top_sample("r", MAN, before, after, [], "name", 2.0, vsp_before, vsp_after)


def test_top_shows_channels_rates_rings_refusals_and_the_switch(tmp_path):
    s = frame(*two_vsp_reads(tmp_path))
    v = s["partitions"][0]["vmbus"]
    c = v["channels"]["1"]
    assert c["device"] == "StorVsp" and c["state"] == "open"
    assert c["per_s"] == {"packets_in": 0.5, "packets_out": 0.5, "signals_out": c["per_s"]["signals_out"],
                          "signals_suppressed": c["per_s"]["signals_suppressed"], "events_in": 0.5}
    assert c["per_s"]["signals_out"] + c["per_s"]["signals_suppressed"] == 0.5
    # the completion sits unread in the 3-page host→guest ring
    assert c["to_guest_bytes"] > 0 and c["to_guest_size"] == 3 * 4096
    assert c["to_guest_percent"] == round(100 * c["to_guest_bytes"] / (3 * 4096), 1)
    assert v["refused"] == 1 and v["refused_per_s"] == 0.5 and v["errors"] == {"REQUESTOFFERS twice": 1}
    assert s["switch"] == {"table_size": 1, "table": {"00:15:5d:00:00:01": "alpha"}, "forwarded": 4,
                           "flooded": 0, "forwarded_per_s": 2.0, "flooded_per_s": 0.0}
    json.dumps(s)  # --json
    text = render_top(s)
    assert "  vmbus 5.0: 1 channel(s), 1 GPADLs, refused 1 (0.5/s): REQUESTOFFERS twice 1" in text
    row = next(line for line in text.splitlines() if "StorVsp" in line).split()
    signals = [_shown(c["per_s"]["signals_out"]), _shown(c["per_s"]["signals_suppressed"])]
    assert row == ["1", "StorVsp", "open", "0.5", "0.5", *signals, "0.5", "0", "B", "0%",
                   str(c["to_guest_bytes"]), "B", f"{c['to_guest_percent']:.0f}%", "0", "0"]
    assert "virtual switch: 1 MAC(s), forwarded 4 (2.0/s), flooded 0 (0/s); 00:15:5d:00:00:01 → alpha" in text


def _shown(rate: float) -> str:
    return "0" if rate == 0 else f"{rate:.1f}"


def test_top_without_a_vsp_or_without_a_new_write(tmp_path):
    s = frame(None, None)
    assert s["partitions"][0]["vmbus"] is None and s["switch"] is None
    assert "vmbus" not in render_top(s) and "virtual switch" not in render_top(s)
    _, after = two_vsp_reads(tmp_path)
    s = frame(after, after)  # the VSP has not written since: figures, but no rates
    c = s["partitions"][0]["vmbus"]["channels"]["1"]
    assert c["per_s"] is None and c["packets_in"] == 1 and s["switch"]["forwarded_per_s"] is None
    assert "forwarded 4 (-/s)" in render_top(s)


def test_trace_records_of_vmbus_events():
    names = {1: "alpha"}
    ev = {"ns": 3_500_000_000, "partition": 1, "event": "opened", "relid": 1, "device": "StorVsp"}
    rec = vmbus_record(ev, names, t0_ns=1_000_000_000)
    assert rec == {"t": 2.5, "partition": "alpha", "partition_id": 1, "reason": "vmbus", "event": "opened",
                   "details": {"relid": 1, "device": "StorVsp"}}
    assert vmbus_text_line(rec).split() == ["2.500000", "alpha", "-", "vmbus", "opened", "relid=1", "device=StorVsp"]
    row = vmbus_csv_row(rec)
    assert len(row) == len(CSV_FIELDS) and row[3:6] == ["vmbus", "opened", "relid=1 device=StorVsp"]
    assert vmbus_record({"partition": 0, "event": "dropped", "count": 3}, names, 0)["partition"] == "root"
    summary = TraceSummary()
    summary.add("io_port", 2000)
    for e in ("opened", "signals", "signals"):
        summary.add_vmbus(e)
    assert summary.to_json()["vmbus_events"] == {"opened": 1, "signals": 2}
    assert summary.text().endswith("VMBus events: opened 1, signals 2")
    rows = summary.csv_rows()
    assert rows[-2:] == [["vmbus opened", 1, *[""] * 8], ["vmbus signals", 2, *[""] * 8]]
    assert rows[-3][0] == "total"


class FakeRun:
    def __init__(self, path) -> None:
        self.path, self.name = path, "r"

    def is_live(self) -> bool:
        return True

    def secret(self) -> str:
        return "s"


class FakeTracer:
    """The root's connection as `trace` uses it; its first poll has the VSP append events."""

    def __init__(self, events_path) -> None:
        self.events_path = events_path
        self.subscribed: list[int] = []
        self.polls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def trace_subscribe(self, partition: int) -> None:
        self.subscribed.append(partition)

    trace_renew = trace_subscribe

    def trace_poll(self, timeout_ms: int) -> list:
        self.polls += 1
        if self.polls == 1:
            with open(self.events_path, "a") as f:
                for pid, event in ((1, "opened"), (2, "opened"), (0, "dropped"), (1, "signals")):
                    f.write(json.dumps({"ns": 1, "partition": pid, "event": event, "relid": 1}) + "\n")
        return []


def test_trace_follows_the_vsp_events_of_one_partition_without_asking_for_exits(tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    from root.commands import trace
    from root.vsp.events import EVENTS_FILE

    events_path = tmp_path / EVENTS_FILE
    events_path.write_text(json.dumps({"ns": 1, "partition": 1, "event": "offered", "relid": 1}) + "\n")  # before
    tracer = FakeTracer(events_path)
    man = {"endpoint": "e", "partitions": {"alpha": {"id": 1}, "beta": {"id": 2}}}
    monkeypatch.setattr(trace.follow, "live_partition", lambda ref, partition: (FakeRun(tmp_path), man))
    monkeypatch.setattr(trace.follow, "live_run_following", lambda ref: (FakeRun(tmp_path), man))
    monkeypatch.setattr(trace, "RootClient", lambda *a, **kw: tracer)
    args = Namespace(run="r", partition="alpha", reason=["vmbus"], duration=0.5, csv=False, json=True)
    assert trace.run(args) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["partition"], e["event"]) for e in out[:-1]] == [("alpha", "opened"), ("root", "dropped"),
                                                                 ("alpha", "signals")]
    assert out[-1]["summary"]["vmbus_events"] == {"opened": 1, "dropped": 1, "signals": 1}
    assert tracer.subscribed == []  # --reason vmbus alone: no exits asked of the hypervisor
    args = Namespace(run="r", partition=None, reason=None, duration=0.3, csv=False, json=False)
    assert trace.run(args) == 0 and tracer.subscribed == [0]  # exits and VMBus
