"""
MQTT 3.1.1 normative statements not checked elsewhere, one behaviour per
test, on the in-memory harness (a real broker and protocol, bytes in and
out).  The statement each test checks is cited in its docstring; the count
is kept by L{tests.spec_coverage} and the statements left out are listed,
with the reason, in docs/conformance.md.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from mqttd.bridge.client import MQTTClientProtocol
from mqttd.codec import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    IAuthenticator,
    IAuthorizer,
    ILinkOwner,
)
from mqttd.protocol import MQTTServerFactory

from .harness import LISTENER, Client, World


def _connectBytes(flags: int, payload: bytes, name: bytes = b"MQTT", level: int = 4) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes([level, flags]) + b"\x00\x3c" + payload
    return bytes([0x10, len(body)]) + body


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _refused(client: Client) -> bool:
    """Closed, nothing sent back, and no session was made."""
    return client.closed and client.transport.value() == b""


# Fixed header and packet identifiers


def test_packets_sent_carry_table_2_2_flags() -> None:
    """
    Every packet the broker sends has the fixed header flags of Table 2.2:
    CONNACK 0x20, SUBACK 0x90, UNSUBACK 0xB0, PUBACK 0x40, PUBREC 0x50, PUBREL
    0x62, PUBCOMP 0x70, PINGRESP 0xD0 [MQTT-2.2.2-1].
    """
    world = World()
    client = world.client()
    client.send(Connect(4, "c"))
    firsts = [client.transport.value()[0]]
    client.transport.clear()
    for packet in (
        Subscribe(1, [("t", 2)]),
        Unsubscribe(2, ["x"]),
        Publish("p", b"", 1, packet_id=3),
        Publish("p", b"", 2, packet_id=4),
        Pubrel(4),
    ):
        client.send(packet)
        firsts.append(client.transport.value()[0])
        client.transport.clear()
    client.sendBytes(b"\xc0\x00")
    firsts.append(client.transport.value()[0])
    client.transport.clear()
    world.connect("pub").send(Publish("t", b"", 2, packet_id=1))
    (publish,) = client.publishes()
    client.send(Pubrec(publish.packet_id))  # type: ignore[arg-type]
    firsts.append(client.transport.value()[0])
    assert firsts == [0x20, 0x90, 0xB0, 0x40, 0x50, 0x70, 0xD0, 0x62]


def test_server_packet_ids_unused_and_kept_on_resend() -> None:
    """
    The server gives each new QoS > 0 PUBLISH an unused Packet Identifier and
    re-sends an unacknowledged one with the same identifier; an identifier is
    free again once acknowledged [MQTT-2.3.1-4, MQTT-2.3.1-3 as it applies to
    the server].  QoS 1 goes out with QoS=1, DUP=0 and stays unacknowledged
    until its PUBACK [MQTT-4.3.2-1].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 1), clean=False)
    pub = world.connect("pub")
    for n in range(3):
        pub.send(Publish("t", bytes([n]), 1, packet_id=n + 1))
    sent = sub.publishes()
    ids = [p.packet_id for p in sent]
    assert len(set(ids)) == 3 and all(ids)
    assert all(p.qos == 1 and not p.dup for p in sent)
    sub.send(Puback(ids[0]))  # type: ignore[arg-type]
    sub.drop()
    again = world.connect("sub", clean=False)
    resent = again.publishes()
    assert [(p.packet_id, p.dup, p.payload) for p in resent] == [
        (ids[1], True, b"\x01"),
        (ids[2], True, b"\x02"),
    ]


