"""
MQTT 5.0 normative statements not checked elsewhere, on the in-memory
harness (a real broker and protocol, bytes in and out), every client here
speaking level 5.  Statement ids are those of the 5.0 specification; the
count is kept by L{tests.spec_coverage} and the statements left out are
listed, with the reason, in docs/conformance.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from mqttd.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from mqttd.interfaces import Action, Allow, ClientInfo, Credentials, IAuthenticator, IAuthorizer
from mqttd.protocol import MQTTServerFactory, MQTTServerProtocol

from .harness import LISTENER, Client, World

KEEP = Properties(session_expiry_interval=3600)


def v5(world: World, clientId: str, clean: bool = True, **properties: Any) -> Client:
    """A 5.0 client that got CONNACK 0; a persistent one (clean=False) keeps its session an hour."""
    if not clean:
        properties.setdefault("session_expiry_interval", 3600)
    return world.connect(clientId, clean, level=5, properties=Properties(**properties))


def sub5(world: World, clientId: str, *filters: tuple[str, int], clean: bool = True) -> Client:
    client = v5(world, clientId, clean)
    client.send(Subscribe(1, [(f, SubscriptionOptions.of(q)) for f, q in filters]))
    suback, *client._unread = client.read()
    assert isinstance(suback, Suback)
    return client


def options(qos: int = 0, **flags: Any) -> SubscriptionOptions:
    return SubscriptionOptions.of(qos, **flags)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _connect5(flags: int, payload: bytes, name: bytes = b"MQTT") -> bytes:
    """A level 5 CONNECT with no properties, laid out by hand."""
    body = _string(name) + bytes([5, flags]) + b"\x00\x3c" + b"\x00" + payload
    return bytes([0x10, len(body)]) + body


def _refusedWith(client: Client, code: int) -> None:
    assert client.read() == [Connack(False, code)]
    assert client.closed


def _disconnectedWith(client: Client, code: int) -> None:
    assert client.read()[-1:] == [Disconnect(code)]
    assert client.closed


# Data representation, fixed header, packet identifiers


def test_packets_sent_carry_reserved_flag_values() -> None:
    """
    Every packet the broker sends to a 5.0 client carries the reserved flag
    values of section 2.1.3: CONNACK 0x20, SUBACK 0x90, UNSUBACK 0xB0, PUBACK
    0x40, PUBREC 0x50, PUBCOMP 0x70, PINGRESP 0xD0, PUBREL 0x62, DISCONNECT
    0xE0 [MQTT-2.1.3-1].
    """
    world = World()
    client = world.client(level=5)
    client.send(Connect(5, "c"))
    firsts = [client.transport.value()[0]]
    client.transport.clear()
    for packet in (
        Subscribe(1, [("t", options(2))]),
        Unsubscribe(2, ["x"]),
        Publish("p", b"", 1, packet_id=3),
        Publish("p", b"", 2, packet_id=4),
        Pubrel(4),
        Pingreq(),
    ):
        client.send(packet)
        firsts.append(client.transport.value()[0])
        client.transport.clear()
    v5(world, "pub").send(Publish("t", b"", 2, packet_id=1))
    (publish,) = client.publishes()
    client.send(Pubrec(publish.packet_id))  # type: ignore[arg-type]
    firsts.append(client.transport.value()[0])
    client.transport.clear()
    client.sendBytes(b"\xc0\x01")
    firsts.append(client.transport.value()[0])
    assert firsts == [0x20, 0x90, 0xB0, 0x40, 0x50, 0x70, 0xD0, 0x62, 0xE0]


def test_server_packet_ids_and_qos1_sender_rules() -> None:
    """
    Each new QoS > 0 PUBLISH to a client gets a non-zero unused Packet
    Identifier [MQTT-2.2.1-4, MQTT-4.3.2-1, MQTT-4.3.3-1], goes out with
    DUP 0 at its QoS [MQTT-4.3.2-2, MQTT-4.3.3-2], and stays unacknowledged
    until its PUBACK or PUBREC: re-sent with DUP 1 and the same identifier on
    reconnection [MQTT-4.3.2-3, MQTT-4.3.3-3, MQTT-3.3.1-1].
    """
    world = World()
    sub = v5(world, "sub", clean=False)
    sub.send(Subscribe(1, [("t", options(2))]))
    sub.read()
    pub = v5(world, "pub")
    pub.send(Publish("t", b"1", 1, packet_id=1))
    pub.send(Publish("t", b"2", 2, packet_id=2), Pubrel(2))
    pub.send(Publish("t", b"3", 1, packet_id=3))
    sent = sub.publishes()
    ids = [p.packet_id for p in sent]
    assert len(set(ids)) == 3 and all(ids)
    assert [(p.qos, p.dup) for p in sent] == [(1, False), (2, False), (1, False)]
    sub.send(Puback(ids[2]))  # type: ignore[arg-type]
    sub.drop()
    back = v5(world, "sub", clean=False)
    assert [(p.packet_id, p.qos, p.dup) for p in back.publishes()] == [
        (ids[0], 1, True),
        (ids[1], 2, True),
    ]


def test_qos2_sender_pubrel_unacknowledged_until_pubcomp() -> None:
    """
    Once PUBREC came the broker sends PUBREL and never the PUBLISH again
    [MQTT-4.3.3-6]; the PUBREL stays unacknowledged until PUBCOMP and is
    re-sent on reconnection [MQTT-4.3.3-5].
    """
    world = World()
    sub = v5(world, "sub", clean=False)
    sub.send(Subscribe(1, [("t", options(2))]))
    sub.read()
    v5(world, "pub").send(Publish("t", b"x", 2, packet_id=1), Pubrel(1))
    (publish,) = sub.publishes()
    assert publish.packet_id is not None
    sub.send(Pubrec(publish.packet_id))
    assert sub.read() == [Pubrel(publish.packet_id)]
    sub.drop()
    back = v5(world, "sub", clean=False)
    assert back.read() == [Pubrel(publish.packet_id)]
    back.send(Pubcomp(publish.packet_id))
    back.drop()
    again = v5(world, "sub", clean=False)
    assert again.read() == []


def test_suback_and_unsuback_carry_the_packet_id() -> None:
    """
    Every SUBSCRIBE is answered by a SUBACK, every UNSUBSCRIBE by an
    UNSUBACK, each with the request's Packet Identifier, even when nothing
    was unsubscribed [MQTT-2.2.1-6, MQTT-3.8.4-1, MQTT-3.8.4-2,
    MQTT-3.10.4-4, MQTT-3.10.4-5].
    """
    world = World()
    client = v5(world, "c")
    for packet_id in (1, 513, 65535):
        client.send(Subscribe(packet_id, [("t", options(1))]))
        assert client.read() == [Suback(packet_id, [1])]
        client.send(Unsubscribe(packet_id, ["t", "never"]))
        assert client.read() == [
            Unsuback(packet_id, [ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED])
        ]


def test_client_packet_id_zero_refused() -> None:
    """
    A client's QoS > 0 PUBLISH, SUBSCRIBE and UNSUBSCRIBE need a non-zero
    Packet Identifier [MQTT-2.2.1-3]: 0 gets DISCONNECT 0x81 Malformed Packet.
    """
    world = World()
    for data in (
        "3205 0001 74 0000 00",
        "8206 0000 00 0001 74 00",
        "a205 0000 00 0001 74",
    ):
        client = v5(world, "c")
        client.sendBytes(bytes.fromhex(data.replace(" ", "")))
        _disconnectedWith(client, ReasonCode.MALFORMED_PACKET)


# CONNECT


def test_wrong_protocol_name_closes() -> None:
    """
    A CONNECT whose protocol name is not "MQTT" gets at most a CONNACK saying
    the version is unsupported, then the connection is closed with no session
    [MQTT-3.1.2-1].
    """
    world = World()
    client = world.client(level=5)
    client.sendBytes(_connect5(0x02, _string(b"c"), name=b"MQTX"))
    assert client.transport.value() in (b"", b"\x20\x02\x00\x01", b"\x20\x03\x00\x84\x00")
    assert client.closed and "c" not in world.broker.sessions


def test_will_stored_with_session_and_removed_once_published() -> None:
    """
    A will is stored with the session [MQTT-3.1.2-7] and removed once
    published or on DISCONNECT 0x00 [MQTT-3.1.2-10]: the store forgets it.
    """
    world = World()
    sub = sub5(world, "sub", ("w", 0))
    will = Will("w", b"bye", 0, False)
    gone = world.connect("gone", will=will, level=5, properties=KEEP, clean=False)
    assert world.broker.sessions["gone"].will == will
    assert "gone" in world.store.wills
    gone.drop()
    assert [p.payload for p in sub.publishes()] == [b"bye"]
    assert world.broker.sessions["gone"].will is None
    assert "gone" not in world.store.wills
    polite = world.connect("polite", will=will, level=5, properties=KEEP, clean=False)
    polite.send(Disconnect(ReasonCode.NORMAL_DISCONNECTION))
    polite.finish()
    assert sub.publishes() == []
    assert "polite" not in world.store.wills


def test_will_flags_without_will_refused() -> None:
    """
    Will Flag 0 with Will QoS or Will Retain set is malformed: CONNACK 0x81
    and close [MQTT-3.1.2-11].  A Password with the Password Flag 0 is too
    [MQTT-3.1.2-18].
    """
    world = World()
    for flags, payload in (
        (0x0A, _string(b"c")),
        (0x22, _string(b"c")),
        (0x82, _string(b"c") + _string(b"u") + _string(b"pw")),
    ):
        client = world.client(level=5)
        client.sendBytes(_connect5(flags, payload))
        _refusedWith(client, ReasonCode.MALFORMED_PACKET)


def test_will_retain_decides_retained() -> None:
    """
    Will Retain 0 publishes the will non-retained [MQTT-3.1.2-14], Will Retain
    1 as a retained message [MQTT-3.1.2-15].
    """
    world = World()
    for retain in (False, True):
        topic = f"w/{int(retain)}"
        sub = sub5(world, f"sub{int(retain)}", (topic, 0))
        gone = world.connect("gone", will=Will(topic, b"bye", 0, retain), level=5)
        gone.drop()
        (will,) = sub.publishes()
        assert not will.retain
        late = v5(world, "late")
        late.send(Subscribe(1, [(topic, options(0))]))
        assert [p.retain for p in late.publishes()] == ([True] if retain else [])


def test_connect_strings_must_be_utf8() -> None:
    """
    The Client Identifier, Will Topic and User Name are UTF-8 Encoded Strings
    [MQTT-3.1.3-4, MQTT-3.1.3-11, MQTT-3.1.3-12]: ill-formed UTF-8 in any gets
    CONNACK 0x81 and close.
    """
    world = World()
    bad = _string(b"\xc3\x28")
    for flags, payload in (
        (0x02, bad),
        (0x06, _string(b"c") + b"\x00" + bad + _string(b"m")),
        (0x82, _string(b"c") + bad),
    ):
        client = world.client(level=5)
        client.sendBytes(_connect5(flags, payload))
        _refusedWith(client, ReasonCode.MALFORMED_PACKET)


def test_client_ids_of_1_to_23_alphanumerics_allowed() -> None:
    """
    Client identifiers of 1 to 23 of the characters 0-9, a-z, A-Z are
    accepted [MQTT-3.1.3-5].
    """
    world = World()
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for clientId in ("a", alphabet[:23], alphabet[23:46], alphabet[39:]):
        assert v5(world, clientId).connack.return_code == 0  # type: ignore[attr-defined]


def test_rejected_client_id_0x85_and_close() -> None:
    """
    A client identifier the server refuses (empty, with zero-length ids
    disallowed) gets CONNACK 0x85 Client Identifier not valid and the
    connection is closed [MQTT-3.1.3-8, MQTT-4.13.2-1].
    """
    world = World(allow_zero_length_clientid=False)
    client = world.client(level=5)
    client.send(Connect(5, ""))
    _refusedWith(client, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)


def test_failed_authentication_closes_and_ignores_later_data() -> None:
    """
    A CONNECT failing authentication gets CONNACK 0x87 and the connection is
    closed [MQTT-3.1.4-2, MQTT-4.13.2-1]; a PUBLISH sent right after it is not
    processed [MQTT-3.1.4-6].
    """
    world = World()
    sub = sub5(world, "sub", ("t", 0))
    world.factory = MQTTServerFactory(
        world.broker, replace(LISTENER, name="strict", allow_anonymous=False), world.clock
    )
    client = world.client(level=5)
    client.sendBytes(encode(Connect(5, "anon"), 5) + encode(Publish("t", b"sneaked"), 5))
    _refusedWith(client, ReasonCode.NOT_AUTHORIZED)
    assert sub.read() == []


def test_clean_start_and_connack_first_and_once() -> None:
    """
    Clean Start 1 discards the old session [MQTT-3.1.4-4]; on resumption the
    CONNACK 0x00 comes before any queued PUBLISH [MQTT-3.2.0-1]; a second
    CONNECT gets no second CONNACK but DISCONNECT 0x82 [MQTT-3.2.0-2].
    """
    world = World()
    old = sub5(world, "c", ("t", 1), clean=False)
    old.drop()
    v5(world, "pub").send(Publish("t", b"queued", 1, packet_id=1))
    resumed = world.client(level=5)
    resumed.send(Connect(5, "c", clean_session=False, properties=KEEP))
    first, second = resumed.read()
    assert isinstance(first, Connack) and (first.session_present, first.return_code) == (True, 0)
    assert isinstance(second, Publish)
    resumed.send(Connect(5, "c"))
    _disconnectedWith(resumed, ReasonCode.PROTOCOL_ERROR)
    resumed.finish()
    fresh = world.client(level=5)
    fresh.send(Connect(5, "c", clean_session=True, properties=KEEP))
    (connack,) = fresh.read()
    assert isinstance(connack, Connack)
    assert (connack.session_present, connack.return_code) == (False, 0)


def test_client_keepalive_used_without_server_keep_alive() -> None:
    """
    With no Server Keep Alive in CONNACK the client's own Keep Alive (10 s)
    is enforced: alive at 15 s with traffic, closed with 0x8D after 15 s of
    silence [MQTT-3.2.2-22].
    """
    world = World()
    client = world.connect("c", keepalive=10, level=5)
    assert client.connack.properties.server_keep_alive is None  # type: ignore[attr-defined]
    world.clock.advance(14)
    client.send(Pingreq())
    assert client.read() == [Pingresp()]
    world.clock.advance(14)
    assert not client.closed
    world.clock.advance(2)
    _disconnectedWith(client, ReasonCode.KEEP_ALIVE_TIMEOUT)


# PUBLISH


def test_publish_flags_dup_and_qos() -> None:
    """
    DUP set at QoS 0 [MQTT-3.3.1-2] and QoS 3 [MQTT-3.3.1-4] are malformed:
    DISCONNECT 0x81.  An incoming DUP is not passed on: the subscriber's
    copy has DUP 0 [MQTT-3.3.1-3]; QoS 0 goes out as 0x30, QoS 0 and DUP 0
    [MQTT-4.3.1-1].
    """
    world = World()
    sub1 = sub5(world, "sub1", ("t", 1))
    sub0 = sub5(world, "sub0", ("t", 0))
    pub = v5(world, "pub")
    pub.send(Publish("t", b"x", 1, dup=True, packet_id=3))
    (copy,) = sub1.publishes()
    assert copy.qos == 1 and not copy.dup
    assert sub0.transport.value()[0] == 0x30
    for first in ("38", "36"):
        bad = v5(world, "bad")
        bad.sendBytes(bytes.fromhex(first + "0400017400"))
        _disconnectedWith(bad, ReasonCode.MALFORMED_PACKET)


def test_retain_rules() -> None:
    """
    RETAIN 1 replaces the topic's retained message [MQTT-3.3.1-5]; a
    zero-byte retained PUBLISH is delivered normally but removes the retained
    message and is not itself retained [MQTT-3.3.1-6, MQTT-3.3.1-7]; RETAIN 0
    neither stores nor removes [MQTT-3.3.1-8].
    """
    world = World()
    pub = v5(world, "pub")

    def retained(topic: str) -> list[bytes]:
        late = v5(world, "late")
        late.send(Subscribe(1, [(topic, options(0))]))
        return [p.payload for p in late.publishes()]

    pub.send(Publish("r", b"one", retain=True), Publish("r", b"two", retain=True))
    assert retained("r") == [b"two"]
    pub.send(Publish("r", b"plain"))
    assert retained("r") == [b"two"]
    sub = sub5(world, "sub", ("r", 0))
    assert [p.payload for p in sub.publishes()] == [b"two"]
    pub.send(Publish("r", b"", retain=True))
    assert [p.payload for p in sub.publishes()] == [b""]
    assert retained("r") == []


def test_wildcards_and_null_in_topic_names_refused() -> None:
    """
    A Topic Name with a wildcard [MQTT-3.3.2-2, MQTT-4.7.0-1] or U+0000
    [MQTT-4.7.3-2, MQTT-1.5.4-2] gets DISCONNECT 0x81; so does a Topic Filter
    with U+0000.
    """
    world = World()
    for data in (
        "3006 0003 612f2b 00",
        "3006 0003 612f23 00",
        "3006 0003 610062 00",
        "8209 0001 00 0003 610062 00",
    ):
        client = v5(world, "c")
        client.sendBytes(bytes.fromhex(data.replace(" ", "")))
        _disconnectedWith(client, ReasonCode.MALFORMED_PACKET)


def test_payload_format_and_content_type_unaltered() -> None:
    """
    The Payload Format Indicator and Content Type reach every subscriber
    unaltered, 5.0 subscribers of any QoS [MQTT-3.3.2-4, MQTT-3.3.2-20].
    """
    world = World()
    subs = [sub5(world, f"s{q}", ("t", q)) for q in (0, 1, 2)]
    props = Properties(payload_format_indicator=1, content_type="text/plain; charset=utf-8")
    v5(world, "pub").send(Publish("t", "héllo".encode(), 1, packet_id=1, properties=props))
    for sub in subs:
        (got,) = sub.publishes()
        assert got.properties.payload_format_indicator == 1
        assert got.properties.content_type == "text/plain; charset=utf-8"


def test_receiver_responses_and_packet_id_reuse() -> None:
    """
    The broker answers QoS 0 with nothing, QoS 1 with PUBACK and QoS 2 with
    PUBREC, each with the PUBLISH's identifier [MQTT-3.3.4-1, MQTT-4.3.2-4,
    MQTT-4.3.3-8]; PUBREL gets PUBCOMP with its identifier [MQTT-4.3.3-11].
    After PUBACK, and after PUBCOMP, the same identifier starts a new message
    [MQTT-4.3.2-5, MQTT-4.3.3-12]; before PUBREL a re-sent PUBLISH gets
    PUBREC again and is not delivered twice [MQTT-4.3.3-10].
    """
    world = World()
    sub = sub5(world, "sub", ("t", 0))
    pub = v5(world, "pub")
    pub.send(Publish("t", b"0"))
    assert pub.read() == []
    pub.send(Publish("t", b"1a", 1, packet_id=5), Publish("t", b"1b", 1, dup=True, packet_id=5))
    assert pub.read() == [Puback(5), Puback(5)]
    pub.send(Publish("t", b"2a", 2, packet_id=6), Publish("t", b"2a", 2, dup=True, packet_id=6))
    assert pub.read() == [Pubrec(6), Pubrec(6)]
    pub.send(Pubrel(6))
    assert pub.read() == [Pubcomp(6)]
    pub.send(Publish("t", b"2b", 2, packet_id=6), Pubrel(6))
    assert pub.read() == [Pubrec(6), Pubcomp(6)]
    assert [p.payload for p in sub.publishes()] == [b"0", b"1a", b"1b", b"2a", b"2b"]


@implementer(IAuthorizer)
class _DenySecret:
    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool:
        return not topic.startswith("secret")


def test_refused_pubrec_frees_the_packet_id() -> None:
    """
    A PUBLISH the authorizers refuse gets PUBACK or PUBREC 0x87 Not
    authorized; after such a PUBREC a PUBLISH with that identifier is a new
    message [MQTT-4.3.3-9].
    """
    world = World()
    world.broker.authorizers = (_DenySecret(),)
    sub = sub5(world, "sub", ("#", 0))
    pub = v5(world, "pub")
    pub.send(Publish("secret", b"no", 1, packet_id=3))
    assert pub.read() == [Puback(3, ReasonCode.NOT_AUTHORIZED)]
    pub.send(Publish("secret", b"no", 2, packet_id=4))
    assert pub.read() == [Pubrec(4, ReasonCode.NOT_AUTHORIZED)]
    pub.send(Publish("t", b"yes", 2, packet_id=4))
    assert pub.read() == [Pubrec(4)]
    pub.send(Pubrel(4))
    assert pub.read() == [Pubcomp(4)]
    assert [p.payload for p in sub.publishes()] == [b"yes"]


def test_qos2_expiry_rules() -> None:
    """
    Message expiry is not applied to a QoS 2 PUBLISH already sent: it is
    re-sent after its expiry on reconnection [MQTT-4.3.3-7]; and an inbound
    QoS 2 flow completes even when the message expired meanwhile
    [MQTT-4.3.3-13].
    """
    world = World()
    sub = v5(world, "sub", clean=False)
    sub.send(Subscribe(1, [("t", options(2))]))
    sub.read()
    pub = v5(world, "pub")
    pub.send(Publish("t", b"x", 2, packet_id=1, properties=Properties(message_expiry_interval=5)))
    assert pub.read() == [Pubrec(1)]
    (sent,) = sub.publishes()
    sub.drop()
    world.clock.advance(60)
    pub.send(Pubrel(1))
    assert pub.read() == [Pubcomp(1)]
    back = v5(world, "sub", clean=False)
    (again,) = back.publishes()
    assert (again.packet_id, again.dup, again.payload) == (sent.packet_id, True, b"x")


def test_refusing_puback_or_pubrec_ends_delivery() -> None:
    """
    A PUBACK or PUBREC with a reason code of 0x80 or more acknowledges the
    PUBLISH: it is not sent again, even on reconnection [MQTT-4.4.0-2].
    """
    world = World()
    sub = v5(world, "sub", clean=False)
    sub.send(Subscribe(1, [("a", options(1)), ("b", options(2))]))
    sub.read()
    pub = v5(world, "pub")
    pub.send(Publish("a", b"1", 1, packet_id=1), Publish("b", b"2", 2, packet_id=2), Pubrel(2))
    one, two = sub.publishes()
    sub.send(Puback(one.packet_id, ReasonCode.UNSPECIFIED_ERROR))  # type: ignore[arg-type]
    sub.send(Pubrec(two.packet_id, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR))  # type: ignore[arg-type]
    assert sub.read() == []
    sub.drop()
    assert v5(world, "sub", clean=False).read() == []


# Maximum Packet Size: properties dropped to fit


_VERBOSE = Properties(reason_string="why " * 20, user_properties=(("key", "value " * 20),))


@pytest.mark.parametrize(
    ("packet", "ids"),
    [
        (Connack(False, ReasonCode.SUCCESS, _VERBOSE), "MQTT-3.2.2-19 MQTT-3.2.2-20"),
        (Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS, _VERBOSE), "MQTT-3.4.2-2 MQTT-3.4.2-3"),
        (Pubrec(1, ReasonCode.NO_MATCHING_SUBSCRIBERS, _VERBOSE), "MQTT-3.5.2-2 MQTT-3.5.2-3"),
        (Pubrel(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, _VERBOSE), "MQTT-3.6.2-2 MQTT-3.6.2-3"),
        (Pubcomp(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, _VERBOSE), "MQTT-3.7.2-2 MQTT-3.7.2-3"),
        (Suback(1, [1], _VERBOSE), "MQTT-3.9.2-1 MQTT-3.9.2-2"),
        (Unsuback(1, [0], _VERBOSE), "MQTT-3.11.2-1 MQTT-3.11.2-2"),
        (
            Disconnect(ReasonCode.ADMINISTRATIVE_ACTION, _VERBOSE),
            "MQTT-3.14.2-3 MQTT-3.14.2-4",
        ),
        (
            Auth(ReasonCode.CONTINUE_AUTHENTICATION, replace(_VERBOSE, authentication_method="m")),
            "MQTT-3.15.2-2 MQTT-3.15.2-3",
        ),
    ],
)
def test_reason_string_and_user_properties_not_sent_beyond_maximum(
    packet: Packet, ids: str
) -> None:
    """
    The Reason String and User Properties of every packet that can carry
    them are left out when they would take it beyond the client's Maximum
    Packet Size, and kept when it fits: CONNACK [MQTT-3.2.2-19,
    MQTT-3.2.2-20], PUBACK [MQTT-3.4.2-2, MQTT-3.4.2-3], PUBREC [MQTT-3.5.2-2,
    MQTT-3.5.2-3], PUBREL [MQTT-3.6.2-2, MQTT-3.6.2-3], PUBCOMP
    [MQTT-3.7.2-2, MQTT-3.7.2-3], SUBACK [MQTT-3.9.2-1, MQTT-3.9.2-2],
    UNSUBACK [MQTT-3.11.2-1, MQTT-3.11.2-2], DISCONNECT [MQTT-3.14.2-3,
    MQTT-3.14.2-4], AUTH [MQTT-3.15.2-2, MQTT-3.15.2-3].
    """
    world = World()
    client = v5(world, "c")
    protocol: MQTTServerProtocol = client.protocol
    full = len(encode(packet, 5))
    properties: Properties = packet.properties  # type: ignore[union-attr]
    bare = replace(
        packet,
        properties=replace(properties, reason_string=None, user_properties=()),  # type: ignore[arg-type]
    )
    protocol.maxPacketSize = full
    protocol.sendPacket(packet)
    assert client.read() == [packet]
    protocol.maxPacketSize = full - 1
    protocol.sendPacket(packet)
    assert client.read() == [bare]


def test_client_exceeding_maximum_packet_size_disconnected() -> None:
    """
    A packet larger than the Maximum Packet Size the broker announced in
    CONNACK breaks [MQTT-3.2.2-15]: DISCONNECT 0x95 Packet too large.
    """
    world = World(max_packet_size=64)
    client = v5(world, "c")
    assert client.connack.properties.maximum_packet_size == 64  # type: ignore[attr-defined]
    client.send(Publish("t", b"x" * 100))
    _disconnectedWith(client, ReasonCode.PACKET_TOO_LARGE)


def test_topic_alias_beyond_announced_maximum_refused() -> None:
    """
    With Topic Alias Maximum 0 announced (absent from CONNACK) any Topic
    Alias is refused [MQTT-3.2.2-18]; with a maximum of 2, alias 3 is
    [MQTT-3.3.2-9]: DISCONNECT 0x94 either way.
    """
    world = World(topic_alias_maximum=0)
    client = v5(world, "c")
    assert client.connack.properties.topic_alias_maximum is None  # type: ignore[attr-defined]
    client.send(Publish("t", b"", properties=Properties(topic_alias=1)))
    _disconnectedWith(client, ReasonCode.TOPIC_ALIAS_INVALID)
    world = World(topic_alias_maximum=2)
    client = v5(world, "c")
    client.send(Publish("t", b"", properties=Properties(topic_alias=3)))
    _disconnectedWith(client, ReasonCode.TOPIC_ALIAS_INVALID)


# SUBSCRIBE and UNSUBSCRIBE


def test_identical_filter_replaces_subscription() -> None:
    """
    Subscribing again to an identical filter replaces the subscription (its
    QoS changes), and no message is delivered twice [MQTT-3.8.4-3].
    """
    world = World()
    client = sub5(world, "c", ("t", 2))
    client.send(Subscribe(2, [("t", options(0))]))
    assert client.read() == [Suback(2, [0])]
    v5(world, "pub").send(Publish("t", b"x", 2, packet_id=1), Pubrel(1))
    assert [(p.qos, p.payload) for p in client.publishes()] == [(0, b"x")]


def test_multiple_filters_handled_as_a_sequence() -> None:
    """
    A SUBSCRIBE with several filters is handled as several SUBSCRIBEs with one
    SUBACK [MQTT-3.8.4-5]; each reason code is the granted QoS or a failure
    [MQTT-3.8.4-7].
    """
    world = World()
    world.broker.authorizers = (_DenySecret(),)
    client = v5(world, "c")
    client.send(
        Subscribe(
            3, [("a", options(2)), ("secret", options(1)), ("b", options(1)), ("a", options(0))]
        )
    )
    assert client.read() == [Suback(3, [2, ReasonCode.NOT_AUTHORIZED, 1, 0])]
    pub = v5(world, "pub")
    pub.send(Publish("a", b"", 1, packet_id=1), Publish("b", b"", 1, packet_id=2))
    assert [(p.topic, p.qos) for p in client.publishes()] == [("a", 0), ("b", 1)]


def test_unsubscribe_rules() -> None:
    """
    UNSUBSCRIBE compares filters character by character: "a/+" does not
    remove "a/b" [MQTT-3.10.4-1]; after it no new message comes for the
    filter [MQTT-3.10.4-2] but a QoS 1 already sent completes [MQTT-3.10.4-3];
    several filters act as several UNSUBSCRIBEs with one UNSUBACK
    [MQTT-3.10.4-6].
    """
    world = World()
    client = sub5(world, "c", ("a/b", 1), ("x", 0), ("y", 0))
    pub = v5(world, "pub")
    pub.send(Publish("a/b", b"1", 1, packet_id=1))
    (inflight,) = client.publishes()
    client.send(Unsubscribe(2, ["a/+"]))
    assert client.read() == [Unsuback(2, [ReasonCode.NO_SUBSCRIPTION_EXISTED])]
    client.send(Unsubscribe(3, ["a/b", "x"]))
    assert client.read() == [Unsuback(3, [0, 0])]
    pub.send(Publish("a/b", b"2", 1, packet_id=2), Publish("x", b""), Publish("y", b"3"))
    assert [p.payload for p in client.publishes()] == [b"3"]
    client.send(Puback(inflight.packet_id))  # type: ignore[arg-type]
    assert not world.broker.sessions["c"].inflight


# Flow control


def test_send_quota_and_other_packets_at_zero_quota() -> None:
    """
    With Receive Maximum 2 the broker has at most 2 QoS > 0 PUBLISHes
    unacknowledged (its send quota starts at 2, never above) [MQTT-4.9.0-1,
    MQTT-4.9.0-2]; at quota 0 it still answers PINGREQ, SUBSCRIBE and the
    client's PUBLISH at once [MQTT-4.9.0-3, MQTT-3.3.4-10].
    """
    world = World()
    client = world.connect("c", level=5, properties=Properties(receive_maximum=2))
    client.send(Subscribe(1, [("t", options(1))]))
    client.read()
    pub = v5(world, "pub")
    for n in range(4):
        pub.send(Publish("t", bytes([n]), 1, packet_id=n + 1))
    first = client.publishes()
    assert [p.payload for p in first] == [b"\x00", b"\x01"]
    client.send(Pingreq(), Subscribe(2, [("u", options(0))]), Publish("v", b"", 1, packet_id=9))
    # Nobody subscribes to "v": the answer says so (0x10), and it comes at once all the same.
    assert client.read() == [Pingresp(), Suback(2, [0]), Puback(9, 0x10)]
    client.send(Puback(first[0].packet_id))  # type: ignore[arg-type]
    assert [p.payload for p in client.publishes()] == [b"\x02"]


# Sessions, ordering


def test_session_discarded_after_expiry() -> None:
    """
    The session is kept while its Session Expiry Interval runs and discarded
    once it has passed after the connection closed [MQTT-4.1.0-2].
    """
    world = World()
    client = world.connect("c", False, level=5, properties=Properties(session_expiry_interval=30))
    client.drop()
    world.clock.advance(29)
    assert "c" in world.broker.sessions
    world.clock.advance(2)
    assert "c" not in world.broker.sessions


def test_ordered_topics() -> None:
    """
    Messages of one topic and QoS from one client reach each subscriber in
    the order received [MQTT-4.6.0-5]; every topic is ordered by default, and
    so is a mix of QoS [MQTT-4.6.0-6].
    """
    world = World()
    subs = [sub5(world, f"s{q}", ("t", q)) for q in (0, 1, 2)]
    pub = v5(world, "pub")
    for n in range(12):
        qos = n % 3
        pub.send(Publish("t", bytes([n]), qos, packet_id=n + 1 if qos else None))
        if qos == 2:
            pub.send(Pubrel(n + 1))
    for sub in subs:
        assert [p.payload for p in sub.publishes()] == [bytes([n]) for n in range(12)]


# Topics


def test_wildcard_placement_in_filters() -> None:
    """
    "#" only on its own or after "/", and last [MQTT-4.7.1-1]; "+" only as a
    whole level [MQTT-4.7.1-2]: misplaced ones get SUBACK 0x8F, valid ones
    their QoS.
    """
    world = World()
    client = v5(world, "c")
    filters = ["#", "a/#", "a#", "a/#/b", "+", "+/a/+", "a+", "a/+b"]
    client.send(Subscribe(1, [(f, options(0)) for f in filters]))
    invalid = ReasonCode.TOPIC_FILTER_INVALID
    assert client.read() == [Suback(1, [0, 0, invalid, invalid, 0, 0, invalid, invalid])]


def test_dollar_topics_not_matched_by_leading_wildcards() -> None:
    """
    Filters starting with "#" or "+" do not match topics starting with "$"
    [MQTT-4.7.2-1]; a filter starting "$" does.
    """
    world = World()
    wild = sub5(world, "wild", ("#", 0), ("+/x", 0))
    dollar = sub5(world, "dollar", ("$app/#", 0))
    v5(world, "pub").send(Publish("$app/x", b""))
    assert wild.publishes() == []
    assert [p.topic for p in dollar.publishes()] == ["$app/x"]


def test_topic_matching_without_normalisation() -> None:
    """
    Topic matching is byte for byte: no case folding, no Unicode
    normalisation [MQTT-4.7.3-4], and a U+FEFF is kept, not stripped
    [MQTT-1.5.4-3]; a 65,535-byte topic name is accepted [MQTT-4.7.3-3].
    """
    world = World()
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    sub = sub5(world, "sub", (composed, 0), ("\ufeffb", 0), ("L/#", 0))
    pub = v5(world, "pub")
    long = "L/" + "x" * 65533
    for topic in (decomposed, "CAF\u00c9", "b", composed, "\ufeffb", long):
        pub.send(Publish(topic, b""))
    assert [p.topic for p in sub.publishes()] == [composed, "\ufeffb", long]


# Shared subscriptions


def test_share_name_rules() -> None:
    """
    A ShareName with "/", "+" or "#", or not followed by "/" and a filter, is
    refused with SUBACK 0x8F [MQTT-4.8.2-2].
    """
    world = World()
    client = v5(world, "c")
    filters = ["$share/g/t", "$share/g+/t", "$share/g#/t", "$share/g", "$share//t", "$share/g/"]
    client.send(Subscribe(1, [(f, options(1)) for f in filters]))
    invalid = ReasonCode.TOPIC_FILTER_INVALID
    assert client.read() == [Suback(1, [1, invalid, invalid, invalid, invalid, invalid])]


def test_shared_delivery_respects_granted_qos_and_reconnection() -> None:
    """
    A shared subscription's message goes at the member's granted QoS
    [MQTT-4.8.2-3]; one sent to a member that disconnects with its session
    kept is completed when it reconnects [MQTT-4.8.2-4]; a member whose
    session ends meanwhile does not pass it to another [MQTT-4.8.2-5].
    """
    world = World()
    member = v5(world, "m", clean=False)
    member.send(Subscribe(1, [("$share/g/t", options(1))]))
    member.read()
    pub = v5(world, "pub")
    pub.send(Publish("t", b"one", 2, packet_id=1), Pubrel(1))
    (got,) = member.publishes()
    assert (got.qos, got.payload) == (1, b"one")
    member.drop()
    back = v5(world, "m", clean=False)
    (again,) = back.publishes()
    assert (again.packet_id, again.dup, again.payload) == (got.packet_id, True, b"one")
    other = v5(world, "o")
    other.send(Subscribe(1, [("$share/g/t", options(1))]))
    other.read()
    quitter = world.connect("q", level=5, properties=Properties(session_expiry_interval=0))
    quitter.send(Subscribe(1, [("$share/h/t", options(1))]))
    quitter.read()
    pub.send(Publish("t", b"two", 1, packet_id=2))
    assert [p.payload for p in quitter.publishes()] == [b"two"]
    quitter.drop()
    assert [p.payload for p in back.publishes() + other.publishes()] == [b"two"]


# Errors


@implementer(IAuthenticator)
class _Failing:
    def authenticate(self, credentials: Credentials) -> Deferred[Allow]:
        return fail(OSError("user database unreachable"))


def test_connack_error_closes_the_connection() -> None:
    """
    A CONNACK with a reason code of 0x80 or more is followed by the close
    [MQTT-4.13.2-1]: an authenticator failure gives 0x87 and close.
    """
    world = World()
    world.broker.authenticators = (_Failing(),)
    client = world.client(level=5)
    client.send(Connect(5, "c"))
    _refusedWith(client, ReasonCode.NOT_AUTHORIZED)


def test_client_id_keys_session_state() -> None:
    """
    Session state belongs to the ClientID [MQTT-3.1.3-2]: a message published
    while a persistent session's client is away is added to that session
    [MQTT-4.5.0-1] and comes back to the same id, not to another.
    """
    world = World()
    away = sub5(world, "a", ("t", 1), clean=False)
    away.drop()
    v5(world, "pub").send(Publish("t", b"queued", 1, packet_id=1))
    assert v5(world, "b", clean=False).read() == []
    back = world.client(level=5)
    back.send(Connect(5, "a", clean_session=False, properties=KEEP))
    connack, *rest = back.read()
    assert isinstance(connack, Connack) and connack.session_present
    assert [p.payload for p in rest if isinstance(p, Publish)] == [b"queued"]


def test_session_kept_while_connected_and_topics_match() -> None:
    """
    A session with Session Expiry Interval 0 is not discarded while its
    connection is open, hours later [MQTT-4.1.0-1]; only topics matching its
    filter are sent, under the publisher's topic name [MQTT-3.3.2-3].
    """
    world = World()
    sub = sub5(world, "sub", ("a/+/c", 0))
    world.clock.advance(6 * 3600)
    pub = v5(world, "pub")
    for topic in ("a/b/c", "a/b", "a/b/c/d", "x/b/c", "a//c"):
        pub.send(Publish(topic, b""))
    assert [p.topic for p in sub.publishes()] == ["a/b/c", "a//c"]
