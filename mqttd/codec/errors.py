"""
Typed decoding errors.

Each error tells the protocol layer how to answer, at either protocol level:

  - C{protocol_level} is the level the peer speaks, as far as the decoder
    knew when it gave up (C{None} before a CONNECT said so).
  - At 3.1 / 3.1.1, C{connack_code} is the CONNACK return code to send before
    closing (only meaningful while the connection is still waiting for
    CONNECT), or C{None} to close without a reply.
  - C{packets} are the good packets the same read completed before the bad
    one: they are handled first, as if the error had come with the next read.
  - At 5.0, C{reason_code} is the L{ReasonCode} to answer with: in a CONNACK
    while the connection is waiting for CONNECT (every one of these codes is
    a Connect Reason Code, bad-inputs entry 17), in a DISCONNECT after it
    [MQTT-4.13.1-1]; then close.
"""

from __future__ import annotations

from .packets import ConnackCode, Packet, ReasonCode


class DecodeError(Exception):
    """The bytes received are not a valid MQTT packet stream; close the connection."""

    connack_code: int | None = None
    reason_code: int = ReasonCode.UNSPECIFIED_ERROR

    def __init__(
        self, message: str, spec: str | None = None, reason_code: int | None = None
    ) -> None:
        """
        @param spec: the id of the normative statement the input breaks.
        @param reason_code: overrides the class's 5.0 reason code when one
            statement names a more precise one (e.g. 0x94 for Topic Alias 0).
        """
        super().__init__(message)
        self.spec = spec
        self.protocol_level: int | None = None
        self.packets: list[Packet] = []
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(DecodeError):
    """A packet's bytes break the wire format (lengths, flags, UTF-8, field values)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolViolation(DecodeError):
    """A well-formed packet that is not allowed here (wrong direction, wrong order, value)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(DecodeError):
    """The declared Remaining Length exceeds the configured maximum packet size."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class LimitExceeded(DecodeError):
    """
    A valid packet beyond what this server processes: more User Properties
    than the configured cap (bad-inputs entry 18).
    """

    reason_code = ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR


class UnacceptableProtocol(DecodeError):
    """CONNECT names a protocol or level the server does not speak [MQTT-3.1.2-2]."""

    connack_code = ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION
    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


class IdentifierRejected(DecodeError):
    """CONNECT carries a client identifier the server refuses [MQTT-3.1.3-9]."""

    connack_code = ConnackCode.IDENTIFIER_REJECTED
    reason_code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
