"""
End to end with paho-mqtt's MQTTv5 client: the broker's MQTT 5.0 behaviour
over a real socket against an independently written 5.0 implementation, and
3.1.1 and 5.0 clients on one broker.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqttd.config import BrokerConfig
from mqttd.interfaces import PluginContext
from mqttd.plugin_loader import findPlugins
from tests import e2e
from tests.conftest import Clients
from tests.e2e import TIMEOUT, Client, MQTTv5, Received, RunningBroker, WillSpec, wait_until


def connectProperties(**values: int) -> Properties:
    """CONNECT properties by paho's names (SessionExpiryInterval=60, ...)."""
    properties = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def delayedWill(topic: str, payload: bytes, delay: int) -> WillSpec:
    properties = Properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = delay
    return WillSpec(topic, payload, properties=properties)


@pytest.mark.broker_config(max_awaiting_rel=50, max_packet_size=100_000, topic_alias_maximum=5)
def test_connack_limits_seen_by_paho(clients: Clients) -> None:
    """paho reads the broker's limits from the 5.0 CONNACK [MQTT-3.1.4-5, MQTT-3.2.2-9]."""
    c = clients("c5", protocol=MQTTv5)
    p = c.connack_properties
    assert p is not None
    assert p.ReceiveMaximum == 50
    assert p.MaximumPacketSize == 100_000
    assert p.TopicAliasMaximum == 5
    assert p.RetainAvailable == 1
    assert p.WildcardSubscriptionAvailable == 1
    assert not hasattr(p, "MaximumQoS")


def test_assigned_client_identifier(clients: Clients) -> None:
    """An empty client id is answered with an Assigned Client Identifier [MQTT-3.2.2-16]."""
    c = clients("", protocol=MQTTv5)
    assert c.connack_properties is not None
    assigned = c.connack_properties.AssignedClientIdentifier
    assert assigned and c.connack_code == 0


def test_response_information(clients: Clients) -> None:
    """
    paho asking for Response Information gets the broker's prefix for its responses; not asking,
    it gets none [MQTT-3.1.2-28].
    """
    asking = clients(
        "asker", protocol=MQTTv5, properties=connectProperties(RequestResponseInformation=1)
    )
    assert asking.connack_properties.ResponseInformation == "reply/asker/"
    quiet = clients("quiet", protocol=MQTTv5)
    assert not hasattr(quiet.connack_properties, "ResponseInformation")


@pytest.mark.broker_config(max_keepalive=30)
def test_server_keep_alive(clients: Clients) -> None:
    """A keepalive above max_keepalive is lowered with Server Keep Alive [MQTT-3.2.2-21]."""
    c = clients("c5", protocol=MQTTv5, keepalive=300)
    assert c.connack_properties is not None
    assert c.connack_properties.ServerKeepAlive == 30


def test_session_expiry(clients: Clients, e2e_broker: RunningBroker) -> None:
    """
    With a Session Expiry Interval the session survives the connection and is
    resumed (Session Present 1) by Clean Start 0 [MQTT-3.1.2-23, MQTT-3.2.2-3];
    with none it ends with the connection.
    """
    kept = clients(
        "kept", protocol=MQTTv5, clean=False, properties=connectProperties(SessionExpiryInterval=60)
    )
    kept.disconnect()
    e2e_broker.wait_gone("kept")
    again = clients(
        "kept", protocol=MQTTv5, clean=False, properties=connectProperties(SessionExpiryInterval=60)
    )
    assert again.session_present
    gone = clients("gone", protocol=MQTTv5, clean=False)
    gone.disconnect()
    e2e_broker.wait_gone("gone")
    assert not clients("gone", protocol=MQTTv5, clean=False).session_present


def test_takeover_reason_code(clients: Clients) -> None:
    """The taken-over 5.0 connection is told why: DISCONNECT 0x8E [MQTT-3.1.4-3]."""
    first = clients("same", protocol=MQTTv5)
    clients("same", protocol=MQTTv5)
    assert first.disconnected.wait(5)
    assert first.disconnect_reason == 0x8E


def test_topic_alias(clients: Clients) -> None:
    """A paho publisher's Topic Alias is resolved by the broker [MQTT-3.3.2-12]."""
    sub = clients("sub")
    sub.subscribe("alias/t", 1)
    pub = clients("pub", protocol=MQTTv5)
    for payload in (b"set", b"used"):
        properties = Properties(PacketTypes.PUBLISH)
        properties.TopicAlias = 1
        topic = "alias/t" if payload == b"set" else ""
        info = pub.paho.publish(topic, payload, 1, properties=properties)
        info.wait_for_publish(5)
    assert sub.wait_for(2) == [
        Received("alias/t", b"set", 1, False),
        Received("alias/t", b"used", 1, False),
    ]


