"""
The wire-format oracle: annotated raw bytes of MQTT 3.1 and 3.1.1 packets.

L{GOOD} holds packets that must decode to exactly L{Vector.packet} and that
L{mqttd.codec.encode} must reproduce byte for byte.  L{BAD} holds inputs a
decoder must refuse, with the error class, the spec statement and the entry of
/work/shared/bad-inputs.md they come from.

Bytes are written as hex with one field per line; C{#} starts a comment.

Entries of bad-inputs.md that are not visible to a codec, and where they
belong: 3 (buffering with an idle timeout: the decoder only shows that it
buffers what arrived, see the tests), 9 for 3.1.1 (an empty client id is
decoded as C{""}; refusing it with clean session 0 is the broker's call), 14's
semantically invalid filters (decoded as is, refused in SUBACK), 15, 16, 21-26
(session, routing and transport concerns) and 17-19 (MQTT 5 only: see
L{tests.vectors5}).
"""

from __future__ import annotations

from dataclasses import dataclass

from mqttd.codec import (
    Connack,
    Connect,
    DecodeError,
    Disconnect,
    IdentifierRejected,
    MalformedPacket,
    Packet,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    ProtocolViolation,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    UnacceptableProtocol,
    Unsuback,
    Unsubscribe,
    Will,
)

SERVER = "server"
CLIENT = "client"
BOTH = "both"


