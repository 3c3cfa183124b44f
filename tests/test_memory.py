"""
What a session costs while idle, and that the state made on first use behaves as before: a
persistent session the store is only told of holds no queue or tables in it, a session whose
deliveries were all acknowledged or drained lets go of their tables, and queueing, sending and
restoring after that work as on a fresh session.

Sizes are measured with tracemalloc over many objects, against bounds well between what the
layout costs and what it cost before (the figures in each docstring, CPython 3.11).
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from mqttd.broker import Broker
from mqttd.codec import Decoder, Properties, encode
from mqttd.codec.packets import (
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
)
from mqttd.config import BrokerConfig
from mqttd.interfaces import ClientInfo, PluginContext
from mqttd.message import Message
from mqttd.plugin_loader import findPlugins
from mqttd.protocol import MQTTServerFactory
from mqttd.session import WAIT_PUBACK
from mqttd.store import MemoryStore, SessionlessStore
from mqttd.topics import SubscriptionTree
from tests.harness import LISTENER, World

N = 500


def bytesEach(build: Callable[[int], object]) -> float:
    """Heap bytes per object that C{build(i)}, called N times, leaves allocated."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [build(i) for i in range(N)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == N
    return (after - before) / N


def connectGrowing(world: World, module: str, **connect: Any) -> tuple[list[Any], int]:
    """
    Connect 200 clients C{c0}..C{c199} to C{world}; return them and the heap bytes allocated
    meanwhile by lines of C{mqttd/MODULE}.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        clients = [world.connect(f"c{i}", **connect) for i in range(200)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith(os.path.join("mqttd", module))
    )
    return clients, grown


def packetId(publish: Publish) -> int:
    assert publish.packet_id is not None
    return publish.packet_id


def test_storeRecordOfAnIdlePersistentSessionIsSmall() -> None:
    """
    A persistent session the store is only told of (the broker's own store, without C{[store]},
    is never told of deliveries) costs it no queue or tables: under 0.35 KB with its
    subscriptions dict and its key (~1.1 KB when each record made an empty deque, ~0.77 KB,
    and three dicts at once).
    """

    store = MemoryStore()
    clientIds = [f"client-{i}" for i in range(N)]

    def record(i: int) -> object:
        clientId = clientIds[i]
        store.sessionSaved(clientId, {})
        store.sessionOwned(clientId, "")
        store.sessionExpiry(clientId, 3600, None)
        return None

    assert bytesEach(record) < 350


def test_storeQueueMadeOnFirstUseAndAgainAfterDraining() -> None:
    """
    The store's queue, made when the first message is queued and let go of once drained, keeps
    the session's deliveries in order across that: what is restored is what was queued and not
    sent, and what was sent is in flight under its identifier.
    """
    store = MemoryStore()
    store.sessionSaved("c", {"t": 1})
    assert store.restore().sessions[0].pending == []
    first, second, third = (Message("t", bytes([i]), 1) for i in range(3))
    store.messageQueued("c", first, 1, False)
    store.messageSent("c", 1, first, 1, False, True)
    store.messageQueued("c", second, 1, False)
    store.messageQueued("c", third, 1, True)
    store.messageSent("c", 2, second, 1, False, True)
    (state,) = store.restore().sessions
    assert state.pending == [(third, 1, True)]
    assert state.inflight == [(1, first, 1, False, WAIT_PUBACK), (2, second, 1, False, WAIT_PUBACK)]
    assert state.nextPacketId == 3
    store.messageAcknowledged("c", 1)
    store.messageAcknowledged("c", 2)
    store.qos2Received("c", 9, 5.0)
    (state,) = store.restore().sessions
    assert state.inflight == [] and state.nextPacketId == 1
    assert state.awaitingRel == {9: 5.0}


def test_acknowledgedWindowKeepsNoTable() -> None:
    """
    Once every delivery in flight is acknowledged (PUBACK, or PUBREC then PUBCOMP), the
    session's in-flight dict is as small as an empty one: an emptied dict kept the table its
    first entry made (~0.16 KB), for as long as the session lived.
    """
    world = World()
    pub = world.connect("pub")
    sub = world.subscriber("sub", ("t", 2))
    session = world.broker.sessions["sub"]
    for qos in (1, 2):
        pub.send(Publish("t", b"m", qos=qos, packet_id=qos))
        pub.read()
        (got,) = sub.publishes()
        assert sys.getsizeof(session.inflight) > sys.getsizeof({})
        if qos == 1:
            sub.send(Puback(packetId(got)))
        else:
            sub.send(Pubrec(packetId(got)))
            assert sub.read() == [Pubrel(packetId(got))]
            sub.send(Pubcomp(packetId(got)))
        assert session.inflight == {}
        assert sys.getsizeof(session.inflight) == sys.getsizeof({})


def test_drainedQueueIsLetGoAndQueueingAgainKeepsOrder() -> None:
    """
    A persistent session's queue, let go of once the client is back and has everything, is made
    again the next time the client is away: its messages arrive in order, QoS 1 and QoS 2 alike
    [MQTT-4.6.0-6], and those still in flight at a disconnect are sent again with DUP set and
    their identifiers [MQTT-4.4.0-1].
    """
    world = World()
    pub = world.connect("pub")
    sub = world.subscriber("sub", ("t", 2), clean=False)
    session = world.broker.sessions["sub"]
    for round in range(2):
        sub.send(Disconnect())
        sub.finish()
        for i in range(3):
            number = 1 + i + 3 * round
            pub.send(Publish("t", b"%d-%d" % (round, i), qos=1 + i % 2, packet_id=number))
        pub.read()
        assert session.pending is not None and len(session.pending) == 3
        sub = world.connect("sub", clean=False)
        got = sub.publishes()
        assert [p.payload for p in got] == [b"%d-%d" % (round, i) for i in range(3)]
        assert session.pending is None
        # Acknowledge the first only; the others are re-sent on the next connection.
        sub.send(Puback(packetId(got[0])))
        sub.send(Pubrec(packetId(got[1])))
        sub.read()
        sub.send(Disconnect())
        sub.finish()
        sub = world.connect("sub", clean=False)
        again = sub.read()
        resent = [p for p in again if isinstance(p, Publish)]
        assert [(p.payload, p.packet_id, p.dup) for p in resent] == [
            (got[2].payload, got[2].packet_id, True)
        ]
        assert Pubrel(packetId(got[1])) in again
        sub.send(Puback(packetId(got[2])), Pubcomp(packetId(got[1])))
        sub.read()
        assert session.inflight == {}


def test_subscribedAfterDrainingStillQueues() -> None:
    """A client that subscribes again after its queue drained still gets what is queued."""
    world = World()
    pub = world.connect("pub")
    sub = world.subscriber("sub", ("a", 1), clean=False)
    sub.send(Disconnect())
    sub.finish()
    pub.send(Publish("a", b"1", qos=1, packet_id=1))
    sub = world.connect("sub", clean=False)
    (first,) = sub.publishes()
    sub.send(Puback(packetId(first)), Subscribe(2, [("b", 1)]))
    sub.read()
    sub.send(Disconnect())
    sub.finish()
    pub.send(Publish("b", b"2", qos=1, packet_id=2))
    sub = world.connect("sub", clean=False)
    assert [p.payload for p in sub.publishes()] == [b"2"]


def test_decoderHoldsNoBufferBetweenPackets() -> None:
    """
    A connection's decoder that has read its CONNECT and a packet split over two reads holds no
    buffer once the packet is whole: 500 such decoders cost under 150 bytes each (~0.25 KB when
    each kept a bytearray, which kept the room its largest partial packet took); a packet split
    after that is still read whole.
    """
    connect = encode(Connect(4, "c", True, 60))
    ping = encode(Pingreq())
    published = Publish("t/" + "x" * 100, b"y" * 100, qos=1, packet_id=1)
    publish = encode(published)

    def decoder(i: int) -> Decoder:
        d = Decoder(server=True, mqtt5=True)
        assert d.feed(connect[:5]) == []
        assert d.feed(connect[5:]) == [Connect(4, "c", True, 60)]
        assert d.feed(publish[:150]) == []
        assert d.feed(publish[150:] + ping[:1]) == [published]
        assert d.feed(ping[1:]) == [Pingreq()]
        return d

    decoders: list[Decoder] = []
    assert bytesEach(lambda i: decoders.append(decoder(i))) < 150
    assert len(decoders) == N
    for d in decoders[:3]:
        assert d.feed(ping[:1]) == [] and d.feed(ping[1:] + ping) == [Pingreq(), Pingreq()]


def test_idleSessionsShareTheirEmptyDicts() -> None:
    """
    A connected client that subscribed to nothing and has nothing in flight costs its session
    no dict of its own: nothing is allocated in mqttd/session.py for 200 such connections (two
    empty dicts each, 128 bytes, before); and a session that had deliveries in flight returns
    to the shared empty one once they are acknowledged.
    """
    world = World()
    clients, grown = connectGrowing(world, "session.py", keepalive=60)
    assert grown < 200 * 16
    sessions = [world.broker.sessions[f"c{i}"] for i in range(2)]
    assert sessions[0].subscriptions is sessions[1].inflight
    assert len(clients) == 200


def test_sharedEmptyDictRefusesWrites() -> None:
    """
    The empty dict sessions share cannot be written to, so that code adding a subscription or
    a delivery other than through the session fails loudly instead of giving it to every
    session at once.
    """
    world = World()
    world.connect("a")
    session = world.broker.sessions["a"]
    for write in (
        lambda: session.subscriptions.__setitem__("t", 1),
        lambda: session.subscriptions.update({"t": 1}),
        lambda: session.inflight.setdefault(1, None),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError):
            write()
    assert session.subscriptions == {} and world.broker.sessions["a"].inflight == {}
    assert session.subscriptions.pop("t", None) is None


def test_firstSubscriptionOfEachKindIsKept() -> None:
    """
    A session's first subscription, whether from SUBSCRIBE, from the broker's subscribeFor (the
    HTTP API's) or restored from a store, is the session's alone and routes messages to it; the
    others still have none.
    """
    world = World()
    pub = world.connect("pub")
    viaPacket = world.subscriber("p", ("a", 1))
    viaApi = world.connect("api")
    assert world.broker.subscribeFor("api", "b", 1)
    other = world.connect("other")
    pub.send(Publish("a", b"1"), Publish("b", b"2"))
    assert [m.payload for m in viaPacket.publishes()] == [b"1"]
    assert [m.payload for m in viaApi.publishes()] == [b"2"]
    assert other.publishes() == []
    assert world.broker.sessions["other"].subscriptions == {}
    assert world.broker.sessions["p"].subscriptions == {"a": 1}
    assert world.broker.sessions["api"].subscriptions == {"b": 1}
    # Restored from the store, in a broker rebuilt on it.
    kept = world.connect("kept", clean=False)
    kept.send(Subscribe(1, [("c", 1)]))
    kept.read()
    kept.send(Disconnect())
    kept.finish()
    again = World(store=world.store)
    again.connect("pub").send(Publish("c", b"3", qos=1, packet_id=1))
    back = again.connect("kept", clean=False)
    assert [m.payload for m in back.publishes()] == [b"3"]
    assert again.broker.sessions["kept"].subscriptions == {"c": 1}


def test_reconnectedClientKeepsOneCopyOfItsId() -> None:
    """
    A client that comes back to its session is known by the string the session holds: the
    client record does not keep the CONNECT's copy of its identifier, one more string per
    client for as long as it stays connected.
    """
    world = World()
    world.connect("returning", clean=False).send(Disconnect())
    world.connect("returning", clean=False)
    session = world.broker.sessions["returning"]
    assert world.broker.clients["returning"].clientId is session.clientId


def test_messageSentInOneFormKeepsNoTable() -> None:
    """
    A message delivered in one form (its subscribers' QoS, RETAIN and level) keeps that wire
    prefix and no dict of them nor its encoded topic: under 0.2 KB each beyond its topic and
    payload (~0.43 KB with a dict of one prefix and the topic's bytes).
    """
    topics = [f"chat/room/{i:06d}" for i in range(N)]
    payload = b"x" * 64

    def sent(i: int) -> Message:
        message = Message(topics[i], payload, 1)
        first = message.wirePrefix(1, False, False)
        assert message.wirePrefix(1, False, False) is first
        return message

    assert bytesEach(sent) < 200


def test_everyFormOfAMessageIsItsOwn() -> None:
    """
    Whatever order a message's forms are asked for in, each is the PUBLISH prefix of that form:
    the same bytes as a fresh message's, for every QoS, RETAIN, DUP and level, asked twice.
    """
    forms = [
        (qos, retain, dup, level)
        for qos in (0, 1, 2)
        for retain in (False, True)
        for dup in (False, True)
        for level in (4, 5)
    ]

    def prefix(message: Message, form: tuple[int, bool, bool, int]) -> bytes:
        qos, retain, dup, level = form
        if level == 5:
            return b"".join(message.wire5(qos, retain, dup, 0.0, []))
        return message.wirePrefix(qos, retain, dup)

    expected = {form: prefix(Message("a/b", b"payload"), form) for form in forms}
    assert len(set(expected.values())) == len(forms)
    for order in (forms, forms[::-1], forms[1::2] + forms[::2]):
        message = Message("a/b", b"payload")
        for form in order + order:
            assert prefix(message, form) == expected[form], form


def test_topicsWithoutSubscribersShareOneCachedResult() -> None:
    """
    The match cache keeps one empty result for every topic nobody subscribes to (with virtual
    groups, most published topics), not a dict each; a subscription made later is found for
    those topics, and the shared result stays empty.
    """
    tree = SubscriptionTree()
    tree.subscribe("other/#", "x", 1)
    nobody = [tree.match(f"$group/g{i}") for i in range(100)]
    assert all(result is nobody[0] and result == {} for result in nobody)
    tree.subscribe("$group/g7", "member", 1)
    assert tree.match("$group/g7") == {"member": 1}
    assert tree.match("$group/g8") == {} and nobody[0] == {}
    assert tree.match("other/a") == {"x": 1}


def test_groupMembersRoutedWithoutACopy(tmp_path: Path) -> None:
    """
    The virtual groups selector answers a message to a group of client ids with the group's
    own members (a group is immutable), not a copy of them kept beside it for as long as the
    group stands; leaving out the publisher still copies, and leaves the group as it was.
    """
    plugin = findPlugins()["virtual_groups"].build(
        {"group.g": "a, b:1, c:0"},
        PluginContext(MemoryReactorClock(), str(tmp_path), BrokerConfig(), None, None),
    )
    group = plugin.find("g")
    assert plugin.select(Message("$group/g/x", b""), None) is group.members
    sender = ClientInfo("a", None, "", "l")
    assert plugin.select(Message("$group/g/x", b""), sender) == {"b": 1, "c": 0}
    assert group.members == {"a": 2, "b": 1, "c": 0}


def test_sessionsShareTheBrokersSettings() -> None:
    """
    What every session of a broker shares (its counters, clock, observers' hook and inbound
    QoS 2 limits) is kept once: a connected client's session with its client record costs the
    registry under 0.42 KB (~0.47 KB when each session held its own, a bound method of the
    clock included), and those settings still hold: the 11th QoS 2 message awaiting PUBREL of
    a session allowed 10 closes its connection [MQTT-3.3.4-9].
    """
    world = World(max_awaiting_rel=10)
    clients, grown = connectGrowing(world, "sessions.py")
    assert grown < 200 * 420
    publisher = clients[0]
    for packetId in range(1, 11):
        publisher.send(Publish("t", b"m", qos=2, packet_id=packetId))
    assert not publisher.closed
    publisher.send(Publish("t", b"m", qos=2, packet_id=11))
    assert publisher.closed
    assert not clients[1].closed


def test_ownStoreKeepsNoSessionRecords() -> None:
    """
    A broker without a configured store keeps no record of its persistent sessions beside the
    sessions themselves (nothing could read one back), and those sessions still keep their
    subscriptions and queue across reconnections, in order [MQTT-3.1.2-4, MQTT-4.6.0-6].
    """
    world = World()
    world.broker = Broker(replace(BrokerConfig(), sys_interval=0), world.clock, None)
    world.broker.start()
    world.factory = MQTTServerFactory(world.broker, LISTENER, world.clock)
    assert isinstance(world.broker.store, SessionlessStore)
    sub = world.subscriber("sub", ("t", 1), clean=False)
    sub.send(Disconnect())
    sub.finish()
    pub = world.connect("pub")
    for i in range(3):
        pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    assert world.broker.store.sessions == {}
    back = world.connect("sub", clean=False)
    assert back.connack.session_present  # type: ignore[attr-defined]
    assert [p.payload for p in back.publishes()] == [b"0", b"1", b"2"]


def test_offlineSessionsExpireOnOneReactorTimer() -> None:
    """
    A thousand offline MQTT 5 sessions waiting out their Session Expiry Interval hold no
    reactor timer each (one is shared): each ends when its interval has passed
    [MQTT-3.1.2-23], and one whose client came back in time is kept.
    """
    world = World()
    expiring = Properties(session_expiry_interval=10)
    for i in range(1000):
        client = world.connect(f"c{i}", clean=False, level=5, properties=expiring)
        client.send(Disconnect())
        client.finish()
        if i == 499:
            world.clock.advance(5)
    assert len(world.clock.getDelayedCalls()) <= 2
    world.connect("c0", clean=False, level=5, properties=expiring)
    world.clock.advance(5)
    assert "c0" in world.broker.sessions and "c1" not in world.broker.sessions
    assert len(world.broker.sessions) == 501
    world.clock.advance(5)
    assert set(world.broker.sessions) == {"c0"}
    assert len(world.clock.getDelayedCalls()) <= 1
