"""
The MQTT-SN gateway on in-memory datagrams and a fake clock: each SN client is a session of the
broker core, meeting MQTT clients of the same broker (L{tests.sn_harness}).  Section numbers are
those of the MQTT-SN 1.2 specification.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqttd.codec.packets import Publish, Will
from mqttd.interfaces import (
    Action,
    Allow,
    ClientInfo,
    Credentials,
    IAuthenticator,
    IAuthorizer,
    IClientConnection,
)
from mqttd.sn import packets as sn
from mqttd.sn.client import SNClient
from mqttd.sn.codec import encode
from mqttd.sn.packets import ReturnCode, TopicIdType, shortTopicId

from .sn_harness import SN_LISTENER, SNWorld
from .sn_vectors import BAD, GOOD


def test_client_is_a_connection() -> None:
    """An SN client provides the broker's IClientConnection, like a TCP connection."""
    world = SNWorld()
    client = world.snConnect("s1")
    conn = world.gateway.clients[client.key]
    assert verifyObject(IClientConnection, conn)
    assert world.broker.sessions["s1"].connection is conn


def test_searchgw_answered() -> None:
    """SEARCHGW is answered with GWINFO carrying the listener's gateway id (section 6.1)."""
    world = SNWorld(replace(SN_LISTENER, gateway_id=9))
    client = world.sn()
    client.send(sn.SearchGw(1))
    assert client.one(sn.GwInfo) == sn.GwInfo(9)


def test_advertise() -> None:
    """With an advertise address, ADVERTISE goes there at start and every interval."""
    world = SNWorld(replace(SN_LISTENER, advertise="255.255.255.255:1884", advertise_interval=60))
    target = ("255.255.255.255", 1884)
    assert world.udp.broadcast
    assert [encode(sn.Advertise(1, 60))] == world.udp.take(target)
    world.clock.advance(60)
    assert [encode(sn.Advertise(1, 60))] == world.udp.take(target)
    world.gateway.doStop()
    world.clock.advance(60)
    assert world.udp.take(target) == []


def test_register_and_publish_to_mqtt() -> None:
    """REGISTER gives a topic id; PUBLISH with it at QoS 0, 1, 2 reaches an MQTT subscriber."""
    world = SNWorld()
    sub = world.subscriber("mqtt", ("sensors/#", 2))
    client = world.snConnect("s1")
    topicId = client.register("sensors/a")
    assert topicId != 0
    client.send(sn.Publish(topicId, 0, b"q0"))
    assert client.read() == []
    client.send(sn.Publish(topicId, 5, b"q1", qos=1))
    assert client.one(sn.Puback) == sn.Puback(topicId, 5, ReturnCode.ACCEPTED)
    client.send(sn.Publish(topicId, 6, b"q2", qos=2))
    assert client.one(sn.Pubrec) == sn.Pubrec(6)
    # A retransmitted QoS 2 PUBLISH is answered again but routed once.
    client.send(sn.Publish(topicId, 6, b"q2", qos=2, dup=True))
    assert client.one(sn.Pubrec) == sn.Pubrec(6)
    client.send(sn.Pubrel(6))
    assert client.one(sn.Pubcomp) == sn.Pubcomp(6)
    got = [(p.topic, p.payload, p.qos) for p in sub.publishes()]
    assert got == [("sensors/a", b"q0", 0), ("sensors/a", b"q1", 1), ("sensors/a", b"q2", 2)]


def test_publish_predefined_and_short_topics() -> None:
    """Pre-defined ids come from the listener's configuration; short names need no id."""
    world = SNWorld()
    sub = world.subscriber("mqtt", ("#", 0))
    client = world.snConnect("s1")
    client.send(sn.Publish(1, 0, b"21.5", topic_id_type=TopicIdType.PREDEFINED))
    client.send(sn.Publish(shortTopicId("ab"), 0, b"x", topic_id_type=TopicIdType.SHORT))
    assert [(p.topic, p.payload) for p in sub.publishes()] == [
        ("sensors/temperature", b"21.5"),
        ("ab", b"x"),
    ]


def test_publish_unknown_topic_id() -> None:
    """An id never registered is refused with PUBACK "invalid topic ID" and counted (6.7)."""
    world = SNWorld()
    sub = world.subscriber("mqtt", ("#", 0))
    client = world.snConnect("s1")
    client.send(sn.Publish(99, 3, b"x", qos=1))
    assert client.one(sn.Puback) == sn.Puback(99, 3, ReturnCode.INVALID_TOPIC_ID)
    client.send(sn.Publish(42, 0, b"x", topic_id_type=TopicIdType.PREDEFINED))
    assert client.one(sn.Puback).return_code == ReturnCode.INVALID_TOPIC_ID
    assert world.gateway.dropped["unknown topic id"] == 2
    assert sub.publishes() == []


