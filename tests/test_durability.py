"""
The broker's durability hooks, on the in-memory harness: which events reach the store, and
which acknowledgements wait for L{IMessageStore.flush}.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from mqttd.codec.packets import (
    Connack,
    Connect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Will,
)
from mqttd.codec.properties import Properties
from mqttd.store import MemoryStore
from tests.harness import Client, World


class RecordingStore(MemoryStore):
    """
    The memory store, recording each event's name, and (when C{held}) answering flush with a
    Deferred the test fires, as a store in sync mode does until its commit; C{batched} answers
    so only the exactly-once flushes, as a store writing in batches that keeps up.
    """

    def __init__(self, held: bool = False, batched: bool = False) -> None:
        super().__init__()
        self.events: list[str] = []
        self.held = held
        self.batched = batched
        self.flushes: list[Deferred[None]] = []

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name[0].islower() and name not in (
            "events",
            "held",
            "batched",
            "flushes",
            "restore",
            "flush",
        ):
            if callable(attribute):
                self.events.append(name)
        return attribute

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:  # type: ignore[override]
        if not self.held or (self.batched and not exactlyOnce):
            return None
        d: Deferred[None] = Deferred()
        self.flushes.append(d)
        return d

    def commit(self) -> None:
        flushes, self.flushes = self.flushes, []
        for d in flushes:
            d.callback(None)


def persistent(world: World, clientId: str, *filters: tuple[str, int]) -> Client:
    """
    A 3.1.1 client of a persistent session, connected and subscribed to C{filters}, the test's
    store committing each step (a persistent session's CONNACK and SUBACK wait for it).
    """
    store: Any = world.store
    client = world.client()
    client.send(Connect(4, clientId, False, 0))
    store.commit()
    connack, *client._unread = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0, connack
    if filters:
        client.send(Subscribe(1, list(filters)))
        store.commit()
        assert client.read() == [Suback(1, [qos for _, qos in filters])]
    return client


def test_cleanSessionsAndQos0CostNothing() -> None:
    """
    Clean sessions publishing and receiving at any QoS, and QoS 0 to a persistent session, tell
    the store nothing: QoS 0 is never queued for an offline client [MQTT-3.1.2-5] and a clean
    session is never kept [MQTT-3.1.2-6], so neither has anything to make durable.
    """
    store = RecordingStore()
    world = World(store=store)
    clean = world.subscriber("clean", ("t/#", 2))
    persistent = world.subscriber("persistent", ("t/#", 0), clean=False)
    store.events.clear()
    pub = world.connect("pub")
    for qos in (0, 1, 2):
        pub.send(Publish(f"t/{qos}", b"x", qos=qos, packet_id=qos or None))
    pub.send(Pubrel(2))
    for packet in clean.publishes():
        if packet.qos == 1:
            clean.send(Puback(packet.packet_id))  # type: ignore[arg-type]
        elif packet.qos == 2:
            clean.send(Pubrec(packet.packet_id))  # type: ignore[arg-type]
    assert len(persistent.publishes()) == 3
    assert store.events == []


def test_fanOutToPersistentSessions() -> None:
    """
    A QoS 1 message to two persistent sessions, one offline, is journaled as one send and one
    queueing of the same message object, so a durable store writes it once.
    """
    store = RecordingStore()
    world = World(store=store)
    online = world.subscriber("online", ("t", 1), clean=False)
    offline = world.subscriber("offline", ("t", 1), clean=False)
    offline.drop()
    store.events.clear()
    world.connect("pub").send(Publish("t", b"x", qos=1, packet_id=1))
    assert store.events == ["messageSent", "messageQueued"]
    (delivery,) = online.publishes()
    online.send(Puback(delivery.packet_id))  # type: ignore[arg-type]
    assert store.events[-1] == "messageAcknowledged"
    assert store.sessions["online"].inflight == {}
    assert store.sessions["offline"].queue[0][0].payload == b"x"


def test_syncAcknowledgementsWaitForTheStore() -> None:
    """
    With a store that has not yet committed, PUBACK and PUBREC to the publisher, PUBCOMP to a
    persistent publisher and PUBREL to a persistent subscriber wait for flush's Deferred: what a
    client is told was taken, survives a crash [MQTT-4.3.2-2, MQTT-4.3.3-2]; and the client's
    later packets wait behind it, in order.
    """
    store = RecordingStore(held=True)
    world = World(store=store)
    sub = persistent(world, "sub", ("t", 2))
    pub = persistent(world, "pub")
    pub.send(Publish("t", b"one", qos=1, packet_id=1), Publish("t", b"two", qos=2, packet_id=2))
    assert pub.read() == []
    store.commit()
    assert pub.read() == [Puback(1)]
    store.commit()
    assert pub.read() == [Pubrec(2)]
    pub.send(Pubrel(2))
    assert pub.read() == []
    store.commit()
    assert pub.read() == [Pubcomp(2)]

    first, second = sub.publishes()
    sub.send(Puback(first.packet_id))  # type: ignore[arg-type]
    sub.send(Pubrec(second.packet_id))  # type: ignore[arg-type]
    assert sub.read() == []
    store.commit()
    assert sub.read() == [Pubrel(second.packet_id)]  # type: ignore[arg-type]


def test_willsOfOpenConnectionsPublishedOnRestore() -> None:
    """
    A will is kept while its connection is open, for clean sessions too; a broker restored from
    a store whose broker died with that connection open publishes it [MQTT-3.1.2-8], and clears
    it, while a will whose client sent DISCONNECT is gone [MQTT-3.1.2-10].
    """
    store = MemoryStore()
    world = World(store=store)
    world.connect("dies", will=Will("wills/dies", b"gone", 1, retain=True))
    polite = world.connect("polite", will=Will("wills/polite", b"never", 1, retain=True))
    polite.sendBytes(b"\xe0\x00")
    polite.finish()
    assert set(store.wills) == {"dies"}
    # The broker process dies here: no stop(), the store is all that remains.
    reborn = World(store=store)
    assert reborn.broker.retained.get("wills/dies") is not None
    assert reborn.broker.retained.get("wills/polite") is None
    assert store.wills == {}


def test_willPublishedToRestoredSession() -> None:
    """
    The will published on restore reaches a restored persistent session that subscribed to it,
    queued for when its client returns.
    """
    store = MemoryStore()
    world = World(store=store)
    world.subscriber("watcher", ("wills/#", 1), clean=False).drop()
    world.connect("dies", will=Will("wills/dies", b"gone", 1))
    reborn = World(store=store)
    watcher = reborn.connect("watcher", clean=False)
    assert [p.payload for p in watcher.publishes()] == [b"gone"]


class CommittingStore:
    """
    A store in sync mode over a L{MemoryStore} standing for the disk: events reach the disk only
    when the test commits, and a crash is a new broker restored from the disk.
    """

    def __init__(self, disk: MemoryStore | None = None) -> None:
        self.disk = disk if disk is not None else MemoryStore()
        self.pending: list[tuple[str, tuple[Any, ...]]] = []
        self.waiting: list[Deferred[None]] = []

    def restore(self) -> Any:
        return self.disk.restore()

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        if not self.pending:
            return None
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def close(self) -> None:
        return None

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for name, args in pending:
            getattr(self.disk, name)(*args)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.pending.append((name, args))


class Receiver:
    """
    A QoS 2 receiver as [MQTT-4.3.3-2] describes it (method B): a message reaches the
    application on its first PUBLISH, and a PUBLISH under an identifier awaiting PUBREL is a
    resend; its state outlives connections, as a persistent session's does.
    """

    def __init__(self) -> None:
        self.application: list[bytes] = []
        self.awaitingRel: set[int] = set()

    def take(self, client: Client) -> None:
        for packet in client.read():
            if isinstance(packet, Publish):
                assert packet.packet_id is not None
                if packet.packet_id not in self.awaitingRel:
                    self.awaitingRel.add(packet.packet_id)
                    self.application.append(packet.payload)
                client.send(Pubrec(packet.packet_id))
            elif isinstance(packet, Pubrel):
                self.awaitingRel.discard(packet.packet_id)
                client.send(Pubcomp(packet.packet_id))


def test_deliveryWrittenOnceDurable() -> None:
    """
    A QoS 1 or QoS 2 PUBLISH to a persistent session reaches the socket only once the store has
    committed it with its packet identifier, and a QoS 0 message routed meanwhile waits behind
    it: the client sees the session's packets in the order made [MQTT-4.6.0-6].
    """
    store = RecordingStore(held=True)
    world = World(store=store)
    sub = persistent(world, "sub")
    sub.send(Subscribe(1, [("t/#", 2)]))
    store.commit()
    assert sub.read() == [Suback(1, [2])]
    pub = world.connect("pub")
    pub.send(Publish("t/1", b"one", qos=1, packet_id=1))
    pub.send(Publish("t/0", b"zero", qos=0))
    assert sub.read() == []
    store.commit()
    assert [(p.payload, p.qos) for p in sub.publishes()] == [(b"one", 1), (b"zero", 0)]
    pub.send(Publish("t/2", b"two", qos=2, packet_id=2))
    assert sub.read() == []
    store.commit()
    assert [(p.payload, p.qos) for p in sub.publishes()] == [(b"two", 2)]


def test_noPacketIdentifierReusedAfterACrash() -> None:
    """
    A broker killed before it committed a QoS 2 delivery never sent that PUBLISH, so after the
    restart no packet identifier the subscriber holds awaiting PUBREL can be given to another
    message, which the subscriber would rightly drop as a resend [MQTT-4.3.3-2]: every message
    acknowledged to its publisher reaches the subscriber's application once.
    """
    store = CommittingStore()
    world = World(store=store)  # type: ignore[arg-type]
    receiver = Receiver()
    sub = persistent(world, "sub", ("t", 2))
    first = world.connect("first")
    first.send(Publish("t", b"one", qos=2, packet_id=1))
    receiver.take(sub)
    # Killed before the commit: "one" was never acknowledged to its publisher.
    reborn = World(store=CommittingStore(store.disk))  # type: ignore[arg-type]
    sub = reborn.connect("sub", clean=False)
    second = reborn.connect("second")
    second.send(Publish("t", b"two", qos=2, packet_id=1))
    reborn.store.commit()  # type: ignore[attr-defined]
    assert second.read() == [Pubrec(1)]
    receiver.take(sub)
    reborn.store.commit()  # type: ignore[attr-defined]
    receiver.take(sub)
    assert receiver.application == [b"two"]


def test_batchedQos2WaitsForTheDisk() -> None:
    """
    A store writing in batches answers QoS 1 at once, but every step of QoS 2 waits for the
    disk, so exactly-once survives a crash in that mode too: PUBREC and PUBCOMP to the publisher,
    the QoS 2 PUBLISH to a persistent subscriber and its PUBREL [MQTT-4.3.3-2].  The publisher's
    later packets are not held meanwhile: its QoS 1 message is answered first.
    """
    store = RecordingStore(held=True, batched=True)
    world = World(store=store)
    sub = world.subscriber("sub", ("t", 2), clean=False)
    pub = world.connect("pub", clean=False)
    pub.send(Publish("t", b"two", qos=2, packet_id=2), Publish("t", b"one", qos=1, packet_id=1))
    assert pub.read() == [Puback(1)]
    assert [p.payload for p in sub.publishes()] == []
    store.commit()
    assert pub.read() == [Pubrec(2)]
    delivered = sub.publishes()
    assert [(p.payload, p.qos) for p in delivered] == [(b"two", 2), (b"one", 1)]
    pub.send(Pubrel(2))
    assert pub.read() == []
    sub.send(Pubrec(delivered[0].packet_id))  # type: ignore[arg-type]
    assert sub.read() == []
    store.commit()
    assert pub.read() == [Pubcomp(2)]
    assert sub.read() == [Pubrel(delivered[0].packet_id)]  # type: ignore[arg-type]


def test_subackWaitsForTheStore() -> None:
    """
    A persistent session's SUBACK is sent once its subscription is committed, so a crash cannot
    forget a subscription its client was told it has [MQTT-3.8.4-1]; a retained QoS 0 message
    the subscription brings follows the SUBACK [MQTT-3.3.1-6].
    """
    store = RecordingStore(held=True)
    world = World(store=store)
    world.connect("pub").send(Publish("t", b"kept", qos=0, retain=True))
    sub = persistent(world, "sub")
    sub.send(Subscribe(1, [("t", 0)]))
    assert sub.read() == []
    store.commit()
    suback, retained = sub.read()
    assert suback == Suback(1, [0])
    assert isinstance(retained, Publish) and retained.payload == b"kept"


@pytest.mark.parametrize("level", [4, 5])
def test_connackWaitsForANewSession(level: int) -> None:
    """
    A new persistent session's CONNACK is written once the store has committed it: a broker
    killed before that commit never told the client its session exists, and one killed after
    it restores the session, so the client's next CONNACK says Session Present
    [MQTT-3.2.2-2].  Packets the client sent behind its CONNECT wait, in order.
    """
    properties = Properties(session_expiry_interval=3600) if level == 5 else None
    store = CommittingStore()
    world = World(store=store)  # type: ignore[arg-type]
    client = world.client(level)
    client.send(
        Connect(level, "sub", False, 0, properties=properties or Properties()),
        Subscribe(1, [("t", 1)]),
    )
    # What a crash now would leave: the client was told nothing, and the disk has no session.
    assert client.read() == []
    assert not store.disk.restore().sessions
    store.commit()
    connack, *later = client.read()
    assert isinstance(connack, Connack) and connack.return_code == 0
    assert not connack.session_present
    store.commit()
    assert later + client.read() == [Suback(1, [1])]
    # Killed now: the session is back, with its subscription.
    reborn = World(store=CommittingStore(store.disk))  # type: ignore[arg-type]
    again = reborn.client(level)
    again.send(Connect(level, "sub", False, 0, properties=properties or Properties()))
    reborn.store.commit()  # type: ignore[attr-defined]
    (connack,) = again.read()
    assert isinstance(connack, Connack) and connack.session_present


def test_connackWaitEndsWithItsConnection() -> None:
    """
    A connection gone, or taken over, while its new session commits is never answered and
    never attached; the one that takes it over gets its CONNACK once the store commits, with
    Session Present [MQTT-3.1.4-3, MQTT-3.2.2-2].  A clean session does not wait.
    """
    store = RecordingStore(held=True)
    world = World(store=store)
    first = world.client()
    first.send(Connect(4, "sub", False, 0))
    assert first.read() == []
    second = world.client()
    second.send(Connect(4, "sub", False, 0))
    assert first.closed and first.read() == []
    store.commit()
    (connack,) = second.read()
    assert connack == Connack(True, 0)
    assert world.broker.registry.sessions["sub"].connection is second.protocol

    gone = world.client()
    gone.send(Connect(4, "gone", False, 0))
    gone.drop()
    store.commit()
    assert gone.read() == []
    assert world.broker.registry.sessions["gone"].connection is None
    assert world.connect("clean").connack == Connack(False, 0)  # type: ignore[attr-defined]


def test_connackRefusedWhenTheStoreFails() -> None:
    """
    When the store cannot commit a new persistent session, its client is refused with
    CONNACK 3 (Server unavailable) rather than told a session exists that a crash would
    forget; the session is settled as any whose connection is lost.
    """
    store = RecordingStore(held=True)
    world = World(store=store)
    client = world.client()
    client.send(Connect(4, "sub", False, 0))
    (pending,) = store.flushes
    pending.errback(OSError("disk full"))
    assert client.read() == [Connack(False, 3)]
    assert client.closed


@pytest.mark.parametrize("keepingUp", [False, True])
def test_retainedQos0PacedByTheStore(keepingUp: bool) -> None:
    """
    A retained QoS 0 PUBLISH, the one QoS 0 message the store records, holds its publisher's
    later packets (and reading from it) while the store is not done with it: until the commit
    in sync mode, and in batched mode only while the writer is behind (the store here answers
    flush with a Deferred, as both do then; a batched store keeping up answers None and holds
    nothing); a QoS 0 PUBLISH that is not retained, which the store never
    sees, is not held [MQTT-4.6.0-6: the later packets keep their order].
    """
    store = RecordingStore(held=True, batched=keepingUp)
    world = World(store=store)
    sub = world.subscriber("sub", ("t/#", 0))
    pub = world.connect("pub")
    pub.send(Publish("t/plain", b"a", qos=0), Publish("t/kept", b"b", qos=0, retain=True))
    pub.send(Publish("t/plain", b"c", qos=0))
    seen = [p.payload for p in sub.publishes()]
    if keepingUp:
        assert seen == [b"a", b"b", b"c"] and store.flushes == []
        return
    assert seen == [b"a", b"b"]
    store.commit()
    assert [p.payload for p in sub.publishes()] == [b"c"]
