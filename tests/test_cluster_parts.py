"""
The cluster's parts that need no Redis: the message encoding between nodes, the copy of the
other nodes' routes, the retained store's seam, and a node's metrics label.
"""

from __future__ import annotations

import pytest
import txredisapi
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from mqttd.broker import Broker
from mqttd.cluster.retained import ClusterRetained
from mqttd.cluster.routes import RemoteRoutes
from mqttd.cluster.wire import WireError, decode, encode, packBatch, unpackBatch
from mqttd.codec.properties import Properties
from mqttd.config import BrokerConfig
from mqttd.http.metrics import BrokerCollector, ReactorLag
from mqttd.interfaces import IRetainedStore
from mqttd.message import Message, PropertiedMessage
from tests import e2e


def test_wireRoundTrip() -> None:
    """
    What a node sends is what the other reads back: topic, payload, QoS, RETAIN, publisher
    (for No Local), MQTT 5 properties, the expiry deadline, and the receiver's instructions
    (ordinary subscribers, shared subscriptions, selected recipients, selecting again).
    """
    message = PropertiedMessage(
        "a/b",
        b"\x00\xffpayload",
        2,
        True,
        Properties(
            content_type="text/plain",
            user_properties=(("k", "v"),),
            correlation_data=b"\x01",
            message_expiry_interval=60,
        ),
        1000.0,
    )
    message.publisherId = "pub-1"
    got = decode(encode(message, True, ("$share/g/a/#", "$share/h/+/b"), 7, 42, {"m1": 1}))
    assert got.selected == {"m1": 1} and not got.reselect
    assert decode(encode(message, False, (), 7, 43, None, True)).reselect
    assert (got.ordinary, got.groups, got.origin, got.sequence) == (
        True,
        ("$share/g/a/#", "$share/h/+/b"),
        7,
        42,
    )
    back = got.message
    assert (back.topic, back.payload, back.qos, back.retain) == ("a/b", b"\x00\xffpayload", 2, True)
    assert back.publisherId == "pub-1"
    assert back.expiresAt == 1060.0
    assert back.properties.content_type == "text/plain"
    assert back.properties.user_properties == (("k", "v"),)
    assert back.properties.correlation_data == b"\x01"
    plain = decode(encode(Message("t", b""), False, (), 1, 1))
    assert plain.message.publisherId is None and plain.groups == () and not plain.ordinary
    assert plain.selected == {} and not plain.reselect
    assert plain.message.expiresAt is None


@pytest.mark.parametrize(
    "data", [b"", b"\x02" + bytes(17), encode(Message("t", b"x"), True, (), 1, 1) + b"!"]
)
def test_wireRefusesWhatItDidNotWrite(data: bytes) -> None:
    """Bytes of another version, cut short or with trailing bytes raise L{WireError}."""
    with pytest.raises(WireError):
        decode(data)


def test_wireBatchKeepsEachMessageAndItsOrder() -> None:
    """
    A batch of messages (what one node sends another in one reactor turn, as one Redis value)
    gives back each message whole and in the order packed, empty ones and messages holding
    bytes that look like lengths included; a batch of one and of none too.
    """
    messages = [
        encode(Message(f"t/{i}", b"\x00\x00\x00\x05" * i), True, (), 9, i) for i in range(5)
    ]
    messages.append(b"")
    got = unpackBatch(packBatch(messages))
    assert got == messages
    assert [decode(m).sequence for m in got[:5]] == [0, 1, 2, 3, 4]
    assert unpackBatch(packBatch(messages[:1])) == messages[:1]
    assert unpackBatch(packBatch([])) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        # A single message is no batch: a node never sends one alone.
        encode(Message("t", b"x"), True, (), 1, 1),
        # Cut inside a length, and inside a message.
        packBatch([b"abc"])[:3],
        packBatch([b"abc", b"defg"])[:-1],
    ],
)
def test_wireBatchRefusesWhatItDidNotWrite(data: bytes) -> None:
    """Bytes that are no batch, or a batch cut short, raise L{WireError}."""
    with pytest.raises(WireError):
        unpackBatch(data)