def test_qos_minus_one() -> None:
    """
    QoS -1 needs no connection: to a pre-defined or short topic it is routed at QoS 0; to a
    normal id (meaningless without a connection) it is dropped and counted (section 6.8).
    """
    world = SNWorld()
    sub = world.subscriber("mqtt", ("#", 1))
    stranger = world.sn()
    stranger.send(sn.Publish(7, 0, b"fire", qos=-1, topic_id_type=TopicIdType.PREDEFINED))
    stranger.send(sn.Publish(1, 0, b"lost", qos=-1))
    assert [(p.topic, p.payload, p.qos) for p in sub.publishes()] == [("alarms", b"fire", 0)]
    assert world.gateway.dropped["qos -1 to a normal topic id"] == 1
    assert stranger.read() == []
    assert world.gateway.clients == {}


def test_qos_minus_one_refused_without_anonymous() -> None:
    """On a listener that refuses anonymous clients, QoS -1 publishes are dropped."""
    world = SNWorld(replace(SN_LISTENER, allow_anonymous=False))
    sub = world.subscriber("mqtt", ("#", 0))
    world.sn().send(sn.Publish(7, 0, b"fire", qos=-1, topic_id_type=TopicIdType.PREDEFINED))
    assert sub.publishes() == []
    assert world.gateway.dropped["qos -1 not authenticated"] == 1


def test_subscribe_wildcard_registers_on_delivery() -> None:
    """
    A wildcard filter gets topic id 0 in SUBACK; a message on a topic the client has no id for
    is preceded by the gateway's REGISTER, and sent once REGACK comes (section 6.10).
    """
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("a/+", qos=1)
    assert suback == sn.Suback(0, suback.msg_id, ReturnCode.ACCEPTED, 1)
    world.broker.route(_message("a/b", b"one", 1))
    world.broker.route(_message("a/b", b"two", 0))
    register = client.one(sn.Register)
    assert register.topic_name == "a/b" and register.topic_id != 0
    client.send(sn.Regack(register.topic_id, register.msg_id, ReturnCode.ACCEPTED))
    first = client.one(sn.Publish)
    assert (first.topic_id, first.payload, first.qos) == (register.topic_id, b"one", 1)
    client.send(sn.Puback(first.topic_id, first.msg_id, ReturnCode.ACCEPTED))
    second = client.one(sn.Publish)
    assert (second.topic_id, second.payload, second.qos) == (register.topic_id, b"two", 0)


def test_subscribe_topic_name_gets_id_in_suback() -> None:
    """A filter without wildcards gets its topic id in SUBACK; deliveries need no REGISTER."""
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("x/y", qos=0)
    assert suback.topic_id != 0
    world.broker.route(_message("x/y", b"v", 0))
    assert client.one(sn.Publish) == sn.Publish(suback.topic_id, 0, b"v")


def test_subscribe_predefined_and_short() -> None:
    """Pre-defined and short subscriptions deliver with those topic id types (section 6.9)."""
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("", topic_id_type=TopicIdType.PREDEFINED, topic_id=7)
    assert suback.topic_id == 7 and suback.return_code == 0
    assert client.subscribe("zz", topic_id_type=TopicIdType.SHORT).topic_id == 0
    unknown = client.subscribe("", topic_id_type=TopicIdType.PREDEFINED, topic_id=8)
    assert unknown.return_code == ReturnCode.INVALID_TOPIC_ID
    world.broker.route(_message("alarms", b"a", 0))
    world.broker.route(_message("zz", b"z", 0))
    assert client.publishes() == [
        sn.Publish(7, 0, b"a", topic_id_type=TopicIdType.PREDEFINED),
        sn.Publish(shortTopicId("zz"), 0, b"z", topic_id_type=TopicIdType.SHORT),
    ]


def test_subscribe_invalid_filter_refused() -> None:
    """An invalid filter is refused in SUBACK, and nothing is subscribed."""
    world = SNWorld()
    client = world.snConnect("s1")
    assert client.subscribe("a/#/b").return_code == ReturnCode.NOT_SUPPORTED
    assert world.broker.sessions["s1"].subscriptions == {}


