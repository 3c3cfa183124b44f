"""
The MQTT 5.0 packet parsers behind L{mqttd.codec.Decoder}.

A L{Level5} holds the parsers for one direction and one User Property cap,
and the first-byte table the decoder switches to once it knows the peer
speaks 5.0; L{level5} shares one per configuration between connections.

Property lists are read by L{mqttd.codec.propertylist}, with this level's
User Property cap.

Which error class a broken rule raises follows the spec's own words (section
2.2.2.2 and the text of each property): a property the packet may not carry,
an unknown identifier or a truncated value cannot be parsed and is a
L{MalformedPacket} (0x81); a duplicate or a value the spec calls "a Protocol
Error" is a L{ProtocolViolation} (0x82), or 0x94 for Topic Alias 0.
"""

from __future__ import annotations

from functools import cache

from .errors import DecodeError, ProtocolViolation
from .fields import (
    UTF8_SPEC_5,
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
    AUTH_REASON_CODES,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    PUBACK_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    Auth,
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
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import (
    NO_PROPERTIES,
    Properties,
)
from .propertylist import duplicate, read_properties
from .publish import publish_parser

__all__ = ["Level5", "level5"]

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
        PacketType.AUTH,
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
        PacketType.DISCONNECT,
        PacketType.AUTH,
    }
)
_FLAGS_SPEC = {
    PacketType.PUBREL: "MQTT-3.6.1-1",
    PacketType.SUBSCRIBE: "MQTT-3.8.1-1",
    PacketType.UNSUBSCRIBE: "MQTT-3.10.1-1",
    PacketType.DISCONNECT: "MQTT-3.14.1-1",
    PacketType.AUTH: "MQTT-3.15.1-1",
}

# Packets without fields; shared because packets are never mutated.
_PINGREQ = Pingreq()
_PINGRESP = Pingresp()
_DISCONNECT = Disconnect(ReasonCode.NORMAL_DISCONNECTION, NO_PROPERTIES)
_AUTH = Auth(ReasonCode.SUCCESS, NO_PROPERTIES)


def _check_code(code: int, allowed: frozenset[int], what: str, spec: str) -> None:
    if code not in allowed:
        raise ProtocolViolation(f"{what}: reason code 0x{code:02x} not allowed", spec)


