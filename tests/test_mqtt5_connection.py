"""
The connection level of MQTT 5.0 on the in-memory harness: CONNACK's
advertised limits, Session Expiry and Clean Start, Server Keep Alive,
server-sent DISCONNECT reason codes, Receive Maximum, Topic Aliases, and
Will Delay.  Statement ids are those of ../shared/spec/mqtt-v5.0-normative.txt.
"""

from __future__ import annotations

from typing import Any

import pytest

from mqttd.codec import Properties, ReasonCode
from mqttd.codec.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
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
)
from mqttd.protocol import MQTTServerProtocol
from mqttd.session import SESSION_NEVER_EXPIRES
from tests.harness import Client, World
from tests.vectors import SERVER
from tests.vectors5 import BAD as BAD5
from tests.vectors5 import CONNECT_5, BadVector5


def connect5(
    world: World,
    clientId: str,
    clean: bool = True,
    will: Will | None = None,
    keepalive: int = 0,
    **properties: Any,
) -> Client:
    """A 5.0 client that got CONNACK 0, with the given CONNECT properties."""
    return world.connect(
        clientId, clean, will, keepalive, level=5, properties=Properties(**properties)
    )


def connack(client: Client) -> Connack:
    result = client.connack  # type: ignore[attr-defined]
    assert isinstance(result, Connack)
    return result


def disconnects(client: Client) -> list[int]:
    """The reason codes of the DISCONNECTs the broker sent the client."""
    return [p.reason_code for p in client.read() if isinstance(p, Disconnect)]


# CONNACK


def test_connack_advertises_limits() -> None:
    """
    A 5.0 CONNECT is accepted with a 5.0 CONNACK [MQTT-3.1.4-5] that states
    the broker's limits: its Receive Maximum, Maximum Packet Size, Topic
    Alias Maximum, Retain Available and Wildcard / Subscription Identifier /
    Shared Subscription Available; Maximum QoS is absent because QoS 2 is supported
    [MQTT-3.2.2-9].
    """
    world = World(max_awaiting_rel=7, max_packet_size=5000, topic_alias_maximum=3)
    client = connect5(world, "c")
    reply = connack(client)
    assert reply.return_code == 0 and not reply.session_present
    p = reply.properties
    assert p.receive_maximum == 7
    assert p.maximum_packet_size == 5000
    assert p.topic_alias_maximum == 3
    assert p.retain_available == 1
    assert p.wildcard_subscription_available == 1
    assert p.subscription_identifier_available == 1
    assert p.shared_subscription_available == 1
    assert p.maximum_qos is None
    assert p.assigned_client_identifier is None and p.server_keep_alive is None


def test_response_information_only_when_requested() -> None:
    """
    A client that sets Request Response Information 1 is told the configured topic prefix for
    responses, with its client identifier in it; without the request (absent or 0) no Response
    Information is sent [MQTT-3.1.2-28]; nor when configured off, or when the client
    identifier would put a wildcard in it.
    """
    world = World()
    asked = connack(connect5(world, "c", request_response_information=1)).properties
    assert asked.response_information == "reply/c/"
    for unasked in (connect5(world, "d"), connect5(world, "e", request_response_information=0)):
        assert connack(unasked).properties.response_information is None
    wild = connect5(world, "a+b", request_response_information=1)
    assert connack(wild).properties.response_information is None
    fixed = World(response_information="responses")
    p = connack(connect5(fixed, "a+b", request_response_information=1)).properties
    assert p.response_information == "responses"
    off = World(response_information="")
    p = connack(connect5(off, "c", request_response_information=1)).properties
    assert p.response_information is None