def test_unsubscribe() -> None:
    """UNSUBSCRIBE is answered with UNSUBACK and stops deliveries."""
    world = SNWorld()
    client = world.snConnect("s1")
    client.subscribe("x/y")
    client.send(sn.Unsubscribe(9, topic_name="x/y"))
    assert client.one(sn.Unsuback) == sn.Unsuback(9)
    world.broker.route(_message("x/y", b"v", 0))
    assert client.read() == []


def test_retained_from_mqtt() -> None:
    """A retained message published by an MQTT client is sent to a new SN subscriber."""
    world = SNWorld()
    mqtt = world.connect("m")
    mqtt.send(Publish("state/door", b"open", 1, retain=True, packet_id=1))
    client = world.snConnect("s1")
    suback = client.subscribe("state/door", qos=1)
    publish = client.one(sn.Publish)
    assert (publish.topic_id, publish.payload, publish.retain) == (suback.topic_id, b"open", True)


def test_mqtt_to_sn_qos2() -> None:
    """A QoS 2 delivery to an SN client runs PUBLISH, PUBREC, PUBREL, PUBCOMP."""
    world = SNWorld()
    client = world.snConnect("s1")
    client.subscribe("q/2", qos=2)
    world.broker.route(_message("q/2", b"once", 2))
    publish = client.one(sn.Publish)
    assert publish.qos == 2
    client.send(sn.Pubrec(publish.msg_id))
    assert client.one(sn.Pubrel) == sn.Pubrel(publish.msg_id)
    client.send(sn.Pubcomp(publish.msg_id))
    assert world.broker.sessions["s1"].inflight == {}


def test_one_message_awaits_its_answer_at_a_time() -> None:
    """The next QoS 1 message goes only after the previous one's PUBACK (section 6.13)."""
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("t/t", qos=1)
    for n in range(3):
        world.broker.route(_message("t/t", b"%d" % n, 1))
    got = []
    for _ in range(3):
        publish = client.one(sn.Publish)
        got.append(publish.payload)
        client.send(sn.Puback(suback.topic_id, publish.msg_id, ReturnCode.ACCEPTED))
    assert got == [b"0", b"1", b"2"]
    assert client.read() == []


def test_retransmission_then_lost() -> None:
    """
    An unanswered PUBLISH is sent again with DUP after Tretry, Nretry times; then the client is
    taken as lost and its will is published (sections 6.13, 6.3).
    """
    world = SNWorld()
    watcher = world.subscriber("w", ("wills/#", 0))
    client = world.snConnect("s1", will=("wills/s1", b"gone", 0, False))
    client.subscribe("t/t", qos=1)
    world.broker.route(_message("t/t", b"m", 1))
    first = client.one(sn.Publish)
    assert not first.dup
    for _ in range(SN_LISTENER.retry_count):
        world.clock.advance(SN_LISTENER.retry_interval)
        again = client.one(sn.Publish)
        assert again == replace(first, dup=True)
    assert watcher.publishes() == []
    world.clock.advance(SN_LISTENER.retry_interval)
    assert [(p.topic, p.payload) for p in watcher.publishes()] == [("wills/s1", b"gone")]
    assert "s1" not in world.broker.sessions
    assert world.gateway.clients == {}


def test_retransmission_answered() -> None:
    """A PUBACK to the retransmitted PUBLISH settles it: no more retransmissions."""
    world = SNWorld()
    client = world.snConnect("s1")
    client.subscribe("t/t", qos=1)
    world.broker.route(_message("t/t", b"m", 1))
    first = client.one(sn.Publish)
    world.clock.advance(SN_LISTENER.retry_interval)
    again = client.one(sn.Publish)
    client.send(sn.Puback(again.topic_id, again.msg_id, ReturnCode.ACCEPTED))
    world.clock.advance(SN_LISTENER.retry_interval * 5)
    assert client.read() == []
    assert first.msg_id == again.msg_id and world.broker.sessions["s1"].inflight == {}


def test_will_exchange_and_keepalive_timeout() -> None:
    """
    CONNECT with the Will flag is answered with WILLTOPICREQ and WILLMSGREQ (section 6.3); a
    client silent for 1.5 times its keepalive is lost and its will published to MQTT clients.
    """
    world = SNWorld()
    watcher = world.subscriber("w", ("wills/#", 1))
    client = world.snConnect("s1", duration=10, will=("wills/s1", b"bye", 1, False))
    world.clock.advance(14)
    client.send(sn.Pingreq())
    assert client.one(sn.Pingresp) == sn.Pingresp()
    world.clock.advance(14)
    assert watcher.publishes() == []
    world.clock.advance(1)
    assert [(p.topic, p.payload, p.qos) for p in watcher.publishes()] == [("wills/s1", b"bye", 1)]


