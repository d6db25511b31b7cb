"""What `status` says of the VSP process's figures (root/vsp/status.py)."""

from __future__ import annotations

import json

from root.vsp import status as vsp_status
from root.vsp.netvsp import NetVsp, VirtualSwitch
from root.vsp.service import VspService

from tests.unit.vsp.support import open_channel, contact, send, storage_bus
from proto.vmbus import ChannelMessage as Msg


def test_lines_from_a_written_status(tmp_path):
    server, hv, mems, _ = storage_bus()
    contact(server, 1)
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)
    open_channel(server, hv, 1, mems[1])
    send(server, 1, Msg.CHANNELMSG_REQUESTOFFERS)  # refused: twice
    svc = VspService(dealer=None, status_path=str(tmp_path / vsp_status.STATUS_FILE))
    svc.server = server
    svc.switch = VirtualSwitch()
    NetVsp(svc.switch, b"\0\x15\x5d\0\0\x01", "alpha")
    svc.switch.table[b"\0\x15\x5d\0\0\x01"] = svc.switch.ports[0]
    svc.write_status()
    vsp = vsp_status.load(tmp_path)
    assert json.loads((tmp_path / vsp_status.STATUS_FILE).read_text()) == vsp
    lines = vsp_status.partition_lines(vsp, 1)
    assert lines[0] == "vmbus: version 5.0, 5 messages, 1 GPADLs, refused: REQUESTOFFERS twice 1"
    assert lines[1].startswith("  channel 1 StorVsp: open, packets in 0 out 0, signals to guest 0 (suppressed 0)")
    assert vsp_status.switch_line(vsp) == ("virtual switch: 0 forwarded, 0 flooded; "
                                           "MACs: 00:15:5d:00:00:01 → alpha")
    assert vsp_status.partition_lines(vsp, 9) == [] and vsp_status.load(tmp_path / "none") is None
