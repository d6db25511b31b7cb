"""Messages between the hypervisor's SynIC and the root's VSP process (``python -m root.vsp``), ids 70–84.

The contract is ``SYNIC-CONTRACT`` (issue 10): the vsp peer plays the root partition's
kernel side of VMBus, so it owns the *ports* that a child's *connections* lead to (TLFS
inter-partition communication: HvCallCreatePort in the root, HvCallConnectPort for the
child).  Here that pair is one message, :class:`SynicConnect`, naming the child partition,
the connection id the child will use, and whether it carries messages or events.

The hypervisor never trusts a partition to name another: every message from the vsp names
the partition it is about; every message a VP causes is about that VP's partition only.

Replies: :class:`SynicConnect` / :class:`SynicDisconnect` get an ``ack`` or an
``error_reply``; :class:`SynicPost`, :class:`SynicSignal` and :class:`GpaMapRequest` get a
result carrying an HV_STATUS (:class:`proto.codes.HvStatus`) — or an ``error_reply``
(UNKNOWN_PARTITION) when the partition named does not exist at all.  Replies come in the
order the requests were sent (the hypervisor has one loop and the vsp one connection).

Field limits are wider on the wire than the TLFS allows where the TLFS names a status for
the excess (a payload over 240 bytes, a SINT over 15): such a request decodes and is
answered with that status, as a hypercall would be.
"""


import struct

from proto.fields import U8, U16, U32, U64, blob, boolean, one_of, ranges, text
from proto.messages import HV_PAGE_SIZE, Message, message

# TLFS: HV_MESSAGE is 256 bytes, a 16-byte header and at most 240 bytes of payload.
HV_MESSAGE_SIZE = 256
HV_MESSAGE_PAYLOAD_BYTES = 240
HV_SYNIC_SINT_COUNT = 16
# Each SINT owns one 256-byte block of the SIEF page: 2048 event flags.
HV_EVENT_FLAGS_PER_SINT = 256 * 8
CONNECTION_KINDS = ("message", "event")

# -- guest-memory layouts the hypervisor writes and the guest reads (TLFS datatypes) ---------

# SINTx (HV_X64_MSR_SINT0–15): bits 7:0 vector, 16 masked, 17 AutoEOI, 18 polling.
SINT_VECTOR_MASK = 0xFF
SINT_MASKED = 1 << 16
SINT_AUTO_EOI = 1 << 17
SINT_POLLING = 1 << 18
# HV_X64_MSR_STIMERn_CONFIG: bit 0 Enable, 1 Periodic, 2 Lazy, 3 AutoEnable, 11:4
# ApicVector (direct mode), 12 DirectMode, 19:16 SINTx.
STIMER_ENABLE = 1 << 0
STIMER_PERIODIC = 1 << 1
STIMER_LAZY = 1 << 2
STIMER_AUTO_ENABLE = 1 << 3
STIMER_VECTOR_SHIFT = 4
STIMER_DIRECT = 1 << 12
STIMER_SINT_SHIFT = 16
# HV_MESSAGE header: MessageType u32, PayloadSize u8, MessageFlags u8 (bit 0
# MessagePending), reserved u16, OriginationId u64; the payload follows.
HV_MESSAGE_HEADER = struct.Struct("<IBBHQ")
HV_MESSAGE_FLAG_PENDING = 1 << 0
# HV_TIMER_MESSAGE_PAYLOAD (HvMessageTypeTimerExpired): TimerIndex u32, reserved u32,
# ExpirationTime u64, DeliveryTime u64 (reference time, 100 ns units).
HV_TIMER_MESSAGE_PAYLOAD = struct.Struct("<IIQQ")
# HV_REFERENCE_TSC_PAGE: TscSequence u32, reserved u32, TscScale u64, TscOffset i64.
HV_REFERENCE_TSC_PAGE = struct.Struct("<IIQq")


def reference_time(page: bytes, tsc: int) -> int | None:
    """The reference time from a reference TSC page and a TSC value (TLFS): ((tsc ×
    TscScale) >> 64) + TscOffset; None while TscSequence is 0 (invalid: use the MSR)."""
    seq, _, scale, offset = HV_REFERENCE_TSC_PAGE.unpack_from(page)
    if seq == 0:
        return None
    return ((tsc * scale) >> 64) + offset
# The pages of a GPADL as [first guest page number, page count] ranges (at most 1 << 40
# pages: a 52-bit guest-physical space).  The reply names the same pages as ranges of pages
# in the partition's RAM file.
MAX_GPA_MAP_RANGES = 512
page_ranges = ranges("guest page-number space", U64, U32, 1 << 40, MAX_GPA_MAP_RANGES)