def test_disconnect_with_will(clients: Clients, e2e_broker: RunningBroker) -> None:
    """DISCONNECT 0x04 publishes the will; a normal DISCONNECT does not [MQTT-3.14.4-3]."""
    sub = clients("sub")
    sub.subscribe("will/#", 0)
    normal = clients("normal", protocol=MQTTv5, will=WillSpec("will/normal", b"n"))
    normal.disconnect()
    withWill = clients("with", protocol=MQTTv5, will=WillSpec("will/with", b"w"))
    withWill.paho.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    assert withWill.disconnected.wait(5)
    assert sub.wait_for(1) == [Received("will/with", b"w", 0, False)]
    e2e_broker.wait_gone("normal")
    assert sub.pending() == []


def test_will_delay(clients: Clients, e2e_broker: RunningBroker) -> None:
    """
    A dropped connection's will waits its Will Delay Interval [MQTT-3.1.2-8];
    reconnecting within it means the will is never sent [MQTT-3.1.3-9].
    """
    sub = clients("sub")
    sub.subscribe("will/#", 0)
    expiry = connectProperties(SessionExpiryInterval=60)
    back = clients(
        "back",
        protocol=MQTTv5,
        clean=False,
        properties=expiry,
        will=delayedWill("will/back", b"b", 2),
    )
    late = clients(
        "late",
        protocol=MQTTv5,
        clean=False,
        properties=expiry,
        will=delayedWill("will/late", b"l", 1),
    )
    back.drop()
    late.drop()
    e2e_broker.wait_gone("back")
    clients("back", protocol=MQTTv5, clean=False, properties=expiry)
    assert sub.wait_for(1) == [Received("will/late", b"l", 0, False)]
    wait_until(
        lambda: not e2e_broker.call(lambda: bool(e2e_broker.broker.registry._delayedWills)),
        "no delayed wills",
    )
    assert sub.pending() == []


def test_mqtt5_publisher_311_subscriber(clients: Clients) -> None:
    """A 5.0 client's messages reach a 3.1.1 subscriber at every QoS."""
    sub = clients("old")
    sub.subscribe("mixed/t", 2)
    pub = clients("new", protocol=MQTTv5)
    for qos in (0, 1, 2):
        pub.publish("mixed/t", bytes([qos]), qos)
    assert sub.wait_for(3) == [Received("mixed/t", bytes([q]), q, False) for q in (0, 1, 2)]


def test_311_publisher_mqtt5_subscriber(clients: Clients) -> None:
    """A 3.1.1 client's messages reach a 5.0 subscriber at every QoS."""
    sub = clients("new", protocol=MQTTv5)
    sub.subscribe("mixed/t", 2)
    pub = clients("old")
    for qos in (0, 1, 2):
        pub.publish("mixed/t", bytes([qos]), qos)
    assert sub.wait_for(3) == [Received("mixed/t", bytes([q]), q, False) for q in (0, 1, 2)]


def test_client_maximum_packet_size(clients: Clients) -> None:
    """
    A message larger than the paho subscriber's Maximum Packet Size is not
    sent to it [MQTT-3.1.2-24]; the messages around it are, and the
    connection stays up.
    """
    sub = clients("small", protocol=MQTTv5, properties=connectProperties(MaximumPacketSize=100))
    sub.subscribe("size/t", 1)
    pub = clients("pub", protocol=MQTTv5)
    for payload in (b"a", b"b" * 200, b"c"):
        pub.publish("size/t", payload, 1)
    assert sub.wait_for(2) == [
        Received("size/t", b"a", 1, False),
        Received("size/t", b"c", 1, False),
    ]
    assert not sub.disconnected.is_set()


def test_client_receive_maximum(clients: Clients) -> None:
    """
    With paho's Receive Maximum of 1 the broker keeps one QoS 1 message in
    flight at a time [MQTT-3.3.4-9]; all arrive, in order.
    """
    sub = clients("one", protocol=MQTTv5, properties=connectProperties(ReceiveMaximum=1))
    sub.subscribe("flow/t", 1)
    pub = clients("pub")
    for n in range(10):
        pub.publish("flow/t", bytes([n]), 1)
    assert sub.wait_for(10) == [Received("flow/t", bytes([n]), 1, False) for n in range(10)]


# Subscriptions and messages


def messageLog(c: Client) -> queue.Queue[paho.MQTTMessage]:
    """Every message paho hands C{c}'s application from now on, properties included."""
    log: queue.Queue[paho.MQTTMessage] = queue.Queue()
    c.paho.on_message = lambda client, userdata, message: log.put(message)
    return log


