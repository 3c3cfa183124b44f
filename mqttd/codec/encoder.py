"""
Encoder for MQTT 3.1, 3.1.1 and 5.0 packets.

L{encode} writes whatever packet it is given, in either direction; it checks
only what the wire format cannot represent (over-long strings or packets, a
missing packet identifier, out-of-range property values), so tests can also
build packets a peer must refuse.  Below level 5 the fields only 5.0 can carry
(reason codes, properties) are left out.

L{publish_prefix} serves fan-out: the bytes before the packet identifier are
the same for every subscriber at a given QoS, so they are built once.  At 5.0
the properties follow the packet identifier and may differ per subscriber
(Subscription Identifiers, Topic Alias, the remaining Message Expiry
Interval), so they are passed to L{publish_prefix} already encoded, as a
L{property_block} of the message's shared properties followed by the
subscriber's own, each from L{encode_properties}::

    shared = encode_properties(message_properties)  # once per message
    own = encode_properties(Properties(subscription_identifiers=(7,), topic_alias=3))
    block = property_block(shared, own)
    prefix = publish_prefix(topic, len(payload), qos, retain, dup, block)
    wire = prefix + packet_id_bytes + block + payload
"""

from __future__ import annotations

from struct import Struct

from .packets import (
    PROTOCOL_NAMES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    ProtocolLevel,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .properties import (
    FIELD_NAMES,
    NO_PROPERTIES,
    PROPERTY_TYPES,
    Properties,
    PropertyId,
    PropertyType,
)

__all__ = [
    "MAX_REMAINING_LENGTH",
    "encode",
    "encode_properties",
    "encode_remaining_length",
    "property_block",
    "publish_prefix",
]

MAX_REMAINING_LENGTH = 268_435_455
"""The largest value four Remaining Length bytes can carry."""

_U16 = Struct(">H")
_ACK = Struct(">BBH")
# Remaining Lengths below 128 are by far the most common; their one-byte
# encodings are shared rather than built per packet.
_SHORT_LENGTHS = [bytes((n,)) for n in range(128)]


def encode_remaining_length(n: int) -> bytes:
    """
    Encode C{n} as an MQTT Remaining Length (1 to 4 bytes, 7 bits each).

    @raise ValueError: C{n} is negative or above L{MAX_REMAINING_LENGTH}.
    """
    if 0 <= n < 128:
        return _SHORT_LENGTHS[n]
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"Remaining Length {n} out of range")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _blob(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"field of {len(data)} bytes exceeds 65535")
    return _U16.pack(len(data)) + data


def _string(text: str) -> bytes:
    return _blob(text.encode("utf-8"))


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None:
        raise ValueError("packet identifier required")
    return _U16.pack(packet_id)


def publish_prefix(
    topic: bytes,
    payload_length: int,
    qos: int,
    retain: bool,
    dup: bool,
    properties: bytes | None = None,
) -> bytes:
    """
    Build the part of a PUBLISH before its packet identifier.

    The complete packet is C{prefix}, then C{packet_id.to_bytes(2, "big")}
    only when C{qos > 0}, then at level 5 C{properties}, then the
    C{payload_length} bytes of payload.

    @param topic: the topic name, already UTF-8 encoded (empty at 5.0 when
        the properties carry a Topic Alias that stands for it).
    @param properties: C{None} for 3.1 / 3.1.1; at 5.0 the complete
        L{property_block}, Property Length included.
    """
    length = len(topic)
    remaining = 2 + length + (2 if qos else 0) + payload_length
    if properties is not None:
        remaining += len(properties)
    first = 0x30 | (dup << 3) | (qos << 1) | retain
    if remaining < 0x80 and length < 0x10000:
        # A one-byte Remaining Length, as a small message has: the header in one step.
        return bytes((first, remaining, length >> 8, length & 0xFF)) + topic
    return bytes((first,)) + encode_remaining_length(remaining) + _blob(topic)


def _publish(packet: Publish, properties: bytes | None = None) -> bytes:
    topic = packet.topic.encode("utf-8")
    prefix = publish_prefix(
        topic, len(packet.payload), packet.qos, packet.retain, packet.dup, properties
    )
    tail = packet.payload if properties is None else properties + packet.payload
    if packet.qos:
        return prefix + _packet_id(packet.packet_id) + tail
    return prefix + tail


