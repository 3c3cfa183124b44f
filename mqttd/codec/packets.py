"""
MQTT control packets as plain values.

Every packet the codec decodes or encodes is one of these classes.  They are
slotted dataclasses: cheap to build on the hot path, compared by value in tests.
Treat them as immutable once built; the codec never mutates a packet it returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


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


class ProtocolLevel(IntEnum):
    """The protocol level byte of CONNECT, with its protocol name."""

    MQTT_3_1 = 3  # protocol name "MQIsdp"
    MQTT_3_1_1 = 4  # protocol name "MQTT"


PROTOCOL_NAMES = {ProtocolLevel.MQTT_3_1: "MQIsdp", ProtocolLevel.MQTT_3_1_1: "MQTT"}


class ConnackCode(IntEnum):
    """CONNACK return codes of MQTT 3.1 and 3.1.1."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


SUBACK_FAILURE = 0x80


@dataclass(slots=True)
class Will:
    """The Last Will carried in CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class Connect:
    protocol_level: int
    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES[ProtocolLevel(self.protocol_level)]


@dataclass(slots=True)
class Connack:
    session_present: bool = False
    return_code: int = ConnackCode.ACCEPTED


@dataclass(slots=True)
class Publish:
    """An application message on the wire; C{packet_id} is C{None} at QoS 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(slots=True)
class Puback:
    packet_id: int


@dataclass(slots=True)
class Pubrec:
    packet_id: int


@dataclass(slots=True)
class Pubrel:
    packet_id: int


@dataclass(slots=True)
class Pubcomp:
    packet_id: int


@dataclass(slots=True)
class Subscribe:
    """C{subscriptions} pairs each topic filter with its requested QoS."""

    packet_id: int
    subscriptions: list[tuple[str, int]] = field(default_factory=list)


@dataclass(slots=True)
class Suback:
    """One return code per filter: the granted QoS, or L{SUBACK_FAILURE}."""

    packet_id: int
    return_codes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Unsuback:
    packet_id: int


@dataclass(slots=True)
class Pingreq:
    pass


@dataclass(slots=True)
class Pingresp:
    pass


@dataclass(slots=True)
class Disconnect:
    pass


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
)