class Level5:
    """
    The MQTT 5.0 parsers for one direction.

    @ivar server: these parse what a server receives (else what a client does).
    @ivar cap: the most User Properties one property list may hold.
    @ivar table: the first-byte table of the connected state: every byte to
        its parser and fixed Remaining Length, or C{None} when that byte alone
        is a reason to close (L{header_error} says which).
    """

    __slots__ = ("_receives", "cap", "server", "table")

    def __init__(self, server: bool, max_user_properties: int) -> None:
        """
        @param server: parse what a server receives (else what a client does).
        @param max_user_properties: the most User Properties in one property list.
        """
        self.server = server
        self.cap = max_user_properties
        self._receives = _SERVER_RECEIVES if server else _CLIENT_RECEIVES
        handlers: dict[PacketType, Handler] = {
            PacketType.CONNACK: self.connack,
            PacketType.PUBLISH: publish_parser(self),
            PacketType.PUBACK: self.puback,
            PacketType.PUBREC: self.pubrec,
            PacketType.PUBREL: self.pubrel,
            PacketType.PUBCOMP: self.pubcomp,
            PacketType.SUBSCRIBE: self.subscribe,
            PacketType.SUBACK: self.suback,
            PacketType.UNSUBSCRIBE: self.unsubscribe,
            PacketType.UNSUBACK: self.unsuback,
            PacketType.PINGREQ: self.pingreq,
            PacketType.PINGRESP: self.pingresp,
            PacketType.DISCONNECT: self.disconnect,
            PacketType.AUTH: self.auth,
        }
        table: list[Entry | None] = [None] * 256
        for first in range(256):
            kind = first >> 4
            if kind in self._receives and first_byte_ok(first):
                packet_type = PacketType(kind)
                fixed = 0 if packet_type in (PacketType.PINGREQ, PacketType.PINGRESP) else VARIABLE
                table[first] = (handlers[packet_type], fixed)
        self.table = table

    def header_error(self, first: int) -> DecodeError:
        """Say why a first byte with no entry in L{table} is refused."""
        kind = first >> 4
        if kind == 0:
            return ProtocolViolation("reserved packet type 0")
        packet_type = PacketType(kind)
        if self.server and packet_type == PacketType.CONNECT:
            return ProtocolViolation("second CONNECT", "MQTT-3.1.0-2")
        if packet_type not in self._receives:
            return ProtocolViolation(f"{packet_type.name} not allowed in this direction")
        flags = first & 0x0F
        if packet_type == PacketType.PUBLISH:
            if (flags >> 1) & 3 == 3:
                return malformed("PUBLISH with QoS 3", "MQTT-3.3.1-4")
            return malformed("PUBLISH with DUP set at QoS 0", "MQTT-3.3.1-2")
        return malformed(
            f"{packet_type.name}: bad fixed header flags {flags:04b}",
            _FLAGS_SPEC.get(packet_type, "MQTT-2.1.3-1"),
        )

    def connect(self, data: Buffer, p: int, end: int) -> Connect:
        """
        Parse a level 5 CONNECT from its Connect Flags at C{p} on.

        Unlike 3.1.1, a password may come without a user name (section
        3.1.2.9), and Will Properties precede the Will Topic [MQTT-3.1.3-1].
        """
        flags = data[p]
        keepalive = (data[p + 1] << 8) | data[p + 2]
        p += 3
        if flags & 0x01:
            raise malformed("CONNECT: reserved flag set", "MQTT-3.1.2-3")
        will_qos = (flags >> 3) & 3
        if not flags & 0x04:
            if will_qos:
                raise malformed("CONNECT: Will QoS without Will flag", "MQTT-3.1.2-11")
            if flags & 0x20:
                raise malformed("CONNECT: Will Retain without Will flag", "MQTT-3.1.2-13")
        elif will_qos == 3:
            raise malformed("CONNECT: Will QoS 3", "MQTT-3.1.2-12")
        properties, p = read_properties(data, p, end, "CONNECT", "CONNECT", self.cap)
        client_id, p = read_string(data, p, end, "CONNECT client identifier", UTF8_SPEC_5)
        will = None
        if flags & 0x04:
            will_properties, p = read_properties(data, p, end, "WILL", "CONNECT will", self.cap)
            will_topic, p = read_string(data, p, end, "CONNECT will topic", UTF8_SPEC_5)
            check_topic_name(will_topic, "CONNECT will topic")
            will_payload, p = read_binary(data, p, end, "CONNECT will payload")
            will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20), will_properties)
        username = None
        if flags & 0x80:
            username, p = read_string(data, p, end, "CONNECT user name", UTF8_SPEC_5)
        password = None
        if flags & 0x40:
            password, p = read_binary(data, p, end, "CONNECT password")
        if p != end:
            raise malformed("CONNECT: trailing bytes after the payload")
        return Connect(
            5, client_id, bool(flags & 0x02), keepalive, will, username, password, properties
        )

    def connack(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        if end - start < 2:
            raise malformed("CONNACK: variable header runs past the packet")
        flags = data[start]
        code = data[start + 1]
        if flags & 0xFE:
            raise malformed("CONNACK: reserved acknowledge flags set", "MQTT-3.2.2-1")
        _check_code(code, CONNACK_REASON_CODES, "CONNACK", "MQTT-3.2.2-8")
        if flags and code:
            raise ProtocolViolation("CONNACK: session present with a refusal", "MQTT-3.2.2-6")
        properties, p = read_properties(data, start + 2, end, "CONNACK", "CONNACK", self.cap)
        if p != end:
            raise malformed("CONNACK: trailing bytes after the properties")
        return Connack(bool(flags), code, properties)

    def _ack(
        self,
        cls: type[Puback | Pubrec | Pubrel | Pubcomp],
        data: Buffer,
        start: int,
        end: int,
        codes: frozenset[int],
        spec: str,
    ) -> Packet:
        """
        Read a PUBACK, PUBREC, PUBREL or PUBCOMP body: Remaining Length 2 is
        success without properties, 3 a reason code without properties.
        """
        what = cls.__name__.upper()
        packet_id = read_packet_id(data, start, end, what, "MQTT-2.2.1-5")
        if end - start == 2:
            return cls(packet_id)
        code = data[start + 2]
        _check_code(code, codes, what, spec)
        if end - start == 3:
            return cls(packet_id, code)
        properties, p = read_properties(data, start + 3, end, what, what, self.cap)
        if p != end:
            raise malformed(f"{what}: trailing bytes after the properties")
        return cls(packet_id, code, properties)

    def puback(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return self._ack(Puback, data, start, end, PUBACK_REASON_CODES, "MQTT-3.4.2-1")

    def pubrec(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return self._ack(Pubrec, data, start, end, PUBACK_REASON_CODES, "MQTT-3.5.2-1")

    def pubrel(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return self._ack(Pubrel, data, start, end, PUBREL_REASON_CODES, "MQTT-3.6.2-1")

    def pubcomp(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return self._ack(Pubcomp, data, start, end, PUBREL_REASON_CODES, "MQTT-3.7.2-1")

    def subscribe(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        packet_id = read_packet_id(data, start, end, "SUBSCRIBE", "MQTT-2.2.1-3")
        properties, p = read_properties(data, start + 2, end, "SUBSCRIBE", "SUBSCRIBE", self.cap)
        if len(properties.subscription_identifiers) > 1:
            raise duplicate("SUBSCRIBE", "subscription_identifiers")
        subscriptions: list[tuple[str, int]] = []
        while p < end:
            topic_filter, p = read_string(data, p, end, "SUBSCRIBE topic filter", UTF8_SPEC_5)
            if not topic_filter:
                raise malformed("SUBSCRIBE: zero-length topic filter", "MQTT-4.7.3-1")
            if p >= end:
                raise malformed("SUBSCRIBE: subscription options missing")
            options = SubscriptionOptions(data[p])
            p += 1
            if options & 0xC0:
                raise malformed("SUBSCRIBE: reserved subscription option bits", "MQTT-3.8.3-5")
            if options.qos == 3:
                raise ProtocolViolation("SUBSCRIBE: maximum QoS 3")
            if options.retain_handling == 3:
                raise ProtocolViolation("SUBSCRIBE: Retain Handling 3")
            if options.no_local and topic_filter.startswith("$share/"):
                raise ProtocolViolation(
                    "SUBSCRIBE: No Local on a shared subscription", "MQTT-3.8.3-4"
                )
            subscriptions.append((topic_filter, options))
        if not subscriptions:
            raise ProtocolViolation("SUBSCRIBE: no topic filters", "MQTT-3.8.3-2")
        return Subscribe(packet_id, subscriptions, properties)

    def unsubscribe(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        packet_id = read_packet_id(data, start, end, "UNSUBSCRIBE", "MQTT-2.2.1-3")
        properties, p = read_properties(
            data, start + 2, end, "UNSUBSCRIBE", "UNSUBSCRIBE", self.cap
        )
        topic_filters: list[str] = []
        while p < end:
            topic_filter, p = read_string(data, p, end, "UNSUBSCRIBE topic filter", UTF8_SPEC_5)
            if not topic_filter:
                raise malformed("UNSUBSCRIBE: zero-length topic filter", "MQTT-4.7.3-1")
            topic_filters.append(topic_filter)
        if not topic_filters:
            raise ProtocolViolation("UNSUBSCRIBE: no topic filters", "MQTT-3.10.3-2")
        return Unsubscribe(packet_id, topic_filters, properties)

    def _codes(
        self, data: Buffer, start: int, end: int, what: str, codes: frozenset[int], spec: str
    ) -> tuple[int, list[int], Properties]:
        """Read a SUBACK or UNSUBACK body: packet id, properties, reason codes."""
        packet_id = read_packet_id(data, start, end, what, "MQTT-2.2.1-6")
        properties, p = read_properties(data, start + 2, end, what, what, self.cap)
        reason_codes = list(data[p:end])
        if not reason_codes:
            raise ProtocolViolation(f"{what}: no reason codes", spec)
        if not codes.issuperset(reason_codes):
            raise ProtocolViolation(f"{what}: reason code not allowed", spec)
        return packet_id, reason_codes, properties

    def suback(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return Suback(*self._codes(data, start, end, "SUBACK", SUBACK_REASON_CODES, "MQTT-3.9.3-2"))

    def unsuback(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return Unsuback(
            *self._codes(data, start, end, "UNSUBACK", UNSUBACK_REASON_CODES, "MQTT-3.11.3-2")
        )

    def pingreq(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return _PINGREQ

    def pingresp(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        return _PINGRESP

    def disconnect(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        """Remaining Length 0 is a normal disconnection, 1 a bare reason code."""
        if start == end:
            return _DISCONNECT
        code = data[start]
        _check_code(code, DISCONNECT_REASON_CODES, "DISCONNECT", "MQTT-3.14.2-1")
        if end - start == 1:
            return Disconnect(code, NO_PROPERTIES)
        properties, p = read_properties(data, start + 1, end, "DISCONNECT", "DISCONNECT", self.cap)
        if p != end:
            raise malformed("DISCONNECT: trailing bytes after the properties")
        if not self.server and properties.session_expiry_interval is not None:
            raise ProtocolViolation(
                "DISCONNECT: Session Expiry Interval from the server", "MQTT-3.14.2-2"
            )
        return Disconnect(code, properties)

    def auth(self, data: Buffer, start: int, end: int, first: int) -> Packet:
        """Only a success without properties may leave out both fields (section 3.15.2)."""
        if start == end:
            return _AUTH
        code = data[start]
        _check_code(code, AUTH_REASON_CODES, "AUTH", "MQTT-3.15.2-1")
        properties, p = read_properties(data, start + 1, end, "AUTH", "AUTH", self.cap)
        if p != end:
            raise malformed("AUTH: trailing bytes after the properties")
        return Auth(code, properties)


@cache
def level5(server: bool, max_user_properties: int) -> Level5:
    """The shared L{Level5} of one configuration, built on first use."""
    return Level5(server, max_user_properties)
