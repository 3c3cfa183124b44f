"""
Encoder for MQTT 3.1 and 3.1.1 packets.

L{encode} writes whatever packet it is given, in either direction; it checks
only what the wire format cannot represent (over-long strings or packets, a
missing packet identifier), so tests can also build packets a peer must refuse.
L{publish_prefix} serves fan-out: the bytes before the packet identifier are
the same for every subscriber at a given QoS, so they are built once.
"""

from __future__ import annotations

from struct import Struct

from .packets import (
    PROTOCOL_NAMES,
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

__all__ = ["MAX_REMAINING_LENGTH", "encode", "encode_remaining_length", "publish_prefix"]

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


def publish_prefix(topic: bytes, payload_length: int, qos: int, retain: bool, dup: bool) -> bytes:
    """
    Build the part of a PUBLISH before its packet identifier.

    The complete packet is C{prefix}, then C{packet_id.to_bytes(2, "big")}
    only when C{qos > 0}, then the C{payload_length} bytes of payload.

    @param topic: the topic name, already UTF-8 encoded.
    """
    remaining = 2 + len(topic) + (2 if qos else 0) + payload_length
    first = 0x30 | (dup << 3) | (qos << 1) | retain
    return bytes((first,)) + encode_remaining_length(remaining) + _blob(topic)


def _publish(packet: Publish) -> bytes:
    topic = packet.topic.encode("utf-8")
    prefix = publish_prefix(topic, len(packet.payload), packet.qos, packet.retain, packet.dup)
    if packet.qos:
        return prefix + _packet_id(packet.packet_id) + packet.payload
    return prefix + packet.payload


def _connect(packet: Connect) -> bytes:
    level = packet.protocol_level
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
        bytes((level, flags)),
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


def encode(packet: Packet) -> bytes:
    """
    Serialise one packet to its wire bytes.

    @raise ValueError: a field cannot be represented (string over 65535
        bytes, packet over L{MAX_REMAINING_LENGTH}, QoS > 0 without id).
    """
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
    raise TypeError(f"not an MQTT packet: {packet!r}")
