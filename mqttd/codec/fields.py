"""
Readers for the wire's primitive fields, and the fixed-header flag rule,
shared by the decoders of every protocol level.

The statement ids in errors follow the level being decoded: 3.1.1 and 5.0
number the same UTF-8 rules differently, so string readers take theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import MalformedPacket
from .packets import Packet, PacketType

# A packet body is parsed either straight from the bytes handed to feed() or
# from a memoryview over the reassembly buffer; both index to ints and slice
# to something bytes() and str(..., "utf-8") accept without an extra copy.
Buffer = bytes | memoryview
Handler = Callable[[Buffer, int, int, int], Packet]
Entry = tuple[Handler, int]

VARIABLE = -1
"""The fixed length of an L{Entry} whose packet has no fixed Remaining Length."""

UTF8_SPEC_311 = ("MQTT-1.5.3-1", "MQTT-1.5.3-2")
UTF8_SPEC_5 = ("MQTT-1.5.4-1", "MQTT-1.5.4-2")

# The fixed header flags each non-PUBLISH type must carry [MQTT-2.2.2-1]; the
# rest, AUTH included, carry 0000.
REQUIRED_FLAGS = {
    PacketType.PUBREL: 0b0010,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.UNSUBSCRIBE: 0b0010,
}


def malformed(message: str, spec: str | None = None) -> MalformedPacket:
    return MalformedPacket(message, spec)


def read_string(
    data: Buffer, p: int, end: int, what: str, spec: tuple[str, str] = UTF8_SPEC_311
) -> tuple[str, int]:
    """
    Read a length-prefixed UTF-8 string at C{p}; return it and the offset after it.

    @param spec: the ids of the ill-formed-UTF-8 and U+0000 statements.
    @raise MalformedPacket: it runs past C{end}, is ill-formed UTF-8 or
        encodes a surrogate, or contains U+0000.
    """
    if p + 2 > end:
        raise malformed(f"{what}: length field runs past the packet")
    q = p + 2 + ((data[p] << 8) | data[p + 1])
    if q > end:
        raise malformed(f"{what}: string runs past the packet")
    try:
        # The strict codec refuses overlong forms, encoded surrogates and
        # code points above U+10FFFF, and keeps a BOM [MQTT-1.5.3-3].
        text = str(data[p + 2 : q], "utf-8")
    except UnicodeDecodeError:
        raise malformed(f"{what}: ill-formed UTF-8", spec[0]) from None
    if "\x00" in text:
        raise malformed(f"{what}: contains U+0000", spec[1])
    return text, q


def read_binary(data: Buffer, p: int, end: int, what: str) -> tuple[bytes, int]:
    """Read length-prefixed binary data at C{p}; return it and the offset after it."""
    if p + 2 > end:
        raise malformed(f"{what}: length field runs past the packet")
    q = p + 2 + ((data[p] << 8) | data[p + 1])
    if q > end:
        raise malformed(f"{what}: data runs past the packet")
    return bytes(data[p + 2 : q]), q


def read_packet_id(data: Buffer, start: int, end: int, what: str, spec: str) -> int:
    """
    Read the packet identifier at C{start}.

    @param spec: the id of the statement a packet identifier 0 breaks.
    """
    if start + 2 > end:
        raise malformed(f"{what}: packet identifier runs past the packet")
    packet_id = (data[start] << 8) | data[start + 1]
    if not packet_id:
        raise malformed(f"{what}: packet identifier 0", spec)
    return packet_id


def read_varint(data: Buffer, p: int, end: int, what: str) -> tuple[int, int]:
    """
    Read a Variable Byte Integer at C{p}; return it and the offset after it.

    @raise MalformedPacket: it runs past C{end}, is longer than four bytes,
        or is not in its shortest form [MQTT-1.5.5-1].
    """
    value = 0
    shift = 0
    start = p
    while True:
        if p >= end:
            raise malformed(f"{what}: Variable Byte Integer runs past the packet")
        byte = data[p]
        p += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        if shift == 21:
            raise malformed(f"{what}: Variable Byte Integer longer than 4 bytes")
        shift += 7
    if byte == 0 and p - start > 1:
        raise malformed(f"{what}: Variable Byte Integer not in its shortest form", "MQTT-1.5.5-1")
    return value, p


def check_topic_name(topic: str, what: str) -> None:
    if not topic:
        raise malformed(f"{what}: zero-length topic name", "MQTT-4.7.3-1")
    if "+" in topic or "#" in topic:
        raise malformed(f"{what}: wildcard in topic name", "MQTT-3.3.2-2")


def first_byte_ok(first: int) -> bool:
    """Whether the flags nibble is legal for the packet type in the high nibble."""
    kind, flags = first >> 4, first & 0x0F
    if kind == PacketType.PUBLISH:
        qos = (flags >> 1) & 3
        return qos != 3 and not (flags & 8 and qos == 0)
    return flags == REQUIRED_FLAGS.get(PacketType(kind), 0)