def test_no_problem_information_when_refused() -> None:
    """
    With Request Problem Information 0 the broker sends no Reason String and no User Properties
    on any packet but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29]: here on SUBACK, UNSUBACK,
    PUBACK, PUBREC, PUBREL and PUBCOMP, with failure reason codes among them; a PUBLISH still
    carries the publisher's User Properties [MQTT-3.3.2-17].
    """
    world = World()
    client = connect5(world, "c", request_problem_information=0)
    client.send(Subscribe(1, [("t/#", 2), ("$share//bad", 1)]))
    client.send(Unsubscribe(2, ["never"]))
    client.send(Publish("t/1", b"x", 1, packet_id=3))
    client.send(
        Publish("t/2", b"y", 2, packet_id=4, properties=Properties(user_properties=(("k", "v"),)))
    )
    client.send(Pubrel(4))
    client.send(Pubrel(99))
    packets = client.read()
    publishes = [p for p in packets if isinstance(p, Publish)]
    for publish in publishes:
        if publish.qos == 1:
            client.send(Puback(publish.packet_id))  # type: ignore[arg-type]
        else:
            client.send(Pubrec(publish.packet_id))  # type: ignore[arg-type]
    packets += client.read()
    kinds = {type(p) for p in packets}
    assert {Suback, Unsuback, Puback, Pubrec, Pubrel, Pubcomp} <= kinds
    for packet in packets:
        if not isinstance(packet, Publish | Connack | Disconnect):
            properties = packet.properties  # type: ignore[union-attr]
            assert properties.reason_string is None and properties.user_properties == ()
    assert [p.properties.user_properties for p in publishes] == [(), (("k", "v"),)]


def test_connack_retain_unavailable() -> None:
    """With retain_available off, CONNACK says Retain Available 0 [MQTT-3.2.2-14]."""
    world = World(retain_available=False, topic_alias_maximum=0)
    p = connack(connect5(world, "c")).properties
    assert p.retain_available == 0
    # No aliases allowed: the property is absent [MQTT-3.2.2-18].
    assert p.topic_alias_maximum is None


def test_retained_will_refused_without_retain() -> None:
    """
    A retained will when retained messages are off is refused with CONNACK
    0x9A [MQTT-3.2.2-13].
    """
    world = World(retain_available=False)
    client = world.client(level=5)
    client.send(Connect(5, "c", will=Will("w", b"", retain=True)))
    assert client.read() == [Connack(False, ReasonCode.RETAIN_NOT_SUPPORTED)]
    assert client.closed


def test_assigned_client_identifier() -> None:
    """
    An empty client id is given a new unique one, returned as the Assigned
    Client Identifier, even with Clean Start 0 [MQTT-3.1.3-6, MQTT-3.1.3-7,
    MQTT-3.2.2-16].
    """
    world = World()
    a = connect5(world, "", clean=False, session_expiry_interval=60)
    b = connect5(world, "")
    idA = connack(a).properties.assigned_client_identifier
    idB = connack(b).properties.assigned_client_identifier
    assert idA and idB and idA != idB
    assert idA == a.protocol.clientId and idA in world.broker.sessions
    assert world.broker.sessions[idA].expiryInterval == 60


def test_refusal_uses_connect_reason_codes() -> None:
    """
    A refused 5.0 client gets a Connect Reason Code [MQTT-3.2.2-8] with
    Session Present 0 [MQTT-3.2.2-6], then the connection closes
    [MQTT-3.2.2-7]: Not authorized, not 3.1.1's return code 5.
    """
    from mqttd.config import ListenerConfig

    world = World(listener=ListenerConfig("l", "tcp:0", allow_anonymous=False))
    client = world.client(level=5)
    client.send(Connect(5, "c"))
    assert client.read() == [Connack(False, ReasonCode.NOT_AUTHORIZED)]
    assert client.closed


def test_authentication_method_refused() -> None:
    """
    A CONNECT naming an Authentication Method the broker does not offer gets
    CONNACK 0x8C and is closed [MQTT-4.12.0-1].
    """
    world = World()
    client = world.client(level=5)
    client.send(Connect(5, "c", properties=Properties(authentication_method="SCRAM-SHA-1")))
    assert client.read() == [Connack(False, ReasonCode.BAD_AUTHENTICATION_METHOD)]
    assert client.closed


def test_auth_without_method_is_protocol_error() -> None:
    """
    AUTH from a client whose CONNECT had no Authentication Method
    [MQTT-4.12.0-7] gets DISCONNECT 0x82.
    """
    world = World()
    client = connect5(world, "c")
    client.send(Auth(ReasonCode.RE_AUTHENTICATE))
    assert disconnects(client) == [ReasonCode.PROTOCOL_ERROR]
    assert client.closed