def test_disconnect_discards_will() -> None:
    """DISCONNECT is answered with DISCONNECT and the will is not published."""
    world = SNWorld()
    watcher = world.subscriber("w", ("#", 0))
    client = world.snConnect("s1", will=("wills/s1", b"bye", 0, False))
    client.send(sn.Disconnect())
    assert client.one(sn.Disconnect) == sn.Disconnect()
    world.clock.advance(1000)
    assert watcher.publishes() == []
    assert "s1" not in world.broker.sessions


def test_will_updates() -> None:
    """WILLTOPICUPD and WILLMSGUPD change the will that is published (sections 6.4, 5.4.23)."""
    world = SNWorld()
    watcher = world.subscriber("w", ("#", 0))
    client = world.snConnect("s1", will=("old", b"old", 0, False))
    client.send(sn.WillTopicUpd("new/topic", qos=1, retain=True))
    assert client.one(sn.WillTopicResp) == sn.WillTopicResp(0)
    client.send(sn.WillMsgUpd(b"new message"))
    assert client.one(sn.WillMsgResp) == sn.WillMsgResp(0)
    world.gateway.clients[client.key].lost("test")
    [will] = watcher.publishes()
    assert (will.topic, will.payload) == ("new/topic", b"new message")
    assert world.broker.retained.matching("new/topic")


def test_will_deleted_by_empty_update() -> None:
    """An empty WILLTOPICUPD deletes the will; WILLMSGUPD without a will topic is refused."""
    world = SNWorld()
    watcher = world.subscriber("w", ("#", 0))
    client = world.snConnect("s1", will=("t", b"m", 0, False))
    client.send(sn.WillTopicUpd(""))
    assert client.one(sn.WillTopicResp).return_code == 0
    client.send(sn.WillMsgUpd(b"x"))
    assert client.one(sn.WillMsgResp).return_code == ReturnCode.NOT_SUPPORTED
    world.gateway.clients[client.key].lost("test")
    assert watcher.publishes() == []


def test_sleeping_client() -> None:
    """
    DISCONNECT with a duration puts the client to sleep: messages are kept (QoS 0 too), sent
    when a PINGREQ with its client id wakes it, then PINGRESP, and it sleeps again (6.14).
    """
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("t/t", qos=1)
    client.send(sn.Disconnect(300))
    assert client.one(sn.Disconnect) == sn.Disconnect()
    world.broker.route(_message("t/t", b"a", 0))
    world.broker.route(_message("t/t", b"b", 1))
    world.clock.advance(200)
    assert client.read() == []
    client.send(sn.Pingreq("s1"))
    a, b = client.read()
    assert (a.payload, a.qos, b.payload, b.qos) == (b"a", 0, b"b", 1)
    assert client.read() == []
    client.send(sn.Puback(suback.topic_id, b.msg_id, ReturnCode.ACCEPTED))
    assert client.one(sn.Pingresp) == sn.Pingresp()
    world.broker.route(_message("t/t", b"c", 0))
    assert client.read() == []
    client.send(sn.Pingreq("s1"))
    assert [p.payload for p in client.read() if isinstance(p, sn.Publish)] == [b"c"]


def test_sleeping_client_lost_after_its_duration() -> None:
    """A sleeping client not heard from for 1.5 times its sleep duration is lost: will sent."""
    world = SNWorld()
    watcher = world.subscriber("w", ("#", 0))
    client = world.snConnect("s1", duration=10, will=("w/s1", b"z", 0, False))
    client.send(sn.Disconnect(100))
    world.clock.advance(149)
    assert watcher.publishes() == []
    world.clock.advance(1)
    assert [p.topic for p in watcher.publishes()] == ["w/s1"]


def test_sleeping_client_reconnects() -> None:
    """A sleeping client's CONNECT with CleanSession=false resumes its session and its queue."""
    world = SNWorld()
    client = world.snConnect("s1", clean=False)
    client.subscribe("t/t", qos=1)
    client.send(sn.Disconnect(300))
    client.read()
    world.broker.route(_message("t/t", b"kept", 1))
    client.send(sn.Connect("s1", 60, clean_session=False))
    connack, register = client.read()
    assert connack == sn.Connack(0) and isinstance(register, sn.Register), (connack, register)
    client.send(sn.Regack(register.topic_id, register.msg_id, 0))
    kept = client.one(sn.Publish)
    assert (kept.payload, kept.topic_id) == (b"kept", register.topic_id)


