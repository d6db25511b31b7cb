"""netvsp and the virtual switch with the real guest netvsc and its tiny IP layer, two
partitions in one process: ARP, ping, MAC learning, a frame larger than the MTU."""

from __future__ import annotations

import pytest

from proto import nvsp as nv
from proto import vmbus as vb
from proto.vmbus_ring import GpaRange, encode_gpa_direct

from partitions import vmbus_net
from partitions.drivers import netvsc, synic
from partitions.drivers import vmbus as guest_vmbus
from root.vsp.netvsp import NetVsp, VirtualSwitch
from root.vsp.server import VmbusServer
from tests.unit.vsp.support import FakeMemory, Hypervisors, SimVp, guest_system


def mac(pid: int) -> bytes:
    return bytes([0, 0x15, 0x5D, 0, 0, pid])


@pytest.fixture
def two():
    return two_partitions()


def two_partitions():
    """Two partitions' NICs on one switch, each guest's netvsc and IP layer brought up."""
    switch = VirtualSwitch()
    server = VmbusServer(None)
    vps = {p: SimVp(server, FakeMemory(pages=2048), p) for p in (1, 2)}
    server.hv = Hypervisors(vps)
    nics = {p: NetVsp(switch, mac(p), f"p{p}") for p in (1, 2)}
    for p in (1, 2):
        server.add_partition(p, vps[p].mem, [nics[p]])
    stacks = {}
    for p in (1, 2):
        sys = guest_system(int(guest_vmbus.NEEDED))
        stacks[p] = vmbus_net._bring_up(vps[p], sys)
        assert stacks[p] is not None, sys.lines
    vps[1].on_idle = lambda: stacks[2].handle(vps[2])
    vps[2].on_idle = lambda: stacks[1].handle(vps[1])
    return switch, server, vps, nics, stacks


def test_bring_up_ping_and_learning(two):
    switch, server, vps, nics, stacks = two
    assert stacks[1].nic.mac == mac(1) and stacks[1].ip == bytes([10, 0, 0, 1])
    assert nics[1].packet_filter == nv.NDIS_PACKET_TYPE_DIRECTED | nv.NDIS_PACKET_TYPE_BROADCAST
    rtt = stacks[1].ping(vps[1], bytes([10, 0, 0, 2]))
    assert rtt is not None and stacks[2].answered == 1
    assert switch.status()["table"] == {mac(1).hex(":"): "p1", mac(2).hex(":"): "p2"}
    # flooded: the two gratuitous ARPs at bring-up and the ARP request; the rest switched
    assert switch.flooded == 3 and switch.forwarded >= 2
    assert stacks[2].ping(vps[2], bytes([10, 0, 0, 1])) is not None
    assert nics[1].stats.tx_frames >= 2 and nics[2].stats.rx_frames >= 2
    # every receive section comes back once the guests have read what was sent them
    stacks[1].handle(vps[1])
    stacks[2].handle(vps[2])
    server.poll_busy()  # (their completions need no signal while the VSP polls the ring)
    assert not nics[1].pending and not nics[2].pending
    assert server.status()[1]["errors"] == {} and server.status()[2]["errors"] == {}


def test_nobody_answers_an_unknown_address(two):
    _, _, vps, _, stacks = two
    vps[1].ticks = True
    assert stacks[1].ping(vps[1], bytes([10, 0, 0, 3])) is None


def test_a_frame_larger_than_the_mtu_is_refused_and_the_other_partition_goes_on(two):
    switch, server, vps, nics, stacks = two
    nic = stacks[1].nic
    big = nv.rndis_packet(b"\xff" * 6 + mac(1) + b"\x08\x00" + bytes(3000))
    vps[1].mem.write(netvsc.TX_AREA, big)
    with pytest.raises(netvsc.NetError):
        nic.send_rndis(vps[1], big, wait=True)
    assert nics[1].stats.errors == {"frame larger than the MTU": 1}
    assert nics[2].stats.rx_frames == 0
    assert stacks[2].ping(vps[2], bytes([10, 0, 0, 1])) is not None