def test_routesMatchNodesOnce() -> None:
    """
    A topic matches each node once however many of its filters match; wildcards match as the
    spec says, C{$} topics only by filters that start with C{$} [MQTT-4.7.2-1].
    """
    routes = RemoteRoutes()
    routes.add("b", "s/+/t")
    routes.add("b", "s/#")
    routes.add("c", "#")
    routes.add("d", "$SYS/#")
    assert set(routes.match("s/1/t")) == {"b", "c"}
    assert set(routes.match("x")) == {"c"}
    assert set(routes.match("$SYS/x")) == {"d"}
    routes.remove("b", "s/#")
    assert set(routes.match("s/1/t")) == {"b", "c"}
    assert set(routes.match("s/1")) == {"c"}
    routes.drop("c")
    assert set(routes.match("s/1/t")) == {"b"}
    assert routes.nodes() == {"b", "d"}
    routes.replace("b", ["q"])
    assert routes.filters("b") == frozenset({"q"}) and not routes.match("s/1/t")


def test_sharedGroupsTakeNodesInTurn() -> None:
    """
    A shared subscription held on two other nodes and here is served by each in turn; one
    held only elsewhere alternates between its holders; a node leaving the group leaves the
    turn to the others.
    """
    routes = RemoteRoutes()
    routes.add("b", "$share/g/j/#")
    routes.add("c", "$share/g/j/#")
    assert routes.matchShared("j/1") == ["$share/g/j/#"]
    assert routes.matchShared("k") == []
    assert [routes.pick("$share/g/j/#", True, "a") for _ in range(6)] == list("bcabca")
    assert [routes.pick("$share/g/j/#", False, "a") for _ in range(4)] == list("bcbc")
    routes.remove("b", "$share/g/j/#")
    assert {routes.pick("$share/g/j/#", False, "a") for _ in range(3)} == {"c"}
    routes.drop("c")
    assert routes.matchShared("j/1") == []


def test_clusterRetainedIsARetainedStore() -> None:
    """
    The cluster's retained store provides L{IRetainedStore}, writes every shared change
    through and keeps the node's own C{$SYS/broker/} tree to itself; another node's change
    and a reload from Redis change only the copy.
    """
    store = ClusterRetained()
    verifyObject(IRetainedStore, store)
    written: list[tuple[str, Message | None]] = []
    store.set("before", Message("before", b"0", 0, True))
    store.writer = lambda topic, message: written.append((topic, message))
    door = Message("door", b"open", 1, True)
    store.set("door", door)
    store.set("$SYS/broker/uptime", Message("$SYS/broker/uptime", b"1", 0, True))
    assert store.delete("door")
    assert written == [("door", door), ("door", None)]
    store.apply("window", Message("window", b"shut", 0, True))
    assert sorted(m.topic for m in store.matching("#")) == ["before", "window"]
    store.load({"gate": Message("gate", b"x", 0, True)})
    assert [m.topic for m in store.matching("#")] == ["gate"]
    assert store.get("$SYS/broker/uptime") is not None
    assert len(written) == 2


def test_metricsOfANodeCarryItsName(twisted_reactor: None) -> None:
    """Every sample of a cluster node's metrics has a C{node} label; a lone broker's none."""
    broker = Broker(BrokerConfig(sys_interval=0), e2e.reactor)
    collector = BrokerCollector(broker, ReactorLag(e2e.reactor), e2e.reactor)
    lone = [s for family in collector.collect() for s in family.samples]
    assert lone and all("node" not in s.labels for s in lone)
    broker.nodeName = "a-1"
    named = [s for family in collector.collect() for s in family.samples]
    assert len(named) == len(lone)
    assert all(s.labels["node"] == "a-1" for s in named)


def test_redisRepliesParsedInC() -> None:
    """
    txredisapi parses Redis's replies with hiredis (a dependency): a node reading a burst of
    forwarded messages gets them all from one read, where the pure-Python parser hands on one
    bulk string per reactor turn.
    """
    got: list[bytes] = []

    class Subscriber(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
            got.append(message)

    protocol = Subscriber(charset=None, convertNumbers=False)
    protocol.makeConnection(StringTransport())
    one = b"*3\r\n$7\r\nmessage\r\n$10\r\nmqttd:q0:b\r\n$2\r\nhi\r\n"
    protocol.dataReceived(one * 100)
    assert got == [b"hi"] * 100