def test_persistent_session_and_stored_will() -> None:
    """
    CleanSession=false keeps the subscriptions and, with no Will flag on the next CONNECT, the
    will too (section 6.3's table).
    """
    world = SNWorld()
    watcher = world.subscriber("w", ("wills/#", 0))
    client = world.snConnect("s1", clean=False, will=("wills/s1", b"w", 0, False))
    client.subscribe("t/#", qos=1)
    client.send(sn.Disconnect())
    client.read()
    world.broker.route(_message("t/x", b"offline", 1))
    again = world.sn()
    again.connect("s1", clean=False)
    register = again.one(sn.Register)
    again.send(sn.Regack(register.topic_id, register.msg_id, 0))
    assert again.one(sn.Publish).payload == b"offline"
    world.gateway.clients[again.key].lost("test")
    assert [p.payload for p in watcher.publishes()] == [b"w"]


def test_taken_over_by_mqtt_client() -> None:
    """An MQTT client with the same client id takes the session; the SN client is told."""
    world = SNWorld()
    client = world.snConnect("same")
    world.connect("same")
    assert client.one(sn.Disconnect) == sn.Disconnect()
    assert world.gateway.clients == {}


def test_bad_datagrams_counted_bystanders_unaffected() -> None:
    """
    Every malformed datagram is dropped and counted by reason, from a connected client or a
    stranger, and the connected client goes on exchanging messages.
    """
    world = SNWorld()
    client = world.snConnect("s1")
    topicId = client.register("t/t")
    stranger = world.sn()
    for vector in BAD:
        client.sendBytes(vector.data)
        stranger.sendBytes(vector.data)
    expected: dict[str, int] = {}
    for vector in BAD:
        expected[vector.reason] = expected.get(vector.reason, 0) + 2
    assert {r: world.gateway.dropped[r] for r in expected} == expected
    assert client.read() == [] and stranger.read() == []
    client.send(sn.Publish(topicId, 1, b"still here", qos=1))
    assert client.one(sn.Puback).return_code == 0


def test_oversized_datagram_dropped() -> None:
    """A datagram over max_packet_size is dropped before decoding."""
    world = SNWorld(max_packet_size=100)
    client = world.sn()
    client.sendBytes(encode(sn.Publish(1, 0, b"x" * 200, qos=-1, topic_id_type=1)))
    assert world.gateway.dropped["too large"] == 1


def test_messages_from_strangers() -> None:
    """Messages from an address with no CONNECT are dropped; a PINGREQ gets DISCONNECT."""
    world = SNWorld()
    stranger = world.sn()
    stranger.send(sn.Publish(1, 1, b"x", qos=1), sn.Subscribe(1, topic_name="#"))
    assert stranger.read() == []
    stranger.send(sn.Pingreq())
    assert stranger.one(sn.Disconnect) == sn.Disconnect()
    assert world.gateway.dropped["not connected"] == 3


def test_half_open_cap() -> None:
    """Clients between CONNECT and CONNACK are capped; one more gets CONNACK congestion."""
    world = SNWorld(replace(SN_LISTENER, max_half_open=2))
    for _ in range(2):
        pending = world.sn()
        pending.send(sn.Connect("p", 60, will=True))
        assert pending.one(sn.WillTopicReq)
    late = world.sn()
    late.send(sn.Connect("late", 60))
    assert late.one(sn.Connack) == sn.Connack(ReturnCode.CONGESTION)
    assert world.gateway.dropped["half-open cap"] == 1
    # Half-open clients that never finish are dropped after the connect timeout.
    world.clock.advance(world.broker.config.connect_timeout)
    late.send(sn.Connect("late", 60))
    assert late.one(sn.Connack) == sn.Connack(ReturnCode.ACCEPTED)


def test_connect_rate_per_address() -> None:
    """connect_rate_per_address bounds CONNECTs from one address."""
    world = SNWorld(replace(SN_LISTENER, connect_rate_per_address=1, connect_burst_per_address=2))
    client = world.sn()
    for _ in range(2):
        client.send(sn.Connect("c", 60))
        assert client.one(sn.Connack) == sn.Connack(0)
    client.send(sn.Connect("c", 60))
    assert client.one(sn.Connack) == sn.Connack(ReturnCode.CONGESTION)
    world.clock.advance(1)
    client.send(sn.Connect("c", 60))
    assert client.one(sn.Connack) == sn.Connack(0)


