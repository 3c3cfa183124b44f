"""
The broker tells what it is doing: the counters of L{mqttd.stats}, the C{$SYS}
tree and presence events of L{mqttd.sys}, and the Prometheus endpoint of an
HTTP listener (L{mqttd.http}).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock

from mqttd.codec.packets import (
    Disconnect,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
)
from mqttd.codec.properties import Properties
from mqttd.config import ListenerConfig
from mqttd.http.metrics import ReactorLag
from mqttd.http.site import makeHttpSite
from mqttd.interfaces import Action, ClientInfo
from mqttd.stats import Histogram, Stats
from mqttd.sys import LoadAverage, presenceLevel
from tests import e2e
from tests.harness import World
from tests.listeners import make_pki, start_listener, tcpListener
from tests.test_durability import RecordingStore
from tests.test_twistd import freePort, twistdCommand, waitForPort

INTERVAL = 0.2


# Counting: every byte and packet the broker writes is counted exactly


class Tally:
    """Every byte written to and read from some harness clients, and the packets written."""

    def __init__(self) -> None:
        self.written = 0
        self.received = 0
        self.packets: list[Any] = []

    def watch(self, client: Any) -> Any:
        transport = client.transport
        write, writeSequence, sendBytes = transport.write, transport.writeSequence, client.sendBytes

        def tallyWrite(data: bytes) -> None:
            self.written += len(data)
            write(data)

        def tallyWriteSequence(chunks: Any) -> None:
            self.written += sum(len(c) for c in chunks)
            writeSequence(chunks)

        def tallySend(data: bytes) -> None:
            self.received += len(data)
            sendBytes(data)

        transport.write, transport.writeSequence = tallyWrite, tallyWriteSequence
        client.sendBytes = tallySend
        return client

    def read(self, client: Any) -> list[Any]:
        packets = client.read()
        self.packets += packets
        return packets


def test_bytesAndPacketsCountedAsOnTheWire() -> None:
    """
    The stats count exactly the bytes and packets the broker wrote and read:
    PUBLISH at QoS 0, 1 and 2 to 3.1.1 and 5.0 subscribers (packet
    identifiers and 5.0 property blocks included), PUBACK, PUBREC, PUBREL,
    PUBCOMP, SUBACK and PINGRESP; PUBLISH counted by QoS both ways.
    """
    world = World()
    tally = Tally()
    # CONNECT and CONNACK happen before the tally can watch: counted apart.
    old = tally.watch(world.connect("old"))
    new = tally.watch(world.connect("new", level=5))
    pub = tally.watch(world.connect("pub", level=5))
    stats = world.broker.stats
    before = (stats.bytesSent, stats.messagesSent, stats.bytesReceived, stats.packetsReceived)
    old.send(Subscribe(1, [("t/#", 2)]))
    new.send(Subscribe(1, [("t/#", 2)]))
    for qos in (0, 1, 2):
        pub.send(Publish(f"t/{qos}", b"x" * (10 + qos), qos, packet_id=qos or None))
        pub.send(
            Publish(
                "t/props",
                b"y",
                qos,
                packet_id=(10 + qos) if qos else None,
                properties=Properties(content_type="text/plain"),
            )
        )
    pub.send(Pubrel(2), Pubrel(12))
    for client in (old, new):
        for packet in tally.read(client):
            if isinstance(packet, Publish) and packet.qos == 1:
                client.send(Puback(packet.packet_id))  # type: ignore[arg-type]
            elif isinstance(packet, Publish) and packet.qos == 2:
                client.send(Pubrec(packet.packet_id))  # type: ignore[arg-type]
    old.sendBytes(b"\xc0\x00")  # PINGREQ
    for client in (old, new, pub):
        tally.read(client)

    publishes = [p for p in tally.packets if isinstance(p, Publish)]
    assert [stats.publishSentAt(qos) for qos in (0, 1, 2)] == [4, 4, 4]
    assert len(publishes) == 12
    assert stats.publishReceived == [2, 2, 2]
    assert stats.publishPayloadReceived == [11, 12, 13]
    assert stats.bytesSent - before[0] == tally.written
    assert stats.messagesSent - before[1] == len(tally.packets)
    assert stats.bytesReceived - before[2] == tally.received
    # 2 SUBSCRIBE, 6 PUBLISH, 2 PUBREL, 4 PUBACK, 4 PUBREC, 1 PINGREQ
    assert stats.packetsReceived - before[3] == 19


def test_dropsCountedByCause() -> None:
    """
    A message a client publishes to C{$SYS} and one over
    C{message_size_limit} are dropped and counted under their causes, as is
    a message for a full queue; the total is mosquitto's
    C{publish/messages/dropped}.
    """
    world = World(message_size_limit=4, max_queued_messages=1)
    stats = world.broker.stats
    sub = world.subscriber("sub", ("q", 1), clean=False)
    sub.send(Disconnect())
    sub.finish()
    pub = world.connect("pub")
    pub.send(Publish("$SYS/x", b"1", 0))
    pub.send(Publish("big", b"12345", 0))
    pub.send(Publish("q", b"1", 1, packet_id=1), Publish("q", b"2", 1, packet_id=2))
    assert stats.dropped[:3] == [1, 0, 0]
    assert stats.dropped[6:8] == [1, 1]
    assert stats.messagesDropped == 3


def test_messagesReceivedFromElsewhere() -> None:
    """
    What arrives other than as an MQTT PUBLISH (the MQTT-SN gateway and the HTTP API add with
    C{stats.messagesReceived += 1}) is counted apart from PUBLISH by QoS, and in the total.
    """
    stats = Stats()
    stats.publishReceived[1] += 2
    stats.messagesReceived += 1
    assert stats.otherReceived == 1 and stats.messagesReceived == 3
    assert stats.publishReceived == [0, 2, 0]


def test_reactorLagMeasuresLateness() -> None:
    """
    The lag probe reports how much later than scheduled its timer ran, and the largest lag
    since the last scrape, which the scrape then starts afresh.
    """
    clock = Clock()
    lag = ReactorLag(clock)
    lag.start()
    # Due at 1.0, run at 1.5 (the reactor was busy); then due at 2.5, run at 2.75.
    clock.advance(1.5)
    assert lag.last == pytest.approx(0.5)
    clock.advance(1.25)
    assert lag.last == pytest.approx(0.25)
    assert lag.takeHighest() == pytest.approx(0.5)
    assert lag.takeHighest() == pytest.approx(0.25)
    lag.stop()
    assert clock.getDelayedCalls() == []


def test_histogramBuckets() -> None:
    """A histogram counts each observation into the first bucket whose bound is not below it."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (math.inf, 4)]
    assert histogram.count == 4 and histogram.total == pytest.approx(2.65)