def nextMessages(log: queue.Queue[paho.MQTTMessage], n: int) -> list[paho.MQTTMessage]:
    return [log.get(timeout=TIMEOUT) for _ in range(n)]


def subscribe5(
    c: Client, topic_filter: str, options: SubscribeOptions, identifier: int | None = None
) -> int:
    """Subscribe with 5.0 options (and a Subscription Identifier); the SUBACK reason code."""
    properties = None
    if identifier is not None:
        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = identifier
    acked: queue.Queue[int] = queue.Queue()
    c.paho.on_subscribe = lambda client, userdata, mid, codes, props: acked.put(codes[0].value)
    c.paho.subscribe(topic_filter, options=options, properties=properties)
    return acked.get(timeout=TIMEOUT)


def test_subscription_options(clients: Clients) -> None:
    """
    paho's subscription options are honoured: No Local keeps a client's own
    messages from it [MQTT-3.8.3-3], Retain As Published keeps the RETAIN flag
    [MQTT-3.3.1-13] where it is otherwise 0 [MQTT-3.3.1-12], Retain Handling 2
    sends no retained message on subscribing [MQTT-3.3.1-11].
    """
    pub = clients("pub", protocol=MQTTv5)
    pub.publish("opt/old", b"retained", 1, retain=True)
    me = clients("me", protocol=MQTTv5)
    log = messageLog(me)
    assert subscribe5(me, "opt/#", SubscribeOptions(1, noLocal=True, retainHandling=2)) == 1
    watcher = clients("watcher", protocol=MQTTv5)
    watched = messageLog(watcher)
    assert subscribe5(watcher, "opt/+", SubscribeOptions(1, retainAsPublished=True)) == 1
    assert [m.payload for m in nextMessages(watched, 1)] == [b"retained"]
    me.publish("opt/mine", b"mine", 1, retain=True)
    pub.publish("opt/theirs", b"theirs", 1, retain=True)
    assert [(m.payload, m.retain) for m in nextMessages(log, 1)] == [(b"theirs", False)]
    assert [(m.payload, m.retain) for m in nextMessages(watched, 2)] == [
        (b"mine", True),
        (b"theirs", True),
    ]
    assert log.empty()


