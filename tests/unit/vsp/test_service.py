"""The vsp process's loop against a fake hypervisor connection: set-up connections, the
GPADL check waiting for its reply while other frames are kept, results counted."""

from __future__ import annotations

from collections import deque

from proto import messages as m
from proto import synic_messages as sm
from proto import vmbus as vb
from proto.codes import HvStatus
from proto.vmbus import ChannelMessage as Msg
from worker.devices.backends import MemoryDisk

from root.vsp.service import VspService, page_ranges
from root.vsp.storvsp import StorVsp
from tests.unit.vsp.support import FakeMemory


class FakeDealer:
    def __init__(self) -> None:
        self.sent: list[m.Message] = []
        self.inbox: deque[bytes] = deque()
        self.replies = {}  # request type → callable(msg) → reply frames

    def send(self, frame: bytes) -> None:
        msg = m.decode(frame)
        self.sent.append(msg)
        for reply in self.replies.get(type(msg), lambda msg: [])(msg):
            self.inbox.append(reply.encode())

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.inbox)

    def recv_ready(self) -> bytes:
        return self.inbox.popleft()


def test_page_ranges():
    assert page_ranges([5, 6, 7, 9, 3, 4]) == [[5, 3], [9, 1], [3, 2]]


def test_setup_connects_messages_and_events_then_gpadl_waits_for_the_hypervisor():
    d = FakeDealer()
    d.replies[sm.SynicConnect] = lambda msg: [m.Ack(sm.SynicConnect.TYPE)]
    svc = VspService(d)
    svc.add_partition(3, FakeMemory(), [StorVsp(MemoryDisk(1 << 20))])
    assert [(x.connection_id, x.kind) for x in d.sent] == [(1, "message"), (4, "message"), (0x2001, "event")]

    def contact(payload):
        return sm.SynicMessageToRoot(3, 0, 4, vb.VMBUS_MESSAGE_TYPE, payload).encode()

    d.inbox.append(contact(vb.encode(Msg.CHANNELMSG_INITIATE_CONTACT,
                                     vb.INITIATE_CONTACT.pack(vb.VERSION_WIN10_V5, 0, 2, 0, 0))))
    d.inbox.append(contact(vb.encode(Msg.CHANNELMSG_REQUESTOFFERS)))
    d.inbox.append(contact(vb.gpadl_messages(1, 9, [20, 21, 22, 23])[0]))
    # The hypervisor answers the GPADL check after an unrelated frame (kept for later), and
    # refuses one post.
    d.replies[sm.GpaMapRequest] = lambda msg: [sm.SynicPostResult(3, HvStatus.HV_STATUS_INVALID_SYNIC_STATE),
                                               sm.GpaMapReply(3, HvStatus.HV_STATUS_SUCCESS, "ram", msg.pages)]
    while d.inbox:
        svc.handle(d.recv_ready())
        while svc._later:
            svc.handle(svc._later.popleft())
    posts = [vb.split(x.payload)[0] for x in d.sent if isinstance(x, sm.SynicPost)]
    assert posts == [Msg.CHANNELMSG_VERSION_RESPONSE, Msg.CHANNELMSG_OFFERCHANNEL,
                     Msg.CHANNELMSG_ALLOFFERS_DELIVERED, Msg.CHANNELMSG_GPADL_CREATED]
    created = [x for x in d.sent if isinstance(x, sm.SynicPost)][-1]
    assert vb.GPADL_CREATED.unpack_from(created.payload, 8)[2] == 0
    assert [[list(r) for r in x.pages] for x in d.sent if isinstance(x, sm.GpaMapRequest)] == [[[20, 4]]]
    assert svc.results["post_failed"] == 1 and svc.handler_errors == 0


def test_a_refused_gpadl_check_fails_the_gpadl():
    d = FakeDealer()
    d.replies[sm.SynicConnect] = lambda msg: [m.Ack(sm.SynicConnect.TYPE)]
    d.replies[sm.GpaMapRequest] = lambda msg: [sm.GpaMapReply(3, HvStatus.HV_STATUS_INVALID_PARAMETER, "", ())]
    svc = VspService(d)
    svc.add_partition(3, FakeMemory(), [StorVsp(MemoryDisk(1 << 20))])
    contact = vb.INITIATE_CONTACT.pack(vb.VERSION_WIN10_V5, 0, 2, 0, 0)
    for payload in (vb.encode(Msg.CHANNELMSG_INITIATE_CONTACT, contact),
                    vb.encode(Msg.CHANNELMSG_REQUESTOFFERS), vb.gpadl_messages(1, 9, [20, 21])[0]):
        svc.handle(sm.SynicMessageToRoot(3, 0, 4, vb.VMBUS_MESSAGE_TYPE, payload).encode())
    created = [x for x in d.sent if isinstance(x, sm.SynicPost)][-1]
    assert vb.GPADL_CREATED.unpack_from(created.payload, 8)[2] == vb.STATUS_UNSUCCESSFUL
    assert svc.server.status()[3]["errors"] == {"GPADL pages outside the partition": 1}
