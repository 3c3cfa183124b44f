"""
The broker core and its Twisted protocol, on in-memory transports: sessions,
QoS flows, retained messages, wills, keepalive, takeover and backpressure.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from zope.interface.verify import verifyObject

from mqttd.broker import Broker
from mqttd.codec.packets import (
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
from mqttd.config import BrokerConfig, ListenerConfig
from mqttd.interfaces import IClientConnection, IMessageStore
from mqttd.protocol import MQTTServerFactory
from mqttd.store import MemoryStore
from tests.harness import World


def test_interfaces_verified() -> None:
    """The protocol provides IClientConnection and MemoryStore IMessageStore."""
    world = World()
    client = world.client()
    assert verifyObject(IClientConnection, client.protocol)
    assert verifyObject(IMessageStore, MemoryStore())


# CONNECT and CONNACK


def test_connect_accepted_clean_session() -> None:
    """A clean-session CONNECT is accepted with Session Present 0 [MQTT-3.2.2-1]."""
    world = World()
    client = world.connect("c1")
    assert client.connack == Connack(False, 0)  # type: ignore[attr-defined]
    assert world.broker.sessions["c1"].connection is client.protocol


def test_empty_client_id_persistent_rejected() -> None:
    """
    An empty client id with clean session 0 gets CONNACK 0x02 and the
    connection closes [MQTT-3.1.3-8] (bad-inputs 9).
    """
    world = World()
    client = world.client()
    client.send(Connect(4, "", clean_session=False))
    assert client.read() == [Connack(False, 2)]
    assert client.closed


def test_empty_client_id_clean_assigned() -> None:
    """An empty client id with clean session 1 is given a unique id [MQTT-3.1.3-6]."""
    world = World()
    a = world.client()
    a.send(Connect(4, "", clean_session=True))
    b = world.client()
    b.send(Connect(4, "", clean_session=True))
    assert a.read() == [Connack(False, 0)] and b.read() == [Connack(False, 0)]
    ids = {a.protocol.clientId, b.protocol.clientId}
    assert len(ids) == 2 and all(i and i.startswith("auto-") for i in ids)


def test_anonymous_refused_when_listener_forbids() -> None:
    """A listener without allow_anonymous answers CONNACK 5 and closes."""
    world = World(listener=ListenerConfig("l", "tcp:0", allow_anonymous=False))
    client = world.client()
    client.send(Connect(4, "c"))
    assert client.read() == [Connack(False, 5)]
    assert client.closed


def test_keepalive_above_maximum_refused() -> None:
    """
    A keepalive above max_keepalive, or 0 when a maximum is set and
    allow_zero_keepalive is off, is refused with CONNACK 0x02 as mosquitto
    does (bad-inputs 22).
    """
    world = World(max_keepalive=60, allow_zero_keepalive=False)
    for keepalive in (61, 0):
        client = world.client()
        client.send(Connect(4, "c", keepalive=keepalive))
        assert client.read() == [Connack(False, 2)]
    client = world.client()
    client.send(Connect(4, "c", keepalive=60))
    assert client.read() == [Connack(False, 0)]


def test_bad_protocol_level_connack_1() -> None:
    """
    An unsupported protocol level is answered with CONNACK 0x01 then close
    [MQTT-3.1.2-2] (bad-inputs 7), and other clients keep working.  Level 6
    of "MQTT" laid out as a 3.1.1 CONNECT gets the 3.1.1 CONNACK return
    code 1, as mosquitto answers; laid out as 5.0's (a Property Length before
    the payload), the 5.0 CONNACK 0x84 a 5.0 client reads (5.0 section 3.1.2.2).
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    later = world.client()
    later.sendBytes(bytes.fromhex("100c00044d515454 06 02 003c 0000".replace(" ", "")))
    assert later.transport.value() == bytes.fromhex("2002 00 01".replace(" ", ""))
    assert later.closed
    later = world.client()
    later.sendBytes(bytes.fromhex("100d00044d515454 06 02 003c 00 0000".replace(" ", "")))
    assert later.transport.value() == bytes.fromhex("2003 00 84 00".replace(" ", ""))
    assert later.closed
    client = world.client()
    client.sendBytes(bytes.fromhex("100c00044d515454 02 02 003c 0000".replace(" ", "")))
    assert client.read() == [Connack(False, 1)]
    assert client.closed
    pub = world.connect("pub")
    pub.send(Publish("t", b"still here"))
    assert sub.publishes() == [Publish("t", b"still here")]