# $SYS: the numbers mosquitto publishes, computed as it does


def test_loadAverageAsMosquitto() -> None:
    """
    A load average moves towards the last interval's rate by C{1 - exp(-elapsed / window)}, as
    mosquitto's C{calc_load}: 100 messages in 10 s (600 a minute) from 0 give
    600 * (1 - exp(-10/60)) = 92.11 for the 1-minute average, 19.67 for 5 minutes and 6.63 for 15.
    """
    values = []
    for window in (60.0, 300.0, 900.0):
        values.append(f"{LoadAverage(window).update(600.0, 10.0):.2f}")
    assert values == ["92.11", "19.67", "6.63"]


def sysValues(world: World, client: Any) -> dict[str, str]:
    """The latest value of every $SYS topic C{client} received."""
    return {p.topic: p.payload.decode() for p in client.publishes()}


def test_sysTreeOnTheBrokerClock() -> None:
    """
    The tree is published at start (every load average 0.00, as mosquitto's first update), then
    every C{sys_interval} seconds only the topics whose value changed; after 100 QoS 0 messages
    in one 10 s interval the publish loads are mosquitto's, and the counters are exact.
    """
    world = World(sys_interval=10)
    watcher = world.connect("watcher")
    watcher.send(Subscribe(1, [("$SYS/#", 0)]))
    # The tree published at start is retained: the watcher got it with its SUBACK.
    first = sysValues(world, watcher)
    assert first["$SYS/broker/load/publish/received/1min"] == "0.00"
    assert first["$SYS/broker/version"].startswith("mqttd version ")
    pub = world.connect("pub")
    for _ in range(100):
        pub.send(Publish("a", b"p", 0))
    world.clock.advance(10)
    second = sysValues(world, watcher)
    assert second["$SYS/broker/load/publish/received/1min"] == "92.11"
    assert second["$SYS/broker/load/publish/received/5min"] == "19.67"
    assert second["$SYS/broker/load/publish/received/15min"] == "6.63"
    assert second["$SYS/broker/publish/messages/received"] == "100"
    assert second["$SYS/broker/clients/connected"] == "2"
    assert second["$SYS/broker/uptime"] == "10 seconds"
    assert "$SYS/broker/version" not in second
    # Nothing happens in the next interval: rates decay, counters stay and are not re-sent.
    world.clock.advance(10)
    third = sysValues(world, watcher)
    assert "$SYS/broker/publish/messages/received" not in third
    assert float(third["$SYS/broker/load/publish/received/1min"]) == pytest.approx(
        92.11 * math.exp(-10 / 60), abs=0.01
    )