# Decode errors: CONNACK before acceptance, DISCONNECT after [MQTT-4.13.1-1]


def test_bad_connect_answered_with_connack_reason() -> None:
    """
    A 5.0 CONNECT the codec refuses (Receive Maximum 0, bad-inputs 19) is
    answered with CONNACK carrying the error's reason code, then closed
    [MQTT-4.13.1-1, MQTT-3.2.2-7].
    """
    world = World()
    client = world.client(level=5)
    # CONNECT level 5, clean start, keepalive 60, properties: Receive Maximum 0.
    client.sendBytes(bytes.fromhex("1010 00044d515454 05 02 003c 03 210000 0001 63"))
    assert client.read() == [Connack(False, ReasonCode.PROTOCOL_ERROR)]
    assert client.closed


def test_decode_error_after_connect_sends_disconnect() -> None:
    """
    After CONNACK, a packet larger than the maximum packet size gets
    DISCONNECT 0x95 and the connection closes (bad-inputs 20); the will is
    published because the client did not disconnect [MQTT-3.1.2-8].
    """
    world = World(max_packet_size=100)
    sub = world.subscriber("sub", ("will", 0))
    client = connect5(world, "c", will=Will("will", b"gone"))
    client.send(Publish("t", b"x" * 200))
    assert disconnects(client) == [ReasonCode.PACKET_TOO_LARGE]
    assert client.closed
    client.finish()
    assert [p.payload for p in sub.publishes()] == [b"gone"]


def test_topic_alias_zero_disconnect_0x94() -> None:
    """A PUBLISH with Topic Alias 0 gets DISCONNECT 0x94 [MQTT-3.3.2-8] (bad-inputs 19)."""
    world = World()
    client = connect5(world, "c")
    client.send(Publish("t", b"", properties=Properties(topic_alias=0)))
    assert disconnects(client) == [ReasonCode.TOPIC_ALIAS_INVALID]
    assert client.closed


def test_topic_too_deep_disconnect_0x90() -> None:
    """A PUBLISH topic deeper than max_topic_levels gets DISCONNECT 0x90 (bad-inputs 21)."""
    world = World(max_topic_levels=3)
    client = connect5(world, "c")
    client.send(Publish("a/b/c/d", b""))
    assert disconnects(client) == [ReasonCode.TOPIC_NAME_INVALID]
    assert client.closed


# Topic Aliases, client to broker


def test_topic_alias_sets_and_resolves() -> None:
    """
    A Topic Alias with a topic defines it; a later PUBLISH with the alias
    and an empty topic goes to that topic [MQTT-3.3.2-12].  Subscribers never
    see the publisher's alias.
    """
    world = World()
    sub = world.subscriber("sub", ("a/b", 0))
    pub = connect5(world, "pub")
    pub.send(Publish("a/b", b"1", properties=Properties(topic_alias=2)))
    pub.send(Publish("", b"2", properties=Properties(topic_alias=2)))
    assert [(p.topic, p.payload) for p in sub.publishes()] == [("a/b", b"1"), ("a/b", b"2")]
    assert not pub.closed


def test_outbound_topic_aliases() -> None:
    """
    To a client that declared a Topic Alias Maximum, the broker gives the first topics it sends
    aliases from 1 up to that maximum [MQTT-3.3.2-8, MQTT-3.1.2-26, MQTT-3.3.2-11] and then sends
    them with an empty Topic Name; other topics go by name.  A new connection starts with no
    aliases [MQTT-3.3.2-7]; a client that declared none is sent none [MQTT-3.1.2-27].
    """
    world = World()

    def subscriber(clientId: str, **properties: Any) -> Client:
        client = connect5(world, clientId, clean=False, session_expiry_interval=60, **properties)
        client.send(Subscribe(1, [("t/#", 1)]))
        client.read()
        return client

    aliased = subscriber("aliased", topic_alias_maximum=2)
    plain = subscriber("plain")
    pub = world.connect("pub")
    for n, topic in enumerate(["t/a", "t/a", "t/b", "t/c", "t/a", "t/c", "t/b"]):
        pub.send(Publish(topic, b"%d" % n, qos=n % 2, packet_id=n % 2 * (n + 1) or None))
    got = [(p.topic, p.properties.topic_alias) for p in aliased.publishes()]
    assert got == [
        ("t/a", 1),
        ("", 1),
        ("t/b", 2),
        ("t/c", None),
        ("", 1),
        ("t/c", None),
        ("", 2),
    ]
    assert {p.properties.topic_alias for p in plain.publishes()} == {None}
    aliased.drop()
    again = connect5(world, "aliased", clean=False, topic_alias_maximum=2)
    pub.send(Publish("t/b", b"again"))
    # The unacknowledged QoS 1 messages are re-sent first, naming their topics afresh.
    assert [(p.topic, p.properties.topic_alias) for p in again.publishes()] == [
        ("t/a", 1),
        ("t/c", 2),
        ("", 2),
        ("t/b", None),
    ]