def test_anonymous_refused_by_default() -> None:
    """A listener without allow_anonymous and without authenticators refuses SN clients."""
    world = SNWorld(replace(SN_LISTENER, allow_anonymous=False))
    client = world.sn()
    client.send(sn.Connect("s1", 60))
    assert client.one(sn.Connack) == sn.Connack(ReturnCode.NOT_SUPPORTED)
    assert "s1" not in world.broker.sessions


@implementer(IAuthenticator)
class _ByAddress:
    """Lets in client ids starting with "sensor-" from 10.0.0.0/8."""

    def __init__(self) -> None:
        self.seen: list[Credentials] = []

    def authenticate(self, credentials: Credentials) -> Any:
        self.seen.append(credentials)
        if credentials.clientId.startswith("sensor-") and credentials.address.startswith("10."):
            return Allow()
        return None


def test_authentication_by_client_id_and_address() -> None:
    """
    The listener's authenticator chain decides by client id and source address (SN has no
    password): the plugin hook, with the same interface as for MQTT clients.
    """
    world = SNWorld(replace(SN_LISTENER, allow_anonymous=False))
    plugin = _ByAddress()
    world.broker.authenticators = (plugin,)
    assert verifyObject(IAuthenticator, plugin)
    good = world.sn("10.1.2.3")
    good.send(sn.Connect("sensor-1", 60))
    assert good.one(sn.Connack).return_code == 0
    wrongAddress = world.sn("192.0.2.1")
    wrongAddress.send(sn.Connect("sensor-2", 60))
    assert wrongAddress.one(sn.Connack).return_code == ReturnCode.NOT_SUPPORTED
    wrongId = world.sn("10.1.2.4")
    wrongId.send(sn.Connect("other", 60))
    assert wrongId.one(sn.Connack).return_code == ReturnCode.NOT_SUPPORTED
    first = plugin.seen[0]
    assert (first.clientId, first.username, first.address, first.listener) == (
        "sensor-1",
        None,
        "10.1.2.3",
        "sn",
    )


@implementer(IAuthorizer)
class _DenyTopic:
    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
        return not topic.startswith("secret")


def test_acl_applies_to_sn_clients() -> None:
    """The ACL chain judges SN clients' publishes, subscriptions and QoS -1 publishes."""
    world = SNWorld()
    world.broker.authorizers = (_DenyTopic(),)
    sub = world.subscriber("mqtt", ("#", 0))
    client = world.snConnect("s1")
    topicId = client.register("secret/x")
    client.send(sn.Publish(topicId, 0, b"no"))
    assert client.subscribe("secret/#").return_code == ReturnCode.NOT_SUPPORTED
    world.sn().send(sn.Publish(shortTopicId("se"), 0, b"ok", qos=-1, topic_id_type=2))
    assert [p.payload for p in sub.publishes()] == [b"ok"]


def test_listener_stop_publishes_wills() -> None:
    """When the listener stops, its clients can no longer be reached: their wills go out."""
    world = SNWorld()
    watcher = world.subscriber("w", ("#", 0))
    world.snConnect("s1", will=("w/s1", b"x", 0, False))
    world.gateway.doStop()
    assert [p.topic for p in watcher.publishes()] == ["w/s1"]
    assert world.gateway.clients == {}


def test_mqtt_subscribe_sees_sn_and_back() -> None:
    """An MQTT client's publish reaches the SN subscriber and the SN publish the MQTT one."""
    world = SNWorld()
    mqtt = world.subscriber("m", ("from/sn", 1))
    client = world.snConnect("s1")
    suback = client.subscribe("from/mqtt", qos=1)
    mqtt.send(Publish("from/mqtt", b"hello sn", 1, packet_id=3))
    publish = client.one(sn.Publish)
    assert (publish.topic_id, publish.payload) == (suback.topic_id, b"hello sn")
    topicId = client.register("from/sn")
    client.send(sn.Publish(topicId, 4, b"hello mqtt", qos=1))
    assert [p.payload for p in mqtt.publishes()] == [b"hello mqtt"]


def _message(topic: str, payload: bytes, qos: int, retain: bool = False) -> Any:
    from mqttd.message import Message

    return Message(topic, payload, qos, retain)


