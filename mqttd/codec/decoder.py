"""
Incremental, sans-IO decoder for MQTT 3.1 ("MQIsdp", level 3), 3.1.1 ("MQTT",
level 4) and 5.0 ("MQTT", level 5): framing, the CONNECT that picks the level,
and the connection's state; the packets of each level are parsed by
L{mqttd.codec.decoder311} and L{mqttd.codec.decoder5}.

Bytes go in with L{Decoder.feed}, complete packets come out.  Every check that
can be made on the fixed header alone is made as soon as those bytes arrive, so
a hostile peer cannot make the broker wait for (or buffer) a body that would be
refused anyway.  Nothing is ever allocated from a declared length: the internal
buffer only holds bytes that were actually received.
"""

from __future__ import annotations

from .decoder5 import Level5, level5
from .decoder311 import (
    CLIENT_TABLE,
    CLIENT_TABLE_31,
    SERVER_TABLE,
    SERVER_TABLE_31,
    connect3,
    header_error,
    reads_as_3,
)
from .errors import (
    DecodeError,
    PacketTooLarge,
    ProtocolViolation,
    UnacceptableProtocol,
)
from .fields import (
    VARIABLE,
    Buffer,
    Entry,
    malformed,
)
from .packets import (
    Packet,
    PacketType,
)

__all__ = ["Decoder"]


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
        # What a read left of an incomplete packet; None while nothing is held, so an idle
        # connection holds no bytearray (56 bytes, more once it has held a packet).
        self._buffer: bytearray | None = None
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
            self._table = CLIENT_TABLE_31 if protocol_level == 3 else CLIENT_TABLE
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
        # Filled as packets are read, so an error can carry those read before it.
        packets: list[Packet] = []
        try:
            if buffer is None:
                used = self._parse_into(packets, data, len(data))
                if used < len(data):
                    self._buffer = bytearray(memoryview(data)[used:])
                return packets
            buffer += data
            if len(buffer) < self._need:
                return packets
            with memoryview(buffer) as view:
                used = self._parse_into(packets, view, len(view))
            if used == len(buffer):
                self._buffer = None
            else:
                del buffer[:used]
            return packets
        except DecodeError as e:
            e.packets = packets
            if e.protocol_level is None:
                e.protocol_level = self.protocol_level
            self._error = e
            self._buffer = None
            raise

    def lone_puback(self, data: bytes) -> int:
        """
        The packet identifier of a PUBACK of Remaining Length 2 (Success, no properties) when
        C{data} is that packet alone, whole, and may be read now (nothing buffered, the
        connection past its CONNECT, no error); 0 otherwise, and then L{feed} reads C{data}.

        A subscriber acknowledging its deliveries one at a time sends nothing else, so its
        reads skip the packet objects and the table's dispatch: the same bytes through
        L{feed} would give C{Puback(packet_id)}.  Packet identifier 0 is left to L{feed},
        which refuses it [MQTT-2.2.1-5].
        """
        if (
            len(data) == 4
            and data[0] == 0x40
            and data[1] == 2
            and self._buffer is None
            and self._table[0x40] is not None
            and self._error is None
        ):
            return (data[2] << 8) | data[3]
        return 0

    def _parse_into(self, packets: list[Packet], data: Buffer, end: int) -> int:
        """
        Decode the complete packets in C{data[:end]} onto C{packets}.

        @return: how many bytes they used; L{_need} is left at the size the
            unused tail must reach before a retry can progress.
        """
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
        return pos

    def _header_error(self, first: int) -> DecodeError:
        if self._server and self.protocol_level is None:
            return ProtocolViolation(
                f"first packet must be CONNECT, got byte 0x{first:02x}", "MQTT-3.1.0-1"
            )
        if self._level5 is not None:
            return self._level5.header_error(first)
        return header_error(first, self._server)

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
            if name == b"MQTT" and (level == 5 or (level > 5 and not reads_as_3(data, p, end))):
                # A peer that speaks 5.0, or a later level in 5.0's CONNECT layout, reads a 5.0
                # CONNACK (0x84); one whose CONNECT is laid out as 3.1.1's reads return code 1
                # in a 3.1.1 CONNACK [MQTT-3.1.2-2], as mosquitto answers.
                error.protocol_level = 5
            raise error
        self.protocol_level = level
        packet = connect3(data, p, end, level, bridge)
        self._table = SERVER_TABLE_31 if level == 3 else SERVER_TABLE
        self._limit = self._max_packet_size
        return packet