def test_outbound_alias_not_given_by_a_dropped_packet() -> None:
    """
    A PUBLISH dropped as larger than the client's Maximum Packet Size [MQTT-3.1.2-24] gives its
    topic no alias, so the next one on that topic names it.
    """
    world = World()
    client = connect5(world, "c", topic_alias_maximum=5, maximum_packet_size=100)
    client.send(Subscribe(1, [("t", 0)]))
    client.read()
    pub = world.connect("pub")
    pub.send(Publish("t", b"x" * 200), Publish("t", b"small"), Publish("t", b"again"))
    got = [(p.topic, p.properties.topic_alias, p.payload) for p in client.publishes()]
    assert got == [("t", 1, b"small"), ("", 1, b"again")]


def test_topic_alias_above_maximum_disconnect_0x94() -> None:
    """An alias above the advertised Topic Alias Maximum gets DISCONNECT 0x94 [MQTT-3.2.2-17]."""
    world = World(topic_alias_maximum=2)
    pub = connect5(world, "pub")
    pub.send(Publish("t", b"", properties=Properties(topic_alias=3)))
    assert disconnects(pub) == [ReasonCode.TOPIC_ALIAS_INVALID]


def test_topic_alias_unknown_is_protocol_error() -> None:
    """
    An alias never defined on this connection is a protocol error; aliases
    do not carry over to a new connection [MQTT-3.3.2-7].
    """
    world = World()
    pub = connect5(world, "pub")
    pub.send(Publish("t", b"", properties=Properties(topic_alias=1)))
    pub.drop()
    again = connect5(world, "pub")
    again.send(Publish("", b"", properties=Properties(topic_alias=1)))
    assert disconnects(again) == [ReasonCode.PROTOCOL_ERROR]


# Receive Maximum, client to broker


def test_receive_maximum_exceeded_disconnect_0x93() -> None:
    """
    More unacknowledged QoS 2 PUBLISHes than the advertised Receive Maximum
    [MQTT-3.3.4-7] get DISCONNECT 0x93 (bad-inputs 19).
    """
    world = World(max_awaiting_rel=2)
    pub = connect5(world, "pub")
    for packetId in (1, 2):
        pub.send(Publish("t", b"", qos=2, packet_id=packetId))
    assert [type(p) for p in pub.read()] == [Pubrec, Pubrec]
    pub.send(Publish("t", b"", qos=2, packet_id=3))
    assert disconnects(pub) == [ReasonCode.RECEIVE_MAXIMUM_EXCEEDED]


def test_client_receive_maximum_bounds_window() -> None:
    """
    The client's Receive Maximum bounds the broker's outbound in-flight
    window [MQTT-3.3.4-9]; the rest waits for acknowledgements.  A 3.1.1
    reconnection gets max_inflight back.
    """
    world = World(max_inflight=20)
    sub = connect5(world, "s", receive_maximum=2)
    sub.send(Subscribe(1, [("t", 1)]))
    sub.read()
    pub = world.connect("p")
    for packetId in (1, 2, 3):
        pub.send(Publish("t", bytes([packetId]), qos=1, packet_id=packetId))
    first = sub.publishes()
    assert [p.payload for p in first] == [b"\x01", b"\x02"]
    assert first[0].packet_id is not None
    sub.send(Puback(first[0].packet_id))
    assert [p.payload for p in sub.publishes()] == [b"\x03"]
    connect5(world, "c", clean=False, session_expiry_interval=60, receive_maximum=3).drop()
    assert world.broker.sessions["c"].maxInflight == 3
    world.connect("c", clean=False)
    assert world.broker.sessions["c"].maxInflight == 20


