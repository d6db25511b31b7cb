"""Saving and restoring a whole partition (issue 13; ids 48, 49, 53): the root asks the
hypervisor for what it keeps of a paused partition — partition-wide synthetic MSRs and
reference time, and per VP its registers, local APIC, pending interrupts, SynIC and
synthetic timers and scheduler accounting — and gives it back to a new partition of the
same shape before that partition's VPs first connect.  The state travels as one msgpack
blob whose fields :mod:`proto.partition_state` checks (the hypervisor checks them again on
restore: a root-side bug must not become a hypervisor crash).

Imported at the end of :mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U64, blob
from proto.messages import MAX_FRAME_BYTES, Message, message

# The state blob, and room for the message around it, within one frame.
MAX_STATE_BYTES = MAX_FRAME_BYTES - 4096


@message(48, "partition_save_request")
class PartitionSaveRequest(Message):
    """Root → hypervisor: the partition's hypervisor-side state, now.  The partition must
    be paused (``partition_control pause``) and none of its VPs executing guest code;
    answered by a ``partition_state`` or an ``error_reply`` (OUT_OF_TURN: not paused, or a
    VP still executing — ask again)."""

    partition: U64


@message(49, "partition_state")
class PartitionState(Message):
    """Hypervisor → root: ``state`` is msgpack ``{"hypervisor": {...}, "vps": [...]}``
    (:func:`proto.partition_state.check_hypervisor`, :func:`~proto.partition_state.check_vps`)."""

    partition: U64
    state: blob(MAX_STATE_BYTES)


@message(53, "partition_restore_request")
class PartitionRestoreRequest(Message):
    """Root → hypervisor: set a new partition's hypervisor-side state from ``state`` (as
    ``partition_state`` carries it).  Only before any of its VPs has connected; every field
    is checked first and nothing is changed if one is wrong (INVALID_FIELD naming it).
    Answered by an ``ack``."""

    partition: U64
    state: blob(MAX_STATE_BYTES)