def test_client_packet_id_reusable_after_pubcomp() -> None:
    """
    A client re-sending a QoS 2 PUBLISH keeps its Packet Identifier and the
    message is delivered once; after PUBCOMP the identifier is free, and a new
    PUBLISH with it is a new message [MQTT-2.3.1-3].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    pub.send(Publish("t", b"one", 2, packet_id=9))
    pub.send(Publish("t", b"one", 2, dup=True, packet_id=9))
    assert pub.read() == [Pubrec(9), Pubrec(9)]
    pub.send(Pubrel(9))
    assert pub.read() == [Pubcomp(9)]
    pub.send(Publish("t", b"two", 2, packet_id=9), Pubrel(9))
    assert [p.payload for p in sub.publishes()] == [b"one", b"two"]


# CONNECT


def test_wrong_protocol_name_disconnects() -> None:
    """
    A CONNECT naming another protocol ("MQTX") is not processed as MQTT: the
    connection gets CONNACK 1 at most and is closed, with no session
    [MQTT-3.1.2-1].
    """
    world = World()
    client = world.client()
    client.sendBytes(_connectBytes(0x02, _string(b"c"), name=b"MQTX"))
    assert client.read() in ([], [Connack(False, 1)])
    assert client.closed and "c" not in world.broker.sessions


def test_retained_messages_outlive_the_session() -> None:
    """
    A retained message is not part of its publisher's session: it stays after
    that clean session ends [MQTT-3.1.2-7].
    """
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("r", b"kept", retain=True))
    pub.send(Disconnect())
    pub.finish()
    assert "pub" not in world.broker.sessions
    sub = world.subscriber("sub", ("r", 0))
    assert sub.connack.return_code == 0  # type: ignore[attr-defined]
    sub2 = world.connect("sub2")
    sub2.send(Subscribe(1, [("r", 0)]))
    assert [p.payload for p in sub2.publishes()] == [b"kept"]


def test_will_fields_without_will_flag_refused() -> None:
    """
    With the Will Flag 0, Will QoS and Will Retain must be 0 and no will
    fields follow: a CONNECT breaking that is closed without CONNACK
    [MQTT-3.1.2-11, MQTT-3.2.2-6].
    """
    world = World()
    for flags in (0x0A, 0x22):
        client = world.client()
        client.sendBytes(_connectBytes(flags, _string(b"c")))
        assert _refused(client)
    client = world.client()
    client.sendBytes(_connectBytes(0x02, _string(b"c") + _string(b"w") + _string(b"m")))
    assert _refused(client)


def test_no_will_flag_no_will_published() -> None:
    """A connection without a will that fails publishes nothing [MQTT-3.1.2-12]."""
    world = World()
    sub = world.subscriber("sub", ("#", 0))
    gone = world.connect("gone")
    gone.drop()
    assert sub.read() == []


def test_will_retain_0_published_not_retained() -> None:
    """
    A will with Will Retain 0 is published as a non-retained message: the
    subscriber's copy has RETAIN 0 and nothing is retained [MQTT-3.1.2-16].
    """
    world = World()
    sub = world.subscriber("sub", ("w", 1))
    gone = world.connect("gone", will=Will("w", b"bye", 1, False))
    gone.drop()
    (will,) = sub.publishes()
    assert (will.payload, will.retain) == (b"bye", False)
    late = world.connect("late")
    late.send(Subscribe(1, [("w", 0)]))
    assert late.publishes() == []


def test_user_name_present_without_its_flag_refused() -> None:
    """
    A user name in the payload with the User Name Flag 0 is malformed: closed
    without CONNACK [MQTT-3.1.2-18].
    """
    world = World()
    client = world.client()
    client.sendBytes(_connectBytes(0x02, _string(b"c") + _string(b"user")))
    assert _refused(client)


def test_will_topic_and_user_name_must_be_utf8() -> None:
    """
    A Will Topic or User Name that is not well-formed UTF-8 is refused:
    closed without CONNACK [MQTT-3.1.3-10, MQTT-3.1.3-11].
    """
    world = World()
    bad = _string(b"\xff\xfe")
    for flags, payload in (
        (0x06, _string(b"c") + bad + _string(b"m")),
        (0x82, _string(b"c") + bad),
    ):
        client = world.client()
        client.sendBytes(_connectBytes(flags, payload))
        assert _refused(client)


def test_client_id_keys_session_state() -> None:
    """
    Session state belongs to the Client Identifier: a persistent session's
    subscription and queued message come back to the same id, not to another
    [MQTT-3.1.3-2, MQTT-4.1.0-1, MQTT-4.5.0-1].
    """
    world = World()
    a = world.subscriber("a", ("t", 1), clean=False)
    a.drop()
    world.connect("pub").send(Publish("t", b"queued", 1, packet_id=1))
    other = world.connect("b", clean=False)
    assert other.read() == []
    back = world.client()
    back.send(Connect(4, "a", clean_session=False))
    connack, *rest = back.read()
    assert connack == Connack(True, 0)
    assert [p.payload for p in rest if isinstance(p, Publish)] == [b"queued"]


def test_clean_session_processing_and_connack_zero() -> None:
    """
    CleanSession 1 discards the previous session (no Session Present, no
    subscription); an accepted CONNECT gets CONNACK return code 0
    [MQTT-3.1.4-3, MQTT-3.1.4-4].
    """
    world = World()
    world.subscriber("c", ("t", 0), clean=False).drop()
    client = world.client()
    client.send(Connect(4, "c", clean_session=True))
    assert client.read() == [Connack(False, 0)]
    world.connect("pub").send(Publish("t", b"x"))
    assert client.read() == []


def test_rejected_connect_data_after_it_not_processed() -> None:
    """
    A refused CONNECT (anonymous on a listener that requires a login) gets
    CONNACK 5 and the connection is closed; a PUBLISH sent right after it, in
    the same read, is not processed [MQTT-3.1.4-5, MQTT-3.2.2-5].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    # Later clients come in on a second listener of the same broker.
    world.factory = MQTTServerFactory(
        world.broker, replace(LISTENER, name="strict", allow_anonymous=False), world.clock
    )
    client = world.client()
    client.sendBytes(encode(Connect(4, "anon")) + encode(Publish("t", b"sneaked")))
    assert client.read() == [Connack(False, 5)]
    assert client.closed
    assert sub.read() == []