def test_client_maximum_packet_size() -> None:
    """
    A message whose PUBLISH would exceed the client's Maximum Packet Size is
    never sent to it [MQTT-3.1.2-24]: it is dropped, counted, and settled as if
    delivered, so it does not hold the in-flight window [MQTT-3.1.2-25].
    Other subscribers still get it.
    """
    world = World()
    small = connect5(world, "small", maximum_packet_size=40, receive_maximum=1)
    small.send(Subscribe(1, [("t", 1)]))
    small.read()
    big = world.subscriber("big", ("t", 1))
    pub = world.connect("p")
    for packetId, size in ((1, 60), (2, 5)):
        pub.send(Publish("t", b"x" * size, qos=1, packet_id=packetId))
    assert [len(p.payload) for p in small.publishes()] == [5]
    assert [len(p.payload) for p in big.publishes()] == [60, 5]
    session = world.broker.sessions["small"]
    assert session.dropped == 1 and world.broker.stats.messagesDropped == 1
    assert len(session.inflight) == 1


# Keepalive


def test_server_keep_alive() -> None:
    """
    A keepalive above max_keepalive (or 0 under a maximum) is not refused
    at 5.0: CONNACK carries the Server Keep Alive [MQTT-3.2.2-21], which
    the broker then enforces, closing with DISCONNECT 0x8D after one and a
    half times it [MQTT-3.1.2-22].
    """
    world = World(max_keepalive=10)
    for asked in (0, 100):
        client = connect5(world, f"c{asked}", keepalive=asked)
        assert connack(client).properties.server_keep_alive == 10
    client = connect5(world, "ok", keepalive=10)
    assert connack(client).properties.server_keep_alive is None  # [MQTT-3.2.2-22]
    world.clock.advance(14)
    client.send(Pingreq())
    assert client.read() == [Pingresp()]
    world.clock.advance(15)
    assert disconnects(client) == [ReasonCode.KEEP_ALIVE_TIMEOUT]
    assert client.closed


# Session Expiry Interval and Clean Start


def test_session_expiry_zero_ends_with_connection() -> None:
    """
    Without a Session Expiry Interval (or 0) the session ends when the
    connection closes, even with Clean Start 0 [MQTT-3.1.2-23]; a new
    connection finds none [MQTT-3.1.2-6, MQTT-3.2.2-3].
    """
    world = World()
    client = connect5(world, "c", clean=False)
    client.send(Subscribe(1, [("t", 1)]))
    client.drop()
    assert "c" not in world.broker.sessions
    assert not connack(connect5(world, "c", clean=False)).session_present


def test_session_expiry_keeps_session_then_expires() -> None:
    """
    With a Session Expiry Interval the session outlives the connection
    [MQTT-3.1.2-23], is resumed with Session Present 1 by Clean Start 0
    [MQTT-3.1.2-5, MQTT-3.2.2-3] with the messages queued meanwhile, and
    ends once the interval passes offline.
    """
    world = World()
    client = connect5(world, "c", clean=False, session_expiry_interval=60)
    client.send(Subscribe(1, [("t", 1)]))
    client.read()
    client.drop()
    world.connect("pub").send(Publish("t", b"queued", qos=1, packet_id=1))
    assert len(world.broker.sessions["c"].pending or ()) == 1
    world.clock.advance(59)
    back = connect5(world, "c", clean=False, session_expiry_interval=60)
    assert connack(back).session_present
    assert [p.payload for p in back.publishes()] == [b"queued"]
    back.drop()
    # Reconnecting cancelled the first timer: a full interval again from this loss.
    world.clock.advance(59)
    assert "c" in world.broker.sessions
    world.clock.advance(1)
    assert "c" not in world.broker.sessions
    assert not world.clock.getDelayedCalls()


