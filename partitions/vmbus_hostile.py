"""``vmbus_hostile``: a guest that attacks the root's VMBus server and storvsp once (VP 0),
and says on its console what each attack got — for the test that another partition's
synthetic disk keeps working meanwhile.

1. a GPADL whose pages lie outside the partition's memory (GPADL_CREATED must fail);
2. a channel opened twice (the second OPENCHANNEL_RESULT must fail);
3. a READ whose SRB says 64 KiB over a one-page list (its completion must be an error);
4. junk channel messages (no answer, counted by the server);
5. a write index past its ring, signalled (the channel is reset: rescinded).
"""

from __future__ import annotations

import struct

from proto import vmbus as vb
from proto.codes import HypercallCode
from proto.hvcall import HV_INPUT_SIGNAL_EVENT
from proto import vstor as vs
from proto.vmbus import ChannelMessage as Msg
from proto.vmbus_ring import WRITE_INDEX

from partitions.drivers.storvsc import ScsiError, Storvsc
from partitions.drivers.vmbus import Vmbus, VmbusError, offered
from partitions.vp import Vp
from partitions.vmbus_disk import DATA_GPA

FAR_PAGE = 1 << 30  # a page number far beyond any partition's memory


def wl_vmbus_hostile(vp: Vp, sys) -> int:
    if vp.index != 0 or sys.timers.get("vmbus_hostile_done"):
        return 0
    sys.timers["vmbus_hostile_done"] = 1
    say = lambda text: sys.console(vp, f"[{sys.name}] vmbus_hostile: {text}")  # noqa: E731
    if not offered(sys):
        say("VMBus not offered")
        return 0
    try:
        bus = Vmbus()
        bus.init_synic(vp, sys)
        bus.connect(vp)
        offer = bus.offers[0]
        relid = offer["child_relid"]
        # 1. pages outside the partition
        for m in vb.gpadl_messages(relid, 0xBAD, [FAR_PAGE, FAR_PAGE + 1, 5, 6]):
            bus.post(vp, m)
        status = vb.GPADL_CREATED.unpack_from(bus.wait_for(vp, Msg.CHANNELMSG_GPADL_CREATED))[2]
        say(f"GPADL outside memory: creation_status {status:#x}")
        # 2. open, then open again
        ch = bus.open(vp, offer)
        bus.post(vp, vb.encode(Msg.CHANNELMSG_OPENCHANNEL, vb.OPEN_CHANNEL.pack(relid, relid, bus.next_gpadl - 1,
                                                                                  vp.index, 16, bytes(120))))
        status = vb.OPEN_RESULT.unpack_from(bus.wait_for(vp, Msg.CHANNELMSG_OPENCHANNEL_RESULT))[2]
        say(f"channel opened twice: status {status:#x}")
        # 3. an SRB longer than its page list
        sc = Storvsc(ch)
        sc.init(vp)
        tid, pkt = sc.srb_packet(vs.rw10(vs.READ_10, 0, 128), vs.READ_TYPE, 4096, DATA_GPA)
        pkt = bytearray(pkt)
        srb_at = len(pkt) - len(vs.packet(0)) + vs.VSTOR_PACKET.size  # the SRB in the payload
        struct.pack_into("<I", pkt, srb_at + 12, 65536)  # data_transfer_length
        sc.submit(vp, [bytes(pkt)])
        try:
            sc.check(sc.wait(vp, [tid])[0], "READ(10)")
            say("SRB longer than its pages: accepted (WRONG)")
        except ScsiError as e:
            say(f"SRB longer than its pages: refused ({e})")
        # 4. junk
        for junk in (b"\xff" * 8, vb.encode(Msg.CHANNELMSG_GPADL_BODY, struct.pack("<II", 1, 0xDEAD)),
                     vb.encode(Msg.CHANNELMSG_GPADL_TEARDOWN, struct.pack("<II", relid, 0x1234))):
            bus.post(vp, junk)
        # 5. a write index past the ring
        ch.to_host.view.write(WRITE_INDEX, struct.pack("<I", 0xFFFFF8))
        vp.hypercall(HypercallCode.HvCallSignalEvent, HV_INPUT_SIGNAL_EVENT.pack(ch.connection_id, 0, 0), fast=True)
        body = bus.wait_for(vp, Msg.CHANNELMSG_RESCIND_CHANNELOFFER)
        say(f"corrupt ring: channel {vb.RELID.unpack_from(body)[0]} rescinded")
    except (VmbusError, ScsiError, IndexError) as e:
        say(f"stopped: {e}")
    return 1
