"""
MQTT 5.0 properties: their identifiers, wire types, which packets carry them,
and L{Properties}, the value every 5.0 packet carries them in.

The decoder reads properties with L{mqttd.codec.decoder5}, the encoder writes
them with L{mqttd.codec.encoder.encode_properties}; both work from the tables
here, so a property is described in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = [
    "ALLOWED_PROPERTIES",
    "FIELD_NAMES",
    "NO_PROPERTIES",
    "PROPERTY_TYPES",
    "Properties",
    "PropertyId",
    "PropertyType",
]


class PropertyType(Enum):
    """The data representations of section 1.5 that a property value can take."""

    BYTE = "Byte"
    TWO_BYTE_INTEGER = "Two Byte Integer"
    FOUR_BYTE_INTEGER = "Four Byte Integer"
    VARIABLE_BYTE_INTEGER = "Variable Byte Integer"
    UTF8_STRING = "UTF-8 Encoded String"
    BINARY_DATA = "Binary Data"
    UTF8_STRING_PAIR = "UTF-8 String Pair"


class PropertyId(IntEnum):
    """The property identifiers of section 2.2.2.2."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


_P = PropertyId
_T = PropertyType

PROPERTY_TYPES: dict[PropertyId, PropertyType] = {
    _P.PAYLOAD_FORMAT_INDICATOR: _T.BYTE,
    _P.MESSAGE_EXPIRY_INTERVAL: _T.FOUR_BYTE_INTEGER,
    _P.CONTENT_TYPE: _T.UTF8_STRING,
    _P.RESPONSE_TOPIC: _T.UTF8_STRING,
    _P.CORRELATION_DATA: _T.BINARY_DATA,
    _P.SUBSCRIPTION_IDENTIFIER: _T.VARIABLE_BYTE_INTEGER,
    _P.SESSION_EXPIRY_INTERVAL: _T.FOUR_BYTE_INTEGER,
    _P.ASSIGNED_CLIENT_IDENTIFIER: _T.UTF8_STRING,
    _P.SERVER_KEEP_ALIVE: _T.TWO_BYTE_INTEGER,
    _P.AUTHENTICATION_METHOD: _T.UTF8_STRING,
    _P.AUTHENTICATION_DATA: _T.BINARY_DATA,
    _P.REQUEST_PROBLEM_INFORMATION: _T.BYTE,
    _P.WILL_DELAY_INTERVAL: _T.FOUR_BYTE_INTEGER,
    _P.REQUEST_RESPONSE_INFORMATION: _T.BYTE,
    _P.RESPONSE_INFORMATION: _T.UTF8_STRING,
    _P.SERVER_REFERENCE: _T.UTF8_STRING,
    _P.REASON_STRING: _T.UTF8_STRING,
    _P.RECEIVE_MAXIMUM: _T.TWO_BYTE_INTEGER,
    _P.TOPIC_ALIAS_MAXIMUM: _T.TWO_BYTE_INTEGER,
    _P.TOPIC_ALIAS: _T.TWO_BYTE_INTEGER,
    _P.MAXIMUM_QOS: _T.BYTE,
    _P.RETAIN_AVAILABLE: _T.BYTE,
    _P.USER_PROPERTY: _T.UTF8_STRING_PAIR,
    _P.MAXIMUM_PACKET_SIZE: _T.FOUR_BYTE_INTEGER,
    _P.WILDCARD_SUBSCRIPTION_AVAILABLE: _T.BYTE,
    _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _T.BYTE,
    _P.SHARED_SUBSCRIPTION_AVAILABLE: _T.BYTE,
}
"""The wire type of every property (section 2.2.2.2)."""

# The Reason String and User Property are allowed on every packet that has
# properties; the rest of each set is that packet's own section of the spec.
_COMMON = frozenset((_P.REASON_STRING, _P.USER_PROPERTY))
_MESSAGE = frozenset(
    (
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.MESSAGE_EXPIRY_INTERVAL,
        _P.CONTENT_TYPE,
        _P.RESPONSE_TOPIC,
        _P.CORRELATION_DATA,
        _P.USER_PROPERTY,
    )
)