def test_session_present_on_resume() -> None:
    """
    Clean Start 0 with a session kept for the client resumes it with Session
    Present 1 [MQTT-3.1.2-5, MQTT-3.2.2-3], whatever level made it.
    """
    world = World()
    connect5(world, "c", clean=False, session_expiry_interval=60).drop()
    assert connack(connect5(world, "c", clean=False)).session_present
    world.connect("old", clean=False).drop()
    assert connack(connect5(world, "old", clean=False)).session_present


def test_session_never_expires() -> None:
    """0xFFFFFFFF means the session does not expire (section 3.1.2.11.2)."""
    world = World()
    connect5(world, "c", clean=False, session_expiry_interval=SESSION_NEVER_EXPIRES).drop()
    assert not world.clock.getDelayedCalls()
    world.clock.advance(10**9)
    assert "c" in world.broker.sessions


def test_clean_start_discards_session() -> None:
    """
    Clean Start 1 discards an existing session and starts a new one, with
    Session Present 0 [MQTT-3.1.2-4, MQTT-3.2.2-2]; its expiry timer goes too.
    """
    world = World()
    client = connect5(world, "c", clean=False, session_expiry_interval=60)
    client.send(Subscribe(1, [("t", 1)]))
    client.drop()
    again = connect5(world, "c", clean=True, session_expiry_interval=60)
    assert not connack(again).session_present
    assert world.broker.sessions["c"].subscriptions == {}
    assert not world.clock.getDelayedCalls()


def test_disconnect_changes_session_expiry() -> None:
    """
    A Session Expiry Interval on DISCONNECT replaces the CONNECT's: 0 ends
    the session at once (section 3.14.2.2.2).
    """
    world = World()
    client = connect5(world, "c", clean=False, session_expiry_interval=60)
    client.send(Disconnect(properties=Properties(session_expiry_interval=0)))
    client.finish()
    assert "c" not in world.broker.sessions
    assert world.store.restore().sessions == []


def test_disconnect_cannot_revive_zero_expiry() -> None:
    """
    A non-zero Session Expiry Interval on DISCONNECT after 0 on CONNECT is a
    Protocol Error: DISCONNECT 0x82, and the will is published since the
    client's DISCONNECT did not end the connection normally [MQTT-3.1.2-8].
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    client = connect5(world, "c", will=Will("will", b"w"))
    client.send(Disconnect(properties=Properties(session_expiry_interval=30)))
    assert disconnects(client) == [ReasonCode.PROTOCOL_ERROR]
    client.finish()
    assert "c" not in world.broker.sessions
    assert [p.payload for p in sub.publishes()] == [b"w"]


# Server DISCONNECT: takeover, shutdown


def test_takeover_disconnect_0x8e() -> None:
    """
    A second connection with the same client id sends the first DISCONNECT
    0x8E and closes it [MQTT-3.1.4-3]; a 3.1.1 first connection is just
    closed, as it has no DISCONNECT to read.
    """
    world = World()
    first = connect5(world, "c")
    second = connect5(world, "c")
    assert disconnects(first) == [ReasonCode.SESSION_TAKEN_OVER]
    assert first.closed and not second.closed
    old = world.connect("d")
    world.connect("d", level=5)
    assert old.transport.value() == b"" and old.closed


def test_shutdown_disconnect_0x8b() -> None:
    """Stopping the broker sends its 5.0 clients DISCONNECT 0x8B."""
    world = World()
    client = connect5(world, "c")
    world.broker.stop()
    assert disconnects(client) == [ReasonCode.SERVER_SHUTTING_DOWN]


def test_nothing_written_after_disconnect() -> None:
    """
    Once the broker sent DISCONNECT it writes nothing more on that connection
    [MQTT-3.14.4-1]: deliveries wait in the session, which outlives it.
    """
    world = World(max_keepalive=10)
    client = connect5(world, "c", clean=False, keepalive=10, session_expiry_interval=60)
    client.send(Subscribe(1, [("t", 1)]))
    client.read()
    world.clock.advance(15)
    assert disconnects(client) == [ReasonCode.KEEP_ALIVE_TIMEOUT]
    world.connect("pub", keepalive=10).send(Publish("t", b"late", qos=1, packet_id=1))
    assert client.transport.value() == b""
    protocol: MQTTServerProtocol = client.protocol
    assert protocol.paused


# Wills


def test_disconnect_with_will_publishes_it() -> None:
    """
    DISCONNECT 0x04 (Disconnect with Will Message) publishes the will; 0x00
    discards it [MQTT-3.14.4-3].
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    a = connect5(world, "a", will=Will("will", b"a"))
    a.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
    a.finish()
    b = connect5(world, "b", will=Will("will", b"b"))
    b.send(Disconnect())
    b.finish()
    assert [p.payload for p in sub.publishes()] == [b"a"]