def test_hostile_nvsp(two):
    _, server, vps, nics, stacks = two
    ch = stacks[1].nic.ch
    # a send-buffer section named by a page list, a short message (section 0, size 0), a
    # section past the buffer, one larger than a section, an in-band message naming no
    # section, a second send buffer, an unknown type
    from proto.vmbus_ring import VM_PKT_DATA_INBAND, encode_packet

    def rndis_pkt(section, size, tid):
        return encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT,
                                                         nv.RNDIS_PKT.pack(0, section, size)), tid, 1)

    pkts = [encode_gpa_direct(nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_RNDIS_PKT, nv.RNDIS_PKT.pack(0, 5, 100)),
                              [GpaRange(64, 0, (netvsc.TX_AREA >> 12,))], 901),
            encode_packet(VM_PKT_DATA_INBAND, b"\x6b\0\0\0", 902, 1),
            rndis_pkt(10_000, 100, 904), rndis_pkt(1, 5000, 905), rndis_pkt(nv.NETVSC_INVALID_INDEX, 100, 906),
            encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(nv.NVSP_MSG1_TYPE_SEND_SEND_BUF,
                                                      nv.SEND_SEND_BUF.pack(0xE1E12, 0, 0)), 907, 1),
            encode_packet(VM_PKT_DATA_INBAND, nv.nvsp(999), 903, 1)]
    ch.send(vps[1], pkts)
    server.poll_busy()
    assert nics[1].stats.errors == {"bad send buffer section": 4, "bad send buffer": 1,
                                    "RNDIS message neither in a page list nor in the send buffer": 1,
                                    "unsupported NVSP message": 1}
    assert stacks[2].ping(vps[2], bytes([10, 0, 0, 1])) is not None


def test_streaming_reaches_the_peer_and_transmit_pages_are_reused(two, monkeypatch):
    _, server, vps, nics, stacks = two
    monkeypatch.setattr(vmbus_net, "STREAM_S", 0.2)
    assert stacks[1].resolve(vps[1], bytes([10, 0, 0, 2])) is not None
    sys = guest_system(int(guest_vmbus.NEEDED))
    sys.timers["vmbus_net_state"] = (1, stacks[1], {})
    vps[1].counters = {}
    dropped0 = nics[2].stats.rx_dropped
    sent = vmbus_net.wl_vmbus_net_stream(vps[1], sys)
    assert sent >= 64 and vps[1].counters["vmbus_stream_sent"] == sent
    for _ in range(3):
        server.poll_busy()
        stacks[2].handle(vps[2])
    # each frame arrived, or found the receiver's 32 sections all in use (it reads only
    # when this test lets it) and was dropped, as a switch drops for a full port
    assert stacks[2].streamed > 0
    assert stacks[2].streamed + nics[2].stats.rx_dropped - dropped0 == sent
    assert len(stacks[1].nic.done) <= netvsc.TX_SLOTS  # completions do not pile up
    assert vmbus_net.wl_vmbus_net_stream(vps[1], sys) == 0  # once


def _take_interrupt(vp) -> None:
    """The VP takes its pending SINT 2 interrupt (as at the end of an exit with IF set)."""
    if vp.irq:
        vp.irq = False
        vector = synic.SINT_VECTOR_BASE + vb.VMBUS_MESSAGE_SINT
        vp.handlers[vector](vp, vector)


def test_the_answerer_replies_from_its_interrupt_with_the_ring_masked(two):
    switch, server, vps, nics, stacks = two
    # beta's workload never polls: only its SINT's handler (netvsc's NAPI) can answer
    vps[1].on_idle = lambda: _take_interrupt(vps[2])
    vps[2].irq_stamps = (1, 2, 3)  # the hypervisor's two stamps and the VP's, as vp.py keeps them
    masked = []
    receive = stacks[2].receive
    stacks[2].nic.rx_handler = lambda vp, *a: (masked.append(stacks[2].nic.ch.to_guest.interrupt_mask),
                                               receive(vp, *a))
    answered = stacks[2].answered
    assert stacks[1].ping(vps[1], bytes([10, 0, 0, 2])) is not None
    assert stacks[2].answered == answered + 1 and stacks[2].nic.stats["napi_polls"] >= 1
    assert masked and all(masked)  # the host does not signal while the ring is drained
    assert stacks[2].nic.ch.to_guest.interrupt_mask == 0  # and may again afterwards
    reply = next(t for (src, _, kind, _), t in switch.icmp_stamps.items() if src == "10.0.0.2" and kind == 0)
    assert reply[4:7] == (1, 2, 3)  # the interrupt's stamps went out with the reply


def test_an_interrupt_while_the_driver_is_busy_polls_as_it_leaves(two):
    switch, server, vps, nics, stacks = two
    nic = stacks[2].nic
    got = []
    nic.rx_handler = lambda vp, frames, *a: got.extend(frames)
    with nic.entered(vps[2]):
        stacks[1].nic.send(vps[1], stacks[1].eth(mac(2), 0x88B5, bytes(60)))
        server.poll_busy()
        assert vps[2].irq
        _take_interrupt(vps[2])  # the workload was inside netvsc: only scheduled
        assert nic.napi_scheduled and not got and nic.stats["napi_deferred"] == 1
    assert len(got) == 1 and not nic.napi_scheduled  # polled as the driver was left


