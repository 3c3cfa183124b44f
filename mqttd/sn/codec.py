"""
The MQTT-SN 1.2 codec, sans-IO: one datagram's bytes in, one message out, and back.

A datagram carries exactly one message (section 5.1), so there is no framing state: L{decode}
takes the whole datagram and refuses it, with a reason a gateway can count, if its length octets
disagree with its size or its body does not fit its type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .packets import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    Encapsulated,
    GwInfo,
    MsgType,
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

# The Flags octet (section 5.3.4).
DUP = 0x80
QOS_SHIFT = 5
QOS_MASK = 0x60
RETAIN = 0x10
WILL = 0x08
CLEAN_SESSION = 0x04
TOPIC_ID_TYPE = 0x03

# The largest message the three-octet length form can state.
MAX_LENGTH = 0xFFFF


class SNDecodeError(ValueError):
    """
    A datagram that is no MQTT-SN message.

    @ivar reason: a short name for counters: C{short} (fewer octets than a header), C{length}
        (the length octets disagree with the datagram), C{type} (unknown MsgType) or
        C{malformed} (the body does not fit the type).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _qos(flags: int) -> int:
    bits = (flags & QOS_MASK) >> QOS_SHIFT
    return -1 if bits == 3 else bits


def _qosBits(qos: int) -> int:
    if qos not in (-1, 0, 1, 2):
        raise ValueError(f"QoS must be -1, 0, 1 or 2, got {qos}")
    return (3 if qos == -1 else qos) << QOS_SHIFT


