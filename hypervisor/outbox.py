"""Replies to peers: one way to send a message, which counts what could not be routed.

The ROUTER is ROUTER_MANDATORY, so a send to a peer that has gone fails instead of
vanishing; the peer's subscriptions (trace events, console data) are then dropped, so that
nothing keeps sending to it.  The measured paths send their frames on the router directly
(they encode once and need no error reply); this is for everything else.
"""

from __future__ import annotations

import logging

from proto import messages as m

log = logging.getLogger("hypervisor")


class Outbox:
    def __init__(self, router, counters: dict, tracers: dict, table) -> None:
        self._router = router
        self._counters = counters
        self._tracers = tracers  # the tracer's subscriptions (identity → partition)
        self._table = table  # whose partitions' console watchers a gone peer leaves

    def send(self, identity: bytes, msg: m.Message) -> bool:
        return self.send_frame(identity, msg.encode())

    def send_frame(self, identity: bytes, frame: bytes) -> bool:
        """A message already encoded (a status reply, whose size was checked on its bytes)."""
        if self._router.send(identity, frame):
            return True
        self._counters["unroutable_replies"] += 1
        self.forget(identity)
        return False

    def error(self, identity: bytes, ref_type: int, code: str, text: str) -> None:
        """An ``error_reply``: ``code`` from :data:`proto.messages.ERROR_CODES`."""
        log.debug("error to %s: %s %s", identity.hex(), code, text)
        self.send(identity, m.ErrorReply(ref_type, code, text[:512]))

    def forget(self, identity: bytes) -> None:
        """The peer is gone: stop streaming to it."""
        self._tracers.pop(identity, None)
        for part in self._table:
            part.console_watchers.discard(identity)