def test_connack_is_the_first_packet_sent() -> None:
    """
    A resumed session with queued messages is sent CONNACK before any of them
    [MQTT-3.2.0-1].
    """
    world = World()
    world.subscriber("s", ("t", 1), clean=False).drop()
    world.connect("pub").send(Publish("t", b"waiting", 1, packet_id=1))
    client = world.client()
    client.send(Connect(4, "s", clean_session=False))
    packets = client.read()
    assert isinstance(packets[0], Connack) and isinstance(packets[1], Publish)


# PUBLISH


def test_dup_not_propagated_and_qos0_sent_with_dup_0() -> None:
    """
    An incoming DUP 1 is not passed on: the subscriber's first copy has DUP
    0 [MQTT-3.3.1-3]; a QoS 0 message goes out as 0x30, QoS 0 and DUP 0
    [MQTT-4.3.1-1].
    """
    world = World()
    sub1 = world.subscriber("sub1", ("t", 1))
    sub0 = world.subscriber("sub0", ("t", 0))
    world.connect("pub").send(Publish("t", b"x", 1, dup=True, packet_id=3))
    (copy,) = sub1.publishes()
    assert copy.qos == 1 and not copy.dup
    assert sub0.transport.value()[0] == 0x30


def test_new_subscription_gets_retained_and_qos0_retain_replaces() -> None:
    """
    A new subscription is sent the retained message of each matching topic
    [MQTT-3.3.1-6]; a QoS 0 retained PUBLISH replaces the one retained before
    [MQTT-3.3.1-7].
    """
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("a/1", b"old", 1, retain=True, packet_id=1))
    pub.send(Publish("a/1", b"new", 0, retain=True))
    pub.send(Publish("a/2", b"two", 0, retain=True))
    sub = world.connect("sub")
    sub.send(Subscribe(1, [("a/+", 1)]))
    got = sorted((p.topic, p.payload, p.retain) for p in sub.publishes())
    assert got == [("a/1", b"new", True), ("a/2", b"two", True)]