def test_second_connect_closes() -> None:
    """A second CONNECT is a protocol violation: close [MQTT-3.1.0-2] (bad-inputs 6)."""
    world = World()
    client = world.connect("c")
    client.send(Connect(4, "c"))
    assert client.closed and client.read() == []


def test_packet_before_connect_closes() -> None:
    """
    A first packet other than CONNECT closes without reply [MQTT-3.1.0-1]
    (bad-inputs 1, 6), and the broker goes on serving others.
    """
    world = World()
    client = world.client()
    client.send(Publish("t", b"x"))
    assert client.closed and client.read() == []
    client.finish()
    assert world.connect("next").connack == Connack(False, 0)  # type: ignore[attr-defined]


def test_huge_connect_header_closed_immediately() -> None:
    """
    A CONNECT header declaring ~256 MB is refused from the header alone,
    before any body arrives (bad-inputs 1, CVE-2017-7651).
    """
    world = World()
    client = world.client()
    client.sendBytes(b"\x10\xff\xff\xff\x7f")
    assert client.closed


def test_connect_timeout() -> None:
    """No CONNECT within connect_timeout closes the connection (bad-inputs 22, 26)."""
    world = World(connect_timeout=10)
    client = world.client()
    world.clock.advance(9.9)
    assert not client.closed
    world.clock.advance(0.2)
    assert client.closed


def test_mqtt31_connack_has_no_session_present() -> None:
    """
    An MQTT 3.1 client resuming a session gets CONNACK with the reserved byte
    0, since 3.1 has no Session Present flag.
    """
    world = World()
    c = world.connect("old", clean=False, level=3)
    c.send(Disconnect())
    c.finish()
    again = world.connect("old", clean=False, level=3)
    assert again.connack == Connack(False, 0)  # type: ignore[attr-defined]
    assert "old" in world.broker.sessions


# Publish and subscribe


def test_qos0_delivery_retain_flag_cleared() -> None:
    """
    A message published with RETAIN=1 reaches existing subscribers with
    RETAIN=0 [MQTT-3.3.1-9].
    """
    world = World()
    sub = world.subscriber("sub", ("a/+", 0))
    pub = world.connect("pub")
    pub.send(Publish("a/b", b"hello", retain=True))
    assert sub.publishes() == [Publish("a/b", b"hello", retain=False)]


def test_delivered_qos_is_minimum() -> None:
    """
    Delivered QoS is min(published, granted) [MQTT-3.8.4-6] for every pair
    of the two.
    """
    for granted in (0, 1, 2):
        for published in (0, 1, 2):
            world = World()
            sub = world.subscriber("sub", ("t", granted))
            pub = world.connect("pub")
            pub.send(Publish("t", b"m", qos=published, packet_id=7 if published else None))
            (got,) = sub.publishes()
            assert got.qos == min(granted, published)


def test_overlapping_subscriptions_delivered_once_at_max_qos() -> None:
    """
    A client with two matching subscriptions gets one copy at the highest
    granted QoS [MQTT-3.3.5-1].
    """
    world = World()
    sub = world.subscriber("sub", ("a/#", 0), ("a/b", 1))
    pub = world.connect("pub")
    pub.send(Publish("a/b", b"m", qos=1, packet_id=1))
    (got,) = sub.publishes()
    assert got.qos == 1


def test_qos1_inbound_puback() -> None:
    """A QoS 1 PUBLISH is answered with PUBACK of the same id [MQTT-4.3.2-2]."""
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("t", b"m", qos=1, packet_id=42))
    assert pub.read() == [Puback(42)]