ALLOWED_PROPERTIES: dict[str, frozenset[PropertyId]] = {
    "CONNECT": frozenset(
        (
            _P.SESSION_EXPIRY_INTERVAL,
            _P.AUTHENTICATION_METHOD,
            _P.AUTHENTICATION_DATA,
            _P.REQUEST_PROBLEM_INFORMATION,
            _P.REQUEST_RESPONSE_INFORMATION,
            _P.RECEIVE_MAXIMUM,
            _P.TOPIC_ALIAS_MAXIMUM,
            _P.USER_PROPERTY,
            _P.MAXIMUM_PACKET_SIZE,
        )
    ),
    "WILL": _MESSAGE | {_P.WILL_DELAY_INTERVAL},
    "CONNACK": _COMMON
    | {
        _P.SESSION_EXPIRY_INTERVAL,
        _P.ASSIGNED_CLIENT_IDENTIFIER,
        _P.SERVER_KEEP_ALIVE,
        _P.AUTHENTICATION_METHOD,
        _P.AUTHENTICATION_DATA,
        _P.RESPONSE_INFORMATION,
        _P.SERVER_REFERENCE,
        _P.RECEIVE_MAXIMUM,
        _P.TOPIC_ALIAS_MAXIMUM,
        _P.MAXIMUM_QOS,
        _P.RETAIN_AVAILABLE,
        _P.MAXIMUM_PACKET_SIZE,
        _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        _P.SHARED_SUBSCRIPTION_AVAILABLE,
    },
    "PUBLISH": _MESSAGE | {_P.TOPIC_ALIAS, _P.SUBSCRIPTION_IDENTIFIER},
    "PUBACK": _COMMON,
    "PUBREC": _COMMON,
    "PUBREL": _COMMON,
    "PUBCOMP": _COMMON,
    "SUBSCRIBE": frozenset((_P.SUBSCRIPTION_IDENTIFIER, _P.USER_PROPERTY)),
    "SUBACK": _COMMON,
    "UNSUBSCRIBE": frozenset((_P.USER_PROPERTY,)),
    "UNSUBACK": _COMMON,
    "DISCONNECT": _COMMON | {_P.SESSION_EXPIRY_INTERVAL, _P.SERVER_REFERENCE},
    "AUTH": _COMMON | {_P.AUTHENTICATION_METHOD, _P.AUTHENTICATION_DATA},
}
"""
The properties each packet may carry, by packet type name; C{"WILL"} is the
Will Properties of CONNECT.  Any other property there is a Malformed Packet
(section 2.2.2.2).
"""

FIELD_NAMES: dict[PropertyId, str] = {
    _P.SUBSCRIPTION_IDENTIFIER: "subscription_identifiers",
    _P.USER_PROPERTY: "user_properties",
    **{
        p: p.name.lower()
        for p in PropertyId
        if p not in (_P.SUBSCRIPTION_IDENTIFIER, _P.USER_PROPERTY)
    },
}
"""The L{Properties} attribute that holds each property."""


# Hashable so that the shared empty value can be every packet's default
# without a per-packet allocation (3.1.1 packets never have properties);
# that is sound because a Properties is never mutated, only replaced.
@dataclass(slots=True, unsafe_hash=True, repr=False)
class Properties:
    """
    The properties of one MQTT 5.0 packet (or of a will).

    Each single-valued property is C{None} when absent.  The two properties
    that may repeat are tuples: C{user_properties} keeps its (name, value)
    pairs in wire order (the spec requires forwarding them in order), and
    C{subscription_identifiers} holds the one identifier a SUBSCRIBE may carry
    or the several a server's PUBLISH may.

    Like packets, a L{Properties} is never mutated once built: every packet
    without properties shares L{NO_PROPERTIES}, so build a changed copy with
    L{dataclasses.replace} instead.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        # Only what is present: the full 27 fields would bury it in logs.
        present = (
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if getattr(self, name) not in (None, ())
        )
        return f"Properties({', '.join(present)})"


NO_PROPERTIES = Properties()
"""The empty property list, shared by every decoded packet that has none."""
