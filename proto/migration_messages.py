"""Live migration between two runs (issue 13; ids 58, 59, 61–65): the source's ``migrate``
command speaks these to the destination run's launcher, which listens for them on a CURVE
tcp endpoint of its own (``run TOPOLOGY --incoming PARTITION``; root/incoming.py).

The order is: ``migrate_begin`` (the partition's shape and GPA map: refused unless they are
the destination's), ``migrate_probe``s (the link's throughput), ``migrate_pages`` in rounds
(pre-copy, then the pages dirtied since, with the partition paused), ``migrate_state``
chunks (the saved-state record of proto/saved_state.py without its memory section: its
pages came as ``migrate_pages``), ``migrate_commit`` (the destination restores and is
ready to run), ``migrate_go`` (it runs; ``migrate_running`` says when).  Each is answered
by an ``ack`` or an ``error_reply``.  Nothing here is trusted by the destination: page
numbers are checked against its own map, sizes against the counts, the record as every
saved state is.

Imported at the end of :mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U32, U64, blob, text
from proto.messages import MAX_FRAME_BYTES, Message, message

PAGE_BYTES = 4096
# Pages per migrate_pages: their data, their numbers and the message around them in one frame.
PAGES_PER_MESSAGE = 240
MAX_PAGE_DATA = PAGES_PER_MESSAGE * PAGE_BYTES
MAX_PAGE_LIST = 4 * 4096  # u32 page numbers (zero pages may be many per message)
MAX_CHUNK = MAX_FRAME_BYTES - 8192  # a migrate_state or migrate_probe chunk
MAX_SHAPE_BYTES = 64 * 1024
HANDOVER_BYTES = 16  # a migrate_begin's handover token, which its migrate_abandon must carry


@message(58, "migrate_begin")
class MigrateBegin(Message):
    """Source → destination: partition ``name`` will come, of ``shape`` (msgpack, as a
    saved state's ``shape`` section) with GPA map ``runs`` (msgpack ``[[first page,
    count], …]``) over ``gpa_pages``.  Refused (INVALID_FIELD) unless the destination waits
    for that partition with that shape and map; a new begin starts over.  ``handover``:
    16 random bytes the source's ``migrate`` command made and keeps in its lease
    (root/migration_lease.py), which a ``migrate_abandon`` of this handover must carry."""

    name: text(64)
    shape: blob(MAX_SHAPE_BYTES)
    runs: blob(MAX_SHAPE_BYTES)
    gpa_pages: U64
    handover: blob(HANDOVER_BYTES)


@message(59, "migrate_pages")
class MigratePages(Message):
    """Source → destination: in ``round``, the pages numbered in ``zero`` are all zeros and
    those numbered in ``pages`` (u32 little-endian each) hold ``data``, 4096 bytes each, in
    that order."""

    round: U32
    zero: blob(MAX_PAGE_LIST)
    pages: blob(MAX_PAGE_LIST)
    data: blob(MAX_PAGE_DATA)


@message(61, "migrate_probe")
class MigrateProbe(Message):
    """Source → destination: bytes that are only counted (the link's throughput)."""

    data: blob(MAX_CHUNK)


@message(62, "migrate_state")
class MigrateState(Message):
    """Source → destination: bytes ``offset``… of the record, ``total`` bytes long."""

    offset: U64
    total: U64
    data: blob(MAX_CHUNK)


@message(63, "migrate_commit")
class MigrateCommit(Message):
    """Source → destination, the partition paused on the source and every page sent: the
    record is whole (``total`` bytes); restore it, start the worker and be ready to run.
    Acked once ready; the destination does not run the partition until ``migrate_go``."""

    total: U64


@message(64, "migrate_go")
class MigrateGo(Message):
    """Source → destination: run it (the source will not).  ``paused_at_ns`` is the
    source's wall clock when it paused the partition, for the destination's figures."""

    paused_at_ns: U64


@message(65, "migrate_running")
class MigrateRunning(Message):
    """Destination → source: its VPs were started at ``started_at_ns`` (wall clock)."""

    started_at_ns: U64


@message(69, "migrate_abandon")
class MigrateAbandon(Message):
    """Source's run → destination, when the ``migrate`` command that held partition
    ``name`` died (root/migration_lease.py): abandon its handover — unless it was told to go
    and runs here.  ``paused_at_ns`` names the handover (its ``migrate_go``'s; 0: no go was
    sent).  Answered by ``migrate_running`` (it runs here: the source must not) or ``ack``
    (nothing of it runs here, nor will: a session is abandoned, a committed partition that
    never got its go is stopped).  ``handover`` is the begin's: without it the message is
    refused (NOT_PERMITTED) and changes nothing — the destination's key, which lets a client
    connect, is no licence to end another's migration."""

    name: text(64)
    paused_at_ns: U64
    handover: blob(HANDOVER_BYTES)


@message(68, "migrate_switchover")
class MigrateSwitchover(Message):
    """Source → destination, pre-copy done, before the source pauses the partition:
    acknowledged once the destination can take the switch-over — the processes it started
    at the begin (in parallel with the pre-copy, no longer before it) are ready — so that
    their start-up is never in the downtime (QEMU's switchover-ack)."""
