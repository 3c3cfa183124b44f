"""
The MQTT 3.1 and 3.1.1 packet parsers behind L{mqttd.codec.Decoder}: one per packet type,
the first-byte tables of each direction (3.1's with the DUP forms of PUBREL, SUBSCRIBE and
UNSUBSCRIBE), why a first byte without an entry is refused, and the 3.1 / 3.1.1 CONNECT.
"""

from __future__ import annotations

from .errors import (
    DecodeError,
    IdentifierRejected,
    ProtocolViolation,
)
from .fields import (
    VARIABLE,
    Buffer,
    Entry,
    Handler,
    check_topic_name,
    first_byte_ok,
    malformed,
    read_binary,
    read_packet_id,
    read_string,
)
from .packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from .publish import publish_parser

_SUBACK_CODES = frozenset((0, 1, 2, 0x80))
_MQTT_3_1_CLIENT_ID_MAX = 23

# These packets have no fields, so one shared instance each saves an
# allocation per keepalive; packets are never mutated once returned.
_PINGREQ = Pingreq()
_PINGRESP = Pingresp()
_DISCONNECT = Disconnect()


def _puback(data: Buffer, start: int, end: int, first: int) -> Packet:
    return Puback(read_packet_id(data, start, end, "PUBACK", "MQTT-2.3.1-6"))


def _pubrec(data: Buffer, start: int, end: int, first: int) -> Packet:
    return Pubrec(read_packet_id(data, start, end, "PUBREC", "MQTT-2.3.1-6"))


def _pubrel(data: Buffer, start: int, end: int, first: int) -> Packet:
    return Pubrel(read_packet_id(data, start, end, "PUBREL", "MQTT-2.3.1-6"))


def _pubcomp(data: Buffer, start: int, end: int, first: int) -> Packet:
    return Pubcomp(read_packet_id(data, start, end, "PUBCOMP", "MQTT-2.3.1-6"))


def _unsuback(data: Buffer, start: int, end: int, first: int) -> Packet:
    return Unsuback(read_packet_id(data, start, end, "UNSUBACK", "MQTT-2.3.1-7"))


def _subscribe(data: Buffer, start: int, end: int, first: int) -> Packet:
    packet_id = read_packet_id(data, start, end, "SUBSCRIBE", "MQTT-2.3.1-1")
    p = start + 2
    subscriptions: list[tuple[str, int]] = []
    while p < end:
        topic_filter, p = read_string(data, p, end, "SUBSCRIBE topic filter")
        if not topic_filter:
            raise malformed("SUBSCRIBE: zero-length topic filter", "MQTT-4.7.3-1")
        if p >= end:
            raise malformed("SUBSCRIBE: requested QoS missing")
        options = data[p]
        if options > 2:
            # Covers both QoS 3 and any of the six reserved upper bits.
            raise malformed("SUBSCRIBE: bad requested QoS byte", "MQTT-3.8.3-4")
        subscriptions.append((topic_filter, options))
        p += 1
    if not subscriptions:
        raise malformed("SUBSCRIBE: no topic filters", "MQTT-3.8.3-3")
    return Subscribe(packet_id, subscriptions)


def _unsubscribe(data: Buffer, start: int, end: int, first: int) -> Packet:
    packet_id = read_packet_id(data, start, end, "UNSUBSCRIBE", "MQTT-2.3.1-1")
    p = start + 2
    topic_filters: list[str] = []
    while p < end:
        topic_filter, p = read_string(data, p, end, "UNSUBSCRIBE topic filter")
        if not topic_filter:
            raise malformed("UNSUBSCRIBE: zero-length topic filter", "MQTT-4.7.3-1")
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise malformed("UNSUBSCRIBE: no topic filters", "MQTT-3.10.3-2")
    return Unsubscribe(packet_id, topic_filters)


