"""Relaying a partition's VMBus state between the root and the VSP process (issue 13).

The root asks with a ``vsp_state_request``; the VSP (the run's ``vsp`` peer, bound in
:mod:`hypervisor.synic_ports`) gets it as a ``vsp_state_query`` under a reference of ours,
and its ``vsp_state_reply`` goes to the root that asked — to no one else: a reply under a
reference we did not give, or for another partition, is dropped and counted.  A ``save``
needs the partition paused (its VPs write no ring meanwhile).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from proto import messages as m

log = logging.getLogger("hypervisor")

MAX_PENDING = 16  # questions outstanding to the VSP; the oldest is forgotten beyond


class VspRelay:
    def __init__(self, *, table, outbox, synic_ports) -> None:
        self._table = table
        self._outbox = outbox
        self._ports = synic_ports
        self.relayed = self.stray = 0
        self._pending: OrderedDict[int, tuple[bytes, int]] = OrderedDict()  # ref → (root identity, partition)
        self._next_ref = 1

    def on_request(self, identity: bytes, peer, msg: m.VspStateRequest, t_in: int) -> None:
        part = self._table.get(msg.partition)
        if part is None:
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", f"no partition {msg.partition}")
        if msg.action == "save" and not part.cpu.paused:
            return self._outbox.error(identity, msg.TYPE, "OUT_OF_TURN", f"pause partition {part.id} first")
        vsp = self._ports.vsp
        if vsp is None:
            return self._outbox.error(identity, msg.TYPE, "UNKNOWN_PARTITION", "this run has no VSP process")
        ref = self._next_ref
        self._next_ref = ref + 1 if ref < 0xFFFFFFFF else 1
        self._pending[ref] = (identity, part.id)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        self._outbox.send(vsp, m.VspStateQuery(ref, part.id, msg.action, msg.state))

    def on_reply(self, identity: bytes, peer, msg: m.VspStateReply, t_in: int) -> None:
        asked = self._pending.pop(msg.ref, None)
        if asked is None or asked[1] != msg.partition:
            self.stray += 1
            log.warning("vsp_state_reply %d for partition %d answers no question: dropped", msg.ref, msg.partition)
            return
        self.relayed += 1
        self._outbox.send(asked[0], msg)