def h(text: str) -> bytes:
    """Bytes from hex text; whitespace is ignored and C{#} starts a comment."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


@dataclass(frozen=True)
class Vector:
    """
    One well-formed packet.

    @ivar direction: who decodes it: L{SERVER} (the broker, after a CONNECT
        unless the vector is the CONNECT), L{CLIENT}, or L{BOTH}.
    @ivar spec: the statements the vector exercises.
    """

    name: str
    data: bytes
    packet: Packet
    direction: str
    spec: tuple[str, ...] = ()


@dataclass(frozen=True)
class BadVector:
    """
    Bytes a decoder must refuse.

    @ivar error: the exact L{DecodeError} subclass expected.
    @ivar spec: the C{spec} attribute the error must carry.
    @ivar entry: the bad-inputs.md entry number, if the case is listed there.
    @ivar connected: feed L{CONNECT_311} first (server direction only).
    @ivar raises_at: index of the byte whose arrival must raise; by default the
        last one, i.e. the error needs the whole packet.  Header errors give
        a smaller index: they must not wait for (or buffer) the body.
    """

    name: str
    data: bytes
    error: type[DecodeError]
    spec: str | None
    entry: int | None
    direction: str = SERVER
    connected: bool = True
    raises_at: int | None = None

    @property
    def raise_index(self) -> int:
        return len(self.data) - 1 if self.raises_at is None else self.raises_at


CONNECT_311 = h(
    """
    10 0e              # CONNECT, Remaining Length 14
    00 04 4d 51 54 54  # protocol name "MQTT"
    04                 # protocol level 4 (3.1.1)
    02                 # flags: clean session
    00 3c              # keepalive 60 s
    00 02 63 31        # client id "c1"
    """
)

CONNECT_31 = h(
    """
    10 10                    # CONNECT, Remaining Length 16
    00 06 4d 51 49 73 64 70  # protocol name "MQIsdp"
    03                       # protocol level 3 (3.1)
    02                       # flags: clean session
    00 3c                    # keepalive 60 s
    00 02 63 31              # client id "c1"
    """
)


GOOD: list[Vector] = [
    # CONNECT, both protocol levels.
    Vector(
        "CONNECT 3.1.1 minimal",
        CONNECT_311,
        Connect(4, "c1", clean_session=True, keepalive=60),
        SERVER,
        ("MQTT-3.1.0-1", "MQTT-3.1.3-3"),
    ),
    Vector(
        "CONNECT 3.1.1 empty client id, clean session",
        h(
            """
            10 0c              # CONNECT, Remaining Length 12
            00 04 4d 51 54 54  # "MQTT"
            04                 # level 4
            02                 # flags: clean session
            00 3c              # keepalive 60
            00 00              # client id "" (the broker assigns one)
            """
        ),
        Connect(4, "", clean_session=True, keepalive=60),
        SERVER,
        ("MQTT-3.1.3-6", "MQTT-3.1.3-7"),
    ),
    Vector(
        "CONNECT 3.1.1 with will (QoS 1, retain), user name and password",
        h(
            """
            10 1f              # CONNECT, Remaining Length 31
            00 04 4d 51 54 54  # "MQTT"
            04                 # level 4
            ee                 # flags: user, password, will retain, will QoS 1, will, clean
            00 3c              # keepalive 60
            00 02 63 31        # client id "c1"
            00 03 6c 77 74     # will topic "lwt"
            00 03 62 79 65     # will message b"bye"
            00 01 75           # user name "u"
            00 02 00 ff        # password b"\\x00\\xff" (binary, not UTF-8)
            """
        ),
        Connect(4, "c1", True, 60, Will("lwt", b"bye", 1, True), "u", b"\x00\xff"),
        SERVER,
        ("MQTT-3.1.2-9", "MQTT-3.1.2-19", "MQTT-3.1.2-21", "MQTT-3.1.3-1"),
    ),
    Vector(
        "CONNECT 3.1.1 persistent session, user name only, keepalive 0",
        h(
            """
            10 16                 # CONNECT, Remaining Length 22
            00 04 4d 51 54 54     # "MQTT"
            04                    # level 4
            80                    # flags: user name; clean session 0
            00 00                 # keepalive 0 (off)
            00 03 64 65 76        # client id "dev"
            00 05 61 6c 69 63 65  # user name "alice"
            """
        ),
        Connect(4, "dev", clean_session=False, keepalive=0, username="alice"),
        SERVER,
        ("MQTT-3.1.2-4", "MQTT-3.1.2-19", "MQTT-3.1.2-20"),
    ),
    Vector(
        "CONNECT 3.1.1 client id with BOM and a two-byte character",
        h(
            """
            10 11              # CONNECT, Remaining Length 17
            00 04 4d 51 54 54  # "MQTT"
            04                 # level 4
            02                 # flags: clean session
            00 3c              # keepalive 60
            00 05 ef bb bf     # client id: U+FEFF, kept, never stripped
                  c3 a9        #   then "é"
            """
        ),
        Connect(4, "\ufeffé", clean_session=True, keepalive=60),
        SERVER,
        ("MQTT-1.5.3-3", "MQTT-3.1.3-4"),
    ),
    Vector(
        "CONNECT 3.1 minimal",
        CONNECT_31,
        Connect(3, "c1", clean_session=True, keepalive=60),
        SERVER,
        ("MQTT-3.1.0-1",),
    ),
    Vector(
        "CONNECT 3.1 with will (QoS 2), empty will message, user name and password",
        h(
            """
            10 1f                    # CONNECT, Remaining Length 31
            00 06 4d 51 49 73 64 70  # "MQIsdp"
            03                       # level 3
            d6                       # flags: user, password, will QoS 2, will, clean
            00 0a                    # keepalive 10
            00 03 63 33 31           # client id "c31"
            00 03 6c 77 74           # will topic "lwt"
            00 00                    # will message b""
            00 01 75                 # user name "u"
            00 02 70 77              # password b"pw"
            """
        ),
        Connect(3, "c31", True, 10, Will("lwt", b"", 2, False), "u", b"pw"),
        SERVER,
        ("MQTT-3.1.2-9", "MQTT-3.1.2-14", "MQTT-3.1.3-1"),
    ),
    Vector(
        "CONNECT 3.1 client id of 23 characters, the 3.1 maximum",
        h(
            """
            10 25                    # CONNECT, Remaining Length 37
            00 06 4d 51 49 73 64 70  # "MQIsdp"
            03                       # level 3
            00                       # flags: none (clean session 0)
            00 3c                    # keepalive 60
            00 17                    # client id, 23 bytes:
            61 62 63 64 65 66 67 68 69 6a 6b 6c  # "abcdefghijkl"
            6d 6e 6f 70 71 72 73 74 75 76 77     # "mnopqrstuvw"
            """
        ),
        Connect(3, "abcdefghijklmnopqrstuvw", clean_session=False, keepalive=60),
        SERVER,
        ("MQTT-3.1.3-5",),
    ),
    # PUBLISH, every QoS and flag, in both directions.
    Vector(
        "PUBLISH QoS 0",
        h(
            """
            30 07           # PUBLISH, QoS 0, Remaining Length 7
            00 03 61 2f 62  # topic "a/b"
            68 69           # payload b"hi" (no packet id at QoS 0)
            """
        ),
        Publish("a/b", b"hi"),
        BOTH,
        ("MQTT-2.3.1-5", "MQTT-3.3.1-2"),
    ),
    Vector(
        "PUBLISH QoS 0 retain, empty payload (deletes the retained message)",
        h(
            """
            31 05           # PUBLISH, retain, Remaining Length 5
            00 03 61 2f 62  # topic "a/b"
            """
        ),
        Publish("a/b", b"", retain=True),
        BOTH,
        ("MQTT-3.3.1-10",),
    ),
    Vector(
        "PUBLISH QoS 1",
        h(
            """
            32 09           # PUBLISH, QoS 1, Remaining Length 9
            00 03 61 2f 62  # topic "a/b"
            00 01           # packet id 1
            68 69           # payload b"hi"
            """
        ),
        Publish("a/b", b"hi", qos=1, packet_id=1),
        BOTH,
        ("MQTT-2.3.1-1",),
    ),
    Vector(
        "PUBLISH QoS 1 DUP",
        h(
            """
            3a 09           # PUBLISH, DUP, QoS 1, Remaining Length 9
            00 03 61 2f 62  # topic "a/b"
            00 01           # packet id 1
            68 69           # payload b"hi"
            """
        ),
        Publish("a/b", b"hi", qos=1, dup=True, packet_id=1),
        BOTH,
        ("MQTT-3.3.1-1",),
    ),
    Vector(
        "PUBLISH QoS 2 DUP retain, packet id 65535, binary payload",
        h(
            """
            3d 0a           # PUBLISH, DUP, QoS 2, retain, Remaining Length 10
            00 03 61 2f 62  # topic "a/b"
            ff ff           # packet id 65535
            00 01 02        # payload b"\\x00\\x01\\x02"
            """
        ),
        Publish("a/b", b"\x00\x01\x02", qos=2, retain=True, dup=True, packet_id=0xFFFF),
        BOTH,
        ("MQTT-2.3.1-1",),
    ),
    Vector(
        "PUBLISH multi-byte UTF-8 topic",
        h(
            """
            30 08                 # PUBLISH, QoS 0, Remaining Length 8
            00 06 c3 bc 2f        # topic "ü/"
                  e2 82 ac        #   then "€"
            """
        ),
        Publish("ü/€", b""),
        BOTH,
        ("MQTT-1.5.3-1", "MQTT-3.3.2-1"),
    ),
    Vector(
        "PUBLISH with a two-byte Remaining Length",
        h(
            """
            30 cd 01        # PUBLISH, QoS 0, Remaining Length 205 (0x4d + 1*128)
            00 03 61 2f 62  # topic "a/b"
            """
        )
        + b"\xaa" * 200,  # payload: 200 bytes
        Publish("a/b", b"\xaa" * 200),
        BOTH,
        (),
    ),
    # QoS acknowledgements.
    Vector("PUBACK", h("40 02  00 01  # PUBACK, packet id 1"), Puback(1), BOTH, ("MQTT-2.3.1-6",)),
    Vector("PUBREC", h("50 02  12 34  # PUBREC, packet id 0x1234"), Pubrec(0x1234), BOTH),
    Vector(
        "PUBREL",
        h("62 02  12 34  # PUBREL (flags 0010), packet id 0x1234"),
        Pubrel(0x1234),
        BOTH,
        ("MQTT-3.6.1-1",),
    ),
    Vector("PUBCOMP", h("70 02  ff ff  # PUBCOMP, packet id 65535"), Pubcomp(0xFFFF), BOTH),
    # Subscriptions.
    Vector(
        "SUBSCRIBE one filter",
        h(
            """
            82 08           # SUBSCRIBE (flags 0010), Remaining Length 8
            00 0a           # packet id 10
            00 03 61 2f 23  # filter "a/#"
            01              # requested QoS 1
            """
        ),
        Subscribe(10, [("a/#", 1)]),
        SERVER,
        ("MQTT-3.8.1-1", "MQTT-3.8.3-1"),
    ),
    Vector(
        "SUBSCRIBE several filters, one semantically invalid (returned as is)",
        h(
            """
            82 14                 # SUBSCRIBE, Remaining Length 20
            00 01                 # packet id 1
            00 03 61 2f 2b  00    # "a/+" QoS 0
            00 01 23        02    # "#" QoS 2
            00 05 61 2f 23 2f 62  # "a/#/b": well formed, refused later by SUBACK 0x80
                            01    #   QoS 1
            """
        ),
        Subscribe(1, [("a/+", 0), ("#", 2), ("a/#/b", 1)]),
        SERVER,
        ("MQTT-3.8.3-1", "MQTT-3.8.4-4"),
    ),
    Vector(
        "UNSUBSCRIBE two filters",
        h(
            """
            a2 0a           # UNSUBSCRIBE (flags 0010), Remaining Length 10
            00 02           # packet id 2
            00 03 61 2f 62  # filter "a/b"
            00 01 23        # filter "#"
            """
        ),
        Unsubscribe(2, ["a/b", "#"]),
        SERVER,
        ("MQTT-3.10.1-1", "MQTT-3.10.3-1"),
    ),
    Vector("PINGREQ", h("c0 00  # PINGREQ"), Pingreq(), SERVER, ("MQTT-3.12.4-1",)),
    Vector("DISCONNECT", h("e0 00  # DISCONNECT"), Disconnect(), SERVER, ("MQTT-3.14.1-1",)),
    # What only a client receives.
    Vector(
        "CONNACK accepted",
        h("20 02  00  00  # CONNACK, no session present, accepted"),
        Connack(False, 0),
        CLIENT,
        ("MQTT-3.2.2-1",),
    ),
    Vector(
        "CONNACK accepted, session present",
        h("20 02  01  00  # CONNACK, session present, accepted"),
        Connack(True, 0),
        CLIENT,
        ("MQTT-3.2.2-2",),
    ),
    Vector(
        "CONNACK unacceptable protocol version",
        h("20 02  00  01  # CONNACK, return code 1"),
        Connack(False, 1),
        CLIENT,
        ("MQTT-3.1.2-2", "MQTT-3.2.2-4"),
    ),
    Vector(
        "CONNACK not authorised",
        h("20 02  00  05  # CONNACK, return code 5"),
        Connack(False, 5),
        CLIENT,
        ("MQTT-3.2.2-4",),
    ),
    Vector(
        "SUBACK with every return code",
        h(
            """
            90 06        # SUBACK, Remaining Length 6
            00 01        # packet id 1
            00 01 02 80  # granted 0, 1, 2, failure
            """
        ),
        Suback(1, [0, 1, 2, 0x80]),
        CLIENT,
        ("MQTT-3.8.4-5", "MQTT-3.9.3-1", "MQTT-3.9.3-2"),
    ),
    Vector(
        "UNSUBACK",
        h("b0 02  00 02  # UNSUBACK, packet id 2"),
        Unsuback(2),
        CLIENT,
        ("MQTT-3.10.4-4",),
    ),
    Vector("PINGRESP", h("d0 00  # PINGRESP"), Pingresp(), CLIENT, ("MQTT-3.12.4-1",)),
]


def _connect_with(flags: str, payload: str, level: str = "04") -> bytes:
    """A 3.1.1 CONNECT with the given flags byte and payload hex, length computed."""
    body = h("00 04 4d 51 54 54") + h(level) + h(flags) + h("00 3c") + h(payload)
    return bytes((0x10, len(body))) + body


def _connect_31_with(client_id: bytes) -> bytes:
    body = (
        h("00 06 4d 51 49 73 64 70  03  02  00 3c") + len(client_id).to_bytes(2, "big") + client_id
    )
    return bytes((0x10, len(body))) + body


BAD: list[BadVector] = [
    # 1: huge lengths and what arrives before CONNECT.
    BadVector(
        "CONNECT header declaring 256 MB",
        h("10  ff ff ff 7f  # CONNECT, Remaining Length 268435455"),
        PacketTooLarge,
        None,
        1,
        connected=False,
        raises_at=4,
    ),
    BadVector(
        "PUBLISH as the first byte",
        h("30  ff ff ff 7f  # PUBLISH header before CONNECT, 256 MB declared"),
        ProtocolViolation,
        "MQTT-3.1.0-1",
        1,
        connected=False,
        raises_at=0,
    ),
    BadVector(
        "CONNECT type with reserved flags as the first byte",
        h("11 0e  # CONNECT type but flags 0001"),
        ProtocolViolation,
        "MQTT-3.1.0-1",
        1,
        connected=False,
        raises_at=0,
    ),
    # 2: five-byte Remaining Length.
    BadVector(
        "CONNECT with a five-byte Remaining Length",
        h("10  80 80 80 80 01  # fourth length byte has the continuation bit"),
        MalformedPacket,
        None,
        2,
        connected=False,
        raises_at=4,
    ),
    BadVector(
        "PUBLISH with a five-byte Remaining Length",
        h("30  ff ff ff ff 01"),
        MalformedPacket,
        None,
        2,
        raises_at=4,
    ),
    # 4: lengths that do not match the fields.
    BadVector(
        "PUBACK Remaining Length 3", h("40 03  00 01 00"), MalformedPacket, None, 4, raises_at=1
    ),
    BadVector("PUBACK Remaining Length 1", h("40 01  00"), MalformedPacket, None, 4, raises_at=1),
    BadVector("PUBREC Remaining Length 0", h("50 00"), MalformedPacket, None, 4, raises_at=1),
    BadVector(
        "PUBREL Remaining Length 4", h("62 04  00 01 00 02"), MalformedPacket, None, 4, raises_at=1
    ),
    BadVector(
        "PUBCOMP Remaining Length 3", h("70 03  00 01 00"), MalformedPacket, None, 4, raises_at=1
    ),
    BadVector("PINGREQ Remaining Length 1", h("c0 01  00"), MalformedPacket, None, 4, raises_at=1),
    BadVector(
        "DISCONNECT Remaining Length 2", h("e0 02  00 00"), MalformedPacket, None, 4, raises_at=1
    ),
    BadVector(
        "CONNECT shorter than its fields (no client id)",
        h(
            """
            10 0a              # Remaining Length 10
            00 04 4d 51 54 54  # "MQTT"
            04 02 00 3c        # level, flags, keepalive; client id missing
            """
        ),
        MalformedPacket,
        None,
        4,
        connected=False,
    ),
    BadVector(
        "CONNECT with trailing bytes",
        _connect_with("02", "00 02 63 31  00"),
        MalformedPacket,
        None,
        4,
        connected=False,
    ),
    BadVector(
        "CONNECT declaring a password it does not carry",
        _connect_with("c2", "00 02 63 31  00 01 75"),
        MalformedPacket,
        None,
        4,
        connected=False,
    ),
    BadVector(
        "PUBLISH topic longer than the packet",
        h("30 03  00 05 61  # topic claims 5 bytes, 1 present"),
        MalformedPacket,
        None,
        4,
    ),
    BadVector(
        "PUBLISH QoS 1 without room for the packet id",
        h("32 05  00 03 61 2f 62"),
        MalformedPacket,
        None,
        4,
    ),
    BadVector(
        "SUBSCRIBE filter without its QoS byte",
        h("82 07  00 01  00 03 61 2f 62"),
        MalformedPacket,
        None,
        4,
    ),
    BadVector(
        "UNSUBSCRIBE with a dangling byte",
        h("a2 03  00 01  00"),
        MalformedPacket,
        None,
        4,
    ),
    BadVector(
        "CONNACK Remaining Length 3",
        h("20 03  00 00 00"),
        MalformedPacket,
        None,
        4,
        direction=CLIENT,
        raises_at=1,
    ),
    BadVector(
        "UNSUBACK Remaining Length 3",
        h("b0 03  00 01 00"),
        MalformedPacket,
        None,
        4,
        CLIENT,
        raises_at=1,
    ),
    BadVector(
        "PINGRESP Remaining Length 1", h("d0 01  00"), MalformedPacket, None, 4, CLIENT, raises_at=1
    ),
    # 5: reserved types and packets going the wrong way.
    BadVector("packet type 0", h("00 00"), ProtocolViolation, "MQTT-4.8.0-1", 5, raises_at=0),
    BadVector("packet type 15", h("f0 00"), ProtocolViolation, "MQTT-4.8.0-1", 5, raises_at=0),
    BadVector(
        "client sends CONNACK", h("20 02 00 00"), ProtocolViolation, "MQTT-4.8.0-1", 5, raises_at=0
    ),
    BadVector(
        "client sends SUBACK",
        h("90 03 00 01 00"),
        ProtocolViolation,
        "MQTT-4.8.0-1",
        5,
        raises_at=0,
    ),
    BadVector(
        "client sends UNSUBACK", h("b0 02 00 01"), ProtocolViolation, "MQTT-4.8.0-1", 5, raises_at=0
    ),
    BadVector(
        "client sends PINGRESP", h("d0 00"), ProtocolViolation, "MQTT-4.8.0-1", 5, raises_at=0
    ),
    BadVector(
        "packet type 0 sent to a client",
        h("00 00"),
        ProtocolViolation,
        "MQTT-4.8.0-1",
        5,
        CLIENT,
        raises_at=0,
    ),
    BadVector(
        "server sends SUBSCRIBE",
        h("82 06 00 01 00 01 23 00"),
        ProtocolViolation,
        "MQTT-4.8.0-1",
        5,
        CLIENT,
        raises_at=0,
    ),
    BadVector(
        "server sends PINGREQ",
        h("c0 00"),
        ProtocolViolation,
        "MQTT-4.8.0-1",
        5,
        CLIENT,
        raises_at=0,
    ),
    BadVector(
        "server sends CONNECT",
        CONNECT_311,
        ProtocolViolation,
        "MQTT-4.8.0-1",
        5,
        CLIENT,
        raises_at=0,
    ),
    # 6: order of CONNECT.
    BadVector("second CONNECT", CONNECT_311, ProtocolViolation, "MQTT-3.1.0-2", 6, raises_at=0),
    BadVector("second CONNECT, 3.1", CONNECT_31, ProtocolViolation, "MQTT-3.1.0-2", 6, raises_at=0),
    BadVector(
        "PINGREQ before CONNECT",
        h("c0 00"),
        ProtocolViolation,
        "MQTT-3.1.0-1",
        6,
        connected=False,
        raises_at=0,
    ),
    BadVector(
        "SUBSCRIBE before CONNECT",
        h("82 06 00 01 00 01 23 00"),
        ProtocolViolation,
        "MQTT-3.1.0-1",
        6,
        connected=False,
        raises_at=0,
    ),
    # 7: protocol name or level.
    BadVector(
        "CONNECT MQTT level 3",
        _connect_with("02", "00 02 63 31", level="03"),
        UnacceptableProtocol,
        "MQTT-3.1.2-2",
        7,
        connected=False,
    ),
    BadVector(
        "CONNECT MQTT level 5",
        _connect_with("02", "00 02 63 31", level="05"),
        UnacceptableProtocol,
        "MQTT-3.1.2-2",
        7,
        connected=False,
    ),
    BadVector(
        "CONNECT MQIsdp level 4",
        h("10 10  00 06 4d 51 49 73 64 70  04  02  00 3c  00 02 63 31"),
        UnacceptableProtocol,
        "MQTT-3.1.2-2",
        7,
        connected=False,
    ),
    BadVector(
        "CONNECT protocol name HTTP",
        h("10 0e  00 04 48 54 54 50  04  02  00 3c  00 02 63 31"),
        UnacceptableProtocol,
        "MQTT-3.1.2-2",
        7,
        connected=False,
    ),
    # 8: CONNECT flag abuse.
    BadVector(
        "CONNECT reserved flag set",
        _connect_with("03", "00 02 63 31"),
        MalformedPacket,
        "MQTT-3.1.2-3",
        8,
        connected=False,
    ),
    BadVector(
        "CONNECT 3.1 reserved flag set",
        h("10 10  00 06 4d 51 49 73 64 70  03  03  00 3c  00 02 63 31"),
        MalformedPacket,
        "MQTT-3.1.2-3",
        8,
        connected=False,
    ),
    BadVector(
        "CONNECT Will QoS without Will flag",
        _connect_with("0a", "00 02 63 31"),
        MalformedPacket,
        "MQTT-3.1.2-13",
        8,
        connected=False,
    ),
    BadVector(
        "CONNECT Will Retain without Will flag",
        _connect_with("22", "00 02 63 31"),
        MalformedPacket,
        "MQTT-3.1.2-15",
        8,
        connected=False,
    ),
    BadVector(
        "CONNECT Will QoS 3",
        _connect_with("1e", "00 02 63 31  00 01 74  00 00"),
        MalformedPacket,
        "MQTT-3.1.2-14",
        8,
        connected=False,
    ),
    BadVector(
        "CONNECT password without user name",
        _connect_with("42", "00 02 63 31  00 02 70 77"),
        MalformedPacket,
        "MQTT-3.1.2-22",
        8,
        connected=False,
    ),
    # 9: client identifiers MQTT 3.1 refuses.
    BadVector(
        "CONNECT 3.1 empty client id",
        _connect_31_with(b""),
        IdentifierRejected,
        "MQTT-3.1.3-9",
        9,
        connected=False,
    ),
    BadVector(
        "CONNECT 3.1 client id of 24 characters",
        _connect_31_with(b"abcdefghijklmnopqrstuvwx"),
        IdentifierRejected,
        "MQTT-3.1.3-9",
        9,
        connected=False,
    ),
    # 10: bad UTF-8 anywhere a string is.
    BadVector(
        "CONNECT client id with invalid UTF-8",
        _connect_with("02", "00 02 63 ff"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
        connected=False,
    ),
    BadVector(
        "CONNECT client id with U+0000",
        _connect_with("02", "00 02 63 00"),
        MalformedPacket,
        "MQTT-1.5.3-2",
        10,
        connected=False,
    ),
    BadVector(
        "CONNECT client id with a UTF-16 surrogate",
        _connect_with("02", "00 03 ed a0 80  # U+D800 encoded"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
        connected=False,
    ),
    BadVector(
        "CONNECT user name with invalid UTF-8",
        _connect_with("82", "00 02 63 31  00 01 c3  # truncated two-byte sequence"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
        connected=False,
    ),
    BadVector(
        "CONNECT will topic with U+0000",
        _connect_with("06", "00 02 63 31  00 02 61 00  00 00"),
        MalformedPacket,
        "MQTT-1.5.3-2",
        10,
        connected=False,
    ),
    BadVector(
        "PUBLISH topic with invalid UTF-8",
        h("30 05  00 03 61 2f fe"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
    ),
    BadVector(
        "PUBLISH topic with an overlong encoding of '/'",
        h("30 06  00 04 61 c0 af 62"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
    ),
    BadVector(
        "PUBLISH topic with a UTF-16 surrogate",
        h("30 06  00 04 61 ed bf bf"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
    ),
    BadVector(
        "PUBLISH topic with U+0000",
        h("30 05  00 03 61 00 62"),
        MalformedPacket,
        "MQTT-1.5.3-2",
        10,
    ),
    BadVector(
        "SUBSCRIBE filter with U+0000",
        h("82 06  00 01  00 01 00  00"),
        MalformedPacket,
        "MQTT-1.5.3-2",
        10,
    ),
    BadVector(
        "UNSUBSCRIBE filter with invalid UTF-8",
        h("a2 05  00 01  00 01 80"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
    ),
    BadVector(
        "PUBLISH to a client with invalid UTF-8 topic",
        h("30 05  00 03 61 2f fe"),
        MalformedPacket,
        "MQTT-1.5.3-1",
        10,
        CLIENT,
    ),
    # 11: PUBLISH topic names.
    BadVector(
        "PUBLISH zero-length topic", h("30 04  00 00  68 69"), MalformedPacket, "MQTT-4.7.3-1", 11
    ),
    BadVector(
        "PUBLISH topic with '+'", h("30 05  00 03 61 2f 2b"), MalformedPacket, "MQTT-3.3.2-2", 11
    ),
    BadVector(
        "PUBLISH topic with '#'", h("30 05  00 03 61 2f 23"), MalformedPacket, "MQTT-3.3.2-2", 11
    ),
    BadVector(
        "CONNECT will topic with '#'",
        _connect_with("06", "00 02 63 31  00 01 23  00 00"),
        MalformedPacket,
        "MQTT-3.3.2-2",
        11,
        connected=False,
    ),
    BadVector(
        "CONNECT zero-length will topic",
        _connect_with("06", "00 02 63 31  00 00  00 00"),
        MalformedPacket,
        "MQTT-4.7.3-1",
        11,
        connected=False,
    ),
    # 12: PUBLISH QoS and packet id.
    BadVector(
        "PUBLISH QoS 3",
        h("36 07  00 03 61 2f 62  00 01"),
        MalformedPacket,
        "MQTT-3.3.1-4",
        12,
        raises_at=0,
    ),
    BadVector(
        "PUBLISH QoS 3 with DUP and retain",
        h("3f 07  00 03 61 2f 62  00 01"),
        MalformedPacket,
        "MQTT-3.3.1-4",
        12,
        raises_at=0,
    ),
    BadVector(
        "PUBLISH QoS 1 packet id 0",
        h("32 07  00 03 61 2f 62  00 00"),
        MalformedPacket,
        "MQTT-2.3.1-1",
        12,
    ),
    BadVector(
        "PUBLISH QoS 2 packet id 0",
        h("34 07  00 03 61 2f 62  00 00"),
        MalformedPacket,
        "MQTT-2.3.1-1",
        12,
    ),
    BadVector(
        "PUBLISH DUP at QoS 0",
        h("38 05  00 03 61 2f 62"),
        MalformedPacket,
        "MQTT-3.3.1-2",
        13,
        raises_at=0,
    ),
    # 13: fixed-header flags.
    BadVector(
        "PUBREL flags 0000", h("60 02  00 01"), MalformedPacket, "MQTT-3.6.1-1", 13, raises_at=0
    ),
    BadVector(
        "SUBSCRIBE flags 0000",
        h("80 06  00 01 00 01 23 00"),
        MalformedPacket,
        "MQTT-3.8.1-1",
        13,
        raises_at=0,
    ),
    BadVector(
        "UNSUBSCRIBE flags 0011",
        h("a3 05  00 01 00 01 23"),
        MalformedPacket,
        "MQTT-3.10.1-1",
        13,
        raises_at=0,
    ),
    BadVector(
        "PUBACK flags 0010", h("42 02  00 01"), MalformedPacket, "MQTT-2.2.2-2", 13, raises_at=0
    ),
    BadVector("PINGREQ flags 1000", h("c8 00"), MalformedPacket, "MQTT-2.2.2-2", 13, raises_at=0),
    BadVector(
        "DISCONNECT flags 0001", h("e1 00"), MalformedPacket, "MQTT-3.14.1-1", 13, raises_at=0
    ),
    BadVector(
        "CONNACK flags 0001",
        h("21 02 00 00"),
        MalformedPacket,
        "MQTT-2.2.2-2",
        13,
        CLIENT,
        raises_at=0,
    ),
    BadVector(
        "SUBACK flags 0010",
        h("92 03 00 01 00"),
        MalformedPacket,
        "MQTT-2.2.2-2",
        13,
        CLIENT,
        raises_at=0,
    ),
    # 14: SUBSCRIBE and UNSUBSCRIBE payloads.
    BadVector("SUBSCRIBE without filters", h("82 02  00 01"), MalformedPacket, "MQTT-3.8.3-3", 14),
    BadVector(
        "SUBSCRIBE zero-length filter",
        h("82 05  00 01  00 00  00"),
        MalformedPacket,
        "MQTT-4.7.3-1",
        14,
    ),
    BadVector(
        "SUBSCRIBE QoS 3", h("82 06  00 01  00 01 23  03"), MalformedPacket, "MQTT-3.8.3-4", 14
    ),
    BadVector(
        "SUBSCRIBE reserved option bits",
        h("82 06  00 01  00 01 23  04"),
        MalformedPacket,
        "MQTT-3.8.3-4",
        14,
    ),
    BadVector(
        "SUBSCRIBE second filter with reserved bits",
        h("82 0a  00 01  00 01 23  00  00 01 2b  81"),
        MalformedPacket,
        "MQTT-3.8.3-4",
        14,
    ),
    BadVector(
        "SUBSCRIBE packet id 0",
        h("82 06  00 00  00 01 23  00"),
        MalformedPacket,
        "MQTT-2.3.1-1",
        14,
    ),
    BadVector(
        "UNSUBSCRIBE without filters", h("a2 02  00 01"), MalformedPacket, "MQTT-3.10.3-2", 14
    ),
    BadVector(
        "UNSUBSCRIBE zero-length filter",
        h("a2 04  00 01  00 00"),
        MalformedPacket,
        "MQTT-4.7.3-1",
        14,
    ),
    BadVector(
        "UNSUBSCRIBE packet id 0", h("a2 05  00 00  00 01 23"), MalformedPacket, "MQTT-2.3.1-1", 14
    ),
    # 20: maximum packet size (default 1 MiB after CONNECT, 64 KiB for CONNECT).
    BadVector(
        "PUBLISH declaring 1 MiB + 1",
        h("30  81 80 40  # Remaining Length 1 + 64 * 128**2 = 1048577"),
        PacketTooLarge,
        None,
        20,
        raises_at=3,
    ),
    BadVector(
        "CONNECT declaring 64 KiB + 1",
        h("10  81 80 04  # Remaining Length 1 + 4 * 128**2 = 65537"),
        PacketTooLarge,
        None,
        20,
        connected=False,
        raises_at=3,
    ),
    # Packet identifiers of acknowledgements.
    BadVector("PUBACK packet id 0", h("40 02  00 00"), MalformedPacket, "MQTT-2.3.1-6", None),
    BadVector("PUBREL packet id 0", h("62 02  00 00"), MalformedPacket, "MQTT-2.3.1-6", None),
    BadVector(
        "SUBACK packet id 0", h("90 03  00 00  00"), MalformedPacket, "MQTT-2.3.1-7", None, CLIENT
    ),
    BadVector(
        "UNSUBACK packet id 0", h("b0 02  00 00"), MalformedPacket, "MQTT-2.3.1-7", None, CLIENT
    ),
    # What a client must refuse from a server.
    BadVector(
        "SUBACK reserved return code",
        h("90 03  00 01  03"),
        MalformedPacket,
        "MQTT-3.9.3-2",
        None,
        CLIENT,
    ),
    BadVector(
        "SUBACK without return codes",
        h("90 02  00 01"),
        MalformedPacket,
        "MQTT-3.8.4-5",
        None,
        CLIENT,
    ),
    BadVector(
        "CONNACK reserved acknowledge flags", h("20 02  02 00"), MalformedPacket, None, None, CLIENT
    ),
    BadVector("CONNACK return code 6", h("20 02  00 06"), MalformedPacket, None, None, CLIENT),
    BadVector(
        "CONNACK session present with a refusal",
        h("20 02  01 05"),
        ProtocolViolation,
        "MQTT-3.2.2-4",
        None,
        CLIENT,
    ),
]