def _text(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise SNDecodeError("malformed", f"{what} is not UTF-8") from None


def _exactly(body: bytes, size: int, name: str) -> None:
    if len(body) != size:
        raise SNDecodeError("malformed", f"{name} body is {len(body)} octets, expected {size}")


def _atLeast(body: bytes, size: int, name: str) -> None:
    if len(body) < size:
        raise SNDecodeError("malformed", f"{name} body is {len(body)} octets, expected {size}+")


def _u16(body: bytes, offset: int) -> int:
    return int(struct.unpack_from("!H", body, offset)[0])


def _advertise(body: bytes) -> Advertise:
    _exactly(body, 3, "ADVERTISE")
    return Advertise(body[0], _u16(body, 1))


def _searchgw(body: bytes) -> SearchGw:
    _exactly(body, 1, "SEARCHGW")
    return SearchGw(body[0])


def _gwinfo(body: bytes) -> GwInfo:
    _atLeast(body, 1, "GWINFO")
    return GwInfo(body[0], body[1:])


def _connect(body: bytes) -> Connect:
    _atLeast(body, 4, "CONNECT")
    flags = body[0]
    return Connect(
        client_id=_text(body[4:], "client id"),
        duration=_u16(body, 2),
        clean_session=bool(flags & CLEAN_SESSION),
        will=bool(flags & WILL),
        protocol_id=body[1],
    )


def _connack(body: bytes) -> Connack:
    _exactly(body, 1, "CONNACK")
    return Connack(body[0])


def _empty(cls: type) -> Callable[[bytes], SNPacket]:
    def decode(body: bytes) -> SNPacket:
        _exactly(body, 0, cls.__name__.upper())
        packet: SNPacket = cls()
        return packet

    return decode


def _willTopicFields(body: bytes) -> tuple[str, int, bool]:
    if not body:
        return "", 0, False
    flags = body[0]
    return _text(body[1:], "will topic"), _qos(flags), bool(flags & RETAIN)


def _willtopic(body: bytes) -> WillTopic:
    return WillTopic(*_willTopicFields(body))


def _willtopicupd(body: bytes) -> WillTopicUpd:
    return WillTopicUpd(*_willTopicFields(body))


def _register(body: bytes) -> Register:
    _atLeast(body, 4, "REGISTER")
    return Register(_u16(body, 0), _u16(body, 2), _text(body[4:], "topic name"))


def _regack(body: bytes) -> Regack:
    _exactly(body, 5, "REGACK")
    return Regack(_u16(body, 0), _u16(body, 2), body[4])


def _publish(body: bytes) -> Publish:
    _atLeast(body, 5, "PUBLISH")
    flags = body[0]
    return Publish(
        topic_id=_u16(body, 1),
        msg_id=_u16(body, 3),
        payload=body[5:],
        qos=_qos(flags),
        retain=bool(flags & RETAIN),
        dup=bool(flags & DUP),
        topic_id_type=flags & TOPIC_ID_TYPE,
    )


def _puback(body: bytes) -> Puback:
    _exactly(body, 5, "PUBACK")
    return Puback(_u16(body, 0), _u16(body, 2), body[4])


def _msgIdOnly(cls: type) -> Callable[[bytes], SNPacket]:
    def decode(body: bytes) -> SNPacket:
        _exactly(body, 2, cls.__name__.upper())
        packet: SNPacket = cls(_u16(body, 0))
        return packet

    return decode


def _topicOf(flags: int, topic: bytes, name: str) -> tuple[int, str, int]:
    """(topic id type, topic name, topic id) of a SUBSCRIBE or UNSUBSCRIBE."""
    kind = flags & TOPIC_ID_TYPE
    if kind == TopicIdType.NORMAL:
        if not topic:
            raise SNDecodeError("malformed", f"{name} without a topic name")
        return kind, _text(topic, "topic filter"), 0
    if kind == TopicIdType.PREDEFINED:
        _exactly(topic, 2, f"{name} pre-defined topic id")
        return kind, "", _u16(topic, 0)
    if kind == TopicIdType.SHORT:
        _exactly(topic, 2, f"{name} short topic name")
        return kind, _text(topic, "short topic name"), 0
    raise SNDecodeError("malformed", f"{name} with the reserved topic id type 3")


def _subscribe(body: bytes) -> Subscribe:
    _atLeast(body, 3, "SUBSCRIBE")
    flags = body[0]
    kind, name, topicId = _topicOf(flags, body[3:], "SUBSCRIBE")
    return Subscribe(
        msg_id=_u16(body, 1),
        qos=_qos(flags),
        topic_id_type=kind,
        topic_name=name,
        topic_id=topicId,
        dup=bool(flags & DUP),
    )


def _suback(body: bytes) -> Suback:
    _exactly(body, 6, "SUBACK")
    return Suback(_u16(body, 1), _u16(body, 3), body[5], _qos(body[0]))


def _unsubscribe(body: bytes) -> Unsubscribe:
    _atLeast(body, 3, "UNSUBSCRIBE")
    kind, name, topicId = _topicOf(body[0], body[3:], "UNSUBSCRIBE")
    return Unsubscribe(_u16(body, 1), kind, name, topicId)


def _pingreq(body: bytes) -> Pingreq:
    return Pingreq(_text(body, "client id") if body else None)


def _disconnect(body: bytes) -> Disconnect:
    if not body:
        return Disconnect()
    _exactly(body, 2, "DISCONNECT")
    return Disconnect(_u16(body, 0))


def _returnCode(cls: type) -> Callable[[bytes], SNPacket]:
    def decode(body: bytes) -> SNPacket:
        _exactly(body, 1, cls.__name__.upper())
        packet: SNPacket = cls(body[0])
        return packet

    return decode


_DECODERS: dict[int, Callable[[bytes], SNPacket]] = {
    MsgType.ADVERTISE: _advertise,
    MsgType.SEARCHGW: _searchgw,
    MsgType.GWINFO: _gwinfo,
    MsgType.CONNECT: _connect,
    MsgType.CONNACK: _connack,
    MsgType.WILLTOPICREQ: _empty(WillTopicReq),
    MsgType.WILLTOPIC: _willtopic,
    MsgType.WILLMSGREQ: _empty(WillMsgReq),
    MsgType.WILLMSG: WillMsg,
    MsgType.REGISTER: _register,
    MsgType.REGACK: _regack,
    MsgType.PUBLISH: _publish,
    MsgType.PUBACK: _puback,
    MsgType.PUBCOMP: _msgIdOnly(Pubcomp),
    MsgType.PUBREC: _msgIdOnly(Pubrec),
    MsgType.PUBREL: _msgIdOnly(Pubrel),
    MsgType.SUBSCRIBE: _subscribe,
    MsgType.SUBACK: _suback,
    MsgType.UNSUBSCRIBE: _unsubscribe,
    MsgType.UNSUBACK: _msgIdOnly(Unsuback),
    MsgType.PINGREQ: _pingreq,
    MsgType.PINGRESP: _empty(Pingresp),
    MsgType.DISCONNECT: _disconnect,
    MsgType.WILLTOPICUPD: _willtopicupd,
    MsgType.WILLTOPICRESP: _returnCode(WillTopicResp),
    MsgType.WILLMSGUPD: WillMsgUpd,
    MsgType.WILLMSGRESP: _returnCode(WillMsgResp),
}


def decode(data: bytes) -> SNPacket:
    """
    The message one datagram carries.

    @raise SNDecodeError: the datagram is not one well-formed MQTT-SN 1.2 message.
    """
    if len(data) < 2:
        raise SNDecodeError("short", f"{len(data)} octets is shorter than any message")
    if data[0] == 0x01:
        # The three-octet form: 0x01 then the length in two octets (section 5.2.1).
        if len(data) < 4:
            raise SNDecodeError("short", "three-octet length form without a MsgType")
        length, header = _u16(data, 1), 3
    else:
        length, header = data[0], 1
    msgType = data[header]
    if msgType == MsgType.ENCAPSULATED:
        return _encapsulated(data, length, header)
    if length != len(data):
        raise SNDecodeError("length", f"length octets say {length}, datagram has {len(data)}")
    decoder = _DECODERS.get(msgType)
    if decoder is None:
        raise SNDecodeError("type", f"unknown MsgType 0x{msgType:02x}")
    return decoder(bytes(data[header + 1 :]))


def _encapsulated(data: bytes, length: int, header: int) -> Encapsulated:
    # The length covers the encapsulation header only; the inner message follows it.
    if length < header + 2 or length >= len(data):
        raise SNDecodeError("length", "encapsulation header length does not fit the datagram")
    return Encapsulated(
        data[header + 1] & 0x03, bytes(data[header + 2 : length]), bytes(data[length:])
    )


def _frame(msgType: int, body: bytes) -> bytes:
    size = len(body) + 2
    if size < 256:
        return bytes((size, msgType)) + body
    size += 2
    if size > MAX_LENGTH:
        raise ValueError(f"a message of {size} octets does not fit MQTT-SN's length field")
    return struct.pack("!BHB", 0x01, size, msgType) + body


def _topicField(kind: int, name: str, topicId: int) -> bytes:
    if kind == TopicIdType.PREDEFINED:
        return struct.pack("!H", topicId)
    return name.encode("utf-8")


def _willTopicBody(topic: str, qos: int, retain: bool) -> bytes:
    if not topic and not qos and not retain:
        return b""
    return bytes((_qosBits(qos) | (RETAIN if retain else 0),)) + topic.encode("utf-8")


def encode(packet: SNPacket) -> bytes:
    """
    The datagram carrying C{packet}.

    @raise ValueError: it does not fit one MQTT-SN message.
    """
    t = MsgType
    match packet:
        case Publish():
            flags = (
                (DUP if packet.dup else 0)
                | _qosBits(packet.qos)
                | (RETAIN if packet.retain else 0)
                | packet.topic_id_type
            )
            head = struct.pack("!BHH", flags, packet.topic_id, packet.msg_id)
            return _frame(t.PUBLISH, head + packet.payload)
        case Puback():
            return _frame(
                t.PUBACK, struct.pack("!HHB", packet.topic_id, packet.msg_id, packet.return_code)
            )
        case Pubrec():
            return _frame(t.PUBREC, struct.pack("!H", packet.msg_id))
        case Pubrel():
            return _frame(t.PUBREL, struct.pack("!H", packet.msg_id))
        case Pubcomp():
            return _frame(t.PUBCOMP, struct.pack("!H", packet.msg_id))
        case Register():
            head = struct.pack("!HH", packet.topic_id, packet.msg_id)
            return _frame(t.REGISTER, head + packet.topic_name.encode("utf-8"))
        case Regack():
            return _frame(
                t.REGACK, struct.pack("!HHB", packet.topic_id, packet.msg_id, packet.return_code)
            )
        case Pingreq():
            clientId = packet.client_id.encode("utf-8") if packet.client_id is not None else b""
            return _frame(t.PINGREQ, clientId)
        case Pingresp():
            return _frame(t.PINGRESP, b"")
        case Connect():
            flags = (CLEAN_SESSION if packet.clean_session else 0) | (WILL if packet.will else 0)
            head = struct.pack("!BBH", flags, packet.protocol_id, packet.duration)
            return _frame(t.CONNECT, head + packet.client_id.encode("utf-8"))
        case Connack():
            return _frame(t.CONNACK, bytes((packet.return_code,)))
        case Subscribe():
            flags = (DUP if packet.dup else 0) | _qosBits(packet.qos) | packet.topic_id_type
            head = struct.pack("!BH", flags, packet.msg_id)
            field = _topicField(packet.topic_id_type, packet.topic_name, packet.topic_id)
            return _frame(t.SUBSCRIBE, head + field)
        case Suback():
            body = struct.pack(
                "!BHHB", _qosBits(packet.qos), packet.topic_id, packet.msg_id, packet.return_code
            )
            return _frame(t.SUBACK, body)
        case Unsubscribe():
            head = struct.pack("!BH", packet.topic_id_type, packet.msg_id)
            field = _topicField(packet.topic_id_type, packet.topic_name, packet.topic_id)
            return _frame(t.UNSUBSCRIBE, head + field)
        case Unsuback():
            return _frame(t.UNSUBACK, struct.pack("!H", packet.msg_id))
        case Disconnect():
            duration = b"" if packet.duration is None else struct.pack("!H", packet.duration)
            return _frame(t.DISCONNECT, duration)
        case Advertise():
            return _frame(t.ADVERTISE, struct.pack("!BH", packet.gateway_id, packet.duration))
        case SearchGw():
            return _frame(t.SEARCHGW, bytes((packet.radius,)))
        case GwInfo():
            return _frame(t.GWINFO, bytes((packet.gateway_id,)) + packet.gateway_address)
        case WillTopicReq():
            return _frame(t.WILLTOPICREQ, b"")
        case WillTopic():
            return _frame(t.WILLTOPIC, _willTopicBody(packet.topic, packet.qos, packet.retain))
        case WillMsgReq():
            return _frame(t.WILLMSGREQ, b"")
        case WillMsg():
            return _frame(t.WILLMSG, packet.payload)
        case WillTopicUpd():
            return _frame(t.WILLTOPICUPD, _willTopicBody(packet.topic, packet.qos, packet.retain))
        case WillTopicResp():
            return _frame(t.WILLTOPICRESP, bytes((packet.return_code,)))
        case WillMsgUpd():
            return _frame(t.WILLMSGUPD, packet.payload)
        case WillMsgResp():
            return _frame(t.WILLMSGRESP, bytes((packet.return_code,)))
        case Encapsulated():
            size = 3 + len(packet.node_id)
            head = bytes((size, t.ENCAPSULATED, packet.radius & 0x03)) + packet.node_id
            return head + packet.message
    raise TypeError(f"not an MQTT-SN message: {packet!r}")