def test_topic_sent_matches_the_filter() -> None:
    """
    Only topics matching the subscription's filter are sent, under the
    publisher's topic name [MQTT-3.3.2-3, MQTT-4.5.0-1].
    """
    world = World()
    sub = world.subscriber("sub", ("a/+/c", 0))
    pub = world.connect("pub")
    for topic in ("a/b/c", "a/b", "a/b/c/d", "x/b/c", "a//c"):
        pub.send(Publish(topic, b""))
    assert [p.topic for p in sub.publishes()] == ["a/b/c", "a//c"]


def test_publish_response_by_qos() -> None:
    """
    The broker answers a PUBLISH as Table 3.4 says: nothing at QoS 0, PUBACK
    at 1, PUBREC at 2 [MQTT-3.3.4-1].
    """
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("t", b"", 0))
    assert pub.read() == []
    pub.send(Publish("t", b"", 1, packet_id=1))
    assert pub.read() == [Puback(1)]
    pub.send(Publish("t", b"", 2, packet_id=2))
    assert pub.read() == [Pubrec(2)]


@implementer(IAuthorizer)
class _NoPublish:
    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool:
        return action != Action.PUBLISH


def test_unauthorized_publish_acknowledged_not_delivered() -> None:
    """
    A PUBLISH the authorizers refuse is acknowledged by the normal QoS rules
    (3.1.1 has no way to say no) and delivered to nobody [MQTT-3.3.5-2].
    """
    world = World()
    world.broker.authorizers = (_NoPublish(),)
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    pub.send(Publish("t", b"", 1, packet_id=1), Publish("t", b"", 2, packet_id=2))
    assert pub.read() == [Puback(1), Pubrec(2)]
    assert sub.read() == []


# SUBSCRIBE and UNSUBSCRIBE


def test_suback_answers_with_the_packet_id() -> None:
    """
    Every SUBSCRIBE is answered by a SUBACK with its Packet Identifier
    [MQTT-3.8.4-1, MQTT-3.8.4-2].
    """
    world = World()
    client = world.connect("c")
    for packet_id in (1, 300, 65535):
        client.send(Subscribe(packet_id, [("t", 0)]))
        assert client.read() == [Suback(packet_id, [0])]


def test_unsubscribe_stops_new_messages_but_completes_inflight() -> None:
    """
    After UNSUBSCRIBE no new message is added for that filter [MQTT-3.10.4-2],
    but a QoS 1 and a QoS 2 message already sent complete their flows
    [MQTT-3.10.4-3].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 2))
    pub = world.connect("pub")
    pub.send(Publish("t", b"1", 1, packet_id=1))
    pub.send(Publish("t", b"2", 2, packet_id=2), Pubrel(2))
    q1, q2 = sub.publishes()
    sub.send(Unsubscribe(5, ["t"]))
    assert sub.read() == [Unsuback(5)]
    pub.send(Publish("t", b"3", 1, packet_id=3))
    assert sub.read() == []
    sub.send(Puback(q1.packet_id))  # type: ignore[arg-type]
    sub.send(Pubrec(q2.packet_id))  # type: ignore[arg-type]
    assert sub.read() == [Pubrel(q2.packet_id)]  # type: ignore[arg-type]
    sub.send(Pubcomp(q2.packet_id))  # type: ignore[arg-type]
    assert not world.broker.sessions["sub"].inflight


def test_unsubscribe_with_many_filters_one_unsuback() -> None:
    """
    An UNSUBSCRIBE with several filters removes each as if sent alone, known
    or not, and is answered by one UNSUBACK [MQTT-3.10.4-6].
    """
    world = World()
    sub = world.subscriber("sub", ("a", 0), ("b", 0), ("c", 0))
    sub.send(Unsubscribe(7, ["a", "nope", "c"]))
    assert sub.read() == [Unsuback(7)]
    pub = world.connect("pub")
    for topic in ("a", "b", "c"):
        pub.send(Publish(topic, b""))
    assert [p.topic for p in sub.publishes()] == ["b"]


# DISCONNECT, sessions, ordering, topics, errors


def test_nothing_processed_after_disconnect() -> None:
    """
    A client sends nothing after DISCONNECT [MQTT-3.14.4-2]; a PUBLISH that
    follows it in the same read is not processed.
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    pub.sendBytes(encode(Disconnect()) + encode(Publish("t", b"after")))
    assert pub.closed
    assert sub.read() == []


