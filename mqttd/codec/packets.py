"""
MQTT control packets as plain values.

Every packet the codec decodes or encodes is one of these classes.  They are
slotted dataclasses: cheap to build on the hot path, compared by value in tests.
Treat them as immutable once built; the codec never mutates a packet it returned.

One class serves every protocol level.  The fields MQTT 5.0 added (reason
codes, L{Properties}) come last and default to what a 3.1.1 packet means, so
3.1.1 code builds and reads packets as before; the encoder leaves them out
below level 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .properties import NO_PROPERTIES, Properties


class PacketType(IntEnum):
    """The four-bit packet type in the fixed header."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5.0 only


class ProtocolLevel(IntEnum):
    """The protocol level byte of CONNECT, with its protocol name."""

    MQTT_3_1 = 3  # protocol name "MQIsdp"
    MQTT_3_1_1 = 4  # protocol name "MQTT"
    MQTT_5 = 5  # protocol name "MQTT"


PROTOCOL_NAMES = {
    ProtocolLevel.MQTT_3_1: "MQIsdp",
    ProtocolLevel.MQTT_3_1_1: "MQTT",
    ProtocolLevel.MQTT_5: "MQTT",
}


class ConnackCode(IntEnum):
    """CONNACK return codes of MQTT 3.1 and 3.1.1."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


SUBACK_FAILURE = 0x80


class ReasonCode(IntEnum):
    """
    The reason codes of MQTT 5.0 (section 2.4).

    0x00 has three names and 0x01 / 0x02 are both granted QoS levels and the
    first two values of the SUBACK set; which packet a code may appear in is
    given by the C{*_REASON_CODES} sets below.
    """

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


CONNACK_REASON_CODES = frozenset(
    (0x00, *range(0x80, 0x8B), 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F)
)
"""The Connect Reason Codes of section 3.2.2.2."""
PUBACK_REASON_CODES = frozenset((0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99))
"""The reason codes of PUBACK and PUBREC (sections 3.4.2.1, 3.5.2.1)."""
PUBREL_REASON_CODES = frozenset((0x00, 0x92))
"""The reason codes of PUBREL and PUBCOMP (sections 3.6.2.1, 3.7.2.1)."""
SUBACK_REASON_CODES = frozenset(
    (0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2)
)
"""The Subscribe Reason Codes of section 3.9.3."""
UNSUBACK_REASON_CODES = frozenset((0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91))
"""The Unsubscribe Reason Codes of section 3.11.3."""
DISCONNECT_REASON_CODES = frozenset(
    (0x00, 0x04, *range(0x80, 0x84), 0x87, 0x89, 0x8B, *range(0x8D, 0x91), *range(0x93, 0xA3))
)
"""The Disconnect Reason Codes of section 3.14.2.1."""
AUTH_REASON_CODES = frozenset((0x00, 0x18, 0x19))
"""The Authenticate Reason Codes of section 3.15.2.1."""


class SubscriptionOptions(int):
    """
    The options byte that follows a topic filter in SUBSCRIBE.

    It is an C{int} equal to the byte, so at 3.1 / 3.1.1, where the byte is
    just the requested QoS, it equals that QoS; MQTT 5.0 adds the other
    options in higher bits (section 3.8.3.1).
    """

    __slots__ = ()

    @classmethod
    def of(
        cls,
        qos: int = 0,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
    ) -> SubscriptionOptions:
        """Build the byte from its options."""
        return cls(qos | (no_local << 2) | (retain_as_published << 3) | (retain_handling << 4))

    @property
    def qos(self) -> int:
        """The maximum QoS the subscriber accepts."""
        return self & 0x03

    @property
    def no_local(self) -> bool:
        """Whether messages the subscriber publishes itself are kept from it."""
        return bool(self & 0x04)

    @property
    def retain_as_published(self) -> bool:
        """Whether forwarded messages keep the RETAIN flag they were published with."""
        return bool(self & 0x08)

    @property
    def retain_handling(self) -> int:
        """0: send retained messages, 1: only for a new subscription, 2: never."""
        return (self >> 4) & 0x03

    def __repr__(self) -> str:
        return (
            f"SubscriptionOptions.of(qos={self.qos}, no_local={self.no_local}, "
            f"retain_as_published={self.retain_as_published}, "
            f"retain_handling={self.retain_handling})"
        )


@dataclass(slots=True)
class Will:
    """The Last Will carried in CONNECT, with its Will Properties at 5.0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Connect:
    """
    CONNECT.  C{clean_session} is the Clean Start flag at 5.0, where a
    password may also come without a user name.  C{bridge} is the bit
    mosquitto's bridges set on a 3.1 / 3.1.1 protocol level (0x83, 0x84) to
    say that the client is another broker; C{protocol_level} is then the
    level without it.
    """

    protocol_level: int
    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES
    bridge: bool = False

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES[ProtocolLevel(self.protocol_level)]


@dataclass(slots=True)
class Connack:
    """
    CONNACK.  C{return_code} is a L{ConnackCode} at 3.1 / 3.1.1 and a
    L{ReasonCode} from L{CONNACK_REASON_CODES} at 5.0.
    """

    session_present: bool = False
    return_code: int = ConnackCode.ACCEPTED
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Publish:
    """An application message on the wire; C{packet_id} is C{None} at QoS 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Puback:
    """PUBACK; C{reason_code} (one of L{PUBACK_REASON_CODES}) and properties are 5.0 only."""

    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Pubrec:
    """PUBREC; C{reason_code} (one of L{PUBACK_REASON_CODES}) and properties are 5.0 only."""

    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Pubrel:
    """PUBREL; C{reason_code} (one of L{PUBREL_REASON_CODES}) and properties are 5.0 only."""

    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Pubcomp:
    """PUBCOMP; C{reason_code} (one of L{PUBREL_REASON_CODES}) and properties are 5.0 only."""

    packet_id: int
    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Subscribe:
    """
    C{subscriptions} pairs each topic filter with its options byte: the
    requested QoS at 3.1 / 3.1.1, a L{SubscriptionOptions} when decoded at 5.0.
    """

    packet_id: int
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Suback:
    """
    One return code per filter: the granted QoS or L{SUBACK_FAILURE} at
    3.1 / 3.1.1, one of L{SUBACK_REASON_CODES} at 5.0.
    """

    packet_id: int
    return_codes: list[int] = field(default_factory=list)
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str] = field(default_factory=list)
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Unsuback:
    """
    UNSUBACK; 5.0 adds one reason code per filter (from
    L{UNSUBACK_REASON_CODES}) and properties, 3.1.1 has neither.
    """

    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Pingreq:
    pass


@dataclass(slots=True)
class Pingresp:
    pass


@dataclass(slots=True)
class Disconnect:
    """
    DISCONNECT; the reason code (one of L{DISCONNECT_REASON_CODES}) and
    properties are 5.0 only, where the server may send it too.
    """

    reason_code: int = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Auth:
    """AUTH, the MQTT 5.0 enhanced authentication exchange (section 3.15)."""

    reason_code: int = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
