"""Saving and restoring a whole partition (issue 13; ids 48, 49, 53–57): the root asks the
hypervisor for what it keeps of a paused partition — partition-wide synthetic MSRs and
reference time, and per VP its registers, local APIC, pending interrupts, SynIC and
synthetic timers and scheduler accounting — and gives it back to a new partition of the
same shape before that partition's VPs first connect; and a real-CPU VP's registers, which
only its partition process has (ids 54–57).  The state travels as one msgpack
blob whose fields :mod:`proto.partition_state` checks (the hypervisor checks them again on
restore: a root-side bug must not become a hypervisor crash).

Imported at the end of :mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U64, blob, boolean
from proto.messages import MAX_FRAME_BYTES, Message, message

# The state blob, and room for the message around it, within one frame.
MAX_STATE_BYTES = MAX_FRAME_BYTES - 4096
MAX_VP_STATE_BYTES = 1 << 19  # a real-CPU VP's register file, msgpack (VP 0's: with firmware's shadow RAM)
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


# A real-CPU VP's registers live in the partition process (its emulator), not in the
# hypervisor: the root asks for them through the hypervisor, which asks each VP where it
# waits at its exit (ids 54–57).


@message(54, "vp_state_request")
class VpStateRequest(Message):
    """Root → hypervisor: every VP's CPU state from the partition process.  As
    ``partition_save_request``: paused, no VP executing, every VP connected; answered by a
    ``vp_states`` once each VP has answered its ``vp_state_query``."""

    partition: U64


@message(55, "vp_state_query")
class VpStateQuery(Message):
    """Hypervisor → VP (waiting at an exit): its CPU state, now."""

    partition: U64


@message(56, "vp_state_reply")
class VpStateReply(Message):
    """VP → hypervisor: ``state`` — the backend's registers (msgpack), empty for the Python
    guest (its state is in its RAM: proto/guest_state.py); ``boundary`` False when the VP
    waits at an exit in the middle of an instruction (an emulator's I/O hook), where no
    register file describes a state to resume from: the root resumes and asks again."""

    boundary: boolean
    state: blob(MAX_VP_STATE_BYTES)


@message(57, "vp_states")
class VpStates(Message):
    """Hypervisor → root: ``states`` is msgpack ``[[boundary, state], …]``, each VP's
    ``vp_state_reply`` by index (the root checks it)."""

    partition: U64
    states: blob(MAX_STATE_BYTES)