def test_request_response_properties(clients: Clients) -> None:
    """
    Response Topic, Correlation Data [MQTT-3.3.2-15, MQTT-3.3.2-16], User
    Properties in order [MQTT-3.3.2-17, MQTT-3.3.2-18], Content Type and
    Payload Format Indicator reach a paho subscriber as published, with the
    subscription's identifier [MQTT-3.3.4-3] and the remaining expiry
    interval [MQTT-3.3.2-6]; a 3.1.1 subscriber gets the bare message.
    """
    responder = clients("responder", protocol=MQTTv5)
    log = messageLog(responder)
    assert subscribe5(responder, "svc/+", SubscribeOptions(1), identifier=42) == 1
    old = clients("old")
    old.subscribe("svc/+", 1)
    requester = clients("requester", protocol=MQTTv5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "replies/requester"
    properties.CorrelationData = b"\x01\x02"
    properties.UserProperty = [("b", "1"), ("a", "2")]
    properties.ContentType = "application/json"
    properties.PayloadFormatIndicator = 1
    properties.MessageExpiryInterval = 120
    info = requester.paho.publish("svc/echo", b"{}", 1, properties=properties)
    info.wait_for_publish(TIMEOUT)
    (request,) = nextMessages(log, 1)
    # paho's Properties has its attributes only once set, which mypy cannot see.
    got: Any = request.properties
    assert got is not None
    assert (got.ResponseTopic, got.CorrelationData) == ("replies/requester", b"\x01\x02")
    assert got.UserProperty == [("b", "1"), ("a", "2")]
    assert (got.ContentType, got.PayloadFormatIndicator) == ("application/json", 1)
    assert got.SubscriptionIdentifier == [42]
    assert 0 < got.MessageExpiryInterval <= 120
    assert old.wait_for(1) == [Received("svc/echo", b"{}", 1, False)]


def test_shared_subscription_and_reason_codes(clients: Clients) -> None:
    """
    Two paho 5.0 members of a shared subscription share its messages; SUBACK
    refuses an invalid shared filter with 0x8F [MQTT-4.8.2-1]; UNSUBACK says
    0x11 for a filter with no subscription [MQTT-3.11.3-1].
    """
    first = clients("first", protocol=MQTTv5)
    second = clients("second", protocol=MQTTv5)
    for member in (first, second):
        assert subscribe5(member, "$share/pool/work", SubscribeOptions(1)) == 1
    assert subscribe5(first, "$share//work", SubscribeOptions(1)) == 0x8F
    pub = clients("pub", protocol=MQTTv5)
    for n in range(4):
        pub.publish("work", b"%d" % n, 1)
    got = first.wait_for(2) + second.wait_for(2)
    assert sorted(r.payload for r in got) == [b"0", b"1", b"2", b"3"]
    codes: queue.Queue[list[int]] = queue.Queue()
    first.paho.on_unsubscribe = lambda client, userdata, mid, reasons, props: codes.put(
        [r.value for r in reasons]
    )
    first.paho.unsubscribe(["$share/pool/work", "never"])
    assert codes.get(timeout=TIMEOUT) == [0x00, 0x11]


def test_keepalive_timeout_disconnect(clients: Clients) -> None:
    """
    A 5.0 client silent for one and a half keepalives is sent DISCONNECT 0x8D
    and closed [MQTT-3.1.2-22]; the bytes are written here by hand, as paho
    always pings in time.
    """
    raw = clients.raw()
    # CONNECT level 5, Clean Start, keepalive 1 s, no properties, client id "k".
    raw.send(bytes.fromhex("100e 00044d515454 05 02 0001 00 0001 6b"))
    connack = raw.recv_exactly(2)
    assert connack[0] == 0x20
    body = raw.recv_exactly(connack[1])
    assert body[:2] == b"\x00\x00"  # Session Present 0, Success
    assert raw.wait_closed() == bytes.fromhex("e0 01 8d")


@pytest.mark.parametrize("plugin", ["sqlite", "file"])
def test_mqtt5_state_survives_restart(twisted_reactor: None, tmp_path: Path, plugin: str) -> None:
    """
    On a durable store, a broker restart keeps a queued message's properties [MQTT-3.3.2-15 to
    MQTT-3.3.2-18] and the time left of its Message Expiry Interval [MQTT-3.3.2-6], and an
    offline session still expires on schedule, counted from its disconnection [MQTT-3.1.2-23].
    """
    e2e.REACTOR.takeErrors()

    def durable() -> dict[str, Any]:
        context = PluginContext(e2e.reactor, str(tmp_path), BrokerConfig())
        return {"store": findPlugins()[plugin].build({"durability": "sync"}, context)}

    first = e2e.start_broker(plugins=durable)
    keeper = e2e.client(
        first.port,
        "keeper",
        clean=False,
        protocol=MQTTv5,
        properties=connectProperties(SessionExpiryInterval=3600),
    )
    assert keeper.subscribe("restart/t", 1) == 1
    keeper.disconnect()
    brief = e2e.client(
        first.port,
        "brief",
        clean=False,
        protocol=MQTTv5,
        properties=connectProperties(SessionExpiryInterval=3),
    )
    brief.disconnect()
    first.wait_gone("keeper")
    first.wait_gone("brief")
    publisher = e2e.client(first.port, "publisher", protocol=MQTTv5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "replies/x"
    properties.CorrelationData = b"\x00\xff"
    properties.UserProperty = [("b", "1"), ("a", "2"), ("b", "3")]
    properties.ContentType = "text/plain"
    properties.PayloadFormatIndicator = 1
    properties.MessageExpiryInterval = 600
    publisher.paho.publish("restart/t", b"kept", 1, properties=properties).wait_for_publish(TIMEOUT)
    publisher.close()
    first.stop()

    second = e2e.start_broker(plugins=durable)
    try:
        assert second.call(lambda: sorted(second.broker.sessions)) == ["brief", "keeper"]
        log: queue.Queue[paho.MQTTMessage] = queue.Queue()
        back = e2e.Client(
            second.port,
            "keeper",
            clean=False,
            protocol=MQTTv5,
            properties=connectProperties(SessionExpiryInterval=3600),
            setup=lambda c: setattr(c, "on_message", lambda cl, u, m: log.put(m)),
        )
        assert back.session_present is True
        (message,) = nextMessages(log, 1)
        got: Any = message.properties
        assert (message.topic, message.payload) == ("restart/t", b"kept")
        assert (got.ResponseTopic, got.CorrelationData) == ("replies/x", b"\x00\xff")
        assert got.UserProperty == [("b", "1"), ("a", "2"), ("b", "3")]
        assert (got.ContentType, got.PayloadFormatIndicator) == ("text/plain", 1)
        assert 590 < got.MessageExpiryInterval <= 600
        back.close()
        wait_until(
            lambda: "brief" not in second.call(lambda: set(second.broker.sessions)),
            "the restored session to expire",
        )
    finally:
        second.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)
