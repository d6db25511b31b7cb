"""The hypervisor's half of the posted-interrupt descriptors (layout and races: :mod:`proto.posted`).

A partition's file is created when the partition is initialized (before its processes
start: the launcher hands the partition process a descriptor of it) and mapped here, for
the atomic ORs.  A VP is posted to through it once it has said, on its own connection, that
it reads it (``posted_descriptor_ready``); until then, and for a VP that never says so (a
real-CPU backend, a VP without the file), :meth:`Interrupts.notify` sends an
``interrupt_notify`` as before.  The saying is bound to that connection: a VP's successor
(a new partition process) must say it again.

``HVSTACK_POSTED_DESCRIPTOR=0`` in the hypervisor's environment turns the descriptors off
(no files; every posted interrupt is a message): the bench's before/after.
"""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path

from proto import posted as layout

ENV = "HVSTACK_POSTED_DESCRIPTOR"


def enabled_by_env() -> bool:
    # On unless turned off (=0, for the bench's before/after).  It was off after CI at
    # 508ff17 saw three guests stall for good with an interrupt in service that never
    # reached its handler: two posts of a vector merged into one PIR bit (one handler run,
    # one EOI, for two in service).  Notifier.post no longer posts onto an untaken bit.
    return os.environ.get(ENV, "1") != "0"


class PostedDescriptors:
    def __init__(self, directory: str, counters: dict, enabled: bool = True) -> None:
        self.dir = Path(directory)
        self.enabled = enabled
        # posted_descriptor: interrupts posted through a descriptor (of posted_interrupts);
        # posted_descriptor_refused: a VP's ready that was not taken (it keeps the messages);
        # posted_descriptor_busy: a vector whose PIR bit was still set, sent by message.
        self.counters = counters
        # partition → its file, its mapping, and the notifier that writes through it
        self._files: dict[int, tuple[io.FileIO, mmap.mmap, layout.Notifier]] = {}
        self._readers: dict[tuple[int, int], bytes] = {}  # (partition, VP) → the connection that reads it

    def create(self, partition: int) -> None:
        """The partition's file, before its processes start (nothing when turned off)."""
        if not self.enabled or partition in self._files:
            return
        file = io.FileIO(layout.create(layout.posted_path(self.dir, partition)), "r+")
        buf = mmap.mmap(file.fileno(), layout.FILE_SIZE)
        self._files[partition] = (file, buf, layout.Notifier(buf))

    def on_ready(self, identity: bytes, peer, msg, t_in: int) -> None:
        """``posted_descriptor_ready`` from a VP: post to it through its descriptor from now
        on — if this hypervisor made one for its partition and the VP's layout is this one."""
        part, vp = peer.partition, peer.vp
        if (part.id not in self._files or msg.layout != layout.LAYOUT or vp is None
                or not 0 <= vp.index < layout.MAX_VPS):
            self.counters["posted_descriptor_refused"] += 1
            return  # it keeps its interrupt_notify messages
        self._readers[(part.id, vp.index)] = identity

    def post(self, vp, interrupt: int, stamps: tuple) -> bool:
        """Post ``interrupt`` to ``vp`` through its descriptor; False if it does not read one
        or while the VP has not yet taken the vector's last post (the caller sends a message
        instead: proto/posted.py, Notifier.post)."""
        if self._readers.get((vp.partition.id, vp.index)) != vp.peer or len(stamps) > layout.SIDE_STAMPS:
            return False
        if not self._files[vp.partition.id][2].post(vp.index, interrupt, stamps):
            self.counters["posted_descriptor_busy"] += 1
            return False
        self.counters["posted_descriptor"] += 1
        return True

    def untaken(self, vp) -> list[int]:
        """The vectors posted to ``vp`` through its descriptor that it has not taken yet
        (the hypervisor moved them into service when it posted them): a save carries them
        as pending, or they would be lost with the VP's process."""
        entry = self._files.get(vp.partition.id)
        return entry[2].untaken(vp.index) if entry is not None and 0 <= vp.index < layout.MAX_VPS else []

    def forget(self, partition: int) -> None:
        """A deleted partition: its file unmapped, closed and removed."""
        entry = self._files.pop(partition, None)
        self._readers = {k: v for k, v in self._readers.items() if k[0] != partition}
        if entry is not None:
            file, buf, notifier = entry
            notifier.close()
            buf.close()
            file.close()
            try:
                os.unlink(layout.posted_path(self.dir, partition))
            except FileNotFoundError:
                pass