def _connack(data: Buffer, start: int, end: int, first: int) -> Packet:
    flags = data[start]
    code = data[start + 1]
    if flags & 0xFE:
        raise malformed("CONNACK: reserved acknowledge flags set")
    if code > 5:
        raise malformed("CONNACK: reserved return code")
    if flags and code:
        raise ProtocolViolation("CONNACK: session present with a refusal", "MQTT-3.2.2-4")
    return Connack(bool(flags), code)


def _suback(data: Buffer, start: int, end: int, first: int) -> Packet:
    packet_id = read_packet_id(data, start, end, "SUBACK", "MQTT-2.3.1-7")
    codes = list(data[start + 2 : end])
    if not codes:
        raise malformed("SUBACK: no return codes", "MQTT-3.8.4-5")
    if not _SUBACK_CODES.issuperset(codes):
        raise malformed("SUBACK: reserved return code", "MQTT-3.9.3-2")
    return Suback(packet_id, codes)


def _pingreq(data: Buffer, start: int, end: int, first: int) -> Packet:
    return _PINGREQ


def _pingresp(data: Buffer, start: int, end: int, first: int) -> Packet:
    return _PINGRESP


def _disconnect(data: Buffer, start: int, end: int, first: int) -> Packet:
    return _DISCONNECT


_FLAGS_SPEC = {
    PacketType.PUBREL: "MQTT-3.6.1-1",
    PacketType.SUBSCRIBE: "MQTT-3.8.1-1",
    PacketType.UNSUBSCRIBE: "MQTT-3.10.1-1",
    PacketType.DISCONNECT: "MQTT-3.14.1-1",
}
# Remaining Length of the fixed-size packets; checked as soon as it is known.
_FIXED_LENGTH = {
    PacketType.CONNACK: 2,
    PacketType.PUBACK: 2,
    PacketType.PUBREC: 2,
    PacketType.PUBREL: 2,
    PacketType.PUBCOMP: 2,
    PacketType.UNSUBACK: 2,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
}
_HANDLERS: dict[PacketType, Handler] = {
    PacketType.CONNACK: _connack,
    PacketType.PUBLISH: publish_parser(None),
    PacketType.PUBACK: _puback,
    PacketType.PUBREC: _pubrec,
    PacketType.PUBREL: _pubrel,
    PacketType.PUBCOMP: _pubcomp,
    PacketType.SUBSCRIBE: _subscribe,
    PacketType.SUBACK: _suback,
    PacketType.UNSUBSCRIBE: _unsubscribe,
    PacketType.UNSUBACK: _unsuback,
    PacketType.PINGREQ: _pingreq,
    PacketType.PINGRESP: _pingresp,
    PacketType.DISCONNECT: _disconnect,
}
_SERVER_RECEIVES = frozenset(
    {
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBSCRIBE,
        PacketType.UNSUBSCRIBE,
        PacketType.PINGREQ,
        PacketType.DISCONNECT,
    }
)
_CLIENT_RECEIVES = frozenset(
    {
        PacketType.CONNACK,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBACK,
        PacketType.UNSUBACK,
        PacketType.PINGRESP,
    }
)


def _table(receives: frozenset[PacketType]) -> list[Entry | None]:
    """
    Map every possible first byte to its handler, or C{None} when that byte
    alone is a reason to close; L{header_error} then says which reason.
    """
    table: list[Entry | None] = [None] * 256
    for first in range(256):
        kind = first >> 4
        if kind in receives and first_byte_ok(first):
            packet_type = PacketType(kind)
            table[first] = (_HANDLERS[packet_type], _FIXED_LENGTH.get(packet_type, VARIABLE))
    return table


SERVER_TABLE = _table(_SERVER_RECEIVES)
CLIENT_TABLE = _table(_CLIENT_RECEIVES)


def _table31(table: list[Entry | None]) -> list[Entry | None]:
    """
    C{table} as MQTT 3.1 reads it: 3.1 sends PUBREL, SUBSCRIBE and UNSUBSCRIBE at
    QoS 1 and sets DUP on a re-sent one (3.1 section 2.1, "DUP"), so 0x6A, 0x8A and
    0xAA are the re-sent forms of 0x62, 0x82 and 0xA2; the fixed flags of
    [MQTT-2.2.2-1] are 3.1.1's.
    """
    table = list(table)
    for first in (0x62, 0x82, 0xA2):
        table[first | 0x08] = table[first]
    return table


