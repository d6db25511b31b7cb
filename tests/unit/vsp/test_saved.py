"""A partition's bus saved from one VMBus server and restored into another (root/vsp/saved.py):
requests quiesced at the save, the record round-tripped through a file, the restored
channel serving the same rings, and a tampered or missing field refused."""

from __future__ import annotations

import copy
import re

import msgpack
import pytest

from proto import saved_state
from proto import vmbus as vb
from proto import vstor as vs
from proto.saved_state import SavedStateError
from proto.vmbus_ring import VM_PKT_COMP
from root.vsp import saved
from root.vsp.server import VmbusServer
from root.vsp.storvsp import READY, StorVsp

from tests.unit.vsp.support import FakeHv
from tests.unit.vsp.test_storvsp import Guest, buffer

Op = vs.VstorOperation


def restored_server(g: Guest, state: dict):
    """A new server over a copy of the guest's memory and the same disk, its bus restored."""
    mem = copy.deepcopy(g.mems[1])
    hv = FakeHv({1: mem})
    server = VmbusServer(hv)
    dev = StorVsp(g.disks[1])
    server.add_partition(1, mem, [dev])
    saved.restore(server, 1, state)
    return server, hv, mem, dev


def test_round_trip_through_a_file_keeps_the_channel_serving(tmp_path):
    g = Guest()
    data = bytes(range(256)) * 16
    g.mems[1].write(64 * 4096, data)
    # A write the guest put in its ring and the VSP has not read yet (no signal): the save
    # completes it before it saves (no request is in flight in a record).
    g.ch[1].to_host.write([g.srb(vs.rw16(vs.WRITE_16, 0, 8), vs.WRITE_TYPE, 4096, buffer(4096))])
    state = saved.save(g.server, 1)
    got, _ = g.ch[1].to_guest.read()
    assert [p.type for p in got] == [VM_PKT_COMP] and bytes(g.disks[1].data[:4096]) == data
    assert g.ch[1].to_host.interrupt_mask == 0  # poll mode left: a restored guest signals again
    path = tmp_path / "bus.hvs"
    path.write_bytes(saved_state.encode(1, "alpha", {"vmbus": state}))
    state = saved_state.read_file(path)["sections"]["vmbus"]
    assert state["version"] == vb.VERSION_WIN10_V5 and state["offers"][0]["device_state"]["state"] == READY
    server, hv, mem, dev = restored_server(g, state)
    assert dev.state == READY and dev.instance == g.server.partitions[1].offers[1].device.instance
    # The same guest rings (its memory as saved), now served by the restored server.
    g.server = server
    g.ch[1].to_host.view.mem = g.ch[1].to_guest.view.mem = mem
    [(status, body)] = g.roundtrip(1, [g.srb(vs.rw16(vs.READ_16, 0, 8), vs.READ_TYPE, 4096, buffer(4096, page=80))])
    assert status == 0 and g.srb_result(body)["srb_status"] & 0x3F == vs.SRB_STATUS_SUCCESS
    assert mem.read(80 * 4096, 4096) == data
    assert not server.partitions[1].errors


@pytest.mark.parametrize("change, refusal", [
    (lambda s: s["offers"][0].pop("channel"), "vmbus.offers[0].channel: missing"),
    (lambda s: s["offers"][0]["channel"].update(gpadl=7), "is not one of the saved GPADLs"),
    (lambda s: s["gpadls"][0].update(pfns=s["gpadls"][0]["pfns"][:-8]), "a created GPADL of 7 of its 8 pages"),
    (lambda s: s.update(sint=16), "vmbus.sint: 16 is outside 0..15"),
    (lambda s: s["offers"][0].update(device="netvsp"), "are not this partition's"),
    (lambda s: s["offers"][0]["device_state"].update(state=9), "its storvsp's state"),
    (lambda s: s["gpadls"][0].update(pfns=b"\xff" * 64), "its pages are not the partition's"),
])
def test_a_tampered_or_missing_field_is_refused_and_the_bus_stays_fresh(change, refusal):
    g = Guest()
    state = saved.save(g.server, 1)
    change(state)
    mem = copy.deepcopy(g.mems[1])
    server = VmbusServer(FakeHv({1: mem}))
    server.add_partition(1, mem, [StorVsp(g.disks[1])])
    mapped = mem.mapped_pages
    with pytest.raises(saved.VmbusRestoreError, match=re.escape(refusal)):
        saved.restore(server, 1, state)
    bus = server.partitions[1]
    assert not bus.version and not bus.gpadls and bus.offers[1].channel is None and mem.mapped_pages == mapped


def test_a_record_with_a_wrong_vmbus_section_is_refused_whole(tmp_path):
    g = Guest()
    state = saved.save(g.server, 1)
    state["target_vp"] = -1
    with pytest.raises(SavedStateError, match="vmbus.target_vp"):
        saved_state.decode(saved_state.encode(1, "alpha", {"vmbus": state}))


def test_a_bus_in_use_is_not_replaced():
    g = Guest()
    state = saved.save(g.server, 1)
    with pytest.raises(saved.VmbusRestoreError, match="in use"):
        saved.restore(g.server, 1, state)


def test_the_relay_answer_carries_the_state_or_the_refusal():
    from proto import messages as m
    g = Guest()
    reply = saved.answer(g.server, m.VspStateQuery(5, 1, "save", b""))
    assert reply.ref == 5 and not reply.error
    state = msgpack.unpackb(reply.state, raw=False)
    assert state["offers"][0]["device"] == "storvsp"
    refused = saved.answer(g.server, m.VspStateQuery(6, 1, "restore", reply.state))
    assert refused.error.startswith("partition 1's bus is in use")
    assert saved.answer(g.server, m.VspStateQuery(7, 1, "restore", b"\xc1")).error == "the saved bus is not msgpack"


def test_netvsp_state_round_trips_and_a_section_given_twice_is_refused():
    from root.vsp.netvsp import NetVsp, VirtualSwitch
    from tests.unit.vsp.test_netvsp import mac, two_partitions

    switch, server, vps, nics, stacks = two_partitions()
    assert stacks[1].ping(vps[1], bytes([10, 0, 0, 2])) is not None
    state = saved.save(server, 1)
    nic_state = state["offers"][0]["device_state"]
    assert nic_state["recv_gpadl"] >= 0 and nic_state["send_gpadl"] >= 0 and nic_state["packet_filter"]

    def restored(state):
        mem = copy.deepcopy(vps[1].mem)
        new = VmbusServer(FakeHv({1: mem}))
        nic = NetVsp(VirtualSwitch(), mac(1), "p1")
        new.add_partition(1, mem, [nic])
        saved.restore(new, 1, state)
        return nic

    nic = restored(copy.deepcopy(state))
    assert (nic.version, nic.packet_filter, nic.next_tid) == (nics[1].version, nics[1].packet_filter, nics[1].next_tid)
    assert sorted(nic.free) == sorted(nics[1].free) and nic.pending == nics[1].pending
    assert nic.recv.size == nics[1].recv.size and nic.send_sections == nics[1].send_sections
    bad = copy.deepcopy(state)
    free = bad["offers"][0]["device_state"]["free"]
    free[0] = free[1]
    with pytest.raises(saved.VmbusRestoreError, match="receive sections"):
        restored(bad)
