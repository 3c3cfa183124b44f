"""
The wire-format oracle for MQTT 5.0: annotated raw bytes of every packet type
with properties, in the style of L{tests.vectors}.

L{GOOD} packets must decode to exactly L{Vector.packet} and encode (at level
5) back to exactly their bytes; together they carry every property of the
spec.  L{DECODE_ONLY} holds valid forms the encoder does not write (longer
than needed, properties out of identifier order).  L{BAD} holds inputs a
decoder must refuse, with the error class, statement id, 5.0 reason code and
bad-inputs.md entry (17 to 20 and the 5.0 side of 7, 11, 13, 14).

A server-side vector is decoded after L{CONNECT_5}; a client-side one by a
decoder made for level 5.  Statement ids are those of the 5.0 spec; C{None}
where the rule is in the spec's prose without an id (most "It is a Protocol
Error to ..." sentences of section 3).

What is not visible to a codec is left to the broker: Topic Alias above the
advertised maximum (0x94) and Receive Maximum overrun (0x93) of entry 19, the
message size limit of entry 20, and 0x8F for semantically invalid filters.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqttd.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    MalformedPacket,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolViolation,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    UnacceptableProtocol,
    Unsuback,
    Unsubscribe,
    Will,
)

from .vectors import BOTH, CLIENT, SERVER, BadVector, Vector, h

__all__ = [
    "BAD",
    "CONNECT_5",
    "DECODE_ONLY",
    "GOOD",
    "BadVector5",
    "user_property_flood",
]

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR


@dataclass(frozen=True)
class BadVector5(BadVector):
    """
    A L{BadVector} at level 5, which also names the reason code the error
    must carry (the CONNACK or DISCONNECT the broker answers with).
    """

    reason_code: int = MALFORMED


CONNECT_5 = h(
    """
    10 0f              # CONNECT, Remaining Length 15
    00 04 4d 51 54 54  # protocol name "MQTT"
    05                 # protocol version 5
    02                 # flags: clean start
    00 3c              # keep alive 60 s
    00                 # Property Length 0
    00 02 63 31        # client id "c1"
    """
)


GOOD: list[Vector] = [
    Vector(
        "CONNECT 5 minimal",
        CONNECT_5,
        Connect(5, "c1", clean_session=True, keepalive=60),
        SERVER,
        ("MQTT-3.1.0-1", "MQTT-3.1.3-3", "MQTT-2.2.2-1"),
    ),
    Vector(
        "CONNECT 5 with every CONNECT and will property, user name and password",
        h(
            """
            10 6c                 # CONNECT, Remaining Length 108
            00 04 4d 51 54 54     # "MQTT"
            05                    # version 5
            ee                    # flags: user, password, will retain, will QoS 1, will, clean
            00 3c                 # keep alive 60
            24                    # Property Length 36
              11 00 00 00 78      #   Session Expiry Interval 120
              15 00 01 53         #   Authentication Method "S"
              16 00 02 01 02      #   Authentication Data 01 02
              17 00               #   Request Problem Information 0
              19 01               #   Request Response Information 1
              21 00 0a            #   Receive Maximum 10
              22 00 05            #   Topic Alias Maximum 5
              26 00 01 6b 00 01 76  # User Property ("k", "v")
              27 00 00 10 00      #   Maximum Packet Size 4096
            00 02 63 31           # client id "c1"
            27                    # Will Property Length 39
              01 01               #   Payload Format Indicator 1 (UTF-8)
              02 00 00 00 3c      #   Message Expiry Interval 60
              03 00 04 74 65 78 74  # Content Type "text"
              08 00 05 72 65 70 6c 79  # Response Topic "reply"
              09 00 02 ab cd      #   Correlation Data ab cd
              18 00 00 00 1e      #   Will Delay Interval 30
              26 00 01 61 00 01 62  # User Property ("a", "b")
            00 03 6c 77 74        # will topic "lwt"
            00 03 62 79 65        # will payload b"bye"
            00 01 75              # user name "u"
            00 02 00 ff           # password 00 ff
            """
        ),
        Connect(
            5,
            "c1",
            True,
            60,
            Will(
                "lwt",
                b"bye",
                1,
                True,
                Properties(
                    payload_format_indicator=1,
                    message_expiry_interval=60,
                    content_type="text",
                    response_topic="reply",
                    correlation_data=b"\xab\xcd",
                    will_delay_interval=30,
                    user_properties=(("a", "b"),),
                ),
            ),
            "u",
            b"\x00\xff",
            Properties(
                session_expiry_interval=120,
                authentication_method="S",
                authentication_data=b"\x01\x02",
                request_problem_information=0,
                request_response_information=1,
                receive_maximum=10,
                topic_alias_maximum=5,
                user_properties=(("k", "v"),),
                maximum_packet_size=4096,
            ),
        ),
        SERVER,
        ("MQTT-3.1.3-1", "MQTT-3.1.2-9", "MQTT-3.1.2-17", "MQTT-3.1.2-19", "MQTT-3.1.3-10"),
    ),
    Vector(
        "CONNECT 5 password without user name, empty client id, clean start 0",
        h(
            """
            10 12              # CONNECT, Remaining Length 18
            00 04 4d 51 54 54  # "MQTT"
            05                 # version 5
            40                 # flags: password only (allowed at 5.0)
            00 00              # keep alive 0
            00                 # Property Length 0
            00 00              # client id "" (the server assigns one)
            00 03 70 77 64     # password b"pwd"
            """
        ),
        Connect(5, "", clean_session=False, keepalive=0, password=b"pwd"),
        SERVER,
        ("MQTT-3.1.2-16", "MQTT-3.1.2-19", "MQTT-3.1.3-6"),
    ),
    Vector(
        "CONNACK 5 success without properties",
        h("20 03 00 00 00  # CONNACK: no session, Success, Property Length 0"),
        Connack(False, ReasonCode.SUCCESS),
        CLIENT,
        ("MQTT-3.2.2-2", "MQTT-2.2.2-1"),
    ),
    Vector(
        "CONNACK 5 session present with every CONNACK property",
        h(
            """
            20 44                 # CONNACK, Remaining Length 68
            01                    # session present
            00                    # Success
            41                    # Property Length 65
              11 00 00 01 2c      #   Session Expiry Interval 300
              12 00 03 61 62 63   #   Assigned Client Identifier "abc"
              13 00 1e            #   Server Keep Alive 30
              15 00 01 53         #   Authentication Method "S"
              16 00 01 ff         #   Authentication Data ff
              1a 00 02 72 69      #   Response Information "ri"
              1c 00 02 73 32      #   Server Reference "s2"
              1f 00 02 6f 6b      #   Reason String "ok"
              21 00 14            #   Receive Maximum 20
              22 00 08            #   Topic Alias Maximum 8
              24 01               #   Maximum QoS 1
              25 00               #   Retain Available 0
              26 00 01 6b 00 01 76  # User Property ("k", "v")
              27 00 01 00 00      #   Maximum Packet Size 65536
              28 00               #   Wildcard Subscription Available 0
              29 01               #   Subscription Identifier Available 1
              2a 00               #   Shared Subscription Available 0
            """
        ),
        Connack(
            True,
            ReasonCode.SUCCESS,
            Properties(
                session_expiry_interval=300,
                assigned_client_identifier="abc",
                server_keep_alive=30,
                authentication_method="S",
                authentication_data=b"\xff",
                response_information="ri",
                server_reference="s2",
                reason_string="ok",
                receive_maximum=20,
                topic_alias_maximum=8,
                maximum_qos=1,
                retain_available=0,
                user_properties=(("k", "v"),),
                maximum_packet_size=65536,
                wildcard_subscription_available=0,
                subscription_identifier_available=1,
                shared_subscription_available=0,
            ),
        ),
        CLIENT,
        ("MQTT-3.2.2-3", "MQTT-3.2.2-9", "MQTT-3.2.2-16", "MQTT-3.2.2-21"),
    ),
    Vector(
        "CONNACK 5 refusal 0x84",
        h("20 03 00 84 00  # CONNACK: no session, Unsupported Protocol Version, no properties"),
        Connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
        CLIENT,
        ("MQTT-3.1.2-2", "MQTT-3.2.2-6", "MQTT-3.2.2-8"),
    ),
    Vector(
        "PUBLISH 5 QoS 0 without properties",
        h(
            """
            30 06     # PUBLISH QoS 0, Remaining Length 6
            00 01 74  # topic "t"
            00        # Property Length 0 (no packet identifier at QoS 0)
            68 69     # payload "hi"
            """
        ),
        Publish("t", b"hi"),
        BOTH,
        ("MQTT-2.2.1-2", "MQTT-2.2.2-1", "MQTT-3.3.2-1"),
    ),
    Vector(
        "PUBLISH 5 QoS 1 with message properties and repeated user properties",
        h(
            """
            32 39                 # PUBLISH QoS 1, Remaining Length 57
            00 03 61 2f 62        # topic "a/b"
            00 07                 # packet identifier 7
            2f                    # Property Length 47
              01 00               #   Payload Format Indicator 0
              02 00 00 0e 10      #   Message Expiry Interval 3600
              03 00 0a 74 65 78 74 2f 70 6c 61 69 6e  # Content Type "text/plain"
              08 00 03 72 2f 31   #   Response Topic "r/1"
              09 00 01 2a         #   Correlation Data 2a
              23 00 04            #   Topic Alias 4
              26 00 01 78 00 01 31  # User Property ("x", "1")
              26 00 01 78 00 01 32  # User Property ("x", "2"): same name again, in order
            7b 7d                 # payload "{}"
            """
        ),
        Publish(
            "a/b",
            b"{}",
            1,
            packet_id=7,
            properties=Properties(
                payload_format_indicator=0,
                message_expiry_interval=3600,
                content_type="text/plain",
                response_topic="r/1",
                correlation_data=b"*",
                topic_alias=4,
                user_properties=(("x", "1"), ("x", "2")),
            ),
        ),
        BOTH,
        ("MQTT-3.3.2-13", "MQTT-3.3.2-18", "MQTT-3.3.2-19", "MQTT-1.5.7-1"),
    ),
    Vector(
        "PUBLISH 5 zero-length topic with a Topic Alias",
        h(
            """
            30 08     # PUBLISH QoS 0, Remaining Length 8
            00 00     # topic "" (the alias stands for it)
            03        # Property Length 3
              23 00 04  # Topic Alias 4
            6f 6b     # payload "ok"
            """
        ),
        Publish("", b"ok", properties=Properties(topic_alias=4)),
        BOTH,
        ("MQTT-3.3.2-12", "MQTT-3.3.2-10"),
    ),
    Vector(
        "PUBLISH 5 from the server with two Subscription Identifiers",
        h(
            """
            34 0b     # PUBLISH QoS 2, Remaining Length 11
            00 01 74  # topic "t"
            00 09     # packet identifier 9
            05        # Property Length 5
              0b 01   #   Subscription Identifier 1
              0b ac 02  # Subscription Identifier 300 (two-byte Variable Byte Integer)
            """
        ),
        Publish("t", b"", 2, packet_id=9, properties=Properties(subscription_identifiers=(1, 300))),
        CLIENT,
        ("MQTT-3.3.4-3", "MQTT-3.3.4-4", "MQTT-1.5.5-1"),
    ),
    Vector(
        "PUBACK 5 success, short form",
        h("40 02 00 01  # PUBACK, Remaining Length 2: Success, no properties"),
        Puback(1),
        BOTH,
        ("MQTT-2.2.1-5", "MQTT-3.4.2-1"),
    ),
    Vector(
        "PUBACK 5 reason code without properties",
        h("40 03 00 02 10  # PUBACK id 2, No matching subscribers, Property Length omitted"),
        Puback(2, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        BOTH,
        ("MQTT-3.4.2-1",),
    ),
    Vector(
        "PUBACK 5 refusal with Reason String",
        h(
            """
            40 0d       # PUBACK, Remaining Length 13
            00 03       # packet identifier 3
            87          # Not authorized
            09          # Property Length 9
              1f 00 06 64 65 6e 69 65 64  # Reason String "denied"
            """
        ),
        Puback(3, ReasonCode.NOT_AUTHORIZED, Properties(reason_string="denied")),
        BOTH,
        ("MQTT-3.4.2-1",),
    ),
    Vector(
        "PUBREC 5 refusal with a User Property",
        h(
            """
            50 0b       # PUBREC, Remaining Length 11
            00 04       # packet identifier 4
            80          # Unspecified error
            07          # Property Length 7
              26 00 01 6b 00 01 76  # User Property ("k", "v")
            """
        ),
        Pubrec(4, ReasonCode.UNSPECIFIED_ERROR, Properties(user_properties=(("k", "v"),))),
        BOTH,
        ("MQTT-3.5.2-1",),
    ),
    Vector(
        "PUBREL 5 Packet Identifier not found",
        h("62 03 00 05 92  # PUBREL id 5, Packet Identifier not found, no properties"),
        Pubrel(5, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
        BOTH,
        ("MQTT-3.6.1-1", "MQTT-3.6.2-1"),
    ),
    Vector(
        "PUBCOMP 5 success, short form",
        h("70 02 00 06  # PUBCOMP id 6"),
        Pubcomp(6),
        BOTH,
        ("MQTT-3.7.2-1",),
    ),
    Vector(
        "SUBSCRIBE 5 with Subscription Identifier and every subscription option",
        h(
            """
            82 16           # SUBSCRIBE, Remaining Length 22
            00 0a           # packet identifier 10
            09              # Property Length 9
              0b 07         #   Subscription Identifier 7
              26 00 01 6b 00 01 76  # User Property ("k", "v")
            00 03 61 2f 23  # filter "a/#"
            2d              #   QoS 1, No Local, Retain As Published, Retain Handling 2
            00 01 62        # filter "b"
            10              #   QoS 0, Retain Handling 1
            """
        ),
        Subscribe(
            10,
            [
                ("a/#", SubscriptionOptions.of(1, True, True, 2)),
                ("b", SubscriptionOptions.of(0, retain_handling=1)),
            ],
            Properties(subscription_identifiers=(7,), user_properties=(("k", "v"),)),
        ),
        SERVER,
        ("MQTT-3.8.1-1", "MQTT-3.8.3-1", "MQTT-3.8.3-3", "MQTT-3.3.1-10", "MQTT-3.3.1-13"),
    ),
    Vector(
        "SUBACK 5 with Reason String and four reason codes",
        h(
            """
            90 0b        # SUBACK, Remaining Length 11
            00 0a        # packet identifier 10
            04           # Property Length 4
              1f 00 01 78  # Reason String "x"
            01 00 8f a1  # granted QoS 1, granted QoS 0, Topic Filter invalid,
                         # Subscription Identifiers not supported
            """
        ),
        Suback(10, [1, 0, 0x8F, 0xA1], Properties(reason_string="x")),
        CLIENT,
        ("MQTT-3.9.3-1", "MQTT-3.9.3-2", "MQTT-3.8.4-6"),
    ),
    Vector(
        "UNSUBSCRIBE 5 with a User Property",
        h(
            """
            a2 0f           # UNSUBSCRIBE, Remaining Length 15
            00 0b           # packet identifier 11
            07              # Property Length 7
              26 00 01 6b 00 01 76  # User Property ("k", "v")
            00 03 61 2f 23  # filter "a/#"
            """
        ),
        Unsubscribe(11, ["a/#"], Properties(user_properties=(("k", "v"),))),
        SERVER,
        ("MQTT-3.10.1-1", "MQTT-3.10.3-1"),
    ),
    Vector(
        "UNSUBACK 5 with two reason codes",
        h(
            """
            b0 05  # UNSUBACK, Remaining Length 5
            00 0b  # packet identifier 11
            00     # Property Length 0
            00 11  # Success, No subscription existed
            """
        ),
        Unsuback(11, [0, ReasonCode.NO_SUBSCRIPTION_EXISTED]),
        CLIENT,
        ("MQTT-3.11.3-1", "MQTT-3.11.3-2"),
    ),
    Vector("PINGREQ 5", h("c0 00"), Pingreq(), SERVER, ("MQTT-3.12.4-1",)),
    Vector("PINGRESP 5", h("d0 00"), Pingresp(), CLIENT, ("MQTT-3.12.4-1",)),
    Vector(
        "DISCONNECT 5 normal, short form",
        h("e0 00  # DISCONNECT, Remaining Length 0: Normal disconnection, no properties"),
        Disconnect(),
        BOTH,
        ("MQTT-3.14.1-1", "MQTT-3.14.2-1"),
    ),
    Vector(
        "DISCONNECT 5 with will message, reason code only",
        h("e0 01 04  # DISCONNECT, Disconnect with Will Message, Property Length omitted"),
        Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE),
        SERVER,
        ("MQTT-3.14.2-1",),
    ),
    Vector(
        "DISCONNECT 5 from the client changing Session Expiry Interval",
        h(
            """
            e0 07             # DISCONNECT, Remaining Length 7
            00                # Normal disconnection
            05                # Property Length 5
              11 00 00 00 00  # Session Expiry Interval 0
            """
        ),
        Disconnect(ReasonCode.NORMAL_DISCONNECTION, Properties(session_expiry_interval=0)),
        SERVER,
        ("MQTT-3.14.2-1",),
    ),
    Vector(
        "DISCONNECT 5 from the server: Use another server",
        h(
            """
            e0 0d                # DISCONNECT, Remaining Length 13
            9c                   # Use another server
            0b                   # Property Length 11
              1c 00 02 73 32     #   Server Reference "s2"
              1f 00 03 6d 6f 76  #   Reason String "mov"
            """
        ),
        Disconnect(
            ReasonCode.USE_ANOTHER_SERVER,
            Properties(server_reference="s2", reason_string="mov"),
        ),
        CLIENT,
        ("MQTT-3.14.0-1", "MQTT-3.14.2-1", "MQTT-3.14.2-2"),
    ),
    Vector(
        "AUTH 5 success, short form",
        h("f0 00  # AUTH, Remaining Length 0: Success, no properties"),
        Auth(),
        BOTH,
        ("MQTT-3.15.1-1", "MQTT-3.15.2-1"),
    ),
    Vector(
        "AUTH 5 continue with method and data",
        h(
            """
            f0 10                         # AUTH, Remaining Length 16
            18                            # Continue authentication
            0e                            # Property Length 14
              15 00 05 53 43 52 41 4d     #   Authentication Method "SCRAM"
              16 00 03 01 02 03           #   Authentication Data 01 02 03
            """
        ),
        Auth(
            ReasonCode.CONTINUE_AUTHENTICATION,
            Properties(authentication_method="SCRAM", authentication_data=b"\x01\x02\x03"),
        ),
        BOTH,
        ("MQTT-4.12.0-2", "MQTT-4.12.0-3", "MQTT-4.12.0-5"),
    ),
    Vector(
        "AUTH 5 re-authenticate",
        h(
            """
            f0 06          # AUTH, Remaining Length 6
            19             # Re-authenticate
            04             # Property Length 4
              15 00 01 53  #   Authentication Method "S"
            """
        ),
        Auth(ReasonCode.RE_AUTHENTICATE, Properties(authentication_method="S")),
        BOTH,
        ("MQTT-4.12.1-1",),
    ),
]


DECODE_ONLY: list[Vector] = [
    Vector(
        "DISCONNECT 5 normal, spelled out",
        h("e0 02 00 00  # DISCONNECT: Normal disconnection, Property Length 0"),
        Disconnect(),
        BOTH,
        ("MQTT-2.2.2-1",),
    ),
    Vector(
        "PUBACK 5 success, spelled out",
        h("40 04 00 01 00 00  # PUBACK id 1, Success, Property Length 0"),
        Puback(1),
        BOTH,
        ("MQTT-2.2.2-1",),
    ),
    Vector(
        "AUTH 5 success, spelled out",
        h("f0 02 00 00  # AUTH: Success, Property Length 0"),
        Auth(),
        BOTH,
        ("MQTT-3.15.2-1",),
    ),
    Vector(
        "PUBLISH 5 properties out of identifier order",
        h(
            """
            30 17                   # PUBLISH QoS 0, Remaining Length 23
            00 01 74                # topic "t"
            13                      # Property Length 19
              26 00 01 61 00 01 31  #   User Property ("a", "1")
              02 00 00 00 0a        #   Message Expiry Interval 10
              26 00 01 61 00 01 32  #   User Property ("a", "2")
            """
        ),
        Publish(
            "t",
            b"",
            properties=Properties(
                message_expiry_interval=10, user_properties=(("a", "1"), ("a", "2"))
            ),
        ),
        BOTH,
        ("MQTT-3.3.2-17", "MQTT-3.3.2-18"),
    ),
]


def _connect5(properties: str, rest: str = "00 02 63 31", flags: str = "02") -> bytes:
    """A CONNECT at level 5 from hex properties (with their length) and payload."""
    body = h(f"00 04 4d 51 54 54 05 {flags} 00 3c {properties} {rest}")
    return bytes((0x10, len(body))) + body


BAD: list[BadVector5] = [
    # Entry 17: properties unknown, not allowed, duplicated or truncated.
    BadVector5(
        "unknown property identifier 0x7f",
        h('30 06 00 01 74  02 7f 00  # PUBLISH "t", Property Length 2, identifier 0x7f'),
        MalformedPacket,
        None,
        17,
    ),
    BadVector5(
        "Session Expiry Interval in PUBLISH (not allowed there)",
        h("30 09 00 01 74  05 11 00 00 00 01"),
        MalformedPacket,
        None,
        17,
    ),
    BadVector5(
        "Topic Alias in CONNECT (not allowed there), answered with CONNACK 0x81",
        _connect5("03 23 00 01"),
        MalformedPacket,
        None,
        17,
        connected=False,
    ),
    BadVector5(
        "unknown property identifier in Will Properties",
        _connect5("00", "00 02 63 31  02 7f 00  00 01 77  00 00", flags="06"),
        MalformedPacket,
        None,
        17,
        connected=False,
    ),
    BadVector5(
        "Message Expiry Interval twice",
        h("30 0e 00 01 74  0a 02 00 00 00 01 02 00 00 00 02"),
        ProtocolViolation,
        None,
        17,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Receive Maximum twice in CONNECT, answered with CONNACK 0x82",
        _connect5("06 21 00 01 21 00 02"),
        ProtocolViolation,
        None,
        17,
        connected=False,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Subscription Identifier twice in SUBSCRIBE",
        h("82 0b 00 01  04 0b 01 0b 02  00 01 61 00"),
        ProtocolViolation,
        None,
        17,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Four Byte Integer property cut by the Property Length",
        h("30 09 00 01 74  03 02 00 00  00 00"),
        MalformedPacket,
        None,
        17,
    ),
    BadVector5(
        "string property runs past the Property Length",
        h("30 09 00 01 74  05 03 00 05 61 62"),
        MalformedPacket,
        None,
        17,
    ),
    BadVector5(
        "Property Length runs past the packet",
        h("30 05 00 01 74  09 01"),
        MalformedPacket,
        None,
        17,
    ),
    BadVector5(
        "Property Length missing",
        h("30 03 00 01 74"),
        MalformedPacket,
        "MQTT-2.2.2-1",
        17,
    ),
    BadVector5(
        "Property Length not in its shortest form",
        h("30 05 00 01 74  80 00"),
        MalformedPacket,
        "MQTT-1.5.5-1",
        17,
    ),
    BadVector5(
        "Subscription Identifier not in its shortest form",
        h("30 07 00 01 74  03 0b 81 00"),
        MalformedPacket,
        "MQTT-1.5.5-1",
        17,
        direction=CLIENT,
    ),
    BadVector5(
        "User Property name is ill-formed UTF-8",
        h("30 0b 00 01 74  07 26 00 01 ff 00 01 76"),
        MalformedPacket,
        "MQTT-1.5.4-1",
        17,
    ),
    BadVector5(
        "Payload Format Indicator 2",
        h("30 06 00 01 74  02 01 02"),
        ProtocolViolation,
        None,
        17,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Authentication Data without Authentication Method in CONNECT",
        _connect5("04 16 00 01 01"),
        ProtocolViolation,
        None,
        17,
        connected=False,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Authentication Data without Authentication Method in AUTH",
        h("f0 06 18  04 16 00 01 01"),
        ProtocolViolation,
        None,
        17,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Response Topic with a wildcard",
        h("30 0a 00 01 74  06 08 00 03 61 2f 23"),
        MalformedPacket,
        "MQTT-3.3.2-14",
        17,
    ),
    BadVector5(
        "Subscription Identifier in a PUBLISH from the client",
        h("30 06 00 01 74  02 0b 01"),
        ProtocolViolation,
        "MQTT-3.3.4-6",
        17,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Session Expiry Interval in a DISCONNECT from the server",
        h("e0 07 00  05 11 00 00 00 01"),
        ProtocolViolation,
        "MQTT-3.14.2-2",
        17,
        direction=CLIENT,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "PUBACK with bytes after its properties",
        h("40 05 00 01 00 00 ff"),
        MalformedPacket,
        None,
        17,
    ),
    # Entry 19: limits the codec can see.
    BadVector5(
        "Topic Alias 0",
        h("30 07 00 01 74  03 23 00 00"),
        ProtocolViolation,
        "MQTT-3.3.2-8",
        19,
        reason_code=ReasonCode.TOPIC_ALIAS_INVALID,
    ),
    BadVector5(
        "Receive Maximum 0 in CONNECT",
        _connect5("03 21 00 00"),
        ProtocolViolation,
        None,
        19,
        connected=False,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Maximum Packet Size 0 in CONNECT",
        _connect5("05 27 00 00 00 00"),
        ProtocolViolation,
        None,
        19,
        connected=False,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "Subscription Identifier 0 in SUBSCRIBE",
        h("82 09 00 01  02 0b 00  00 01 61 00"),
        ProtocolViolation,
        None,
        19,
        reason_code=PROTOCOL_ERROR,
    ),
    # Entry 20: too large, refused from the fixed header.
    BadVector5(
        "PUBLISH declaring 256 MB",
        h("30 ff ff ff 7f"),
        PacketTooLarge,
        None,
        20,
        raises_at=4,
        reason_code=ReasonCode.PACKET_TOO_LARGE,
    ),
    # Entry 7 at 5.0: unknown version, answered with CONNACK 0x84.
    BadVector5(
        "CONNECT MQTT version 6",
        h("10 0f 00 04 4d 51 54 54 06 02 00 3c 00 00 02 63 31"),
        UnacceptableProtocol,
        "MQTT-3.1.2-2",
        7,
        connected=False,
        reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ),
    # Entry 11 at 5.0: zero-length topic without a Topic Alias.
    BadVector5(
        "PUBLISH zero-length topic without a Topic Alias",
        h("30 03 00 00 00"),
        ProtocolViolation,
        "MQTT-4.7.3-1",
        11,
        reason_code=PROTOCOL_ERROR,
    ),
    # Entries 6 and 13 at 5.0: header errors, on the first byte.
    BadVector5(
        "second CONNECT at 5.0",
        CONNECT_5,
        ProtocolViolation,
        "MQTT-3.1.0-2",
        6,
        raises_at=0,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "reserved packet type 0",
        h("00 00"),
        ProtocolViolation,
        None,
        5,
        raises_at=0,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "AUTH with fixed header flags 0001",
        h("f1 00"),
        MalformedPacket,
        "MQTT-3.15.1-1",
        13,
        raises_at=0,
    ),
    BadVector5(
        "DISCONNECT with fixed header flags 0001",
        h("e1 00"),
        MalformedPacket,
        "MQTT-3.14.1-1",
        13,
        raises_at=0,
    ),
    BadVector5(
        "SUBSCRIBE sent to a client",
        h("82 07 00 01 00 00 01 61 00"),
        ProtocolViolation,
        None,
        5,
        direction=CLIENT,
        raises_at=0,
        reason_code=PROTOCOL_ERROR,
    ),
    # CONNECT flags at 5.0 (entry 8).
    BadVector5(
        "CONNECT 5 reserved flag",
        _connect5("00", flags="03"),
        MalformedPacket,
        "MQTT-3.1.2-3",
        8,
        connected=False,
    ),
    BadVector5(
        "CONNECT 5 Will QoS 3",
        _connect5("00", "00 02 63 31  00  00 01 77  00 00", flags="1e"),
        MalformedPacket,
        "MQTT-3.1.2-12",
        8,
        connected=False,
    ),
    BadVector5(
        "CONNECT 5 Will Retain without Will",
        _connect5("00", flags="22"),
        MalformedPacket,
        "MQTT-3.1.2-13",
        8,
        connected=False,
    ),
    # Subscription options and empty payloads at 5.0 (entry 14).
    BadVector5(
        "SUBSCRIBE reserved option bit 6",
        h("82 07 00 01 00  00 01 61  40"),
        MalformedPacket,
        "MQTT-3.8.3-5",
        14,
    ),
    BadVector5(
        "SUBSCRIBE Retain Handling 3",
        h("82 07 00 01 00  00 01 61  30"),
        ProtocolViolation,
        None,
        14,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "SUBSCRIBE maximum QoS 3",
        h("82 07 00 01 00  00 01 61  03"),
        ProtocolViolation,
        None,
        14,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "SUBSCRIBE No Local on a shared subscription",
        h('82 10 00 01 00  00 0a 24 73 68 61 72 65 2f 67 2f 61  04  # "$share/g/a"'),
        ProtocolViolation,
        "MQTT-3.8.3-4",
        14,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "SUBSCRIBE without filters",
        h("82 03 00 01 00"),
        ProtocolViolation,
        "MQTT-3.8.3-2",
        14,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "UNSUBSCRIBE without filters",
        h("a2 03 00 01 00"),
        ProtocolViolation,
        "MQTT-3.10.3-2",
        14,
        reason_code=PROTOCOL_ERROR,
    ),
    # Reason codes outside each packet's set.
    BadVector5(
        "PUBACK reason code 0x05",
        h("40 03 00 01 05"),
        ProtocolViolation,
        "MQTT-3.4.2-1",
        None,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "PUBREL reason code 0x10",
        h("62 03 00 01 10"),
        ProtocolViolation,
        "MQTT-3.6.2-1",
        None,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "DISCONNECT reason code 0x05",
        h("e0 01 05"),
        ProtocolViolation,
        "MQTT-3.14.2-1",
        None,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "AUTH reason code 0x80",
        h("f0 02 80 00"),
        ProtocolViolation,
        "MQTT-3.15.2-1",
        None,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "AUTH with a reason code but no Property Length",
        h("f0 01 18"),
        MalformedPacket,
        "MQTT-2.2.2-1",
        None,
    ),
    BadVector5(
        "CONNACK reason code 0x06",
        h("20 03 00 06 00"),
        ProtocolViolation,
        "MQTT-3.2.2-8",
        None,
        direction=CLIENT,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "CONNACK session present with a refusal",
        h("20 03 01 80 00"),
        ProtocolViolation,
        "MQTT-3.2.2-6",
        None,
        direction=CLIENT,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "CONNACK reserved acknowledge flag",
        h("20 03 02 00 00"),
        MalformedPacket,
        "MQTT-3.2.2-1",
        None,
        direction=CLIENT,
    ),
    BadVector5(
        "SUBACK reason code 0x03",
        h("90 04 00 01 00 03"),
        ProtocolViolation,
        "MQTT-3.9.3-2",
        None,
        direction=CLIENT,
        reason_code=PROTOCOL_ERROR,
    ),
    BadVector5(
        "UNSUBACK without reason codes",
        h("b0 03 00 01 00"),
        ProtocolViolation,
        "MQTT-3.11.3-2",
        None,
        direction=CLIENT,
        reason_code=PROTOCOL_ERROR,
    ),
]


def user_property_flood(count: int) -> bytes:
    """
    A QoS 0 PUBLISH to "t" carrying C{count} User Properties ("k", "v"),
    bad-inputs entry 18 (CVE-2021-41039).
    """
    pair = h("26 00 01 6b 00 01 76")
    properties = pair * count
    length = _varint(len(properties))
    body = h("00 01 74") + length + properties
    return b"\x30" + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    """A Variable Byte Integer, written here independently of the codec."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