SERVER_TABLE_31 = _table31(SERVER_TABLE)
CLIENT_TABLE_31 = _table31(CLIENT_TABLE)


def header_error(first: int, server: bool) -> DecodeError:
    """Say why a first byte with no entry in the decoding table is refused."""
    kind = first >> 4
    if kind == 0 or kind == 15:
        return ProtocolViolation(f"reserved packet type {kind}", "MQTT-4.8.0-1")
    packet_type = PacketType(kind)
    if server and packet_type == PacketType.CONNECT:
        return ProtocolViolation("second CONNECT", "MQTT-3.1.0-2")
    if packet_type not in (_SERVER_RECEIVES if server else _CLIENT_RECEIVES):
        return ProtocolViolation(
            f"{packet_type.name} not allowed in this direction", "MQTT-4.8.0-1"
        )
    flags = first & 0x0F
    if packet_type == PacketType.PUBLISH:
        if (flags >> 1) & 3 == 3:
            return malformed("PUBLISH with QoS 3", "MQTT-3.3.1-4")
        return malformed("PUBLISH with DUP set at QoS 0", "MQTT-3.3.1-2")
    return malformed(
        f"{packet_type.name}: bad fixed header flags {flags:04b}",
        _FLAGS_SPEC.get(packet_type, "MQTT-2.2.2-2"),
    )


def reads_as_3(data: Buffer, p: int, end: int) -> bool:
    """Whether a CONNECT's bytes from its level on are a well-formed 3.1.1 CONNECT's."""
    try:
        connect3(data, p, end, 4, False)
    except DecodeError:
        return False
    return True


def connect3(data: Buffer, p: int, end: int, level: int, bridge: bool) -> Connect:
    """
    Decode a 3.1 or 3.1.1 CONNECT from its protocol level byte at C{p} on.

    @param bridge: the level carried the bridge bit.

    @raise DecodeError: the CONNECT is malformed, or a 3.1 client identifier
        is refused.
    """
    flags = data[p + 1]
    keepalive = (data[p + 2] << 8) | data[p + 3]
    p += 4
    if flags & 0x01:
        raise malformed("CONNECT: reserved flag set", "MQTT-3.1.2-3")
    will_qos = (flags >> 3) & 3
    if not flags & 0x04:
        if will_qos:
            raise malformed("CONNECT: Will QoS without Will flag", "MQTT-3.1.2-13")
        if flags & 0x20:
            raise malformed("CONNECT: Will Retain without Will flag", "MQTT-3.1.2-15")
    elif will_qos == 3:
        raise malformed("CONNECT: Will QoS 3", "MQTT-3.1.2-14")
    if flags & 0x40 and not flags & 0x80:
        raise malformed("CONNECT: password flag without user name flag", "MQTT-3.1.2-22")
    client_id, p = read_string(data, p, end, "CONNECT client identifier")
    will = None
    if flags & 0x04:
        will_topic, p = read_string(data, p, end, "CONNECT will topic")
        check_topic_name(will_topic, "CONNECT will topic")
        will_payload, p = read_binary(data, p, end, "CONNECT will message")
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20))
    username = None
    if flags & 0x80:
        username, p = read_string(data, p, end, "CONNECT user name")
    password = None
    if flags & 0x40:
        password, p = read_binary(data, p, end, "CONNECT password")
    if p != end:
        raise malformed("CONNECT: trailing bytes after the payload")
    if level == 3 and not 1 <= len(client_id) <= _MQTT_3_1_CLIENT_ID_MAX:
        raise IdentifierRejected(
            "CONNECT: MQTT 3.1 client identifier must be 1 to 23 characters", "MQTT-3.1.3-9"
        )
    return Connect(
        level, client_id, bool(flags & 0x02), keepalive, will, username, password, bridge=bridge
    )
