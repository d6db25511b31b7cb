"""Errors at hvstack's boundaries.

    HvstackError
    ├── ProtocolError            a frame that is not a valid message (decode side)
    │   ├── MalformedMessage     not msgpack, not an array, too large
    │   ├── UnknownMessageType   a type id nobody defined
    │   └── InvalidField         missing/extra field, wrong type or out of range
    ├── TransportError           the socket layer
    │   ├── PeerTimeout          no answer before the deadline
    │   └── EndpointClosed       we closed it
    ├── Refused                  the peer answered with an error reply
    ├── ConfigError              a bad topology file (exit code 2)
    └── (elsewhere, on this base) HypercallFailed, the root client's: a root hypercall's
        HV_STATUS was not SUCCESS; hypervisor.memory.MemoryRefused: the memory manager
        refuses a deposit or map (the hypercall returns INVALID_PARAMETER); RunEnded, the
        root's: a run is over, with its reason and the launcher's exit status

Library exceptions (zmq, msgpack) are translated here and chained with ``raise … from e``.
"""

from __future__ import annotations


class HvstackError(Exception):
    """Base of every error hvstack raises on purpose."""


class ProtocolError(HvstackError):
    """A frame could not be turned into a message.  ``code`` names it on the wire."""

    code = "PROTOCOL_ERROR"


class MalformedMessage(ProtocolError):
    code = "MALFORMED"


class UnknownMessageType(ProtocolError):
    code = "UNKNOWN_TYPE"


class InvalidField(ProtocolError):
    code = "INVALID_FIELD"

    def __init__(self, message: str, field: str, reason: str) -> None:
        super().__init__(f"{message}.{field}: {reason}")
        self.message = message
        self.field = field
        self.reason = reason


class TransportError(HvstackError):
    """Something went wrong below the message layer."""


class PeerTimeout(TransportError):
    """The peer did not answer within the deadline."""


class EndpointClosed(TransportError):
    """The endpoint was closed by us; no more sends or receives."""


class NotAuthenticated(TransportError):
    """The other end did not prove it holds the run's secret (a hello reply without the
    hypervisor's proof, :func:`proto.auth.check_reply`)."""


class Refused(HvstackError):
    """The peer understood the request and said no (an ``error_reply``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


class ConfigError(HvstackError):
    """A topology that cannot be run; the message names the file, line and key."""

    exit_code = 2


class ConfineError(HvstackError, OSError):
    """A process could not be confined as asked (dropping to its uid, hiding in namespaces):
    it must not go on.  An OSError too, with the errno of the call that failed."""
