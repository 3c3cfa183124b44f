"""
Shared subscriptions C{$share/{ShareName}/{filter}} (MQTT 5.0 section 4.8.2),
which mqttd also gives 3.1.1 clients, as mosquitto and EMQX do: each message
goes to one member of each matching shared subscription, in turn among the
online members, and to an offline persistent member's queue only when no
member is online.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface import implementer

from mqttd.codec.packets import (
    SUBACK_FAILURE,
    Disconnect,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Unsubscribe,
)
from mqttd.interfaces import Action, ClientInfo, IAuthorizer
from mqttd.message import Message
from mqttd.store import MemoryStore
from mqttd.topics import (
    InvalidTopic,
    SharedGroup,
    SharedSubscriptions,
    split_shared_filter,
    validate_topic_filter,
)
from tests.conftest import Clients
from tests.e2e import Received
from tests.harness import Client, World

# Validation


@pytest.mark.parametrize(
    ("topic_filter", "spec"),
    [
        ("$share//a", "MQTT-4.8.2-1"),
        ("$share/", "MQTT-4.8.2-1"),
        ("$share/g", "MQTT-4.8.2-2"),
        ("$share/g/", "MQTT-4.8.2-2"),
        ("$share/g+/a", "MQTT-4.8.2-2"),
        ("$share/+/a", "MQTT-4.8.2-2"),
        ("$share/#/a", "MQTT-4.8.2-2"),
        ("$share/g/a/#/b", "MQTT-4.7.1-2"),
        ("$share/g/a+", "MQTT-4.7.1-3"),
    ],
)
def test_invalid_shared_filters(topic_filter: str, spec: str) -> None:
    """
    A shared filter needs a share name of at least one character
    [MQTT-4.8.2-1] without C{/}, C{+} or C{#}, followed by C{/} and a valid
    topic filter [MQTT-4.8.2-2].
    """
    with pytest.raises(InvalidTopic) as caught:
        validate_topic_filter(topic_filter)
    assert caught.value.spec == spec


@pytest.mark.parametrize(
    ("topic_filter", "parts"),
    [
        ("$share/g/a", ("g", "a")),
        ("$share/g/#", ("g", "#")),
        ("$share/group-1/+/b/#", ("group-1", "+/b/#")),
        ("$share/g/$share/h/a", ("g", "$share/h/a")),
        ("$share/g//", ("g", "/")),
    ],
)
def test_valid_shared_filters(topic_filter: str, parts: tuple[str, str]) -> None:
    """Valid shared filters split into share name and the filter after it [MQTT-4.8.2-2]."""
    validate_topic_filter(topic_filter)
    assert split_shared_filter(topic_filter) == parts


def test_invalid_shared_filter_refused_in_suback() -> None:
    """A 3.1.1 SUBSCRIBE with a bad shared filter gets 0x80 for it, the rest are granted."""
    world = World()
    client = world.connect("c")
    client.send(Subscribe(1, [("$share//a", 1), ("$share/g/a", 1)]))
    assert client.read() == [Suback(1, [SUBACK_FAILURE, 1])]
    assert list(world.broker.shared.groups) == ["$share/g/a"]


# Taking turns


def test_group_turns_skip_offline_members() -> None:
    """
    L{SharedGroup.pick} walks the members in joining order, skipping offline
    ones; with none online it still takes turns.
    """
    group = SharedGroup("$share/g/t")
    for member in "abc":
        group.add(member, 0)
    online = {"a", "b", "c"}
    assert [group.pick(online.__contains__) for _ in range(4)] == ["a", "b", "c", "a"]
    online.discard("c")
    assert [group.pick(online.__contains__) for _ in range(3)] == ["b", "a", "b"]
    online.clear()
    assert [group.pick(online.__contains__) for _ in range(3)] == ["c", "a", "b"]


def test_group_removal_keeps_turn() -> None:
    """Removing a member neither skips nor repeats anyone's turn."""
    group = SharedGroup("$share/g/t")
    for member in "abcd":
        group.add(member, 0)

    def always(clientId: str) -> bool:
        return True

    assert group.pick(always) == "a"
    assert group.pick(always) == "b"
    assert group.remove("a")
    assert group.pick(always) == "c"
    assert group.remove("d")
    assert group.pick(always) == "b"
    assert not group.remove("d")
    assert group.add("a", 1)
    assert not group.add("a", 2)
    assert group.members == {"b": 0, "c": 0, "a": 2}
    assert [group.pick(always) for _ in range(3)] == ["c", "a", "b"]


def test_shared_subscriptions_end_with_last_member() -> None:
    """A shared subscription exists while it has members; then nothing of it is left."""
    shared = SharedSubscriptions()
    assert shared.subscribe("$share/g/a/+", "c1", 1)
    assert shared.subscribe("$share/g/a/+", "c2", 0)
    assert not shared.subscribe("$share/g/a/+", "c2", 1)
    assert shared.subscribe("$share/h/a/b", "c1", 0)
    assert len(shared) == 3
    assert sorted(g.topicFilter for g in shared.match("a/b")) == ["$share/g/a/+", "$share/h/a/b"]
    assert shared.unsubscribe("$share/g/a/+", "c1")
    assert not shared.unsubscribe("$share/g/a/+", "c1")
    assert shared.unsubscribe("$share/g/a/+", "c2")
    assert shared.unsubscribe("$share/h/a/b", "c1")
    assert shared.groups == {}
    assert shared.match("a/b") == []
    assert len(shared) == 0


# Routing


def payloads(client: Client) -> list[bytes]:
    return [p.payload for p in client.publishes()]


def publish(world: World, topic: str, *bodies: bytes, qos: int = 0) -> None:
    publisher = world.connect("publisher")
    publisher.send(
        *(
            Publish(topic, body, qos=qos, packet_id=n if qos else None)
            for n, body in enumerate(bodies, 1)
        )
    )


def test_round_robin_among_online_members() -> None:
    """
    Each message goes to one member of the shared subscription, in turn
    (as mosquitto's and EMQX's default round-robin strategy).
    """
    world = World()
    members = [world.subscriber(f"m{n}", ("$share/g/t/+", 0)) for n in range(3)]
    publish(world, "t/x", *(b"%d" % n for n in range(7)))
    assert [payloads(m) for m in members] == [[b"0", b"3", b"6"], [b"1", b"4"], [b"2", b"5"]]


def test_one_copy_per_shared_subscription() -> None:
    """
    Two shared subscriptions each get a copy of a message both match, and an
    ordinary subscription of a member is delivered as well: each subscription
    is served on its own.
    """
    world = World()
    g1 = world.subscriber("g1", ("$share/one/t", 0), ("t", 0))
    g2 = world.subscriber("g2", ("$share/two/#", 0))
    g3 = world.subscriber("g3", ("$share/two/#", 0))
    publish(world, "t", b"m")
    assert payloads(g1) == [b"m", b"m"]
    assert len(payloads(g2)) + len(payloads(g3)) == 1


def test_granted_qos_respected() -> None:
    """
    The member chosen gets the message at the minimum of the published QoS and
    the QoS granted to its subscription [MQTT-4.8.2-3].
    """
    world = World()
    low = world.subscriber("low", ("$share/g/t", 0))
    high = world.subscriber("high", ("$share/g/t", 2))
    publish(world, "t", b"a", b"b", qos=1)
    assert [(p.payload, p.qos) for p in low.publishes()] == [(b"a", 0)]
    assert [(p.payload, p.qos) for p in high.publishes()] == [(b"b", 1)]


def test_dollar_topics_not_matched_by_leading_wildcard() -> None:
    """A shared C{#} does not match C{$} topics, like its plain filter [MQTT-4.7.2-1]."""
    world = World()
    member = world.subscriber("m", ("$share/g/#", 0), ("$share/g/$app/#", 0))
    world.broker.route(Message("$app/x", b"x"))
    assert payloads(member) == [b"x"]


def test_offline_member_skipped_while_another_is_online() -> None:
    """An offline persistent member gets nothing queued while another member is online."""
    world = World()
    away = world.subscriber("away", ("$share/g/t", 1), clean=False)
    away.drop()
    here = world.subscriber("here", ("$share/g/t", 1))
    publish(world, "t", b"1", b"2", qos=1)
    assert payloads(here) == [b"1", b"2"]
    back = world.connect("away", clean=False)
    assert payloads(back) == []


def test_queued_for_offline_member_when_none_online() -> None:
    """
    With no member online, QoS 1 and 2 messages queue for the offline
    persistent members in turn and are delivered when each reconnects
    [MQTT-4.8.2-4]; QoS 0 messages are not queued for offline clients.
    """
    world = World()
    for name in ("a", "b"):
        world.subscriber(name, ("$share/g/t", 2), clean=False).drop()
    publish(world, "t", b"1", b"2", b"3", qos=1)
    publish(world, "t", b"not queued")
    assert payloads(world.connect("a", clean=False)) == [b"1", b"3"]
    assert payloads(world.connect("b", clean=False)) == [b"2"]


def test_session_end_discards_its_queued_share() -> None:
    """
    A member's session ending takes it out of the group, and the messages
    queued for it are not sent to any other member [MQTT-4.8.2-5].
    """
    world = World()
    world.subscriber("a", ("$share/g/t", 1), clean=False).drop()
    publish(world, "t", b"queued", qos=1)
    other = world.subscriber("b", ("$share/g/t", 1))
    fresh = world.connect("a", clean=True)
    assert world.broker.shared.groups["$share/g/t"].members == {"b": 1}
    assert payloads(fresh) == []
    assert payloads(other) == []
    publish(world, "t", b"next", qos=1)
    assert payloads(other) == [b"next"]


def test_disconnect_leaves_group() -> None:
    """A clean session's end leaves its groups; the last member ends the shared subscription."""
    world = World()
    first = world.subscriber("a", ("$share/g/t", 0))
    second = world.subscriber("b", ("$share/g/t", 0))
    first.send(Disconnect())
    first.finish()
    publish(world, "t", b"1", b"2")
    assert payloads(second) == [b"1", b"2"]
    second.drop()
    assert world.broker.shared.groups == {}


def test_unsubscribe_leaves_group() -> None:
    """UNSUBSCRIBE with the whole shared filter takes the client out [MQTT-3.10.4-1]."""
    world = World()
    first = world.subscriber("a", ("$share/g/t", 0))
    second = world.subscriber("b", ("$share/g/t", 0))
    first.send(Unsubscribe(2, ["t", "$share/g/t"]))
    first.read()
    publish(world, "t", b"1", b"2")
    assert payloads(first) == []
    assert payloads(second) == [b"1", b"2"]
    assert world.broker.sessions["a"].subscriptions == {}


def test_no_retained_messages_for_shared_subscriptions() -> None:
    """
    Retained messages are sent for new non-shared subscriptions only (5.0
    section 3.3.1.3); a message published with RETAIN reaches a member with
    RETAIN 0.
    """
    world = World()
    publisher = world.connect("p")
    publisher.send(Publish("t", b"kept", retain=True))
    member = world.subscriber("m", ("$share/g/t", 0))
    assert member.publishes() == []
    publisher.send(Publish("t", b"new", retain=True))
    assert [(p.payload, p.retain) for p in member.publishes()] == [(b"new", False)]


def test_shared_subscription_restored_from_store() -> None:
    """A persistent member's shared subscription survives a broker restart."""
    store = MemoryStore()
    world = World(store=store)
    world.subscriber("m", ("$share/g/t", 1), clean=False).drop()
    world.broker.stop()
    reborn = World(store=store)
    member = reborn.connect("m", clean=False)
    publish(reborn, "t", b"after", qos=1)
    assert payloads(member) == [b"after"]


@implementer(IAuthorizer)
class Recording:
    def __init__(self) -> None:
        self.asked: list[tuple[Action, str]] = []

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
        self.asked.append((action, topic))
        return topic.startswith("ok")


def test_acl_asked_about_filter_after_share_name() -> None:
    """
    The ACL decides a shared subscription on the filter after the share name,
    so rules written for topics cover it, and each delivery passes the
    receive check.
    """
    world = World()
    authorizer = Recording()
    world.broker.authorizers = (authorizer,)
    member = world.connect("m")
    member.send(Subscribe(1, [("$share/g/ok/#", 1), ("$share/g/secret/#", 1)]))
    assert member.read() == [Suback(1, [1, SUBACK_FAILURE])]
    assert (Action.SUBSCRIBE, "ok/#") in authorizer.asked
    assert (Action.SUBSCRIBE, "secret/#") in authorizer.asked
    world.broker.route(Message("ok/1", b"x"))
    assert payloads(member) == [b"x"]
    assert (Action.RECEIVE, "ok/1") in authorizer.asked


# End to end


def test_e2e_shared_subscription_311(clients: Clients) -> None:
    """Two paho 3.1.1 members of one shared subscription split the messages between them."""
    first = clients("first")
    second = clients("second")
    assert first.subscribe("$share/workers/jobs/#", 1) == 1
    assert second.subscribe("$share/workers/jobs/#", 1) == 1
    publisher = clients("publisher")
    for n in range(4):
        publisher.publish("jobs/x", b"%d" % n, 1)
    got = first.wait_for(2) + second.wait_for(2)
    assert sorted(got, key=lambda r: r.payload) == [
        Received("jobs/x", b"%d" % n, 1, False) for n in range(4)
    ]
    assert first.pending() == [] and second.pending() == []


def test_shared_subscriptions_disabled() -> None:
    """
    With C{shared_subscriptions = false} CONNACK tells 5.0 clients so, and a
    shared filter is refused: 0x9E at 5.0, 0x80 at 3.1.1.
    """
    world = World(shared_subscriptions=False)
    new = world.connect("new", level=5)
    assert new.connack.properties.shared_subscription_available == 0  # type: ignore[attr-defined]
    new.send(Subscribe(1, [("$share/g/t", 0), ("t", 0)]))
    assert new.read() == [Suback(1, [ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, 0])]
    old = world.connect("old")
    old.send(Subscribe(1, [("$share/g/t", 0)]))
    assert old.read() == [Suback(1, [SUBACK_FAILURE])]
    assert world.broker.shared.groups == {}
