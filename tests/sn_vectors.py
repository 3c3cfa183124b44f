"""
The MQTT-SN 1.2 wire-format oracle: annotated raw bytes of every message type.

L{GOOD} holds datagrams that must decode to exactly L{Vector.packet} and that
L{mqttd.sn.codec.encode} must reproduce byte for byte.  L{BAD} holds datagrams the decoder must
refuse, with the reason a gateway counts them under.  Section numbers are those of the MQTT-SN
Protocol Specification Version 1.2.

Bytes are written as hex with one field per line; C{#} starts a comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqttd.sn.packets import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    Encapsulated,
    GwInfo,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Regack,
    Register,
    SearchGw,
    SNPacket,
    Suback,
    Subscribe,
    TopicIdType,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
)

from .vectors import h


@dataclass(frozen=True)
class Vector:
    """One well-formed datagram and the message it carries; C{section} of the spec."""

    name: str
    data: bytes
    packet: SNPacket
    section: str


@dataclass(frozen=True)
class BadVector:
    """A datagram the decoder refuses, and the counted reason."""

    name: str
    data: bytes
    reason: str
    why: str


GOOD: list[Vector] = [
    Vector(
        "advertise",
        h("""
        05        # Length 5
        00        # MsgType ADVERTISE
        07        # GwId 7
        0384      # Duration 900 s
        """),
        Advertise(gateway_id=7, duration=900),
        "5.4.2",
    ),
    Vector(
        "searchgw",
        h("""
        03 01     # Length 3, SEARCHGW
        02        # Radius 2
        """),
        SearchGw(radius=2),
        "5.4.3",
    ),
    Vector(
        "gwinfo-from-gateway",
        h("""
        03 02     # Length 3, GWINFO
        01        # GwId 1, no GwAdd: sent by a gateway
        """),
        GwInfo(gateway_id=1),
        "5.4.4",
    ),
    Vector(
        "gwinfo-from-client",
        h("""
        07 02     # Length 7, GWINFO
        01        # GwId 1
        7f000001  # GwAdd: 127.0.0.1, added by a client answering for the gateway
        """),
        GwInfo(gateway_id=1, gateway_address=b"\x7f\x00\x00\x01"),
        "5.4.4",
    ),
    Vector(
        "connect-clean-with-will",
        h("""
        0d 04     # Length 13, CONNECT
        0c        # Flags: Will (0x08) | CleanSession (0x04)
        01        # ProtocolId 1
        003c      # Duration 60 s
        73656e736f7231  # ClientId "sensor1"
        """),
        Connect(client_id="sensor1", duration=60, clean_session=True, will=True),
        "5.4.5",
    ),
    Vector(
        "connect-persistent",
        h("""
        08 04     # Length 8, CONNECT
        00        # Flags: neither Will nor CleanSession
        01        # ProtocolId 1
        0000      # Duration 0: no keepalive
        6162      # ClientId "ab"
        """),
        Connect(client_id="ab", duration=0, clean_session=False, will=False),
        "5.4.5",
    ),
    Vector(
        "connack-accepted",
        h("03 05 00  # Length 3, CONNACK, ReturnCode accepted"),
        Connack(0),
        "5.4.6",
    ),
    Vector(
        "connack-congestion",
        h("03 05 01  # Length 3, CONNACK, ReturnCode rejected: congestion"),
        Connack(1),
        "5.4.6",
    ),
    Vector("willtopicreq", h("02 06  # Length 2, WILLTOPICREQ"), WillTopicReq(), "5.4.7"),
    Vector(
        "willtopic",
        h("""
        0b 07     # Length 11, WILLTOPIC
        30        # Flags: QoS 1 (0x20) | Retain (0x10)
        6465762f6c6f7374  # WillTopic "dev/lost"
        """),
        WillTopic("dev/lost", qos=1, retain=True),
        "5.4.8",
    ),
    Vector(
        "willtopic-empty",
        h("02 07  # Length 2, WILLTOPIC without flags or topic: delete the will"),
        WillTopic(""),
        "5.4.8",
    ),
    Vector("willmsgreq", h("02 08  # Length 2, WILLMSGREQ"), WillMsgReq(), "5.4.9"),
    Vector(
        "willmsg",
        h("""
        06 09     # Length 6, WILLMSG
        64656164  # WillMsg "dead"
        """),
        WillMsg(b"dead"),
        "5.4.10",
    ),
    Vector(
        "register-from-client",
        h("""
        0b 0a     # Length 11, REGISTER
        0000      # TopicId 0: the client asks for one
        0005      # MsgId 5
        612f622f63  # TopicName "a/b/c"
        """),
        Register(topic_id=0, msg_id=5, topic_name="a/b/c"),
        "5.4.11",
    ),
    Vector(
        "register-from-gateway",
        h("""
        09 0a     # Length 9, REGISTER
        0011      # TopicId 17, given by the gateway
        0001      # MsgId 1
        782f79    # TopicName "x/y"
        """),
        Register(topic_id=17, msg_id=1, topic_name="x/y"),
        "5.4.11",
    ),
    Vector(
        "regack",
        h("""
        07 0b     # Length 7, REGACK
        0011      # TopicId 17
        0005      # MsgId 5
        00        # ReturnCode accepted
        """),
        Regack(topic_id=17, msg_id=5, return_code=0),
        "5.4.12",
    ),
    Vector(
        "publish-qos0-normal",
        h("""
        0a 0c     # Length 10, PUBLISH
        00        # Flags: QoS 0, TopicIdType normal
        0011      # TopicId 17
        0000      # MsgId 0 (QoS 0)
        686921    # Data "hi!"
        """),
        Publish(topic_id=17, msg_id=0, payload=b"hi!"),
        "5.4.13",
    ),
    Vector(
        "publish-qos1-retain-dup",
        h("""
        08 0c     # Length 8, PUBLISH
        b0        # Flags: DUP (0x80) | QoS 1 (0x20) | Retain (0x10), TopicIdType normal
        0002      # TopicId 2
        1234      # MsgId 0x1234
        00        # Data: one zero octet
        """),
        Publish(topic_id=2, msg_id=0x1234, payload=b"\x00", qos=1, retain=True, dup=True),
        "5.4.13",
    ),
    Vector(
        "publish-qos2-predefined",
        h("""
        08 0c     # Length 8, PUBLISH
        41        # Flags: QoS 2 (0x40), TopicIdType pre-defined (0x01)
        0001      # TopicId 1 (pre-defined)
        0007      # MsgId 7
        2a        # Data "*"
        """),
        Publish(topic_id=1, msg_id=7, payload=b"*", qos=2, topic_id_type=TopicIdType.PREDEFINED),
        "5.4.13",
    ),
    Vector(
        "publish-qos-minus-one-short",
        h("""
        09 0c     # Length 9, PUBLISH
        62        # Flags: QoS -1 (0x60), TopicIdType short (0x02)
        7470      # TopicName "tp" as a short topic
        0000      # MsgId 0
        3432      # Data "42"
        """),
        Publish(topic_id=0x7470, msg_id=0, payload=b"42", qos=-1, topic_id_type=TopicIdType.SHORT),
        "5.4.13, 6.8",
    ),
    Vector(
        "publish-long-form",
        h("01 0109 0c  # 0x01 then Length 265 in two octets, PUBLISH")
        + h("00 0011 0000  # Flags, TopicId 17, MsgId 0")
        + b"p" * 256,
        Publish(topic_id=17, msg_id=0, payload=b"p" * 256),
        "5.2.1",
    ),
    Vector(
        "puback-invalid-topic",
        h("""
        07 0d     # Length 7, PUBACK
        0063      # TopicId 99
        0002      # MsgId 2
        02        # ReturnCode rejected: invalid topic ID
        """),
        Puback(topic_id=99, msg_id=2, return_code=2),
        "5.4.14",
    ),
    Vector("pubcomp", h("04 0e 0007  # Length 4, PUBCOMP, MsgId 7"), Pubcomp(7), "5.4.15"),
    Vector("pubrec", h("04 0f 0007  # Length 4, PUBREC, MsgId 7"), Pubrec(7), "5.4.15"),
    Vector("pubrel", h("04 10 0007  # Length 4, PUBREL, MsgId 7"), Pubrel(7), "5.4.15"),
    Vector(
        "subscribe-wildcard",
        h("""
        0a 12     # Length 10, SUBSCRIBE
        20        # Flags: QoS 1, TopicIdType normal (a topic name or filter)
        0003      # MsgId 3
        612f2b2f23  # TopicName "a/+/#"
        """),
        Subscribe(msg_id=3, qos=1, topic_name="a/+/#"),
        "5.4.16",
    ),
    Vector(
        "subscribe-predefined",
        h("""
        07 12     # Length 7, SUBSCRIBE
        41        # Flags: QoS 2, TopicIdType pre-defined
        0004      # MsgId 4
        0001      # TopicId 1
        """),
        Subscribe(msg_id=4, qos=2, topic_id_type=TopicIdType.PREDEFINED, topic_id=1),
        "5.4.16",
    ),
    Vector(
        "subscribe-short",
        h("""
        07 12     # Length 7, SUBSCRIBE
        82        # Flags: DUP, QoS 0, TopicIdType short
        0005      # MsgId 5
        7470      # TopicName "tp"
        """),
        Subscribe(msg_id=5, topic_id_type=TopicIdType.SHORT, topic_name="tp", dup=True),
        "5.4.16",
    ),
    Vector(
        "suback",
        h("""
        08 13     # Length 8, SUBACK
        20        # Flags: granted QoS 1
        0011      # TopicId 17 (0 for a wildcard filter)
        0003      # MsgId 3
        00        # ReturnCode accepted
        """),
        Suback(topic_id=17, msg_id=3, return_code=0, qos=1),
        "5.4.17",
    ),
    Vector(
        "unsubscribe",
        h("""
        08 14     # Length 8, UNSUBSCRIBE
        00        # Flags: TopicIdType normal
        0006      # MsgId 6
        612f23    # TopicName "a/#"
        """),
        Unsubscribe(msg_id=6, topic_name="a/#"),
        "5.4.18",
    ),
    Vector(
        "unsubscribe-predefined",
        h("""
        07 14     # Length 7, UNSUBSCRIBE
        01        # Flags: TopicIdType pre-defined
        0006      # MsgId 6
        0002      # TopicId 2
        """),
        Unsubscribe(msg_id=6, topic_id_type=TopicIdType.PREDEFINED, topic_id=2),
        "5.4.18",
    ),
    Vector("unsuback", h("04 15 0006  # Length 4, UNSUBACK, MsgId 6"), Unsuback(6), "5.4.19"),
    Vector("pingreq", h("02 16  # Length 2, PINGREQ"), Pingreq(), "5.4.20"),
    Vector(
        "pingreq-wake-up",
        h("""
        04 16     # Length 4, PINGREQ
        6162      # ClientId "ab": a sleeping client fetching its messages
        """),
        Pingreq("ab"),
        "5.4.20, 6.14",
    ),
    Vector("pingresp", h("02 17  # Length 2, PINGRESP"), Pingresp(), "5.4.21"),
    Vector("disconnect", h("02 18  # Length 2, DISCONNECT"), Disconnect(), "5.4.22"),
    Vector(
        "disconnect-sleep",
        h("04 18 012c  # Length 4, DISCONNECT, Duration 300 s: go to sleep"),
        Disconnect(300),
        "5.4.22, 6.14",
    ),
    Vector(
        "willtopicupd",
        h("""
        06 1a     # Length 6, WILLTOPICUPD
        40        # Flags: QoS 2
        782f79    # WillTopic "x/y"
        """),
        WillTopicUpd("x/y", qos=2),
        "5.4.23",
    ),
    Vector(
        "willtopicupd-empty",
        h("02 1a  # Length 2, WILLTOPICUPD, empty: delete the will"),
        WillTopicUpd(""),
        "5.4.23",
    ),
    Vector(
        "willtopicresp",
        h("03 1b 00  # Length 3, WILLTOPICRESP, accepted"),
        WillTopicResp(0),
        "5.4.25",
    ),
    Vector(
        "willmsgupd",
        h('05 1c 627965  # Length 5, WILLMSGUPD, WillMsg "bye"'),
        WillMsgUpd(b"bye"),
        "5.4.24",
    ),
    Vector(
        "willmsgresp",
        h("03 1d 03  # Length 3, WILLMSGRESP, rejected: not supported"),
        WillMsgResp(3),
        "5.4.26",
    ),
    Vector(
        "encapsulated",
        h("""
        05 fe     # Length 5 (the encapsulation header only), Encapsulated message
        01        # Ctrl: radius 1
        abcd      # Wireless Node Id
        02 16     # the MQTT-SN message it carries: PINGREQ
        """),
        Encapsulated(radius=1, node_id=b"\xab\xcd", message=b"\x02\x16"),
        "5.5",
    ),
]


BAD: list[BadVector] = [
    BadVector("empty", b"", "short", "no octets at all"),
    BadVector("one-octet", h("02"), "short", "a length and no MsgType"),
    BadVector("long-form-cut", h("01 00"), "short", "0x01 announces two length octets"),
    BadVector("length-too-big", h("05 16"), "length", "says 5 octets, the datagram has 2"),
    BadVector("length-too-small", h("02 0c 00 0011 0000"), "length", "says 2, has 7"),
    BadVector("length-zero", h("00 16"), "length", "a length of 0 is never right"),
    BadVector("long-form-wrong", h("01 0009 16"), "length", "says 9 in the long form, has 4"),
    BadVector("unknown-type", h("02 03"), "type", "0x03 is reserved"),
    BadVector("unknown-type-high", h("02 ff"), "type", "0xff is reserved"),
    BadVector("connack-long", h("04 05 00 00"), "malformed", "CONNACK has one octet"),
    BadVector("connect-cut", h("04 04 04 01"), "malformed", "no Duration"),
    BadVector(
        "connect-bad-utf8", h("07 04 04 01 003c ff"), "malformed", "a client id is UTF-8 text"
    ),
    BadVector("publish-cut", h("05 0c 00 0011"), "malformed", "no MsgId"),
    BadVector("puback-cut", h("06 0d 0011 0002"), "malformed", "no ReturnCode"),
    BadVector("pubrel-long", h("05 10 0007 00"), "malformed", "PUBREL has a MsgId only"),
    BadVector("subscribe-no-topic", h("05 12 00 0003"), "malformed", "a normal type needs a name"),
    BadVector("subscribe-reserved-type", h("07 12 03 0003 0001"), "malformed", "topic id type 3"),
    BadVector(
        "subscribe-predefined-long", h("08 12 01 0003 000100"), "malformed", "ids are 2 octets"
    ),
    BadVector("register-cut", h("05 0a 0000 00"), "malformed", "no MsgId"),
    BadVector("disconnect-odd", h("03 18 01"), "malformed", "a Duration is two octets"),
    BadVector("pingresp-body", h("03 17 00"), "malformed", "PINGRESP has no body"),
    BadVector("encapsulated-no-inner", h("05 fe 01 abcd"), "length", "nothing after the header"),
]
