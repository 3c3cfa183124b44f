"""
The message and subscription side of MQTT 5.0, on in-memory connections:
subscription options (No Local, Retain As Published, Retain Handling),
properties forwarded with each message, Message Expiry Interval,
Subscription Identifiers, SUBACK and UNSUBACK reason codes, and 5.0 and
3.1.1 clients exchanging messages.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from mqttd.codec.packets import (
    SUBACK_FAILURE,
    Connect,
    Publish,
    Pubrec,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttd.codec.properties import NO_PROPERTIES, Properties
from mqttd.interfaces import Action, ClientInfo, IAuthorizer
from mqttd.message import PropertiedMessage
from mqttd.store import MemoryStore
from tests.harness import Client, World

KEEP = Properties(session_expiry_interval=3600)


def v5(world: World, clientId: str, clean: bool = True) -> Client:
    """A 5.0 client; a persistent session (clean=False) outlives its connection by an hour."""
    return world.connect(clientId, clean, level=5, properties=NO_PROPERTIES if clean else KEEP)


def subscribe(
    client: Client, *filters: tuple[str, int], properties: Properties = NO_PROPERTIES
) -> list[int]:
    client.send(Subscribe(7, list(filters), properties))
    packets = client.read()
    (suback,) = [p for p in packets if isinstance(p, Suback)]
    # The retained messages the SUBSCRIBE brought are left for the test to read.
    client._unread = [p for p in packets if p is not suback]
    return suback.return_codes


def options(qos: int = 0, **flags: Any) -> SubscriptionOptions:
    return SubscriptionOptions.of(qos, **flags)


# No Local


def test_no_local() -> None:
    """
    With No Local a client's own messages are not forwarded to it
    [MQTT-3.8.3-3]; other clients' messages are, and other subscribers of the
    same topic still get its messages.
    """
    world = World()
    me = v5(world, "me")
    other = v5(world, "other")
    assert subscribe(me, ("t", options(1, no_local=True))) == [1]
    assert subscribe(other, ("t", options(1))) == [1]
    me.send(Publish("t", b"mine", 1, packet_id=1))
    other.send(Publish("t", b"theirs", 1, packet_id=1))
    assert [p.payload for p in me.publishes()] == [b"theirs"]
    assert [p.payload for p in other.publishes()] == [b"mine", b"theirs"]


def test_no_local_with_overlapping_subscription() -> None:
    """
    A message matching a No Local subscription and another one of the same
    client is delivered once through the other [MQTT-3.8.3-3, MQTT-3.3.4-2],
    at that subscription's QoS.
    """
    world = World()
    me = v5(world, "me")
    subscribe(me, ("t", options(2, no_local=True)), ("#", options(1)))
    me.send(Publish("t", b"x", 2, packet_id=1))
    assert [(p.payload, p.qos) for p in me.publishes()] == [(b"x", 1)]


# Retain As Published and Retain Handling


def test_retain_as_published() -> None:
    """
    A forwarded message has RETAIN 0 unless the subscription has Retain As
    Published [MQTT-3.3.1-12], then it keeps the flag it was published with
    [MQTT-3.3.1-13]; 3.1.1 subscribers always get RETAIN 0.
    """
    world = World()
    plain = v5(world, "plain")
    kept = v5(world, "kept")
    old = world.subscriber("old", ("t", 0))
    subscribe(plain, ("t", options(0)))
    subscribe(kept, ("t", options(0, retain_as_published=True)))
    publisher = v5(world, "pub")
    publisher.send(Publish("t", b"r", retain=True), Publish("t", b"n"))
    assert [(p.payload, p.retain) for p in plain.publishes()] == [(b"r", False), (b"n", False)]
    assert [(p.payload, p.retain) for p in kept.publishes()] == [(b"r", True), (b"n", False)]
    assert [(p.payload, p.retain) for p in old.publishes()] == [(b"r", False), (b"n", False)]


def test_retain_handling() -> None:
    """
    Retain Handling 0 sends the retained messages on every SUBSCRIBE
    [MQTT-3.3.1-9, MQTT-3.8.4-4], 1 only when the subscription is new
    [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11].
    """
    world = World()
    publisher = v5(world, "pub")
    publisher.send(Publish("a/t", b"A", retain=True), Publish("b/t", b"B", retain=True))
    publisher.send(Publish("c/t", b"C", retain=True))
    client = v5(world, "c")
    for _ in range(2):
        subscribe(
            client,
            ("a/#", options(0, retain_handling=0)),
            ("b/#", options(0, retain_handling=1)),
            ("c/#", options(0, retain_handling=2)),
        )
    assert [(p.payload, p.retain) for p in client.publishes()] == [
        (b"A", True),
        (b"B", True),
        (b"A", True),
    ]


# Properties


FORWARDED = Properties(
    payload_format_indicator=1,
    content_type="application/json",
    response_topic="replies/me",
    correlation_data=b"\x00\x01req",
    user_properties=(("z", "1"), ("a", "2"), ("z", "0")),
)


def test_properties_forwarded_unaltered() -> None:
    """
    Payload Format Indicator, Content Type, Response Topic [MQTT-3.3.2-15],
    Correlation Data [MQTT-3.3.2-16] and User Properties, in their order
    [MQTT-3.3.2-17, MQTT-3.3.2-18], reach every 5.0 subscriber as published;
    a 3.1.1 subscriber gets the same message without them.
    """
    world = World()
    first = v5(world, "first")
    second = v5(world, "second")
    old = world.subscriber("old", ("req", 1))
    subscribe(first, ("req", options(1)))
    subscribe(second, ("+", options(0)))
    requester = v5(world, "requester")
    requester.send(Publish("req", b"{}", 1, packet_id=3, properties=FORWARDED))
    for client, qos in ((first, 1), (second, 0)):
        (received,) = client.publishes()
        assert (received.payload, received.qos, received.properties) == (b"{}", qos, FORWARDED)
    assert [(p.payload, p.properties) for p in old.publishes()] == [(b"{}", NO_PROPERTIES)]


def test_only_message_properties_kept() -> None:
    """
    A Topic Alias concerns the publisher's connection only [MQTT-3.3.2-7] and
    a Will Delay Interval the will only: neither is forwarded.
    """
    message = PropertiedMessage(
        "t",
        b"",
        0,
        False,
        Properties(topic_alias=3, will_delay_interval=5, content_type="text/plain"),
        0.0,
    )
    assert message.properties == Properties(content_type="text/plain")
    message = PropertiedMessage("t", b"", 0, False, Properties(topic_alias=3), 0.0)
    assert message.properties is NO_PROPERTIES


def test_will_properties_forwarded() -> None:
    """A will's message properties go out with it, as a PUBLISH's do."""
    world = World()
    watcher = v5(world, "watcher")
    subscribe(watcher, ("wills/#", options(0)))
    will = Will("wills/a", b"gone", properties=Properties(content_type="text/plain"))
    client = world.client(5)
    client.send(Connect(5, "a", will=will))
    client.read()
    client.drop()
    (received,) = watcher.publishes()
    assert received.properties == Properties(content_type="text/plain")


# Message Expiry Interval


def test_remaining_expiry_forwarded() -> None:
    """
    A message that waited in an offline session's queue is forwarded with
    its Message Expiry Interval less the time it waited [MQTT-3.3.2-6].
    """
    world = World()
    subscriber = v5(world, "sub", clean=False)
    subscribe(subscriber, ("t", options(1)))
    subscriber.drop()
    publisher = v5(world, "pub")
    publisher.send(
        Publish("t", b"x", 1, packet_id=1, properties=Properties(message_expiry_interval=60))
    )
    world.clock.advance(20)
    (received,) = v5(world, "sub", clean=False).publishes()
    assert received.properties == Properties(message_expiry_interval=40)


def test_expired_message_never_delivered_from_queue() -> None:
    """
    A queued message whose expiry interval has passed is not delivered
    [MQTT-3.3.2-5]; the queue's other messages still are, in order.
    """
    world = World()
    subscriber = v5(world, "sub", clean=False)
    subscribe(subscriber, ("t", options(1)))
    subscriber.drop()
    publisher = v5(world, "pub")
    publisher.send(
        Publish("t", b"short", 1, packet_id=1, properties=Properties(message_expiry_interval=5)),
        Publish("t", b"long", 1, packet_id=2, properties=Properties(message_expiry_interval=50)),
        Publish("t", b"none", 1, packet_id=3),
    )
    world.clock.advance(10)
    back = v5(world, "sub", clean=False)
    assert [(p.payload, p.properties.message_expiry_interval) for p in back.publishes()] == [
        (b"long", 40),
        (b"none", None),
    ]
    assert len(world.store.sessions["sub"].queue) == 0


def test_expired_retained_message_not_sent() -> None:
    """A retained message past its expiry interval is not sent to new subscribers [MQTT-3.3.2-5]."""
    world = World()
    publisher = v5(world, "pub")
    publisher.send(
        Publish("t", b"x", retain=True, properties=Properties(message_expiry_interval=5))
    )
    world.clock.advance(2)
    early = v5(world, "early")
    subscribe(early, ("t", options(0)))
    assert [p.properties.message_expiry_interval for p in early.publishes()] == [3]
    world.clock.advance(5)
    late = v5(world, "late")
    subscribe(late, ("t", options(0)))
    assert late.publishes() == []


# Subscription Identifiers


def test_subscription_identifiers_on_delivery() -> None:
    """
    A message matching several subscriptions of a client goes out once, with
    the Subscription Identifiers of all of them that have one
    [MQTT-3.3.4-3, MQTT-3.3.4-4]; a subscription without one adds none.
    """
    world = World()
    client = v5(world, "c")
    subscribe(client, ("a/+", options(1)), properties=Properties(subscription_identifiers=(7,)))
    subscribe(client, ("a/#", options(0)), properties=Properties(subscription_identifiers=(300,)))
    subscribe(client, ("+/b", options(0)))
    publisher = v5(world, "pub")
    publisher.send(Publish("a/b", b"x", 1, packet_id=1))
    (received,) = client.publishes()
    assert received.qos == 1
    assert sorted(received.properties.subscription_identifiers) == [7, 300]
    publisher.send(Publish("z/b", b"y"))
    (received,) = client.publishes()
    assert received.properties.subscription_identifiers == ()


def test_subscription_identifier_on_shared_and_retained() -> None:
    """
    The identifier of a shared subscription comes with its deliveries, and a
    retained message sent on subscribing carries the new subscription's
    identifier [MQTT-3.3.4-3].
    """
    world = World()
    publisher = v5(world, "pub")
    publisher.send(Publish("r", b"kept", retain=True))
    client = v5(world, "c")
    subscribe(client, ("r", options(0)), properties=Properties(subscription_identifiers=(5,)))
    subscribe(
        client, ("$share/g/t", options(0)), properties=Properties(subscription_identifiers=(6,))
    )
    assert [p.properties.subscription_identifiers for p in client.publishes()] == [(5,)]
    publisher.send(Publish("t", b"new"))
    assert [p.properties.subscription_identifiers for p in client.publishes()] == [(6,)]


# SUBACK and UNSUBACK reason codes


@implementer(IAuthorizer)
class DenySecret:
    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
        return not topic.startswith("secret")


def test_suback_reason_codes() -> None:
    """
    A 5.0 SUBACK has one reason code per filter, in order [MQTT-3.9.3-1]:
    the granted QoS, 0x8F for an invalid filter and 0x87 for one the ACL
    refuses [MQTT-3.9.3-2]; a 3.1.1 client gets 0x80 for both.
    """
    world = World()
    world.broker.authorizers = (DenySecret(),)
    filters = [("a/#", options(2)), ("a/#/b", options(1)), ("secret/x", options(0))]
    assert subscribe(v5(world, "c5"), *filters) == [
        2,
        ReasonCode.TOPIC_FILTER_INVALID,
        ReasonCode.NOT_AUTHORIZED,
    ]
    old = world.connect("c4")
    old.send(Subscribe(1, [(f, int(o)) for f, o in filters]))
    assert old.read() == [Suback(1, [2, SUBACK_FAILURE, SUBACK_FAILURE])]


def test_unsuback_reason_codes() -> None:
    """
    A 5.0 UNSUBACK says for each filter, in order [MQTT-3.11.3-1], whether a
    subscription was removed (0x00) or none existed (0x11); 3.1.1's has no
    payload.
    """
    world = World()
    client = v5(world, "c5")
    subscribe(client, ("a", options(0)), ("$share/g/b", options(0)))
    client.send(Unsubscribe(2, ["a", "x", "$share/g/b"]))
    assert client.read() == [Unsuback(2, [0, ReasonCode.NO_SUBSCRIPTION_EXISTED, 0])]
    old = world.subscriber("c4", ("a", 0))
    old.send(Unsubscribe(3, ["a", "x"]))
    assert old.read() == [Unsuback(3, [])]


# Mixed levels


def test_mixed_levels_exchange_messages() -> None:
    """
    3.1.1 and 5.0 clients exchange messages both ways, and share one shared
    subscription, at the minimum of published and granted QoS [MQTT-3.8.4-8].
    """
    world = World()
    new = v5(world, "new")
    old = world.subscriber("old", ("to/old", 2), ("$share/g/jobs", 1))
    subscribe(new, ("to/new", options(1)), ("$share/g/jobs", options(1)))
    new.send(Publish("to/old", b"hello old", 2, packet_id=1))
    old.send(Publish("to/new", b"hello new", 2, packet_id=1))
    assert [(p.payload, p.qos) for p in old.publishes()] == [(b"hello old", 2)]
    assert [(p.payload, p.qos) for p in new.publishes()] == [(b"hello new", 1)]
    publisher = world.connect("pub")
    publisher.send(*(Publish("jobs", b"%d" % n, 1, packet_id=n + 1) for n in range(4)))
    # Members take turns in the order they joined.
    assert [p.payload for p in old.publishes()] == [b"0", b"2"]
    assert [p.payload for p in new.publishes()] == [b"1", b"3"]


def test_options_and_identifiers_survive_restart() -> None:
    """
    A persistent session's subscription options and Subscription Identifier
    are stored with its subscription: after a broker restart, No Local and
    the identifier still apply [MQTT-3.8.3-3, MQTT-3.3.4-3].
    """
    store = MemoryStore()
    world = World(store=store)
    client = v5(world, "c", clean=False)
    subscribe(
        client,
        ("t/#", options(1, no_local=True)),
        properties=Properties(subscription_identifiers=(9,)),
    )
    client.drop()
    world.broker.stop()
    reborn = World(store=store)
    back = v5(reborn, "c", clean=False)
    back.send(Publish("t/own", b"own", 1, packet_id=1))
    v5(reborn, "other").send(Publish("t/x", b"x", 1, packet_id=1))
    assert [(p.payload, p.properties.subscription_identifiers) for p in back.publishes()] == [
        (b"x", (9,))
    ]


def test_pubrec_refusal_ends_delivery() -> None:
    """
    A PUBREC with a reason code of 0x80 or more ends a QoS 2 delivery: no
    PUBREL follows [MQTT-4.3.3-4], the message is not sent again, to this
    client or to another member of its shared subscription [MQTT-4.8.2-6],
    and its place in the in-flight window is free.
    """
    world = World(max_inflight=1)
    client = v5(world, "c", clean=False)
    other = v5(world, "other")
    subscribe(client, ("t", options(2)), ("$share/g/s", options(2)))
    subscribe(other, ("$share/g/s", options(2)))
    publisher = v5(world, "pub")
    publisher.send(Publish("s", b"refused", 2, packet_id=1), Publish("t", b"next", 2, packet_id=2))
    (refused,) = client.publishes()
    assert refused.payload == b"refused"
    assert refused.packet_id is not None
    client.send(Pubrec(refused.packet_id, ReasonCode.UNSPECIFIED_ERROR))
    (following,) = client.read()
    assert isinstance(following, Publish) and following.payload == b"next"
    assert other.publishes() == []
    client.drop()
    back = v5(world, "c", clean=False)
    assert [p.payload for p in back.publishes()] == [b"next"]


def test_identifiers_of_shared_and_ordinary_deliveries_apart() -> None:
    """
    A client with an ordinary and a shared subscription matching one message
    gets two PUBLISH packets, each with the identifier of its own
    subscription only [MQTT-3.3.4-5].
    """
    world = World()
    client = v5(world, "c")
    subscribe(client, ("t", options(0)), properties=Properties(subscription_identifiers=(1,)))
    subscribe(
        client, ("$share/g/t", options(0)), properties=Properties(subscription_identifiers=(2,))
    )
    v5(world, "pub").send(Publish("t", b"x"))
    assert sorted(p.properties.subscription_identifiers for p in client.publishes()) == [
        (1,),
        (2,),
    ]