def test_qos2_inbound_exactly_once() -> None:
    """
    A QoS 2 PUBLISH resent before PUBREL is answered with PUBREC but not
    delivered onward again; PUBREL is answered with PUBCOMP [MQTT-4.3.3-2].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 2))
    pub = world.connect("pub")
    pub.send(Publish("t", b"once", qos=2, packet_id=5))
    pub.send(Publish("t", b"once", qos=2, packet_id=5, dup=True))
    assert pub.read() == [Pubrec(5), Pubrec(5)]
    assert [p.payload for p in sub.publishes()] == [b"once"]
    pub.send(Pubrel(5))
    assert pub.read() == [Pubcomp(5)]
    pub.send(Publish("t", b"again", qos=2, packet_id=5))
    assert [p.payload for p in sub.publishes()] == [b"again"]


def test_qos2_outbound_flow() -> None:
    """
    The broker as QoS 2 sender answers PUBREC with PUBREL and frees the
    packet id on PUBCOMP [MQTT-4.3.3-1].
    """
    world = World()
    sub = world.subscriber("sub", ("t", 2))
    pub = world.connect("pub")
    pub.send(Publish("t", b"m", qos=2, packet_id=1))
    (got,) = sub.publishes()
    assert got.qos == 2 and got.packet_id is not None and not got.dup
    sub.send(Pubrec(got.packet_id))
    assert sub.read() == [Pubrel(got.packet_id)]
    sub.send(Pubcomp(got.packet_id))
    assert world.broker.sessions["sub"].inflight == {}


def test_pubrel_unknown_id_answered() -> None:
    """PUBREL for an unknown id is answered with PUBCOMP, never a crash (bad-inputs 15)."""
    world = World()
    c = world.connect("c")
    c.send(Pubrel(999))
    assert c.read() == [Pubcomp(999)] and not c.closed


def test_wrong_ack_type_closes() -> None:
    """
    PUBREC for a QoS 1 delivery or PUBACK for a QoS 2 delivery is a protocol
    violation: close [MQTT-4.8.0-1] (bad-inputs 15).  PUBACK/PUBCOMP for
    unknown ids are ignored.
    """
    world = World()
    sub = world.subscriber("sub", ("q1", 1), ("q2", 2))
    pub = world.connect("pub")
    sub.send(Puback(1234), Pubcomp(4321))
    assert not sub.closed
    pub.send(Publish("q1", b"m", qos=1, packet_id=1))
    (got,) = sub.publishes()
    sub.send(Pubrec(got.packet_id))  # type: ignore[arg-type]
    assert sub.closed

    sub2 = world.subscriber("sub2", ("q2", 2))
    pub.send(Publish("q2", b"m", qos=2, packet_id=2))
    (got,) = sub2.publishes()
    sub2.send(Puback(got.packet_id))
    assert sub2.closed


def test_awaiting_pubrel_capped() -> None:
    """
    A client that sends ever new QoS 2 ids and never PUBREL is cut off at
    max_awaiting_rel (bad-inputs 16, CVE-2023-28366); resends of the same id
    do not count.
    """
    world = World(max_awaiting_rel=3)
    pub = world.connect("pub")
    for _ in range(10):
        pub.send(Publish("t", b"m", qos=2, packet_id=1))
    assert not pub.closed
    for packetId in (2, 3):
        pub.send(Publish("t", b"m", qos=2, packet_id=packetId))
    assert not pub.closed
    pub.send(Publish("t", b"m", qos=2, packet_id=4))
    assert pub.closed


def test_awaiting_pubrel_expires() -> None:
    """Ids awaiting PUBREL longer than await_rel_timeout are forgotten when the cap is hit."""
    world = World(max_awaiting_rel=2, await_rel_timeout=60)
    pub = world.connect("pub")
    pub.send(Publish("t", b"m", qos=2, packet_id=1), Publish("t", b"m", qos=2, packet_id=2))
    world.clock.advance(61)
    pub.send(Publish("t", b"m", qos=2, packet_id=3))
    assert not pub.closed
    assert set(world.broker.sessions["pub"].awaitingRel or ()) == {3}


def test_inflight_window_and_order() -> None:
    """
    At most max_inflight QoS 1 deliveries are unacknowledged; the rest wait
    and follow in publish order as acks arrive [MQTT-4.6.0-6].
    """
    world = World(max_inflight=2)
    sub = world.subscriber("sub", ("t", 1))
    pub = world.connect("pub")
    for i in range(5):
        pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    first = sub.publishes()
    assert [p.payload for p in first] == [b"0", b"1"]
    received = list(first)
    while len(received) < 5:
        sub.send(Puback(received[-2 if len(received) > 1 else -1].packet_id))  # type: ignore[arg-type]
        sub.send(Puback(received[-1].packet_id))  # type: ignore[arg-type]
        received += sub.publishes()
    assert [p.payload for p in received] == [b"0", b"1", b"2", b"3", b"4"]
    assert len({p.packet_id for p in received[:2]}) == 2


def test_publish_to_sys_dropped() -> None:
    """A client may not publish into $SYS; the QoS flow still completes (bad-inputs 24)."""
    world = World()
    sub = world.subscriber("sub", ("$SYS/#", 0))
    pub = world.connect("pub")
    pub.send(Publish("$SYS/broker/x", b"fake", qos=1, packet_id=3))
    assert pub.read() == [Puback(3)]
    assert sub.publishes() == []


def test_topic_levels_capped() -> None:
    """A PUBLISH topic deeper than max_topic_levels closes the connection (bad-inputs 21)."""
    world = World(max_topic_levels=8)
    pub = world.connect("pub")
    pub.send(Publish("/".join("x" * 9), b"deep"))
    assert pub.closed


def test_message_size_limit() -> None:
    """
    A payload over message_size_limit finishes its QoS flow and is dropped
    and counted (bad-inputs 20).
    """
    world = World(message_size_limit=4)
    sub = world.subscriber("sub", ("t", 1))
    pub = world.connect("pub")
    pub.send(Publish("t", b"too long", qos=1, packet_id=1))
    assert pub.read() == [Puback(1)]
    assert sub.publishes() == [] and world.broker.stats.messagesDropped == 1


def test_invalid_filter_refused_others_granted() -> None:
    """
    SUBACK carries 0x80 for an invalid filter and the granted QoS for the
    rest, one code per filter [MQTT-3.8.4-5] (bad-inputs 14).
    """
    world = World()
    c = world.connect("c")
    c.send(Subscribe(9, [("a/#/b", 0), ("ok/+", 2), ("a+/b", 1), ("x/#", 1)]))
    assert c.read() == [Suback(9, [0x80, 2, 0x80, 1])]


def test_unsubscribe_always_acked_and_stops_delivery() -> None:
    """UNSUBACK is sent even when nothing was subscribed [MQTT-3.10.4-4, MQTT-3.10.4-5]."""
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    sub.send(Unsubscribe(3, ["t", "never"]))
    assert sub.read() == [Unsuback(3)]
    pub = world.connect("pub")
    pub.send(Publish("t", b"m"))
    assert sub.publishes() == []


def test_ping() -> None:
    """PINGREQ is answered with PINGRESP [MQTT-3.12.4-1]."""
    world = World()
    c = world.connect("c")
    c.send(Pingreq())
    assert c.read() == [Pingresp()]


# Retained messages


def test_retained_delivered_on_subscribe_with_retain_flag() -> None:
    """
    A retained message reaches a new subscription with RETAIN=1 at the lower
    QoS [MQTT-3.3.1-8, MQTT-3.8.4-6], and again on re-subscribe [MQTT-3.8.4-3].
    """
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("r/t", b"state", qos=1, retain=True, packet_id=1))
    sub = world.connect("sub")
    sub.send(Subscribe(1, [("r/#", 0)]))
    packets = sub.read()
    assert packets == [Suback(1, [0]), Publish("r/t", b"state", qos=0, retain=True)]
    sub.send(Subscribe(2, [("r/#", 0)]))
    assert sub.publishes() == [Publish("r/t", b"state", qos=0, retain=True)]


def test_zero_length_retained_deletes() -> None:
    """
    A retained PUBLISH with an empty payload is forwarded as normal and
    removes the retained message, and is not itself stored
    [MQTT-3.3.1-10, MQTT-3.3.1-11].
    """
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("r", b"x", retain=True))
    sub = world.subscriber("sub", ("r", 0))
    pub.send(Publish("r", b"", retain=True))
    assert sub.publishes() == [Publish("r", b"")]
    late = world.connect("late")
    late.send(Subscribe(1, [("r", 0)]))
    assert late.read() == [Suback(1, [0])]
    assert "r" not in world.store.retained


def test_non_retained_publish_keeps_retained() -> None:
    """RETAIN=0 neither stores nor replaces a retained message [MQTT-3.3.1-12]."""
    world = World()
    pub = world.connect("pub")
    pub.send(Publish("r", b"kept", retain=True), Publish("r", b"passing"))
    sub = world.connect("sub")
    sub.send(Subscribe(1, [("r", 0)]))
    assert sub.publishes() == [Publish("r", b"kept", retain=True)]


# Persistent sessions


def test_offline_queue_and_session_present() -> None:
    """
    A persistent session stores QoS 1 and 2 messages while offline, not QoS 0
    [MQTT-3.1.2-5], and resumes with Session Present 1 [MQTT-3.1.2-4,
    MQTT-3.2.2-2] receiving them in order.
    """
    world = World()
    sub = world.connect("sub", clean=False)
    sub.send(Subscribe(1, [("t", 2)]))
    sub.read()
    sub.send(Disconnect())
    sub.finish()
    pub = world.connect("pub")
    pub.send(
        Publish("t", b"q1", qos=1, packet_id=1),
        Publish("t", b"q0"),
        Publish("t", b"q2", qos=2, packet_id=2),
    )
    again = world.connect("sub", clean=False)
    assert again.connack == Connack(True, 0)  # type: ignore[attr-defined]
    got = again.publishes()
    assert [(p.payload, p.qos) for p in got] == [(b"q1", 1), (b"q2", 2)]


def test_offline_queue_limit_drops_newest() -> None:
    """
    max_queued_messages bounds the offline queue; newer messages are dropped
    and counted, those already queued kept.
    """
    world = World(max_queued_messages=2)
    sub = world.connect("sub", clean=False)
    sub.send(Subscribe(1, [("t", 1)]))
    sub.drop()
    pub = world.connect("pub")
    for i in range(5):
        pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    assert world.broker.sessions["sub"].dropped == 3
    assert world.broker.stats.messagesDropped == 3
    again = world.connect("sub", clean=False)
    assert [p.payload for p in again.publishes()] == [b"0", b"1"]


def test_redelivery_with_dup_and_original_ids() -> None:
    """
    Unacknowledged QoS 1 and 2 deliveries are re-sent on reconnect with DUP=1
    and their original ids, and PUBREL is re-sent for a PUBREC'd message
    [MQTT-4.4.0-1].
    """
    world = World()
    sub = world.connect("sub", clean=False)
    sub.send(Subscribe(1, [("t", 2)]))
    sub.read()
    pub = world.connect("pub")
    pub.send(Publish("t", b"a", qos=1, packet_id=1), Publish("t", b"b", qos=2, packet_id=2))
    pub.send(Pubrel(2))
    pub.send(Publish("t", b"c", qos=2, packet_id=3), Pubrel(3))
    first = sub.publishes()
    assert [p.payload for p in first] == [b"a", b"b", b"c"]
    sub.send(Pubrec(first[2].packet_id))  # type: ignore[arg-type]
    sub.drop()
    again = world.connect("sub", clean=False)
    packets = again.read()
    assert packets == [
        Publish("t", b"a", qos=1, dup=True, packet_id=first[0].packet_id),
        Publish("t", b"b", qos=2, dup=True, packet_id=first[1].packet_id),
        Pubrel(first[2].packet_id),  # type: ignore[arg-type]
    ]


def test_clean_session_discards_state() -> None:
    """
    Connecting with clean session 1 discards the stored session
    [MQTT-3.1.2-6]: no subscriptions, no queued messages.
    """
    world = World()
    sub = world.subscriber("sub", ("t", 1), clean=False)
    sub.drop()
    world.connect("pub").send(Publish("t", b"queued", qos=1, packet_id=1))
    fresh = world.connect("sub", clean=True)
    assert fresh.connack == Connack(False, 0)  # type: ignore[attr-defined]
    assert fresh.publishes() == []
    world.connect("pub2").send(Publish("t", b"after", qos=1, packet_id=1))
    assert fresh.publishes() == []


def test_broker_restored_from_store() -> None:
    """
    A broker built on a store restores its retained messages and persistent
    sessions, subscriptions and queues included (the persistence seam).
    """
    store = MemoryStore()
    world = World(store=store)
    sub = world.subscriber("sub", ("t", 1), clean=False)
    sub.drop()
    pub = world.connect("pub")
    pub.send(Publish("t", b"queued", qos=1, packet_id=1))
    pub.send(Publish("r", b"retained", retain=True))
    world.broker.stop()

    reborn = World(store=store)
    assert reborn.broker.retained.get("r") is not None
    again = reborn.connect("sub", clean=False)
    assert again.connack == Connack(True, 0)  # type: ignore[attr-defined]
    assert [p.payload for p in again.publishes()] == [b"queued"]


# Wills and keepalive


WILL = Will("wills/c", b"gone", qos=1, retain=False)


def test_will_on_socket_drop() -> None:
    """The will is published when the connection is lost without DISCONNECT [MQTT-3.1.2-8]."""
    world = World()
    sub = world.subscriber("sub", ("wills/#", 1))
    c = world.connect("c", will=WILL)
    c.drop()
    (got,) = sub.publishes()
    assert got.payload == b"gone" and got.qos == 1


def test_no_will_after_disconnect() -> None:
    """DISCONNECT discards the will [MQTT-3.14.4-3, MQTT-3.1.2-10]."""
    world = World()
    sub = world.subscriber("sub", ("wills/#", 1))
    c = world.connect("c", will=WILL)
    c.send(Disconnect())
    c.finish()
    assert sub.publishes() == []


def test_will_on_protocol_error() -> None:
    """A protocol violation closes the connection and publishes the will [MQTT-4.8.0-1]."""
    world = World()
    sub = world.subscriber("sub", ("wills/#", 1))
    c = world.connect("c", will=WILL)
    c.sendBytes(b"\x60\x02\x00\x01")  # PUBREL with flags 0000 (bad-inputs 13)
    assert c.closed
    c.finish()
    assert [p.payload for p in sub.publishes()] == [b"gone"]


def test_retained_will() -> None:
    """A will with RETAIN=1 becomes the retained message of its topic."""
    world = World()
    c = world.connect("c", will=Will("status/c", b"offline", 0, True))
    c.drop()
    sub = world.connect("sub")
    sub.send(Subscribe(1, [("status/+", 0)]))
    assert sub.publishes() == [Publish("status/c", b"offline", retain=True)]


def test_keepalive_expiry_at_one_and_a_half() -> None:
    """
    A client silent for 1.5 x keepalive is disconnected as if the network
    failed, so its will goes out [MQTT-3.1.2-24]; traffic resets the timer.
    """
    world = World()
    sub = world.subscriber("sub", ("wills/#", 1))
    c = world.connect("c", will=WILL, keepalive=10)
    world.clock.advance(14)
    c.send(Pingreq())
    world.clock.advance(14)
    assert not c.closed
    world.clock.advance(1.1)
    assert c.closed
    c.finish()
    assert [p.payload for p in sub.publishes()] == [b"gone"]


# Takeover


def test_takeover_closes_old_connection_and_publishes_will() -> None:
    """
    A second connection with the same client id closes the first
    [MQTT-3.1.4-2]; with a clean session the old session ends and its will
    is published; the new connection keeps working.
    """
    world = World()
    sub = world.subscriber("sub", ("wills/#", 1))
    old = world.connect("dup", will=WILL)
    new = world.connect("dup")
    assert old.closed and not new.closed
    old.finish()
    assert [p.payload for p in sub.publishes()] == [b"gone"]
    assert world.broker.sessions["dup"].connection is new.protocol


def test_takeover_persistent_session_continues() -> None:
    """
    Takeover by a persistent reconnect keeps the session (Session Present 1,
    subscriptions kept) and does not publish the old will.
    """
    world = World()
    watcher = world.subscriber("watcher", ("wills/#", 1))
    old = world.connect("dup", clean=False, will=WILL)
    old.send(Subscribe(1, [("t", 1)]))
    old.read()
    new = world.connect("dup", clean=False)
    assert new.connack == Connack(True, 0)  # type: ignore[attr-defined]
    old.finish()
    assert watcher.publishes() == []
    world.connect("pub").send(Publish("t", b"to new", qos=1, packet_id=1))
    assert [p.payload for p in new.publishes()] == [b"to new"]
    assert old.read() == []


# Backpressure


def test_stalled_subscriber_does_not_stall_others() -> None:
    """
    While one subscriber's transport is full, messages for it are queued
    (bounded by max_queued_messages, the excess dropped and counted) and the
    publisher and other subscribers go on; the queue drains in order when the
    transport resumes.
    """
    world = World(max_queued_messages=3)
    slow = world.subscriber("slow", ("t", 0))
    fast = world.subscriber("fast", ("t", 0))
    pub = world.connect("pub")
    slow.protocol.pauseProducing()
    for i in range(5):
        pub.send(Publish("t", b"%d" % i))
    assert [p.payload for p in fast.publishes()] == [b"0", b"1", b"2", b"3", b"4"]
    assert slow.publishes() == []
    assert world.broker.sessions["slow"].dropped == 2
    slow.protocol.resumeProducing()
    assert [p.payload for p in slow.publishes()] == [b"0", b"1", b"2"]


# Connection rate limit


def test_connection_rate_limit_per_address() -> None:
    """
    Beyond the burst, connections from one address are refused until tokens
    refill; other addresses are unaffected (bad-inputs 26).
    """
    world = World()
    listener = ListenerConfig(
        "l", "tcp:0", allow_anonymous=True, connect_rate_per_address=1, connect_burst_per_address=2
    )
    factory = MQTTServerFactory(world.broker, listener, world.clock)
    flood = IPv4Address("TCP", "10.0.0.1", 1)
    other = IPv4Address("TCP", "10.0.0.2", 1)
    assert factory.buildProtocol(flood) is not None
    assert factory.buildProtocol(flood) is not None
    assert factory.buildProtocol(flood) is None
    assert factory.buildProtocol(other) is not None
    world.clock.advance(1)
    assert factory.buildProtocol(flood) is not None


def test_broker_needs_no_transport() -> None:
    """The broker core is built from config and a clock alone."""
    from twisted.internet.task import Clock

    broker = Broker(BrokerConfig(), Clock())
    assert broker.sessions == {} and len(broker.subscriptions) == 0


def test_keepalive_counts_whole_packets_only() -> None:
    """
    Bytes of an unfinished packet do not reset the keepalive timer: only a
    received control packet does [MQTT-3.1.2-24] (bad-inputs 3).
    """
    world = World()
    c = world.connect("c", keepalive=10)
    for _ in range(3):
        world.clock.advance(5)
        if not c.closed:
            c.sendBytes(b"\x30")
    world.clock.advance(1)
    assert c.closed


def test_packets_held_while_a_handler_waits() -> None:
    """
    When handling a packet returns a Deferred (a store or plugin doing I/O),
    the client's later packets wait, and reading from it pauses, until it
    fires: per-client order holds [MQTT-4.6.0-6].
    """
    from twisted.internet.defer import Deferred

    world = World()
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    gate: Deferred[None] = Deferred()
    realPublish = world.broker.publishReceived
    calls = []

    def slowFirst(session, packet):  # type: ignore[no-untyped-def]
        calls.append(packet.payload)
        realPublish(session, packet)
        return gate if len(calls) == 1 else None

    world.broker.publishReceived = slowFirst  # type: ignore[method-assign]
    pub.send(Publish("t", b"1"), Publish("t", b"2"))
    pub.send(Publish("t", b"3"))
    assert calls == [b"1"]
    assert pub.transport.producerState == "paused"
    gate.callback(None)
    assert calls == [b"1", b"2", b"3"]
    assert pub.transport.producerState == "producing"
    assert [p.payload for p in sub.publishes()] == [b"1", b"2", b"3"]


def test_handler_failure_closes_only_that_client() -> None:
    """A failed handler Deferred closes that connection and nothing else."""
    from twisted.internet.defer import fail

    world = World()
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    world.broker.publishReceived = lambda s, p: fail(RuntimeError("store down"))  # type: ignore[method-assign, assignment]
    pub.send(Publish("t", b"x"))
    assert pub.closed and not sub.closed