def test_virtual_group_reaches_sn_client(tmp_path: Path) -> None:
    """
    The virtual groups plugin selects SN clients like any session: a message an MQTT client
    sends to $group/NAME/... reaches the SN member (its topic registered on delivery).
    """
    from tests.test_virtual_groups import build

    world = SNWorld()
    plugin = build(tmp_path, {"group.sensors": "s1:1"})
    world.broker.selectors = (plugin,)
    client = world.snConnect("s1")
    world.connect("controller").send(Publish("$group/sensors/reset", b"now", 1, packet_id=1))
    publish = client.publishAfterRegister()
    assert (publish.payload, publish.qos) == (b"now", 1)
    assert world.gateway.clients[client.key].topicIds.name(publish.topic_id) == (
        "$group/sensors/reset"
    )


def test_counters_in_sys() -> None:
    """Every sys_interval the listener's clients and drop counters are retained in $SYS."""
    world = SNWorld(sys_interval=10)
    client = world.snConnect("s1")
    world.snConnect("s2").send(sn.Disconnect(600))
    client.sendBytes(b"\x05\x16")
    watcher = world.subscriber("w", ("$SYS/broker/mqtt-sn/#", 0))
    world.clock.advance(10)
    got = {p.topic: p.payload for p in watcher.publishes()}
    prefix = "$SYS/broker/mqtt-sn/sn/"
    assert got[prefix + "clients/connected"] == b"2"
    assert got[prefix + "clients/asleep"] == b"1"
    assert got[prefix + "clients/half-open"] == b"0"
    assert got[prefix + "dropped/length"] == b"1"


_ANY_MESSAGE = st.one_of(
    # Noise, messages of every type with a right length and a random body, and real messages.
    st.binary(max_size=40),
    st.builds(
        lambda kind, body: bytes((len(body) + 2, kind)) + body,
        st.sampled_from([t.value for t in sn.MsgType]),
        st.binary(max_size=12),
    ),
    st.sampled_from([v.data for v in GOOD]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), _ANY_MESSAGE), max_size=30))
def test_random_datagrams_never_break_the_gateway(datagrams: list[tuple[int, bytes]]) -> None:
    """
    Any sequence of datagrams, well-formed or not, from a few addresses (one of them a
    connected client's) raises nothing inside the gateway, and a bystander keeps working.
    """
    world = SNWorld()
    bystander = world.snConnect("bystander")
    topicId = bystander.register("b/t")
    target = world.snConnect("target")
    senders = [target, world.sn(), world.sn(), world.sn()]
    for who, data in datagrams:
        senders[who].sendBytes(data)
        world.clock.advance(1)
    assert world.gateway.dropped["internal error"] == 0
    bystander.read()
    bystander.send(sn.Publish(topicId, 9, b"ok", qos=1))
    assert bystander.one(sn.Puback) == sn.Puback(topicId, 9, ReturnCode.ACCEPTED)


def test_failed_reconnect_keeps_the_connected_client() -> None:
    """
    A CONNECT from a connected client's address that never completes (its will exchange times
    out) leaves the connected client in place: it goes on being answered.
    """
    world = SNWorld()
    client = world.snConnect("s1")
    client.send(sn.Connect("s1", 60, will=True))
    assert client.one(sn.WillTopicReq) == sn.WillTopicReq()
    world.clock.advance(world.broker.config.connect_timeout)
    client.send(sn.Pingreq())
    assert client.one(sn.Pingresp) == sn.Pingresp()
    assert world.broker.sessions["s1"].connection is world.gateway.clients[client.key]


def test_short_topic_with_wildcard_refused() -> None:
    """A short topic name holding a wildcard is no topic to publish to: PUBACK refuses it."""
    world = SNWorld()
    sub = world.subscriber("mqtt", ("#", 0))
    client = world.snConnect("s1")
    client.send(sn.Publish(shortTopicId("a+"), 4, b"x", qos=1, topic_id_type=TopicIdType.SHORT))
    assert client.one(sn.Puback) == sn.Puback(shortTopicId("a+"), 4, ReturnCode.NOT_SUPPORTED)
    assert sub.publishes() == [] and world.gateway.dropped["invalid topic"] == 1


def test_mqtt_will_reaches_sn_subscriber() -> None:
    """The will of an MQTT client whose connection fails reaches an SN subscriber."""
    world = SNWorld()
    client = world.snConnect("s1")
    suback = client.subscribe("wills/+", qos=1)
    mqtt = world.connect("m", will=Will("wills/m", b"m is gone", 1))
    mqtt.drop()
    publish = client.publishAfterRegister()
    assert (publish.payload, publish.qos) == (b"m is gone", 1)
    assert suback.topic_id == 0