def test_storeFlushLatency() -> None:
    """
    An acknowledgement that waits for the store's commit is timed on the broker's clock into the
    store flush histogram, whose buckets Prometheus reads, and C{$SYS} shows the count and the
    mean wait of the last interval.
    """
    store = RecordingStore(held=True)
    world = World(store=store, sys_interval=10)
    watcher = world.connect("watcher")
    watcher.send(Subscribe(1, [("$SYS/broker/mqttd/store/#", 0)]))
    pub = world.connect("pub")
    pub.send(Publish("t", b"x", qos=1, packet_id=1))
    world.clock.advance(0.003)
    store.commit()
    assert pub.read() == [Puback(1)]
    histogram = world.broker.stats.storeFlush
    assert histogram.count == 1 and histogram.total == pytest.approx(0.003)
    buckets = dict(histogram.cumulative())
    assert (buckets[0.0025], buckets[0.005], buckets[math.inf]) == (0, 1, 1)
    world.clock.advance(10)
    values = sysValues(world, watcher)
    assert values["$SYS/broker/mqttd/store/flushes"] == "1"
    assert values["$SYS/broker/mqttd/store/flush latency"] == "0.003000"


def test_sysIntervalZeroPublishesNothing() -> None:
    """C{sys_interval = 0} turns the tree off: no topic, no timer."""
    world = World(sys_interval=0)
    watcher = world.subscriber("watcher", ("$SYS/#", 0))
    world.clock.advance(60)
    assert watcher.publishes() == []
    assert world.broker.sysTree is None


def test_sysRetainedValuesAreNotStored() -> None:
    """$SYS values are retained in memory, never written to the store (as mosquitto)."""
    world = World(sys_interval=10)
    assert len(world.broker.retained) > 30
    assert world.store.restore().retained == []


