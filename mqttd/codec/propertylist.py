"""
Reading an MQTT 5.0 property list, wherever one appears, in one pass with constant work per
property: an unknown identifier or one the packet may not carry, a duplicate (found with a bit
set), a value 0 the spec forbids, and more User Properties than the cap (counted before their
strings are decoded, bad-inputs entry 18) are refused as the spec's words say (see
L{mqttd.codec.decoder5}).
"""

from __future__ import annotations

from .errors import LimitExceeded, ProtocolViolation
from .fields import UTF8_SPEC_5, Buffer, malformed, read_binary, read_string, read_varint
from .packets import ReasonCode
from .properties import (
    ALLOWED_PROPERTIES,
    FIELD_NAMES,
    NO_PROPERTIES,
    PROPERTY_TYPES,
    Properties,
    PropertyId,
    PropertyType,
)

__all__ = ["duplicate", "read_properties"]

_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_KINDS = {
    PropertyType.BYTE: _BYTE,
    PropertyType.TWO_BYTE_INTEGER: _TWO,
    PropertyType.FOUR_BYTE_INTEGER: _FOUR,
    PropertyType.VARIABLE_BYTE_INTEGER: _VARINT,
    PropertyType.UTF8_STRING: _STRING,
    PropertyType.BINARY_DATA: _BINARY,
    PropertyType.UTF8_STRING_PAIR: _PAIR,
}
# Indexed by the identifier byte: its kind and Properties attribute, or None
# for identifiers the spec does not define.
_READERS: list[tuple[int, str] | None] = [None] * 256
for _id, _type in PROPERTY_TYPES.items():
    _READERS[_id] = (_KINDS[_type], FIELD_NAMES[_id])

_MASKS = {
    name: sum(1 << identifier for identifier in allowed)
    for name, allowed in ALLOWED_PROPERTIES.items()
}
# Properties whose value 0 the spec calls a Protocol Error, with the reason
# code and statement to report.
_NONZERO: dict[int, tuple[int, str | None]] = {
    PropertyId.RECEIVE_MAXIMUM: (ReasonCode.PROTOCOL_ERROR, None),
    PropertyId.MAXIMUM_PACKET_SIZE: (ReasonCode.PROTOCOL_ERROR, None),
    PropertyId.TOPIC_ALIAS: (ReasonCode.TOPIC_ALIAS_INVALID, "MQTT-3.3.2-8"),
    PropertyId.SUBSCRIPTION_IDENTIFIER: (ReasonCode.PROTOCOL_ERROR, None),
}
_AUTHENTICATION_DATA = 1 << PropertyId.AUTHENTICATION_DATA
_AUTHENTICATION_METHOD = 1 << PropertyId.AUTHENTICATION_METHOD


def duplicate(what: str, name: str) -> ProtocolViolation:
    return ProtocolViolation(f"{what}: {name} more than once")


def read_properties(
    data: Buffer, p: int, end: int, scope: str, what: str, cap: int
) -> tuple[Properties, int]:
    """
    Read the Property Length at C{p} and the properties it covers.

    Only the rules that hold wherever a property appears are checked
    here; each packet's parser adds its own (a SUBSCRIBE's single
    Subscription Identifier, none in a client's PUBLISH, ...).

    @param scope: the key of L{ALLOWED_PROPERTIES} for this property list.
    @param cap: the most User Properties it may hold.
    @return: the properties (L{NO_PROPERTIES} if there are none) and the
        offset after them.
    """
    if p >= end:
        raise malformed(f"{what}: Property Length missing", "MQTT-2.2.2-1")
    length = data[p]
    if length < 0x80:
        p += 1
    else:
        length, p = read_varint(data, p, end, f"{what} Property Length")
    stop = p + length
    if stop > end:
        raise malformed(f"{what}: properties run past the packet")
    if p == stop:
        return NO_PROPERTIES, p
    mask = _MASKS[scope]
    properties = Properties()
    users: list[tuple[str, str]] = []
    identifiers: list[int] = []
    seen = 0
    value: object
    while p < stop:
        identifier = data[p]
        reader = _READERS[identifier]
        if reader is None:
            raise malformed(f"{what}: unknown property identifier 0x{identifier:02x}")
        bit = 1 << identifier
        name = reader[1]
        if not mask & bit:
            raise malformed(f"{what}: {name} not allowed in {scope}")
        kind = reader[0]
        p += 1
        if kind == _PAIR:
            # Counted before decoding so a flood costs no more than the cap.
            if len(users) >= cap:
                raise LimitExceeded(f"{what}: more than {cap} User Properties")
            key, p = read_string(data, p, stop, f"{what} User Property", UTF8_SPEC_5)
            text, p = read_string(data, p, stop, f"{what} User Property", UTF8_SPEC_5)
            users.append((key, text))
            continue
        if kind == _STRING:
            value, p = read_string(data, p, stop, f"{what} {name}", UTF8_SPEC_5)
        elif kind == _BYTE:
            if p >= stop:
                raise malformed(f"{what}: {name} runs past the properties")
            value = data[p]
            p += 1
            # Every Byte property is a 0/1 flag (or Maximum QoS 0/1).
            if value > 1:
                raise ProtocolViolation(f"{what}: {name} {value}, must be 0 or 1")
        elif kind == _TWO:
            if p + 2 > stop:
                raise malformed(f"{what}: {name} runs past the properties")
            value = (data[p] << 8) | data[p + 1]
            p += 2
        elif kind == _FOUR:
            if p + 4 > stop:
                raise malformed(f"{what}: {name} runs past the properties")
            value = int.from_bytes(data[p : p + 4], "big")
            p += 4
        elif kind == _BINARY:
            value, p = read_binary(data, p, stop, f"{what} {name}")
        else:
            identifier_value, p = read_varint(data, p, stop, f"{what} {name}")
            if not identifier_value:
                raise ProtocolViolation(f"{what}: Subscription Identifier 0")
            identifiers.append(identifier_value)
            continue
        if seen & bit:
            raise duplicate(what, name)
        seen |= bit
        if not value and identifier in _NONZERO:
            code, spec = _NONZERO[identifier]
            raise ProtocolViolation(f"{what}: {name} 0", spec, code)
        setattr(properties, name, value)
    if users:
        properties.user_properties = tuple(users)
    if identifiers:
        properties.subscription_identifiers = tuple(identifiers)
    if seen & _AUTHENTICATION_DATA and not seen & _AUTHENTICATION_METHOD:
        raise ProtocolViolation(f"{what}: Authentication Data without Authentication Method")
    topic = properties.response_topic
    if topic is not None and (not topic or "+" in topic or "#" in topic):
        raise malformed(f"{what}: Response Topic is not a topic name", "MQTT-3.3.2-14")
    return properties, stop
