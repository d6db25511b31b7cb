"""Worker servicing's messages (ids 46–49): the root hands a partition's device role from
one worker process to another (``ctl RUN service PARTITION``, or a restart after a worker
died), and the hypervisor asks a worker to save its devices.

Imported at the end of :mod:`proto.messages`, so that ``messages.decode`` knows them.
"""

from proto.fields import U32, U64, one_of
from proto.messages import Message, message

SERVICE_ACTIONS = (
    # The partition must be paused.  Hold its VPs' new device accesses in the hypervisor
    # and ask its worker to save its devices (a device_save); answered by the worker's
    # worker_query_reply ({"sequence", "bytes", "save_us"}).
    "save",
    # Hold new device accesses; the next worker hello for this partition replaces its
    # worker (the old connection is retired: nothing it sends is taken any more).
    "expect_worker",
    # The new worker has started: send it what was held and what the old one left
    # uncompleted, and resume the partition.  OUT_OF_TURN until the new worker has started.
    "commit",
    # Give up: the old worker keeps the partition (it is thawed), held accesses go to it.
    "abort",
    # After a ``save`` that was only a save (``ctl save``): the worker is thawed and keeps
    # the partition, held accesses go to it; the partition stays paused until resumed.
    "thaw",
)


@message(46, "service_request")
class ServiceRequest(Message):
    """Root → hypervisor: one step of a worker handover (:data:`SERVICE_ACTIONS`);
    answered by an ``ack`` (``save``: by the worker's ``worker_query_reply``) or an
    ``error_reply``."""

    partition: U64
    action: one_of(*SERVICE_ACTIONS)


@message(47, "device_save")
class DeviceSave(Message):
    """Hypervisor → worker: ``save``: write every device's state to the checkpoint file
    and stop (no device polling, no interrupts) until thawed or ended; ``thaw``: go on.
    Answered by a ``worker_query_reply`` with the same ``ref``."""

    ref: U32
    action: one_of("save", "thaw")
