"""
Typed decoding errors.

Each error tells the protocol layer how to answer: C{connack_code} is the
CONNACK return code to send before closing (only meaningful while the
connection is still waiting for CONNECT), or C{None} to close without a reply.
"""

from __future__ import annotations

from .packets import ConnackCode


class DecodeError(Exception):
    """The bytes received are not a valid MQTT packet stream; close the connection."""

    connack_code: int | None = None

    def __init__(self, message: str, spec: str | None = None) -> None:
        super().__init__(message)
        self.spec = spec


class MalformedPacket(DecodeError):
    """A packet's bytes break the wire format (lengths, flags, UTF-8, field values)."""


class ProtocolViolation(DecodeError):
    """A well-formed packet that is not allowed here (wrong direction, wrong order)."""


class PacketTooLarge(DecodeError):
    """The declared Remaining Length exceeds the configured maximum packet size."""


class UnacceptableProtocol(DecodeError):
    """CONNECT names a protocol or level the server does not speak [MQTT-3.1.2-2]."""

    connack_code = ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION


class IdentifierRejected(DecodeError):
    """CONNECT carries a client identifier the server refuses [MQTT-3.1.3-9]."""

    connack_code = ConnackCode.IDENTIFIER_REJECTED
