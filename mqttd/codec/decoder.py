"""
Incremental, sans-IO decoder for MQTT 3.1 ("MQIsdp", level 3), 3.1.1 ("MQTT",
level 4) and 5.0 ("MQTT", level 5; its packets are parsed by
L{mqttd.codec.decoder5}).

Bytes go in with L{Decoder.feed}, complete packets come out.  Every check that
can be made on the fixed header alone is made as soon as those bytes arrive, so
a hostile peer cannot make the broker wait for (or buffer) a body that would be
refused anyway.  Nothing is ever allocated from a declared length: the internal
buffer only holds bytes that were actually received.
"""

from __future__ import annotations

from .decoder5 import Level5, level5
from .errors import (
    DecodeError,
    IdentifierRejected,
    PacketTooLarge,
    ProtocolViolation,
    UnacceptableProtocol,
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
from .publish import PublishParser

__all__ = ["Decoder"]

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
    PacketType.PUBLISH: PublishParser(None).parse,
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
    alone is a reason to close; L{_header_error} then says which reason.
    """
    table: list[Entry | None] = [None] * 256
    for first in range(256):
        kind = first >> 4
        if kind in receives and first_byte_ok(first):
            packet_type = PacketType(kind)
            table[first] = (_HANDLERS[packet_type], _FIXED_LENGTH.get(packet_type, VARIABLE))
    return table


_SERVER_TABLE = _table(_SERVER_RECEIVES)
_CLIENT_TABLE = _table(_CLIENT_RECEIVES)


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


_SERVER_TABLE_31 = _table31(_SERVER_TABLE)
_CLIENT_TABLE_31 = _table31(_CLIENT_TABLE)


def _header_error(first: int, server: bool) -> DecodeError:
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


class Decoder:
    """
    Turn a byte stream into MQTT packets, one connection's worth.

    @ivar protocol_level: the level of the decoded CONNECT (3, 4 or 5), or
        C{None} before it; for a client-side decoder, the level it was given.
    """

    __slots__ = (
        "_buffer",
        "_error",
        "_level5",
        "_limit",
        "_max_packet_size",
        "_max_user_properties",
        "_mqtt5",
        "_need",
        "_server",
        "_table",
        "protocol_level",
    )

    def __init__(
        self,
        *,
        server: bool = True,
        protocol_level: int | None = None,
        mqtt5: bool = False,
        max_packet_size: int = 1024 * 1024,
        max_connect_size: int = 64 * 1024,
        max_user_properties: int = 128,
    ) -> None:
        """
        @param server: C{True} to decode what a broker receives (CONNECT first,
            then client-to-server packets); C{False} for what a client receives.
        @param protocol_level: client side only: the level of the CONNECT the
            client sent; C{None} decodes as 3.1.1.  A server learns the level
            from the CONNECT it decodes.
        @param mqtt5: server side: accept level 5 CONNECTs.  Without it a
            level 5 CONNECT is refused as an L{UnacceptableProtocol}, whose
            C{protocol_level} 5 says to answer it in the 5.0 format.
        @param max_packet_size: the largest Remaining Length accepted.
        @param max_connect_size: the largest Remaining Length accepted for the
            CONNECT, which arrives before the peer is authenticated.
        @param max_user_properties: at level 5, the most User Properties one
            packet (or will) may carry; more raise L{LimitExceeded}.
        @raise ValueError: C{protocol_level} given to a server-side decoder.
        """
        if server and protocol_level is not None:
            raise ValueError("a server-side decoder learns the protocol level from CONNECT")
        self.protocol_level = protocol_level
        self._server = server
        self._mqtt5 = mqtt5
        self._max_packet_size = max_packet_size
        self._max_user_properties = max_user_properties
        self._buffer = bytearray()
        # Bytes the buffer must hold before parsing it can make progress.
        self._need = 0
        self._error: DecodeError | None = None
        self._level5: Level5 | None = None
        self._table: list[Entry | None]
        if server:
            table: list[Entry | None] = [None] * 256
            table[0x10] = (self._connect, VARIABLE)
            self._table = table
            self._limit = max_connect_size
        elif protocol_level == 5:
            self._level5 = level5(False, max_user_properties)
            self._table = self._level5.table
            self._limit = max_packet_size
        else:
            self._table = _CLIENT_TABLE_31 if protocol_level == 3 else _CLIENT_TABLE
            self._limit = max_packet_size

    def feed(self, data: bytes) -> list[Packet]:
        """
        Add received bytes; return every packet they complete, in order.

        @raise DecodeError: on the first bad packet, its C{protocol_level}
            set to the decoder's and its C{packets} holding the good packets
            these bytes completed before it, which are to be handled before
            the error is.  The decoder is then dead and raises the same error,
            with no packets, on every later call.
        """
        if self._error is not None:
            self._error.packets = []
            raise self._error
        buffer = self._buffer
        try:
            if not buffer:
                packets, used = self._parse(data, len(data))
                if used < len(data):
                    buffer += memoryview(data)[used:]
                return packets
            buffer += data
            if len(buffer) < self._need:
                return []
            with memoryview(buffer) as view:
                packets, used = self._parse(view, len(view))
            del buffer[:used]
            return packets
        except DecodeError as e:
            if e.protocol_level is None:
                e.protocol_level = self.protocol_level
            self._error = e
            self._buffer = bytearray()
            raise

    def _parse(self, data: Buffer, end: int) -> tuple[list[Packet], int]:
        """
        Decode the complete packets in C{data[:end]}.

        @return: the packets and how many bytes they used; L{_need} is left
            at the size the unused tail must reach before a retry can progress.
        """
        packets: list[Packet] = []
        try:
            return self._parse_into(packets, data, end)
        except DecodeError as e:
            e.packets = packets
            raise

    def _parse_into(
        self, packets: list[Packet], data: Buffer, end: int
    ) -> tuple[list[Packet], int]:
        pos = 0
        table = self._table
        limit = self._limit
        while pos < end:
            first = data[pos]
            entry = table[first]
            if entry is None:
                raise self._header_error(first)
            if pos + 1 >= end:
                self._need = end - pos + 1
                break
            byte = data[pos + 1]
            if byte < 0x80:
                length = byte
                start = pos + 2
            else:
                length = byte & 0x7F
                shift = 7
                i = pos + 2
                while i < end:
                    byte = data[i]
                    length |= (byte & 0x7F) << shift
                    i += 1
                    if byte < 0x80:
                        break
                    if shift == 21:
                        raise malformed("Remaining Length longer than 4 bytes")
                    shift += 7
                if byte >= 0x80:
                    self._need = end - pos + 1
                    break
                start = i
            handler, fixed = entry
            if length > limit:
                raise PacketTooLarge(f"Remaining Length {length} exceeds the limit of {limit}")
            if fixed != VARIABLE and fixed != length:
                raise malformed(
                    f"{PacketType(first >> 4).name}: Remaining Length {length}, must be {fixed}"
                )
            stop = start + length
            if stop > end:
                self._need = stop - pos
                break
            packets.append(handler(data, start, stop, first))
            pos = stop
            if first == 0x10:
                # A decoded CONNECT switched the decoder to the connected state.
                table = self._table
                limit = self._limit
        return packets, pos

    def _header_error(self, first: int) -> DecodeError:
        if self._server and self.protocol_level is None:
            return ProtocolViolation(
                f"first packet must be CONNECT, got byte 0x{first:02x}", "MQTT-3.1.0-1"
            )
        if self._level5 is not None:
            return self._level5.header_error(first)
        return _header_error(first, self._server)

    def _connect(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        """
        Decode CONNECT and switch the decoder to the connected state.

        The protocol is identified before anything else so that a peer
        speaking another protocol gets CONNACK 1 (3.1.1) or 0x84 (5.0)
        [MQTT-3.1.2-2] instead of a malformed-packet close; a rejected client
        id is reported only once the whole packet is known to be well formed
        [MQTT-3.1.4-1].
        """
        if start + 2 > end:
            raise malformed("CONNECT: protocol name runs past the packet")
        p = start + 2 + ((data[start] << 8) | data[start + 1])
        if p + 4 > end:
            raise malformed("CONNECT: variable header runs past the packet")
        name = bytes(data[start + 2 : p])
        level = data[p]
        if name == b"MQTT" and level == 5 and self._mqtt5:
            self.protocol_level = level
            handlers = level5(True, self._max_user_properties)
            packet = handlers.connect(data, p + 1, end)
            self._level5 = handlers
            self._table = handlers.table
            self._limit = self._max_packet_size
            return packet
        # A bridge marks its 3.1 / 3.1.1 CONNECT with the top bit of the level (mosquitto's
        # try_private); the level itself is what the rest of the connection speaks.
        bridge = level in (0x83, 0x84)
        if bridge:
            level &= 0x7F
        if not ((name == b"MQTT" and level == 4) or (name == b"MQIsdp" and level == 3)):
            error = UnacceptableProtocol(
                f"CONNECT: unsupported protocol {name!r} level {level}", "MQTT-3.1.2-2"
            )
            if name == b"MQTT" and (level == 5 or (level > 5 and not _reads_as_3(data, p, end))):
                # A peer that speaks 5.0, or a later level in 5.0's CONNECT layout, reads a 5.0
                # CONNACK (0x84); one whose CONNECT is laid out as 3.1.1's reads return code 1
                # in a 3.1.1 CONNACK [MQTT-3.1.2-2], as mosquitto answers.
                error.protocol_level = 5
            raise error
        self.protocol_level = level
        packet = _connect3(data, p, end, level, bridge)
        self._table = _SERVER_TABLE_31 if level == 3 else _SERVER_TABLE
        self._limit = self._max_packet_size
        return packet


def _reads_as_3(data: Buffer, p: int, end: int) -> bool:
    """Whether a CONNECT's bytes from its level on are a well-formed 3.1.1 CONNECT's."""
    try:
        _connect3(data, p, end, 4, False)
    except DecodeError:
        return False
    return True


def _connect3(data: Buffer, p: int, end: int, level: int, bridge: bool) -> Connect:
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