@message(70, "synic_connect")
class SynicConnect(Message):
    """vsp → hv: the child ``partition``'s connection ``connection_id`` leads to a port in
    the root (the vsp), carrying messages (HvCallPostMessage) or events
    (HvCallSignalEvent).  ``ack``, or ``error_reply`` (UNKNOWN_PARTITION, CONFLICT if the
    id is already connected, INVALID_FIELD for an id beyond 24 bits)."""

    partition: U64
    connection_id: U32
    kind: one_of(*CONNECTION_KINDS)


@message(71, "synic_disconnect")
class SynicDisconnect(Message):
    """vsp → hv: the connection is gone (HvCallDisconnectPort).  ``ack`` or ``error_reply``."""

    partition: U64
    connection_id: U32


@message(72, "synic_message_to_root")
class SynicMessageToRoot(Message):
    """hv → vsp: a guest's HvCallPostMessage (0x005C) to a root-owned message connection.
    The guest's hypercall already completed with HV_STATUS_SUCCESS (queued, as Hyper-V
    releases the sender's buffer when the message is queued)."""

    partition: U64
    vp: U32
    connection_id: U32
    message_type: U32
    payload: blob(HV_MESSAGE_PAYLOAD_BYTES)


@message(73, "synic_event_to_root")
class SynicEventToRoot(Message):
    """hv → vsp: a guest's HvCallSignalEvent (0x005D) to a root-owned event connection."""

    partition: U64
    vp: U32
    connection_id: U32
    flag_number: U16


@message(74, "synic_post")
class SynicPost(Message):
    """vsp → hv: write a message into SIMP slot ``sint`` of ``vp`` of ``partition`` and
    assert the SINT (queued while the slot is busy).  Answered by ``synic_post_result``."""

    partition: U64
    vp: U32
    sint: U8
    message_type: U32
    payload: blob(HV_PAGE_SIZE)


@message(75, "synic_post_result")
class SynicPostResult(Message):
    """hv → vsp: HV_STATUS_SUCCESS (written, or queued behind a busy slot), or why not."""

    partition: U64
    status: U16


@message(76, "synic_signal")
class SynicSignal(Message):
    """vsp → hv: set event flag ``flag_number`` of SINT ``sint`` in the SIEF page of ``vp``
    and assert the SINT if the flag was clear.  Answered by ``synic_signal_result``."""

    partition: U64
    vp: U32
    sint: U8
    flag_number: U16


@message(77, "synic_signal_result")
class SynicSignalResult(Message):
    partition: U64
    status: U16


@message(78, "gpa_map_request")
class GpaMapRequest(Message):
    """vsp → hv: may I map these guest pages of ``partition`` (a GPADL's), and where are
    they?  Every page must be RAM mapped in that partition."""

    partition: U64
    pages: page_ranges
    writable: boolean


@message(79, "gpa_map_reply")
class GpaMapReply(Message):
    """hv → vsp: ``status`` HV_STATUS_SUCCESS and where the pages live: ``ram`` is the
    partition's RAM file (in the run directory) and ``file_pages`` the same pages as
    ranges of 4 KiB pages of that file, in the request's order.  Otherwise
    HV_STATUS_INVALID_PARAMETER (a page not mapped RAM of that partition), ``ram`` empty,
    nothing to map."""

    partition: U64
    status: U16
    ram: text(512)
    file_pages: page_ranges


__all__ = [
    "HV_MESSAGE_SIZE",
    "HV_MESSAGE_PAYLOAD_BYTES",
    "HV_SYNIC_SINT_COUNT",
    "HV_EVENT_FLAGS_PER_SINT",
    "CONNECTION_KINDS",
    "SINT_VECTOR_MASK",
    "SINT_MASKED",
    "SINT_AUTO_EOI",
    "SINT_POLLING",
    "STIMER_ENABLE",
    "STIMER_PERIODIC",
    "STIMER_LAZY",
    "STIMER_AUTO_ENABLE",
    "STIMER_VECTOR_SHIFT",
    "STIMER_DIRECT",
    "STIMER_SINT_SHIFT",
    "HV_MESSAGE_HEADER",
    "HV_MESSAGE_FLAG_PENDING",
    "HV_TIMER_MESSAGE_PAYLOAD",
    "HV_REFERENCE_TSC_PAGE",
    "reference_time",
    "SynicConnect",
    "SynicDisconnect",
    "SynicMessageToRoot",
    "SynicEventToRoot",
    "SynicPost",
    "SynicPostResult",
    "SynicSignal",
    "SynicSignalResult",
    "GpaMapRequest",
    "GpaMapReply",
]