def test_clients_behind_a_forwarder() -> None:
    """
    Two radio nodes behind one forwarder are two clients (section 5.5): their messages arrive
    encapsulated with their node ids, and every answer and delivery goes back encapsulated for
    the right node; nested encapsulation is dropped and counted.
    """
    world = SNWorld()
    forwarder = world.sn("10.9.9.9")
    a = world.forwarded(forwarder, b"\x00\x01")
    b = world.forwarded(forwarder, b"\x00\x02")
    a.connect("node-a")
    b.connect("node-b")
    suback = b.subscribe("radio/+", qos=1)
    topicId = a.register("radio/a")
    a.send(sn.Publish(topicId, 3, b"from a", qos=1))
    assert a.one(sn.Puback) == sn.Puback(topicId, 3, ReturnCode.ACCEPTED)
    publish = b.publishAfterRegister()
    assert (publish.payload, suback.topic_id) == (b"from a", 0)
    assert world.gateway.clients[b.key].clientAddress == "10.9.9.9:50001/0002"
    assert world.broker.clients["node-a"].address == "10.9.9.9"
    nested = encode(sn.Encapsulated(1, b"\x02", encode(sn.Pingreq())))
    forwarder.sendBytes(encode(sn.Encapsulated(1, b"\x01", nested)))
    assert world.gateway.dropped["forwarder encapsulation nested"] == 1


def test_listener_max_connections() -> None:
    """max_connections bounds the listener's clients; one more gets CONNACK congestion."""
    world = SNWorld(replace(SN_LISTENER, max_connections=2))
    first = world.snConnect("a")
    world.snConnect("b")
    late = world.sn()
    late.send(sn.Connect("c", 60))
    assert late.one(sn.Connack) == sn.Connack(ReturnCode.CONGESTION)
    assert world.gateway.dropped["max_connections"] == 1
    # The same address connecting again is no new client; one leaving makes room.
    first.connect("a")
    first.send(sn.Disconnect())
    first.read()
    late.connect("c")


def test_resumed_session_passes_receive_acl() -> None:
    """
    Messages kept for a persistent SN session pass the receive ACL as it stands when the client
    comes back: one it may no longer read is dropped, not sent.
    """
    world = SNWorld()
    client = world.snConnect("s1", clean=False)
    client.subscribe("t/#", qos=1)
    client.send(sn.Disconnect())
    client.read()
    world.broker.route(_message("t/secret", b"no longer yours", 1))
    world.broker.route(_message("t/open", b"yours", 1))

    @implementer(IAuthorizer)
    class _NoSecrets:
        def authorize(self, client: ClientInfo, action: Action, topic: str) -> Any:
            return "secret" not in topic

    world.broker.authorizers = (_NoSecrets(),)
    again = world.sn()
    again.connect("s1", clean=False)
    publish = again.publishAfterRegister()
    assert publish.payload == b"yours"


def test_protocol_error_disconnects_one_client() -> None:
    """
    A client breaking a session limit (more QoS 2 messages awaiting PUBREL than
    max_awaiting_rel) is sent DISCONNECT and lost, its will published; others carry on.
    """
    world = SNWorld(max_awaiting_rel=1)
    watcher = world.subscriber("w", ("wills/#", 0))
    bystander = world.snConnect("other")
    client = world.snConnect("s1", will=("wills/s1", b"broke", 0, False))
    topicId = client.register("q/2")
    client.send(sn.Publish(topicId, 1, b"a", qos=2))
    assert client.one(sn.Pubrec) == sn.Pubrec(1)
    client.send(sn.Publish(topicId, 2, b"b", qos=2))
    assert client.one(sn.Disconnect) == sn.Disconnect()
    assert [p.payload for p in watcher.publishes()] == [b"broke"]
    assert client.key not in world.gateway.clients
    bystander.send(sn.Pingreq())
    assert bystander.one(sn.Pingresp) == sn.Pingresp()


def test_clientStateIsInSlotsOnly() -> None:
    """
    An SN client keeps its state in slots, with no per-instance C{__dict__}: the parts mixed into
    it (connecting, delivery) declare empty slots, so an idle client costs what it did as one
    class.
    """
    assert SNClient.__dictoffset__ == 0