def test_will_delay_elapses() -> None:
    """
    With a Will Delay Interval the will is published once the delay has
    passed after the connection is lost [MQTT-3.1.2-8].
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    will = Will("will", b"w", properties=Properties(will_delay_interval=5))
    connect5(world, "c", will=will, session_expiry_interval=60).drop()
    world.clock.advance(4)
    assert sub.publishes() == []
    world.clock.advance(1)
    assert [p.payload for p in sub.publishes()] == [b"w"]
    assert world.store.restore().wills == {}


def test_will_delay_cancelled_by_reconnect() -> None:
    """
    A new connection to the session before the Will Delay Interval has passed
    means the will is never sent [MQTT-3.1.3-9]; a taken-over connection's
    delayed will is not sent either when the session continues.
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    will = Will("will", b"w", properties=Properties(will_delay_interval=5))
    connect5(world, "c", clean=False, will=will, session_expiry_interval=60).drop()
    world.clock.advance(3)
    connect5(world, "c", clean=False, will=will, session_expiry_interval=60)
    connect5(world, "c", clean=False, session_expiry_interval=60)
    world.clock.advance(10)
    assert sub.publishes() == []


def test_will_at_session_end_if_sooner() -> None:
    """
    The will goes when the session ends if that comes before the Will Delay
    Interval [MQTT-3.1.2-8]: at once when the session ends with the
    connection, at the Session Expiry otherwise.
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    late = Will("will", b"now", properties=Properties(will_delay_interval=100))
    connect5(world, "a", will=late).drop()
    assert [p.payload for p in sub.publishes()] == [b"now"]
    expiring = Will("will", b"expired", properties=Properties(will_delay_interval=100))
    connect5(world, "b", will=expiring, session_expiry_interval=10).drop()
    world.clock.advance(10)
    assert [p.payload for p in sub.publishes()] == [b"expired"]
    assert "b" not in world.broker.sessions


def test_takeover_publishes_undelayed_will() -> None:
    """
    A taken-over 5.0 connection whose will has no delay publishes it even when
    the new connection continues the session: its network connection closed
    and no delay was asked for [MQTT-3.1.2-8].
    """
    world = World()
    sub = world.subscriber("sub", ("will", 0))
    connect5(world, "c", clean=False, will=Will("will", b"w"), session_expiry_interval=60)
    connect5(world, "c", clean=False, session_expiry_interval=60)
    assert [p.payload for p in sub.publishes()] == [b"w"]


# A restart on the store: the broker's clock goes on from where the crashed broker's stopped.


def test_offline_session_expires_on_schedule_after_restart() -> None:
    """
    A session offline at a crash ends when its Session Expiry Interval, counted from its
    disconnection, runs out: the store keeps the deadline and the restarted broker re-arms it
    [MQTT-3.1.2-23]; a session past its deadline is not resumed.
    """
    world = World()
    client = connect5(world, "c", clean=False, session_expiry_interval=100)
    client.send(Subscribe(1, [("t", 1)]))
    client.drop()
    connect5(world, "late", clean=False, session_expiry_interval=10).drop()
    reborn = World(store=world.store, now=60)
    assert "c" in reborn.broker.sessions
    assert reborn.broker.sessions["c"].subscriptions == {"t": 1}
    reborn.clock.advance(0)
    assert "late" not in reborn.broker.sessions
    reborn.clock.advance(39)
    assert "c" in reborn.broker.sessions
    reborn.clock.advance(1)
    assert "c" not in reborn.broker.sessions
    assert reborn.store.restore().sessions == []


def test_session_connected_at_crash_expires_after_restart() -> None:
    """
    A session whose client was connected at the crash lost its connection with the restart: it
    is kept for its Session Expiry Interval from then [MQTT-3.1.2-23], and resumed within it
    with Session Present 1 [MQTT-3.2.2-3].
    """
    world = World()
    connect5(world, "c", clean=False, session_expiry_interval=100)
    connect5(world, "back", clean=False, session_expiry_interval=100)
    reborn = World(store=world.store, now=500)
    reborn.clock.advance(99)
    assert connack(connect5(reborn, "back", clean=False)).session_present
    assert "c" in reborn.broker.sessions
    reborn.clock.advance(1)
    assert "c" not in reborn.broker.sessions
    assert "back" in reborn.broker.sessions


def test_delayed_will_waits_again_after_restart() -> None:
    """
    A will with a Will Delay Interval whose connection was open at a crash (or whose delay was
    running) waits its whole delay from the restart, which counts as the connection's loss; it
    goes sooner if the session ends first [MQTT-3.1.2-8], and not at all if the client comes
    back in time [MQTT-3.1.3-9].  A will without a delay is published at the restart.
    """
    world = World()
    delayed = Properties(will_delay_interval=30)
    connect5(world, "a", will=Will("will", b"a", properties=delayed), session_expiry_interval=100)
    connect5(world, "b", will=Will("will", b"b", properties=delayed), session_expiry_interval=10)
    connect5(world, "c", will=Will("will", b"c", properties=delayed), session_expiry_interval=100)
    connect5(world, "d", will=Will("will", b"d"), session_expiry_interval=100)
    reborn = World(store=world.store, now=1000)
    assert set(reborn.store.wills) == {"a", "b", "c"}
    sub = reborn.subscriber("sub", ("will", 0))
    connect5(reborn, "c", clean=False, session_expiry_interval=100)
    reborn.clock.advance(10)
    assert [p.payload for p in sub.publishes()] == [b"b"]
    reborn.clock.advance(19)
    assert sub.publishes() == []
    reborn.clock.advance(1)
    assert [p.payload for p in sub.publishes()] == [b"a"]
    assert set(reborn.store.restore().wills) == set()


def test_pubrel_resent_at_level_5() -> None:
    """
    A PUBREL re-sent on resumption [MQTT-4.4.0-1] is a valid 5.0 packet: the
    short form with reason 0 and no properties is the same at both levels.
    """
    world = World()
    sub = connect5(world, "s", clean=False, session_expiry_interval=60)
    sub.send(Subscribe(1, [("t", 2)]))
    sub.read()
    world.connect("pub").send(Publish("t", b"x", qos=2, packet_id=1))
    (delivery,) = sub.publishes()
    assert delivery.packet_id is not None
    sub.send(Pubrec(delivery.packet_id))
    assert sub.read() == [Pubrel(delivery.packet_id)]
    sub.drop()
    back = connect5(world, "s", clean=False, session_expiry_interval=60)
    assert back.read() == [Pubrel(delivery.packet_id)]


SERVER_BAD5 = [v for v in BAD5 if v.direction == SERVER]


@pytest.mark.parametrize("vector", SERVER_BAD5, ids=[v.name for v in SERVER_BAD5])
def test_bad_input_5_answered_and_others_unaffected(vector: BadVector5) -> None:
    """
    Every bad 5.0 vector of the codec, through the real protocol: answered with
    its reason code, in CONNACK before the connection is accepted and in
    DISCONNECT after [MQTT-4.13.1-1, MQTT-3.2.2-7, MQTT-3.14.4-2] (bad-inputs
    17-20), closing only its own connection.
    """
    world = World()
    sub = world.subscriber("bystander-sub", ("t", 1))
    bad = world.client(level=5)
    if vector.connected:
        bad.sendBytes(CONNECT_5)
        assert [type(p) for p in bad.read()] == [Connack]
    bad.sendBytes(vector.data)
    if vector.connected:
        assert bad.read() == [Disconnect(vector.reason_code)]
    else:
        assert bad.read() == [Connack(False, vector.reason_code)]
    assert bad.closed
    bad.finish()
    world.connect("bystander-pub").send(Publish("t", b"after", qos=1, packet_id=1))
    assert [p.payload for p in sub.publishes()] == [b"after"]
