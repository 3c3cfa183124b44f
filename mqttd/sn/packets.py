"""
MQTT-SN 1.2 messages as values: one frozen dataclass per message type.

Field names follow the specification (section 5.3/5.4).  QoS is an int from -1 to 2, where -1 is
the "QoS -1" (publish without a connection) of section 6.8.  Topic fields keep the form the
message carries: a topic id (normal, pre-defined, or the two characters of a short topic name
read as one 16-bit number) or a topic name, with L{TopicIdType} saying which.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class MsgType(IntEnum):
    """The MsgType octet (section 5.2.2)."""

    ADVERTISE = 0x00
    SEARCHGW = 0x01
    GWINFO = 0x02
    CONNECT = 0x04
    CONNACK = 0x05
    WILLTOPICREQ = 0x06
    WILLTOPIC = 0x07
    WILLMSGREQ = 0x08
    WILLMSG = 0x09
    REGISTER = 0x0A
    REGACK = 0x0B
    PUBLISH = 0x0C
    PUBACK = 0x0D
    PUBCOMP = 0x0E
    PUBREC = 0x0F
    PUBREL = 0x10
    SUBSCRIBE = 0x12
    SUBACK = 0x13
    UNSUBSCRIBE = 0x14
    UNSUBACK = 0x15
    PINGREQ = 0x16
    PINGRESP = 0x17
    DISCONNECT = 0x18
    WILLTOPICUPD = 0x1A
    WILLTOPICRESP = 0x1B
    WILLMSGUPD = 0x1C
    WILLMSGRESP = 0x1D
    ENCAPSULATED = 0xFE


class ReturnCode(IntEnum):
    """The ReturnCode octet (section 5.3.10)."""

    ACCEPTED = 0x00
    CONGESTION = 0x01
    INVALID_TOPIC_ID = 0x02
    NOT_SUPPORTED = 0x03


class TopicIdType(IntEnum):
    """The TopicIdType bits of the Flags octet (section 5.3.4)."""

    NORMAL = 0
    PREDEFINED = 1
    SHORT = 2


# The protocol id of CONNECT (section 5.3.5): MQTT-SN 1.2.
PROTOCOL_ID = 0x01


def shortTopicId(name: str) -> int:
    """The topic id field carrying the two-character short topic name C{name}."""
    raw = name.encode("utf-8")
    if len(raw) != 2:
        raise ValueError(f"a short topic name is two octets, got {name!r}")
    return int.from_bytes(raw, "big")


def shortTopicName(topicId: int) -> str:
    """
    The short topic name a topic id field carries.

    @raise ValueError: the two octets are not UTF-8 text.
    """
    return topicId.to_bytes(2, "big").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Advertise:
    gateway_id: int
    duration: int


@dataclass(frozen=True, slots=True)
class SearchGw:
    radius: int


@dataclass(frozen=True, slots=True)
class GwInfo:
    """Sent by a gateway without an address; a client answering for one adds it."""

    gateway_id: int
    gateway_address: bytes = b""


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    duration: int
    clean_session: bool = True
    will: bool = False
    protocol_id: int = PROTOCOL_ID


@dataclass(frozen=True, slots=True)
class Connack:
    return_code: int = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class WillTopicReq:
    pass


@dataclass(frozen=True, slots=True)
class WillTopic:
    """An empty topic (no flags either on the wire) deletes the will (section 5.4.7)."""

    topic: str
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class WillMsgReq:
    pass


@dataclass(frozen=True, slots=True)
class WillMsg:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Register:
    topic_id: int
    msg_id: int
    topic_name: str


@dataclass(frozen=True, slots=True)
class Regack:
    topic_id: int
    msg_id: int
    return_code: int = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Publish:
    topic_id: int
    msg_id: int
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    topic_id_type: int = TopicIdType.NORMAL


@dataclass(frozen=True, slots=True)
class Puback:
    topic_id: int
    msg_id: int
    return_code: int = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Pubcomp:
    msg_id: int


@dataclass(frozen=True, slots=True)
class Pubrec:
    msg_id: int


@dataclass(frozen=True, slots=True)
class Pubrel:
    msg_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """
    C{topic_name} for the normal and short types (a filter, or two characters), C{topic_id}
    for the pre-defined type.
    """

    msg_id: int
    qos: int = 0
    topic_id_type: int = TopicIdType.NORMAL
    topic_name: str = ""
    topic_id: int = 0
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Suback:
    topic_id: int
    msg_id: int
    return_code: int = ReturnCode.ACCEPTED
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Topic fields as in L{Subscribe}."""

    msg_id: int
    topic_id_type: int = TopicIdType.NORMAL
    topic_name: str = ""
    topic_id: int = 0


@dataclass(frozen=True, slots=True)
class Unsuback:
    msg_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    """With a client id, a sleeping client waking up to fetch its messages (section 6.14)."""

    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    """With a duration, a client going to sleep for that many seconds (section 6.14)."""

    duration: int | None = None


@dataclass(frozen=True, slots=True)
class WillTopicUpd:
    """An empty topic deletes the will."""

    topic: str
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class WillTopicResp:
    return_code: int = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class WillMsgUpd:
    payload: bytes


@dataclass(frozen=True, slots=True)
class WillMsgResp:
    return_code: int = ReturnCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class Encapsulated:
    """A message relayed by a forwarder (section 5.5): its radius, node id and the inner bytes."""

    radius: int
    node_id: bytes
    message: bytes


SNPacket = (
    Advertise
    | SearchGw
    | GwInfo
    | Connect
    | Connack
    | WillTopicReq
    | WillTopic
    | WillMsgReq
    | WillMsg
    | Register
    | Regack
    | Publish
    | Puback
    | Pubcomp
    | Pubrec
    | Pubrel
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | WillTopicUpd
    | WillTopicResp
    | WillMsgUpd
    | WillMsgResp
    | Encapsulated
)
