"""A partition's VMBus state from and to the root's VSP process (issue 13; ids 110–112).

The root (``ctl save``, a migration, a restore) talks to the hypervisor only; the VSP
process is the hypervisor's ``vsp`` peer.  So the hypervisor relays: the root's
``vsp_state_request`` goes to the VSP as a ``vsp_state_query`` under a reference of the
hypervisor's, and the VSP's ``vsp_state_reply`` comes back to the root that asked.  The
state is the ``vmbus`` section of a saved record (msgpack, :mod:`proto.vmbus_state`).

Imported at the end of :mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U32, U64, blob, one_of, text
from proto.messages import MAX_FRAME_BYTES, Message, message

MAX_VMBUS_STATE_BYTES = MAX_FRAME_BYTES - 4096
VSP_STATE_ACTIONS = (
    # The partition must be paused: the VSP completes every request its rings hold (so none
    # is in flight), leaves poll mode (the rings' interrupt masks cleared) and answers with
    # the partition's state.  It goes on serving the partition afterwards.
    "save",
    # ``state`` (a saved ``vmbus`` section): the partition's bus as it was saved, in place
    # of the fresh one (before its VPs run).  Checked whole first; nothing changes if a
    # field is wrong.  Answered with an empty state.
    "restore",
)


@message(110, "vsp_state_request")
class VspStateRequest(Message):
    """Root → hypervisor: relay ``action`` for ``partition`` to the VSP process; answered
    by the VSP's ``vsp_state_reply`` or an ``error_reply`` (no VSP; ``save`` of a partition
    not paused: OUT_OF_TURN)."""

    partition: U64
    action: one_of(*VSP_STATE_ACTIONS)
    state: blob(MAX_VMBUS_STATE_BYTES)


@message(111, "vsp_state_query")
class VspStateQuery(Message):
    """Hypervisor → VSP: a root's ``vsp_state_request`` under the hypervisor's ``ref``."""

    ref: U32
    partition: U64
    action: one_of(*VSP_STATE_ACTIONS)
    state: blob(MAX_VMBUS_STATE_BYTES)


@message(112, "vsp_state_reply")
class VspStateReply(Message):
    """VSP → hypervisor → root: ``error`` empty and ``state`` the result, or ``error``
    saying why not."""

    ref: U32
    partition: U64
    error: text(512)
    state: blob(MAX_VMBUS_STATE_BYTES)


__all__ = ["VspStateQuery", "VspStateReply", "VspStateRequest"]
