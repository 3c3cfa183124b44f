"""
The short ways of the per-delivery path (bench S7): a subscriber's lone PUBACK read straight
into its session, and what they must keep of the general path's rules.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from mqttd.codec import Decoder, encode
from mqttd.codec.errors import DecodeError
from mqttd.codec.packets import Connect, Disconnect, Puback, Publish, ReasonCode, Subscribe
from tests.harness import World


def _connected(level: int) -> Decoder:
    decoder = Decoder(server=True, mqtt5=True)
    decoder.feed(encode(Connect(level, "c"), level))
    return decoder


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize(
    "data",
    [
        b"\x40\x02\x00\x01",
        b"\x40\x02\xff\xff",
        b"\x40\x02\x12\x34",
        # Not a lone Success PUBACK of Remaining Length 2: left to feed.
        b"\x40\x03\x00\x01\x10",
        b"\x40\x02\x00\x01\x40\x02\x00\x02",
        b"\x40\x02\x00",
        b"\x50\x02\x00\x01",
        b"\x41\x02\x00\x01",
        b"\x40\x02\x00\x00",
    ],
)
def test_lonePubackReadsAsFeedWould(level: int, data: bytes) -> None:
    """
    C{lone_puback} gives a packet identifier exactly when C{feed} would read the same bytes as
    one C{Puback} of that identifier with Success and no properties [MQTT-3.4.2-1]; for
    anything else (a reason code, two packets, a partial one, another type, reserved flags
    set [MQTT-2.1.3-1], identifier 0 [MQTT-2.2.1-5]) it gives 0 and leaves the bytes to feed.
    """
    fast = _connected(level).lone_puback(data)
    try:
        packets = _connected(level).feed(data)
    except DecodeError:
        packets = None
    if fast:
        assert packets == [Puback(fast)]
    else:
        assert packets is None or not (
            len(packets) == 1 and packets[0] == Puback(getattr(packets[0], "packet_id", 0))
        )


def test_lonePubackNotBeforeConnectNorAfterAPartialPacket() -> None:
    """
    Before CONNECT a PUBACK is the decoder's to refuse [MQTT-3.1.0-1], and after a partial
    packet its bytes continue that packet: neither is read as a lone PUBACK.
    """
    fresh = Decoder(server=True, mqtt5=True)
    assert fresh.lone_puback(b"\x40\x02\x00\x01") == 0
    decoder = _connected(5)
    # A QoS 0 PUBLISH to "a" whose 4-byte payload is a PUBACK's bytes.
    assert decoder.feed(b"\x30\x08\x00\x01a\x00") == []
    assert decoder.lone_puback(b"\x40\x02\x00\x01") == 0
    assert decoder.feed(b"\x40\x02\x00\x01") == [Publish("a", b"\x40\x02\x00\x01")]


def test_lonePubackFreesTheInflightSlotAndSendsWhatWaited() -> None:
    """
    A subscriber's PUBACK read alone ends its QoS 1 delivery [MQTT-4.3.2-5] and lets the
    next queued message into the in-flight window, in order [MQTT-4.6.0-6].
    """
    world = World(max_inflight=1)
    sub = world.subscriber("sub", ("t", 1))
    pub = world.connect("pub")
    pub.send(Publish("t", b"1", qos=1, packet_id=1), Publish("t", b"2", qos=1, packet_id=2))
    (first,) = sub.publishes()
    assert first.payload == b"1"
    sub.sendBytes(encode(Puback(first.packet_id)))  # type: ignore[arg-type]
    (second,) = sub.publishes()
    assert second.payload == b"2"
    assert list(world.broker.sessions["sub"].inflight) == [second.packet_id]


def test_lonePubackForAQos2DeliveryClosesWithProtocolError() -> None:
    """
    A 5.0 PUBACK read alone for a delivery sent at QoS 2 is a protocol error: DISCONNECT
    0x82, then the connection closes [MQTT-4.13.1-1].
    """
    world = World()
    sub = world.connect("sub", level=5)
    sub.send(Subscribe(1, [("t", 2)]))
    sub.read()
    pub = world.connect("pub")
    pub.send(Publish("t", b"m", qos=2, packet_id=1))
    (got,) = sub.publishes()
    sub.sendBytes(encode(Puback(got.packet_id), 5))  # type: ignore[arg-type]
    assert sub.read() == [Disconnect(ReasonCode.PROTOCOL_ERROR)]
    assert sub.closed


def test_lonePubackWaitsForTheHandlerBeforeIt() -> None:
    """
    A PUBACK read while an earlier packet's handler still waits (a plugin doing I/O) waits
    too: a client's packets are handled in the order sent [MQTT-4.6.0-6], so the message
    queued behind the acknowledged one goes out only after that handler is done.
    """
    world = World(max_inflight=1)
    sub = world.subscriber("sub", ("t", 1))
    pub = world.connect("pub")
    pub.send(Publish("t", b"1", qos=1, packet_id=1), Publish("t", b"2", qos=1, packet_id=2))
    (first,) = sub.publishes()
    gate: Deferred[None] = Deferred()
    realPublish = world.broker.publishReceived

    def gated(session, packet):  # type: ignore[no-untyped-def]
        realPublish(session, packet)
        return gate

    world.broker.publishReceived = gated  # type: ignore[method-assign]
    sub.send(Publish("elsewhere", b"x"))
    sub.sendBytes(encode(Puback(first.packet_id)))  # type: ignore[arg-type]
    assert sub.publishes() == []
    assert first.packet_id in world.broker.sessions["sub"].inflight
    gate.callback(None)
    assert [p.payload for p in sub.publishes()] == [b"2"]


def test_oneMessageInEveryWireForm() -> None:
    """
    One message delivered in several wire forms (QoS 0, 1 and 2 by each subscription's
    maximum [MQTT-3.3.5-1], 3.1.1 and 5.0, a resend with DUP set [MQTT-3.3.1-1]) reaches each
    subscriber in its own form, whichever form was encoded first and kept.
    """
    world = World()
    from mqttd.codec.packets import Subscribe

    subscribers = []
    for n, (level, qos) in enumerate([(4, 1), (5, 2), (4, 0), (5, 1), (4, 2), (5, 0)]):
        client = world.connect(f"s{n}", level=level, clean=False)
        client.send(Subscribe(1, [("t/#", qos)]))
        client.read()
        subscribers.append((client, qos))
    pub = world.connect("pub")
    pub.send(Publish("t/x", b"payload", qos=2, packet_id=7))
    for client, qos in subscribers:
        (got,) = client.publishes()
        assert (got.topic, got.payload, got.qos, got.dup, got.retain) == (
            "t/x",
            b"payload",
            qos,
            False,
            False,
        )
    # A QoS 1 subscriber that comes back unacknowledged gets it again with DUP set.
    client, _ = subscribers[0]
    client.drop()
    back = world.connect("s0", clean=False)
    (again,) = back.publishes()
    assert (again.topic, again.payload, again.qos, again.dup) == ("t/x", b"payload", 1, True)


def test_lonePubackOnATakenOverConnectionIsNotHandled() -> None:
    """
    Once a new connection with the same Client Identifier took the session over, the old one
    is closing [MQTT-3.1.4-3] and a PUBACK it still sends, read alone, is not handled, as no
    packet after the close is: the delivery stays in flight for the new connection, which is
    sent it again [MQTT-4.4.0-1].
    """
    world = World()
    old = world.subscriber("sub", ("t", 1), clean=False)
    pub = world.connect("pub")
    pub.send(Publish("t", b"m", qos=1, packet_id=1))
    (got,) = old.publishes()
    new = world.connect("sub", clean=False)
    old.sendBytes(encode(Puback(got.packet_id)))  # type: ignore[arg-type]
    assert list(world.broker.sessions["sub"].inflight) == [got.packet_id]
    (again,) = new.publishes()
    assert (again.payload, again.dup) == (b"m", True)


def test_lonePubackAfterAProtocolErrorCloseIsNotHandled() -> None:
    """
    After a PUBACK for a QoS 2 delivery closed the connection [MQTT-4.13.1-1], a PUBACK the
    client still sends for its QoS 1 delivery, read alone, is not handled, as no packet after
    the close is: the persistent session keeps that delivery in flight, to send again on its
    next connection [MQTT-4.4.0-1].
    """
    world = World()
    sub = world.connect("sub", level=5, clean=False)
    sub.send(Subscribe(1, [("one", 1), ("two", 2)]))
    sub.read()
    pub = world.connect("pub")
    pub.send(Publish("one", b"1", qos=1, packet_id=1), Publish("two", b"2", qos=2, packet_id=2))
    first, second = sub.publishes()
    sub.sendBytes(encode(Puback(second.packet_id), 5))  # type: ignore[arg-type]
    assert sub.read() == [Disconnect(ReasonCode.PROTOCOL_ERROR)]
    sub.sendBytes(encode(Puback(first.packet_id), 5))  # type: ignore[arg-type]
    assert first.packet_id in world.broker.sessions["sub"].inflight
