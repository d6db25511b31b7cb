"""The VSP's trace events (root/vsp/events.py): what the server does becomes events in a
0600 file, bounded in rate and size, that `trace` follows across renames."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

from proto import vmbus as vb
from proto import vstor as vs
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import (
    VM_PKT_COMP,
    VM_PKT_DATA_INBAND,
    VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
    encode_packet,
)
from root.vsp.events import EventFollower, EventLog, VmbusEvents
from root.vsp.netvsp import NetVsp, VirtualSwitch
from root.vsp.service import VspService
from tests.unit.vsp.support import contact, open_channel, send, storage_bus


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rate_limit_drops_and_says_how_many(tmp_path):
    clock = Clock()
    log = EventLog(str(tmp_path / "ev"), rate=10, burst=5, clock=clock)
    written = [log.emit("offered", 1, relid=i) for i in range(8)]
    assert written == [True] * 5 + [False] * 3
    clock.t += 1.0  # 10 tokens back (capped at the burst of 5)
    assert log.emit("opened", 1, relid=1)
    got = lines(tmp_path / "ev")
    assert [e["event"] for e in got] == ["offered"] * 5 + ["dropped", "opened"]
    assert got[5]["count"] == 3 and log.dropped_total == 3
    assert stat.S_IMODE(os.stat(tmp_path / "ev").st_mode) == 0o600
    assert [log.emit("signals", 1) for _ in range(6)] == [True] * 3 + [False] * 3  # 5 - 2 tokens left
    log.close()  # the last drops are said at the end
    assert lines(tmp_path / "ev")[-1] == {**lines(tmp_path / "ev")[-1], "event": "dropped", "count": 3}


def test_size_cap_keeps_one_old_file_and_the_follower_reads_across_it(tmp_path):
    path = tmp_path / "ev"
    log = EventLog(str(path), max_bytes=600, rate=1e9, burst=10**9)
    log.emit("offered", 1, relid=0)
    follower = EventFollower(path)  # from the end: the first event is not new
    seen = []
    for i in range(1, 60):
        log.emit("opened", 2, relid=i, padding="x" * 20)
        if i % 3 == 0:  # (a reader more than a whole file behind loses what it missed)
            seen += follower.poll()
    seen += follower.poll()
    assert [e["relid"] for e in seen] == list(range(1, 60))
    assert all(e["partition"] == 2 for e in seen)
    assert os.path.getsize(path) <= 600 and os.path.getsize(str(path) + ".1") <= 600
    assert sorted(os.listdir(tmp_path)) == ["ev", "ev.1"]
    log.close()
    follower.close()


def test_an_unwritable_events_file_turns_the_events_off(tmp_path):
    log = EventLog(str(tmp_path / "no such dir" / "ev"))
    assert not log.emit("offered", 1) and log.path is None and not log.emit("offered", 1)


def test_follower_waits_for_the_file_keeps_partial_lines_and_skips_bad_ones(tmp_path):
    path = tmp_path / "ev"
    follower = EventFollower(path)
    assert follower.poll() == []  # no VSP (yet)
    with open(path, "ab") as f:
        f.write(b'{"ns": 1, "partition": 1, "event": "offered"}\nnot json\n[1]\n{"ns": 2, "part')
    assert [e["event"] for e in follower.poll()] == ["offered"] and follower.bad_lines == 2
    with open(path, "ab") as f:
        f.write(b'ition": 3, "event": "opened"}\n')
    assert follower.poll() == [{"ns": 2, "partition": 3, "event": "opened"}]
    follower.close()


CR = VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED


def traced_bus(tmp_path, partitions=(1,)):
    """A server whose posts go through the events hook, as VspService.post does."""
    server, hv, mems, _ = storage_bus(partitions)
    owner = SimpleNamespace(server=server, switch=None)
    events = VmbusEvents(EventLog(str(tmp_path / "ev")), owner)
    plain = hv.post

    def post(partition, vp, sint, payload):
        events.posted(partition, payload)
        return plain(partition, vp, sint, payload)

    hv.post = post
    return server, hv, mems, events, owner


def test_channel_life_refusals_and_sampled_signals(tmp_path):
    server, hv, mems, events, _ = traced_bus(tmp_path)
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    ch = open_channel(server, hv, 1, mems[1])
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)  # refused: twice
    # One request through the ring: a packet in, its completion out, counted by the next sample.
    ch.to_host.write([encode_packet(VM_PKT_DATA_INBAND, vs.packet(vs.VstorOperation.BEGIN_INITIALIZATION, 0, b""),
                                    1, CR)])
    server.on_event(1, vb.channel_connection_id(1))
    assert [p.type for p in ch.to_guest.read()[0]] == [VM_PKT_COMP]
    events.sample()
    events.sample()  # nothing new: no events
    close = vb.encode(Msg.CHANNELMSG_CLOSECHANNEL, vb.RELID.pack(1))
    server.on_message(1, 0, vb.VMBUS_MESSAGE_CONNECTION_ID_4, close)
    events.received(1, close, was_open=True)
    send(server, 1, Msg.CHANNELMSG_GPADL_TEARDOWN, vb.GPADL_TEARDOWN.pack(1, 0xE1E10))
    got = lines(tmp_path / "ev")
    assert [e["event"] for e in got] == ["connected", "offered", "gpadl created", "opened", "refused", "signals",
                                         "closed", "gpadl torn down"]
    assert all(e["partition"] == 1 for e in got)
    by = {e["event"]: e for e in got}
    assert by["connected"]["version"] == "5.0"
    assert by["offered"]["device"] == by["opened"]["device"] == "StorVsp"
    assert by["gpadl created"] == {**by["gpadl created"], "relid": 1, "gpadl": "0xe1e10", "pages": 8}
    assert by["refused"]["reason"] == "REQUESTOFFERS twice" and by["refused"]["count"] == 1
    sig = by["signals"]
    assert (sig["packets_in"], sig["packets_out"], sig["events_in"]) == (1, 1, 1)
    assert sig["signals_out"] + sig["signals_suppressed"] == 1 and sig["to_guest_bytes"] == 0


def test_a_corrupt_ring_is_refused_with_its_reason_then_rescinded(tmp_path):
    server, hv, mems, _, _ = traced_bus(tmp_path)
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    ch = open_channel(server, hv, 1, mems[1])
    ch.to_host.view.write(0, (1 << 31).to_bytes(4, "little"))  # write index far outside the ring
    server.on_event(1, vb.channel_connection_id(1))
    got = lines(tmp_path / "ev")
    assert [e["event"] for e in got][-2:] == ["refused", "rescinded"]
    assert got[-2]["reason"].startswith("channel reset") and got[-1]["relid"] == 1


def test_switch_learning_is_an_event_of_the_ports_partition(tmp_path):
    server, _, _, events, owner = traced_bus(tmp_path)
    owner.switch = VirtualSwitch()
    nic = NetVsp(owner.switch, b"\0\x15\x5d\0\0\x01", "alpha")
    server.partitions[1].offers[1].device = nic  # the partition's offer is this NIC
    owner.switch.table[nic.mac] = nic
    events.sample()
    events.sample()  # learned once
    (ev,) = lines(tmp_path / "ev")
    assert ev == {**ev, "event": "mac learned", "partition": 1, "mac": "00:15:5d:00:00:01", "port": "alpha",
                  "table_size": 1}


def test_the_service_writes_events_beside_its_status(tmp_path):
    svc = VspService(dealer=None, status_path=str(tmp_path / "vsp-status.json"))
    server, hv, _, _ = storage_bus()
    svc.server = server
    contact(server, 1)
    svc.events.posted(1, hv.posts[-1][3])  # (the server here posts through FakeHv, not svc.post)
    svc.events.log.close()
    svc.write_status()
    assert [e["event"] for e in lines(tmp_path / "vsp-events.jsonl")] == ["connected"]
    status = json.loads((tmp_path / "vsp-status.json").read_text())
    assert isinstance(status["written_ns"], int)


def test_after_an_unload_a_reopened_channel_counts_from_zero(tmp_path):
    server, hv, mems, events, _ = traced_bus(tmp_path)

    def one_request(ch, tid):
        ch.to_host.write([encode_packet(VM_PKT_DATA_INBAND, vs.packet(vs.VstorOperation.BEGIN_INITIALIZATION, 0,
                                                                      b""), tid, CR)])
        server.on_event(1, vb.channel_connection_id(1))
        ch.to_guest.read()

    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    ch = open_channel(server, hv, 1, mems[1])
    for tid in range(1, 4):
        one_request(ch, tid)
    events.sample()
    send(server, 1, Msg.CHANNELMSG_UNLOAD)
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    one_request(open_channel(server, hv, 1, mems[1]), 9)
    events.sample()
    got = lines(tmp_path / "ev")
    assert "unloaded" in [e["event"] for e in got]
    signals = [e for e in got if e["event"] == "signals"]
    assert [s["packets_in"] for s in signals] == [3, 1]