def _integer(value: int, size: int, name: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{name} {value} does not fit in {size} bytes")
    return value.to_bytes(size, "big")


def _varint(value: int, name: str) -> bytes:
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{name} {value} out of Variable Byte Integer range")
    return encode_remaining_length(value)


# Every property in identifier order, with its attribute and wire type; the
# encoder writes properties in this order.
_WRITERS = sorted((int(p), FIELD_NAMES[p], PROPERTY_TYPES[p]) for p in PropertyId)


def encode_properties(properties: Properties) -> bytes:
    """
    Encode properties in identifier order, without the Property Length.

    User Properties keep their order [MQTT-3.3.2-18]; the result of several
    calls may be concatenated (by L{property_block}) in any order, since
    property order is not significant otherwise.

    @raise ValueError: a value does not fit its wire type.
    """
    if properties is NO_PROPERTIES:
        return b""
    out: list[bytes] = []
    for identifier, name, kind in _WRITERS:
        value = getattr(properties, name)
        if value is None:
            continue
        tag = bytes((identifier,))
        if kind is PropertyType.UTF8_STRING_PAIR:
            out += [tag + _string(key) + _string(text) for key, text in value]
        elif kind is PropertyType.VARIABLE_BYTE_INTEGER:
            out += [tag + _varint(n, name) for n in value]
        elif kind is PropertyType.UTF8_STRING:
            out.append(tag + _string(value))
        elif kind is PropertyType.BINARY_DATA:
            out.append(tag + _blob(value))
        elif kind is PropertyType.BYTE:
            out.append(tag + _integer(value, 1, name))
        elif kind is PropertyType.TWO_BYTE_INTEGER:
            out.append(tag + _integer(value, 2, name))
        else:
            out.append(tag + _integer(value, 4, name))
    return b"".join(out)


def property_block(*encoded: bytes) -> bytes:
    """
    The Property Length and properties of a 5.0 packet, from the outputs of
    L{encode_properties} for one or more parts of its properties.
    """
    body = b"".join(encoded)
    return _varint(len(body), "Property Length") + body


def _block(properties: Properties) -> bytes:
    return property_block(encode_properties(properties))


def _connect(packet: Connect) -> bytes:
    level = packet.protocol_level
    if level == 5:
        return _connect5(packet)
    # An unsupported level is still written (under the 3.1.1 name) so that
    # tests can send it and watch the broker refuse it.
    name = PROTOCOL_NAMES[ProtocolLevel.MQTT_3_1] if level == ProtocolLevel.MQTT_3_1 else "MQTT"
    will = packet.will
    flags = (
        (packet.clean_session << 1)
        | ((packet.password is not None) << 6)
        | ((packet.username is not None) << 7)
    )
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (will.retain << 5)
    parts = [
        _string(name),
        bytes((level | 0x80 if packet.bridge else level, flags)),
        _U16.pack(packet.keepalive),
        _string(packet.client_id),
    ]
    if will is not None:
        parts += [_string(will.topic), _blob(will.payload)]
    if packet.username is not None:
        parts.append(_string(packet.username))
    if packet.password is not None:
        parts.append(_blob(packet.password))
    return _packet(0x10, b"".join(parts))


def _subscribe(packet: Subscribe) -> bytes:
    body = [_U16.pack(packet.packet_id)]
    for topic_filter, qos in packet.subscriptions:
        body += [_string(topic_filter), bytes((qos,))]
    return _packet(0x82, b"".join(body))


def _suback(packet: Suback) -> bytes:
    return _packet(0x90, _U16.pack(packet.packet_id) + bytes(packet.return_codes))


def _unsubscribe(packet: Unsubscribe) -> bytes:
    body = [_U16.pack(packet.packet_id)]
    body += [_string(topic_filter) for topic_filter in packet.topic_filters]
    return _packet(0xA2, b"".join(body))


def _connect5(packet: Connect) -> bytes:
    will = packet.will
    # At 5.0 a password may be sent without a user name (section 3.1.2.9).
    flags = (
        (packet.clean_session << 1)
        | ((packet.password is not None) << 6)
        | ((packet.username is not None) << 7)
    )
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (will.retain << 5)
    parts = [
        _string("MQTT"),
        bytes((5, flags)),
        _U16.pack(packet.keepalive),
        _block(packet.properties),
        _string(packet.client_id),
    ]
    if will is not None:
        parts += [_block(will.properties), _string(will.topic), _blob(will.payload)]
    if packet.username is not None:
        parts.append(_string(packet.username))
    if packet.password is not None:
        parts.append(_blob(packet.password))
    return _packet(0x10, b"".join(parts))


def _ack5(first: int, packet_id: int, reason_code: int, properties: Properties) -> bytes:
    """A 5.0 acknowledgement in its shortest form (Remaining Length 2, 3, or more)."""
    encoded = encode_properties(properties)
    if encoded:
        return _packet(
            first, _U16.pack(packet_id) + bytes((reason_code,)) + property_block(encoded)
        )
    if reason_code:
        return _packet(first, _U16.pack(packet_id) + bytes((reason_code,)))
    return _ACK.pack(first, 2, packet_id)


def _reason5(first: int, reason_code: int, properties: Properties, short: bool) -> bytes:
    """
    DISCONNECT or AUTH: a success without properties is Remaining Length 0;
    DISCONNECT alone (C{short}) may also drop just the Property Length.
    """
    encoded = encode_properties(properties)
    if not encoded:
        if not reason_code:
            return bytes((first, 0))
        if short:
            return bytes((first, 1, reason_code))
    return _packet(first, bytes((reason_code,)) + property_block(encoded))


def _encode5(packet: Packet) -> bytes:
    match packet:
        case Publish():
            return _publish(packet, _block(packet.properties))
        case Puback(packet_id, reason_code, properties):
            return _ack5(0x40, packet_id, reason_code, properties)
        case Pubrec(packet_id, reason_code, properties):
            return _ack5(0x50, packet_id, reason_code, properties)
        case Pubrel(packet_id, reason_code, properties):
            return _ack5(0x62, packet_id, reason_code, properties)
        case Pubcomp(packet_id, reason_code, properties):
            return _ack5(0x70, packet_id, reason_code, properties)
        case Connect():
            return _connect(packet)
        case Connack(session_present, return_code, properties):
            return _packet(0x20, bytes((session_present, return_code)) + _block(properties))
        case Subscribe(packet_id, subscriptions, properties):
            body = [_U16.pack(packet_id), _block(properties)]
            for topic_filter, options in subscriptions:
                body += [_string(topic_filter), bytes((options,))]
            return _packet(0x82, b"".join(body))
        case Suback(packet_id, codes, properties) | Unsuback(packet_id, codes, properties):
            first = 0x90 if isinstance(packet, Suback) else 0xB0
            return _packet(first, _U16.pack(packet_id) + _block(properties) + bytes(codes))
        case Unsubscribe(packet_id, topic_filters, properties):
            body = [_U16.pack(packet_id), _block(properties)]
            body += [_string(topic_filter) for topic_filter in topic_filters]
            return _packet(0xA2, b"".join(body))
        case Pingreq():
            return b"\xc0\x00"
        case Pingresp():
            return b"\xd0\x00"
        case Disconnect(reason_code, properties):
            return _reason5(0xE0, reason_code, properties, True)
        case Auth(reason_code, properties):
            return _reason5(0xF0, reason_code, properties, False)
    raise TypeError(f"not an MQTT packet: {packet!r}")


def encode(packet: Packet, protocol_level: int = 4) -> bytes:
    """
    Serialise one packet to its wire bytes.

    @param protocol_level: the level of the connection it is written to:
        3 and 4 write the same bytes, 5 adds reason codes and properties.
        A L{Connect} is always written at its own C{protocol_level}.
    @raise ValueError: a field cannot be represented (string over 65535
        bytes, packet over L{MAX_REMAINING_LENGTH}, QoS > 0 without id, a
        property value outside its type, AUTH below level 5).
    """
    if packet.__class__ is Puback and not packet.reason_code and packet.properties is NO_PROPERTIES:
        # Every QoS 1 PUBLISH a client sends is answered so, at each level: its shortest form.
        return _ACK.pack(0x40, 2, packet.packet_id)
    if protocol_level == 5:
        return _encode5(packet)
    match packet:
        case Publish():
            return _publish(packet)
        case Puback(packet_id):
            return _ACK.pack(0x40, 2, packet_id)
        case Pubrec(packet_id):
            return _ACK.pack(0x50, 2, packet_id)
        case Pubrel(packet_id):
            return _ACK.pack(0x62, 2, packet_id)
        case Pubcomp(packet_id):
            return _ACK.pack(0x70, 2, packet_id)
        case Unsuback(packet_id):
            return _ACK.pack(0xB0, 2, packet_id)
        case Connect():
            return _connect(packet)
        case Connack(session_present, return_code):
            return bytes((0x20, 2, session_present, return_code))
        case Subscribe():
            return _subscribe(packet)
        case Suback():
            return _suback(packet)
        case Unsubscribe():
            return _unsubscribe(packet)
        case Pingreq():
            return b"\xc0\x00"
        case Pingresp():
            return b"\xd0\x00"
        case Disconnect():
            return b"\xe0\x00"
        case Auth():
            raise ValueError("AUTH exists only at protocol level 5")
    raise TypeError(f"not an MQTT packet: {packet!r}")