def test_session_lasts_while_connected() -> None:
    """
    A clean session lasts as long as its connection: hours of silence later
    (keepalive 0) it still holds its subscription [MQTT-4.1.0-2].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    world.clock.advance(6 * 3600)
    world.connect("pub").send(Publish("t", b"still"))
    assert [p.payload for p in sub.publishes()] == [b"still"]


def test_topics_are_ordered_by_default() -> None:
    """
    Messages on one topic reach a subscriber in the order published, whatever
    their QoS [MQTT-4.6.0-5].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 2))
    pub = world.connect("pub")
    for n in range(9):
        qos = n % 3
        pub.send(Publish("t", bytes([n]), qos, packet_id=n + 1 if qos else None))
        if qos == 2:
            pub.send(Pubrel(n + 1))
    assert [p.payload for p in sub.publishes()] == [bytes([n]) for n in range(9)]


def test_null_character_in_topic_name_or_filter_closes() -> None:
    """
    U+0000 in a Topic Name or a Topic Filter closes the connection
    [MQTT-4.7.3-2].
    """
    world = World()
    client = world.connect("p")
    client.sendBytes(bytes.fromhex("3005 0003 610062"))
    assert client.closed
    client = world.connect("s")
    client.sendBytes(bytes.fromhex("8208 0001 0003 610062 00"))
    assert client.closed


@implementer(IAuthenticator)
class _Failing:
    def authenticate(self, credentials: Credentials) -> Deferred[Allow]:
        return fail(OSError("user database unreachable"))


def test_transient_error_closes_the_connection() -> None:
    """
    An error while processing an inbound packet (the authenticator's database
    is unreachable) ends that connection, not the broker: CONNACK 5 and
    close [MQTT-4.8.0-2]; other clients are unaffected.
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    world.broker.authenticators = (_Failing(),)
    client = world.client()
    client.send(Connect(4, "c"))
    assert client.read() == [Connack(False, 5)]
    assert client.closed
    world.broker.authenticators = ()
    world.connect("pub").send(Publish("t", b"fine"))
    assert [p.payload for p in sub.publishes()] == [b"fine"]


@implementer(ILinkOwner)
class _Owner:
    """What an outbound link reports, kept for the test to read."""

    def __init__(self) -> None:
        self.accepted: list[Connack] = []
        self.packets: list[object] = []

    def linkAccepted(self, link: object, connack: Connack) -> None:
        self.accepted.append(connack)

    def linkRefused(self, link: object, connack: Connack) -> None:
        raise AssertionError(connack)

    def packetsReceived(self, link: object, packets: object) -> None:
        self.packets.append(packets)

    def linkPaused(self, link: object, paused: bool) -> None:
        pass

    def linkLost(self, link: object, reason: str) -> None:
        pass


def test_outbound_client_closes_after_disconnect() -> None:
    """
    mqttd's own client side (the bridge's outbound link) closes the network
    connection after sending DISCONNECT [MQTT-3.14.4-1] and sends no packet
    after it [MQTT-3.14.4-2].
    """
    owner = _Owner()
    link = MQTTClientProtocol(owner, Connect(4, "bridge"), MemoryReactorClock(), 10.0, 1 << 20)
    transport = StringTransport()
    link.makeConnection(transport)
    transport.clear()
    link.dataReceived(encode(Connack(False, 0)))
    assert owner.accepted == [Connack(False, 0)]
    link.disconnect("stopping")
    assert transport.value() == encode(Disconnect())
    assert transport.disconnecting
    link.send(Publish("t", b"late"))
    link.writeSequence([encode(Publish("t", b"late"))])
    assert transport.value() == encode(Disconnect())