def test_a_send_from_the_interrupt_never_waits_for_a_send_buffer_section(two):
    switch, server, vps, nics, stacks = two
    nic = stacks[2].nic
    assert nic.section_size  # small frames go through the send buffer
    server.poll_busy()
    nic.napi_poll(vps[2])  # (every completion in: none frees a section behind our back)
    sections, nic.send_free = nic.send_free, []  # every section still out
    nic.in_irq = True
    nic.send(vps[2], stacks[2].eth(mac(1), 0x88B5, bytes(60)))
    assert nic.stats["tx_backlogged"] == 1 and len(nic.tx_backlog) == 1
    nic.in_irq = False
    nic.send_free = sections  # the sections came back
    before = nics[2].stats.tx_frames
    nic.napi_poll(vps[2])  # the next poll sends it
    server.poll_busy()
    assert not nic.tx_backlog and nics[2].stats.tx_frames == before + 1


def test_pages_the_root_unmaps_are_never_written_again_even_remapped(two):
    """The root unmaps partition 1's receive buffer (and, in FakeMemory, the addresses
    stay backed: as if mapped again at once): the VSP revokes the GPADL, so partition 2's
    frames to partition 1 are dropped instead of written there, and neither partition's
    other memory changes; partition 1's channel whose rings are elsewhere keeps running."""
    switch, server, vps, nics, stacks = two
    recv = [(netvsc.RECV_AREA >> 12) + i for i in range(netvsc.RECV_PAGES)]
    stacks[1].handle(vps[1])
    before = [bytes(vps[p].mem.b) for p in (1, 2)]
    server.gpa_unmapped(1, [(recv[0], len(recv))])
    assert server.status()[1]["errors"]["GPADL pages unmapped by the root"] == 1
    assert server.status()[1]["channels"][1]["state"] == "open"  # its rings are not in that GPADL
    dropped = nics[1].stats.rx_dropped + nics[1].stats.errors.get("receive buffer pages unmapped", 0)
    stacks[2].nic.send(vps[2], stacks[2].eth(mac(1), 0x88B5, b"\xaa" * 60))
    server.poll_busy()
    after = nics[1].stats.rx_dropped + nics[1].stats.errors.get("receive buffer pages unmapped", 0)
    assert after == dropped + 1
    lo, hi = netvsc.RECV_AREA, netvsc.RECV_AREA + netvsc.RECV_PAGES * 4096
    assert bytes(vps[1].mem.b)[lo:hi] == before[0][lo:hi]  # nothing written into the unmapped pages
    assert b"\xaa" * 60 not in bytes(vps[1].mem.b) and b"\xaa" * 60 not in bytes(vps[2].mem.b)[:netvsc.TX_AREA]
    # a receive buffer over the revoked GPADL is refused
    revoked = next(g for g, x in server.partitions[1].gpadls.items() if x.revoked)
    nics[1].recv = None  # (as a reset channel would have it)
    reply = nics[1]._recv_buffer(revoked, nv.NETVSC_RECEIVE_BUFFER_ID)
    assert nv.RECV_BUF_COMPLETE.unpack_from(reply, 4)[0] == nv.NVSP_STAT_FAIL


def test_ring_pages_the_root_unmaps_reset_their_channel(two):
    switch, server, vps, nics, stacks = two
    bus = server.partitions[1]
    ring_gpadl = bus.offers[1].channel.gpadl
    first = bus.gpadls[ring_gpadl].pfns[0]
    server.gpa_unmapped(1, [(first, 1)])
    st = server.status()
    assert st[1]["channels"][1]["state"] == "rescinded" and st[2]["channels"][1]["state"] == "open"
    assert st[1]["errors"]["channel reset: ring pages unmapped by the root"] == 1
    assert bus.gpadls[ring_gpadl].revoked and bus.gpadls[ring_gpadl].mapping is None


def test_the_send_buffer_is_mapped_read_only_for_the_vsp(two):
    """The VSP only reads the guest's send buffer: its GPADL is mapped again read-only."""
    switch, server, vps, nics, stacks = two
    send_gpadl = next(g for g in server.partitions[1].gpadls.values()
                      if g.pfns[0] == netvsc.SEND_AREA >> 12)
    # (That a read-only mapping refuses a write is the real mapping's: test_memory.py.)
    assert not send_gpadl.mapping.writable and nics[1].send_sections == netvsc.SEND_PAGES * 4096 // 2048
    assert stacks[1].ping(vps[1], bytes([10, 0, 0, 2])) is not None  # frames still go out through it