class SysWatcher:
    """A paho client subscribed to C{$SYS/#}, remembering the latest value of each topic."""

    def __init__(self, port: int) -> None:
        self.client = e2e.Client(port, "sys-watcher")
        self.values: dict[str, str] = {}
        assert self.client.subscribe("$SYS/#") == 0

    def poll(self) -> dict[str, str]:
        for message in self.client.pending():
            self.values[message.topic] = message.payload.decode()
        return self.values

    def waitFor(self, what: str, condition: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        e2e.wait_until(lambda: condition(self.poll()), what, timeout=e2e.TIMEOUT)
        return self.values

    def close(self) -> None:
        self.client.close()


LISTED = [
    "version",
    "uptime",
    "timestamp",
    "clients/connected",
    "clients/disconnected",
    "clients/expired",
    "clients/maximum",
    "clients/total",
    "messages/received",
    "messages/sent",
    "messages/stored",
    "messages/inflight",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "bytes/received",
    "bytes/sent",
    "retained messages/count",
    "subscriptions/count",
    "heap/current size",
    "heap/maximum size",
    *(
        f"load/{name}/{window}"
        for name in (
            "connections",
            "bytes/received",
            "bytes/sent",
            "messages/received",
            "messages/sent",
            "publish/received",
            "publish/sent",
            "publish/dropped",
            "sockets",
        )
        for window in ("1min", "5min", "15min")
    ),
    "mqttd/groups/deliveries",
    "mqttd/dropped/queue_full",
    "mqttd/store/flushes",
]


def test_sysTopicsOverRealSockets(twisted_reactor: None) -> None:
    """
    With paho over real sockets: every listed C{$SYS} topic arrives within one interval, and
    the counters move as they must when two clients connect, one persistent session expires,
    ten QoS 1 messages go from one to the other, one is retained and one is published to
    C{$SYS} (dropped).
    """
    running = e2e.start_broker(sys_interval=INTERVAL)
    watcher = SysWatcher(running.port)
    clients: list[e2e.Client] = []
    try:
        # A known state: the watcher itself counted, and (every retained message being a $SYS
        # topic) as many retained messages counted as topics received, so no update is half seen.
        base = watcher.waitFor(
            "every listed $SYS topic",
            lambda v: (
                all(f"$SYS/broker/{t}" in v for t in LISTED)
                and v["$SYS/broker/clients/connected"] == "1"
                and v["$SYS/broker/retained messages/count"] == str(len(v))
            ),
        )
        base = dict(base)
        assert base["$SYS/broker/version"] == "mqttd version 0.1.0"
        assert base["$SYS/broker/uptime"].endswith(" seconds")
        assert int(base["$SYS/broker/heap/current size"]) > 1_000_000

        def num(values: dict[str, str], topic: str) -> int:
            return int(values[f"$SYS/broker/{topic}"])

        sub = e2e.Client(running.port, "sub")
        clients.append(sub)
        sub.subscribe("t", 1)
        pub = e2e.Client(running.port, "pub")
        clients.append(pub)
        expiring = e2e.Client(
            running.port,
            "expiring",
            protocol=e2e.MQTTv5,
            clean=False,
            properties=_expiry(1),
        )
        expiring.close()
        for i in range(10):
            pub.publish("t", b"%d" % i, qos=1)
        pub.publish("kept", b"r", qos=0, retain=True)
        pub.publish("$SYS/x", b"no", qos=0)
        sub.wait_for(10)

        def moved(v: dict[str, str]) -> bool:
            # The drop to $SYS came last and is published near the end of an update: once it
            # shows, so does everything before it.
            return (
                num(v, "publish/messages/received") - num(base, "publish/messages/received") == 12
                and num(v, "mqttd/dropped/sys_topic") - num(base, "mqttd/dropped/sys_topic") == 1
                and num(v, "clients/expired") - num(base, "clients/expired") == 1
            )

        after = watcher.waitFor("the counters to move", moved)
        assert num(after, "clients/connected") - num(base, "clients/connected") == 2
        assert num(after, "clients/total") - num(base, "clients/total") == 2
        assert num(after, "clients/maximum") >= num(base, "clients/total") + 3
        assert num(after, "retained messages/count") - num(base, "retained messages/count") == 1
        assert num(after, "subscriptions/count") - num(base, "subscriptions/count") == 1
        assert num(after, "publish/messages/dropped") - num(base, "publish/messages/dropped") == 1
        assert num(after, "mqttd/dropped/sys_topic") - num(base, "mqttd/dropped/sys_topic") == 1
        assert num(after, "publish/messages/sent") - num(base, "publish/messages/sent") >= 10
        # Each of the 12 PUBLISHes carried at least its 1-byte payload and 1-byte topic.
        assert num(after, "bytes/received") - num(base, "bytes/received") > 12 * 4
        assert num(after, "messages/received") - num(base, "messages/received") >= 12 + 3
        assert float(after["$SYS/broker/load/publish/received/1min"]) > 0
        assert float(after["$SYS/broker/load/connections/1min"]) > 0
        assert float(after["$SYS/broker/load/sockets/1min"]) > 0
        # The retained message is stored: the broker holds it for new subscribers.
        assert num(after, "messages/stored") >= num(base, "messages/stored") + 1
    finally:
        for client in clients:
            client.close()
        watcher.close()
        running.stop()


def _expiry(seconds: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties as PahoProperties

    properties = PahoProperties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = seconds
    return properties


# Presence


class Watcher:
    """A paho client subscribed to presence events, decoding their JSON."""

    def __init__(self, port: int, clientId: str = "watcher") -> None:
        self.client = e2e.Client(port, clientId)
        self.granted = self.client.subscribe("$SYS/broker/clients/+/+", 1)

    def next(self, clientId: str, event: str) -> dict[str, Any]:
        topic = f"$SYS/broker/clients/{presenceLevel(clientId)}/{event}"
        deadline = time.monotonic() + e2e.TIMEOUT
        while time.monotonic() < deadline:
            for message in self.client.wait_for(1, timeout=max(0.01, deadline - time.monotonic())):
                if message.topic == topic:
                    body: dict[str, Any] = json.loads(message.payload)
                    return body
        raise AssertionError(f"no {topic}")


def test_presenceEvents(twisted_reactor: None) -> None:
    """
    With C{presence_events}, a connect, a clean disconnect and a dropped connection each publish
    their event under C{$SYS/broker/clients/{clientid}/}, as JSON with the user name, address,
    protocol level, clean start, reason and timestamp.
    """
    running = e2e.start_broker(presence_events=True)
    watcher = Watcher(running.port)
    try:
        assert watcher.granted == 1
        before = time.time()
        alice = e2e.Client(running.port, "alice", clean=False)
        connected = watcher.next("alice", "connected")
        assert connected["clientid"] == "alice"
        assert connected["username"] is None
        assert connected["address"] == "127.0.0.1"
        assert connected["protocol_level"] == 4
        assert connected["clean_start"] is False
        assert before - 1 <= connected["timestamp"] <= time.time() + 1
        alice.close()
        gone = watcher.next("alice", "disconnected")
        assert gone["reason"] == "client sent DISCONNECT" and gone["graceful"] is True

        bob = e2e.Client(running.port, "b/o+b#", protocol=e2e.MQTTv5)
        assert watcher.next("b/o+b#", "connected")["protocol_level"] == 5
        # The network fails under bob: no DISCONNECT.
        bob.paho.socket().close()  # type: ignore[union-attr]
        dropped = watcher.next("b/o+b#", "disconnected")
        assert dropped["graceful"] is False
        assert dropped["reason"] == "connection lost"
        assert dropped["clientid"] == "b/o+b#"
        bob.close()
    finally:
        watcher.client.close()
        running.stop()


def test_presenceIsOptIn(twisted_reactor: None) -> None:
    """Without C{presence_events} no presence event is published."""
    running = e2e.start_broker()
    watcher = Watcher(running.port)
    try:
        e2e.Client(running.port, "alice").close()
        running.wait_gone("alice")
        # A message after the events would have been routed marks the end of what could come.
        running.inject("$SYS/broker/clients/end/connected", b"{}", 1)
        (first,) = watcher.client.wait_for(1)
        assert first.topic == "$SYS/broker/clients/end/connected"
    finally:
        watcher.client.close()
        running.stop()


class DenyPresence:
    """Lets everyone do everything except C{nosy} read presence events."""

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool:
        return not (client.clientId == "nosy" and topic.startswith("$SYS/broker/clients/"))


def test_presenceFollowsTheACL(twisted_reactor: None) -> None:
    """
    Presence events are subject to the ACL like any subscription: a client the ACL denies gets
    SUBACK 0x80, while one it allows gets the events.
    """
    from zope.interface import directlyProvides

    from mqttd.interfaces import IAuthorizer

    acl = DenyPresence()
    directlyProvides(acl, IAuthorizer)
    running = e2e.start_broker(presence_events=True, plugins=lambda: {"authorizers": [acl]})
    nosy = Watcher(running.port, "nosy")
    allowed = Watcher(running.port, "allowed")
    try:
        assert nosy.granted == 0x80
        e2e.Client(running.port, "carol").close()
        assert allowed.next("carol", "connected")["clientid"] == "carol"
        assert nosy.client.pending() == []
    finally:
        nosy.client.close()
        allowed.client.close()
        running.stop()


def test_presenceOnTakeover() -> None:
    """
    A second connection with a client id in use takes the session over [MQTT-3.1.4-3]: the
    first connection's disconnected event (reason: taken over) comes before the new connected.
    """
    world = World(presence_events=True)
    watcher = world.connect("watcher")
    watcher.send(Subscribe(1, [("$SYS/broker/clients/+/+", 0)]))
    watcher.read()
    world.connect("a")
    world.connect("a", level=5)
    events = [(p.topic, json.loads(p.payload)) for p in watcher.publishes()]
    assert [(topic, body["protocol_level"], body.get("reason")) for topic, body in events] == [
        ("$SYS/broker/clients/a/connected", 4, None),
        ("$SYS/broker/clients/a/disconnected", 4, "session taken over by a new connection"),
        ("$SYS/broker/clients/a/connected", 5, None),
    ]


def test_presenceLevelEscapesTopicCharacters() -> None:
    """A client id becomes one valid topic level: %, /, + and # are percent-encoded."""
    assert presenceLevel("plain-id") == "plain-id"
    assert presenceLevel("a/b+c#d%e") == "a%2Fb%2Bc%23d%25e"


# Prometheus


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """
    C{/metrics} over HTTP, parsed by prometheus_client's own parser: sample name to labels to
    value.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=e2e.TIMEOUT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


HTTP_LISTENER = ListenerConfig(name="http", endpoint="tcp:0", protocol="http")


def httpSite(broker: Any) -> Any:
    """The site of an HTTP listener (API, dashboard, metrics) for C{broker}, as the service has."""
    site, _, _ = makeHttpSite(broker, HTTP_LISTENER, e2e.reactor, {})
    return site


@pytest.fixture
def metricsBroker(twisted_reactor: None) -> Iterator[tuple[e2e.RunningBroker, int]]:
    """A broker with an HTTP listener of its own on an ephemeral port; yields both ports."""
    running = e2e.start_broker()

    def listen() -> Deferred[IListeningPort]:
        return serverFromString(e2e.reactor, "tcp:0:interface=127.0.0.1").listen(
            httpSite(running.broker)
        )

    port: IListeningPort = e2e.in_reactor(listen)
    try:
        yield running, port.getHost().port  # type: ignore[attr-defined]
    finally:
        e2e.in_reactor(port.stopListening)
        running.stop()


def test_metricsAfterKnownLoad(metricsBroker: tuple[e2e.RunningBroker, int]) -> None:
    """
    The metrics endpoint, scraped over HTTP and parsed with prometheus_client's parser, reports
    exactly the load applied: connections by listener and protocol level, 7 QoS 1 and 3 QoS 0
    messages in and out with their payload bytes, one subscription, one retained message, a
    drop by cause, sessions online and offline, and the process's own metrics.
    """
    running, httpPort = metricsBroker
    sub = e2e.Client(running.port, "sub")
    pub = e2e.Client(running.port, "pub", protocol=e2e.MQTTv5)
    gone = e2e.Client(running.port, "gone", clean=False)
    try:
        gone.close()
        running.wait_gone("gone")
        sub.subscribe("load/#", 1)
        for _ in range(7):
            pub.publish("load/a", b"12345", qos=1)
        for i in range(3):
            pub.publish("load/b", b"123", qos=0, retain=i == 2)
        pub.publish("$SYS/nope", b"x", qos=0)
        sub.wait_for(10)
        # paho acknowledges as it receives; the broker may not have read every PUBACK yet.
        e2e.wait_until(lambda: scrape(httpPort)["mqttd_inflight_messages"][()] == 0, "the PUBACKs")
        m = scrape(httpPort)
        assert m["mqttd_connections"] == {
            (("listener", "e2e"), ("protocol_level", "4")): 1,
            (("listener", "e2e"), ("protocol_level", "5")): 1,
        }
        assert m["mqttd_sessions"] == {(("state", "online"),): 2, (("state", "offline"),): 1}
        assert m["mqttd_messages_received_total"] == {
            (("qos", "0"),): 4,
            (("qos", "1"),): 7,
            (("qos", "2"),): 0,
        }
        assert m["mqttd_messages_received_payload_bytes_total"][(("qos", "1"),)] == 35
        assert m["mqttd_messages_received_payload_bytes_total"][(("qos", "0"),)] == 10
        assert m["mqttd_messages_sent_total"] == {
            (("qos", "0"),): 3,
            (("qos", "1"),): 7,
            (("qos", "2"),): 0,
        }
        # Each QoS 1 PUBLISH to "sub": 2 fixed header, 2 + 6 topic, 2 packet id, 5 payload.
        assert m["mqttd_messages_sent_bytes_total"][(("qos", "1"),)] == 7 * 17
        assert m["mqttd_messages_dropped_total"][(("cause", "sys_topic"),)] == 1
        assert m["mqttd_retained_messages"][()] == 1
        assert m["mqttd_subscriptions"][(("kind", "plain"),)] == 1
        assert m["mqttd_connects_accepted_total"][()] == 3
        assert m["mqttd_sockets_accepted_total"][()] == 3
        assert m["mqttd_packets_received_total"][()] > 11
        assert m["mqttd_sent_bytes_total"][()] > 7 * 17
        assert m["mqttd_store_flush_seconds_count"][()] == 0
        assert m["mqttd_reactor_lag_seconds"][()] >= 0
        assert m["process_resident_memory_bytes"][()] > 1_000_000
        assert m["mqttd_info"] == {(("version", "0.1.0"),): 1}
    finally:
        sub.close()
        pub.close()


def test_metricsCountDenialsAndQueues(twisted_reactor: None) -> None:
    """
    ACL denials are counted by action, and messages queued for an offline session show as queued
    messages and bytes.
    """
    from zope.interface import directlyProvides

    from mqttd.interfaces import IAuthorizer

    class Rules:
        def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool:
            return not topic.startswith("secret")

    rules = Rules()
    directlyProvides(rules, IAuthorizer)
    running = e2e.start_broker(plugins=lambda: {"authorizers": [rules]})

    def listen() -> Deferred[IListeningPort]:
        return serverFromString(e2e.reactor, "tcp:0:interface=127.0.0.1").listen(
            httpSite(running.broker)
        )

    port: IListeningPort = e2e.in_reactor(listen)
    pub = e2e.Client(running.port, "pub")
    try:
        away = e2e.Client(running.port, "away", clean=False)
        away.subscribe("q", 1)
        assert away.subscribe("secret/#", 0) == 0x80
        away.close()
        running.wait_gone("away")
        pub.publish("secret/x", b"1", qos=1)
        for _ in range(4):
            pub.publish("q", b"123456", qos=1)
        m = scrape(port.getHost().port)  # type: ignore[attr-defined]
        assert m["mqttd_acl_denials_total"][(("action", "subscribe"),)] == 1
        assert m["mqttd_acl_denials_total"][(("action", "publish"),)] == 1
        assert m["mqttd_queued_messages"][()] == 4
        assert m["mqttd_queued_bytes"][()] == 24
        assert m["mqttd_sessions"][(("state", "offline"),)] == 1
    finally:
        pub.close()
        e2e.in_reactor(port.stopListening)
        running.stop()


def test_tlsHandshakeFailuresCounted(twisted_reactor: None, tmp_path: Path) -> None:
    """A client that speaks plain MQTT to a TLS listener fails the handshake and is counted."""
    pki = make_pki(tmp_path)
    started = start_listener(
        tcpListener(certificate=str(pki.server.certificate), private_key=str(pki.server.key)),
        sys_interval=0,
    )
    try:
        with socket.create_connection(("127.0.0.1", started.port), timeout=e2e.TIMEOUT) as s:
            s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00" * 20)
            s.settimeout(e2e.TIMEOUT)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        e2e.wait_until(
            lambda: (
                started.broker.call(lambda: started.broker.broker.stats.tlsHandshakeFailures) == 1
            ),
            "the failed handshake to be counted",
        )
    finally:
        started.broker.stop()


# The HTTP listener in the running service


def test_twistdServesMetricsAndSys(tmp_path: Path) -> None:
    """
    C{twistd mqttd} with an MQTT and an HTTP listener: C{/metrics} sits beside the dashboard at
    C{/}, a scrape counts the client that connected, and the client sees C{$SYS} within one
    interval.
    """
    mqttPort, httpPort = freePort(), freePort()
    config = tmp_path / "mqttd.ini"
    config.write_text(
        f"[broker]\nsys_interval = 1\n"
        f"[listener:mqtt]\nendpoint = tcp:{mqttPort}:interface=127.0.0.1\nallow_anonymous = true\n"
        f"[listener:http]\nendpoint = tcp:{httpPort}:interface=127.0.0.1\nprotocol = http\n"
    )
    command, env = twistdCommand(tmp_path, "--config", str(config))
    log = tmp_path / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        waitForPort(process, mqttPort, log)
        waitForPort(process, httpPort, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{httpPort}/", timeout=e2e.TIMEOUT) as r:
            assert r.headers["Content-Type"].startswith("text/html")
        watcher = SysWatcher(mqttPort)
        try:
            # Published at start as 0, then as 1 within an interval of the watcher's CONNECT.
            watcher.waitFor(
                "$SYS/broker/clients/connected to count the watcher",
                lambda v: v.get("$SYS/broker/clients/connected") == "1",
            )
            m = scrape(httpPort)
            assert m["mqttd_connections"] == {(("listener", "mqtt"), ("protocol_level", "4")): 1}
        finally:
            watcher.close()
        assert "mqttd listener http on 127.0.0.1:" in log.read_text()
    finally:
        process.terminate()
        process.wait(e2e.TIMEOUT)


def test_prometheusImportedOnlyForAnHttpListener(tmp_path: Path) -> None:
    """
    Building the service for a configuration without an HTTP listener loads neither
    prometheus_client nor mqttd.http; with one, both.
    """
    script = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from mqttd.config import load_config\n"
        "from mqttd.service import makeBrokerService\n"
        "makeBrokerService(load_config(sys.argv[1]), reactor)\n"
        "print('prometheus_client' in sys.modules, 'mqttd.http' in sys.modules)\n"
    )
    plain = tmp_path / "plain.ini"
    plain.write_text("[listener:m]\nendpoint = tcp:0\n")
    http = tmp_path / "http.ini"
    http.write_text(
        "[listener:m]\nendpoint = tcp:0\n[listener:h]\nendpoint = tcp:0\nprotocol = http\n"
    )
    root = Path(__file__).resolve().parent.parent
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script, str(ini)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for ini in (plain, http)
    ]
    assert outputs == ["False False", "True True"]
