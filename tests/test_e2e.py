"""
End to end: the broker on a real TCP socket in this process, driven by
paho-mqtt clients and, for what paho will not do, raw sockets.  The
in-memory tests (test_broker.py) prove the rules; these prove that they hold
over the network with a real, independently written client.
"""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import Clients
from tests.e2e import Client, MQTTv31, MQTTv311, Received, RunningBroker, WillSpec, connect_packet

QOS = (0, 1, 2)


@pytest.mark.parametrize(("published", "granted"), list(itertools.product(QOS, QOS)))
def test_qos_pair_delivered_once_at_minimum(clients: Clients, published: int, granted: int) -> None:
    """
    A message published at QoS p to a subscriber granted QoS s arrives once,
    at min(p, s) [MQTT-3.8.4-6], with the QoS flows of both
    sides completed over the wire (paho waits for PUBACK / PUBCOMP).  A second
    message on the same topic and QoS follows it, so a duplicate of the first
    would show up before it [MQTT-4.6.0-6].
    """
    sub = clients("sub")
    assert sub.subscribe("qos/t", granted) == granted
    pub = clients("pub")
    pub.publish("qos/t", b"first", published)
    pub.publish("qos/t", b"second", published)
    expected = min(published, granted)
    assert sub.wait_for(2) == [
        Received("qos/t", b"first", expected, False),
        Received("qos/t", b"second", expected, False),
    ]
    assert sub.pending() == []


def test_retained_set_forward_and_clear(clients: Clients) -> None:
    """
    A retained PUBLISH reaches an existing subscriber with RETAIN 0
    [MQTT-3.3.1-9] and a later subscriber with RETAIN 1 [MQTT-3.3.1-8]; a
    zero-length retained PUBLISH is forwarded as normal and removes the
    retained message, so a subscriber after that gets nothing
    [MQTT-3.3.1-10, MQTT-3.3.1-11].
    """
    pub = clients("pub")
    early = clients("early")
    early.subscribe("ret/+", 1)

    pub.publish("ret/a", b"kept", 1, retain=True)
    assert early.wait_for(1) == [Received("ret/a", b"kept", 1, False)]

    late = clients("late")
    late.subscribe("ret/+", 1)
    assert late.wait_for(1) == [Received("ret/a", b"kept", 1, True)]

    pub.publish("ret/a", b"", 1, retain=True)
    assert early.wait_for(1) == [Received("ret/a", b"", 1, False)]

    # The retained messages for a filter are sent right after its SUBACK, so
    # a live message published after the SUBACK arrives after any of them.
    after = clients("after")
    after.subscribe("ret/+", 1)
    pub.publish("ret/b", b"live", 1)
    assert after.wait_for(1) == [Received("ret/b", b"live", 1, False)]
    assert after.pending() == []


def test_will_published_when_paho_socket_is_cut(clients: Clients) -> None:
    """
    A client whose TCP connection goes without DISCONNECT has its will
    published [MQTT-3.1.2-8], with the will's QoS and topic.
    """
    watcher = clients("watcher")
    watcher.subscribe("will/#", 2)
    dying = clients("dying", will=WillSpec("will/dying", b"gone", qos=1))
    dying.drop()
    assert watcher.wait_for(1) == [Received("will/dying", b"gone", 1, False)]


def test_will_published_on_tcp_reset(clients: Clients) -> None:
    """
    A raw client that sent CONNECT with a retained will and then vanishes
    with a TCP reset has its will published [MQTT-3.1.2-8] and, its will
    retain flag being set, retained [MQTT-3.1.2-17].
    """
    watcher = clients("watcher")
    watcher.subscribe("will/#", 1)
    raw = clients.raw()
    raw.connect("raw", will=WillSpec("will/raw", b"reset", qos=1, retain=True))
    raw.abort()
    assert watcher.wait_for(1) == [Received("will/raw", b"reset", 1, False)]
    late = clients("late")
    late.subscribe("will/raw", 1)
    assert late.wait_for(1) == [Received("will/raw", b"reset", 1, True)]


def test_will_not_published_after_disconnect(e2e_broker: RunningBroker, clients: Clients) -> None:
    """
    A client that sends DISCONNECT has its will discarded, not published
    [MQTT-3.14.4-3, MQTT-3.1.2-10].  Once the broker has ended the session, a
    message published after it is the first thing the watcher receives.
    """
    watcher = clients("watcher")
    watcher.subscribe("will/#", 1)
    polite = clients("polite", will=WillSpec("will/polite", b"should not be sent", qos=1))
    polite.disconnect()
    e2e_broker.wait_gone("polite")
    clients("pub").publish("will/marker", b"after", 1)
    assert watcher.wait_for(1) == [Received("will/marker", b"after", 1, False)]
    assert watcher.pending() == []


def test_persistent_session_receives_while_offline(
    e2e_broker: RunningBroker, clients: Clients
) -> None:
    """
    A clean-session-0 subscriber that goes away keeps its subscription; QoS 1
    messages published meanwhile are stored [MQTT-3.1.2-5] and, when it
    reconnects, CONNACK says Session Present 1 [MQTT-3.2.2-2] and they arrive
    in the order published [MQTT-4.6.0-6].
    """
    first = clients("keeper", clean=False)
    assert first.session_present is False
    assert first.subscribe("offline/t", 1) == 1
    first.disconnect()
    e2e_broker.wait_gone("keeper")

    pub = clients("pub")
    payloads = [f"m{i}".encode() for i in range(10)]
    for payload in payloads:
        pub.publish("offline/t", payload, 1)

    again = clients("keeper", clean=False)
    assert again.session_present is True
    received = again.wait_for(len(payloads))
    assert [m.payload for m in received] == payloads
    assert {(m.topic, m.qos) for m in received} == {("offline/t", 1)}


def test_session_present_zero_for_clean_session(clients: Clients) -> None:
    """
    A clean-session reconnect with the same id gets Session Present 0 and
    none of the earlier subscriptions [MQTT-3.1.2-6, MQTT-3.2.2-1].
    """
    first = clients("cleaner", clean=False)
    first.subscribe("clean/t", 1)
    first.disconnect()
    again = clients("cleaner", clean=True)
    assert again.session_present is False
    pub = clients("pub")
    pub.publish("clean/t", b"nobody", 1)
    again.subscribe("clean/other", 1)
    pub.publish("clean/other", b"marker", 1)
    assert again.wait_for(1) == [Received("clean/other", b"marker", 1, False)]


def test_takeover_closes_first_connection(e2e_broker: RunningBroker, clients: Clients) -> None:
    """
    A second CONNECT with a client id already connected makes the broker
    close the first connection [MQTT-3.1.4-2]: paho reports the first client
    disconnected (it does not reconnect), and the second works.
    """
    first = clients("twin")
    second = clients("twin")
    assert first.disconnected.wait(5.0), "the first connection was not closed"
    assert not second.disconnected.is_set()
    assert second.subscribe("twin/t", 1) == 1
    clients("pub").publish("twin/t", b"to the second", 1)
    assert second.wait_for(1) == [Received("twin/t", b"to the second", 1, False)]
    assert first.pending() == []
    assert e2e_broker.is_connected("twin")


def test_wildcards(e2e_broker: RunningBroker, clients: Clients) -> None:
    """
    '+' matches exactly one level and '#' the parent and any number of levels
    [MQTT-4.7.1-2, MQTT-4.7.1-3]; neither at the first level matches a topic
    starting with '$', while '$SYS/#' does [MQTT-4.7.2-1].
    """
    plus = clients("plus")
    plus.subscribe("sport/+/score", 0)
    hash_ = clients("hash")
    hash_.subscribe("sport/#", 0)
    first_plus = clients("first-plus")
    first_plus.subscribe("+/info", 0)
    sys_ = clients("sys")
    sys_.subscribe("$SYS/#", 0)
    everything = clients("everything")
    everything.subscribe("#", 0)
    # The last message, "end", tells each subscriber that nothing else is coming.
    for c in (plus, hash_, first_plus, sys_):
        c.subscribe("end", 0)

    # $SYS is written by the broker alone, so the test routes it as the broker.
    e2e_broker.inject("$SYS/broker/info", b"sys")
    e2e_broker.inject("$SYS/info", b"sys")
    pub = clients("pub")
    for topic in ["sport", "sport/tennis/score", "sport/tennis/player/score", "x/info", "end"]:
        pub.publish(topic, topic.encode(), 1)

    def topics_until_end(c: Client) -> list[str]:
        got: list[str] = []
        while not got or got[-1] != "end":
            got += [m.topic for m in c.wait_for(1)]
        return got

    assert topics_until_end(plus) == ["sport/tennis/score", "end"]
    assert topics_until_end(hash_) == [
        "sport",
        "sport/tennis/score",
        "sport/tennis/player/score",
        "end",
    ]
    assert topics_until_end(first_plus) == ["x/info", "end"]
    assert topics_until_end(sys_) == ["$SYS/broker/info", "$SYS/info", "end"]
    assert topics_until_end(everything) == [
        "sport",
        "sport/tennis/score",
        "sport/tennis/player/score",
        "x/info",
        "end",
    ]


def test_keepalive_expiry_closes_and_publishes_will(clients: Clients) -> None:
    """
    A client that sends nothing for one and a half times its keepalive is
    disconnected as if the network had failed, so its will is published
    [MQTT-3.1.2-24, MQTT-3.1.2-8].  (Bounded wait; no timing assertion.)
    """
    watcher = clients("watcher")
    watcher.subscribe("ka/#", 1)
    raw = clients.raw()
    raw.connect("silent", keepalive=1, will=WillSpec("ka/silent", b"timed out", qos=1))
    assert raw.wait_closed(timeout=10.0) == b""
    assert watcher.wait_for(1, timeout=10.0) == [Received("ka/silent", b"timed out", 1, False)]


def test_mqtt31_and_mqtt311_clients_exchange_messages(clients: Clients) -> None:
    """
    An MQTT 3.1 client (protocol name MQIsdp, level 3) and an MQTT 3.1.1
    client each receive what the other publishes, at QoS 0, 1 and 2.
    """
    old = clients("old-3.1", protocol=MQTTv31)
    new = clients("new-3.1.1", protocol=MQTTv311)
    assert old.subscribe("from/new", 2) == 2
    assert new.subscribe("from/old", 2) == 2
    for qos in QOS:
        old.publish("from/old", f"old {qos}".encode(), qos)
        new.publish("from/new", f"new {qos}".encode(), qos)
    assert new.wait_for(3) == [Received("from/old", f"old {q}".encode(), q, False) for q in QOS]
    assert old.wait_for(3) == [Received("from/new", f"new {q}".encode(), q, False) for q in QOS]


# bad-inputs entry 2: a Remaining Length field of five bytes.
GARBAGE = b"\x30\xff\xff\xff\xff\x01"


@pytest.mark.parametrize("after_connect", [False, True], ids=["before-connect", "after-connect"])
def test_bad_input_closes_only_that_connection(
    e2e_broker: RunningBroker, clients: Clients, after_connect: bool
) -> None:
    """
    A Remaining Length of five bytes (bad-inputs 2), sent before CONNECT
    [MQTT-3.1.0-1] or after it, makes the broker close that socket without a
    reply, while a paho publisher and subscriber on the same broker keep
    exchanging messages before and after.
    """
    sub = clients("sub")
    sub.subscribe("ok/t", 1)
    pub = clients("pub")
    pub.publish("ok/t", b"before", 1)
    assert sub.wait_for(1)[0].payload == b"before"

    raw = clients.raw()
    if after_connect:
        raw.connect("garbage")
    raw.send(GARBAGE)
    assert raw.wait_closed() == b""

    pub.publish("ok/t", b"after", 1)
    assert sub.wait_for(1)[0].payload == b"after"
    assert not sub.disconnected.is_set() and not pub.disconnected.is_set()
    if after_connect:
        e2e_broker.wait_gone("garbage")


def test_raw_connect_accepted(clients: Clients) -> None:
    """
    The hand-encoded CONNECT the raw-socket tests rely on is accepted with
    CONNACK 0 and Session Present 0 [MQTT-3.2.2-1, MQTT-3.2.2-3].
    """
    raw = clients.raw()
    raw.send(connect_packet("raw-ok", clean=True))
    assert raw.recv_exactly(4) == b"\x20\x02\x00\x00"


def test_large_payload_round_trip(clients: Clients) -> None:
    """A 200 KB payload at QoS 1 arrives intact (multi-byte Remaining Length over TCP)."""
    sub = clients("sub")
    sub.subscribe("big/t", 1)
    payload = bytes(range(256)) * 800  # 204,800 bytes
    clients("pub").publish("big/t", payload, 1)
    (message,) = sub.wait_for(1)
    assert message == Received("big/t", payload, 1, False)


def test_thousand_qos1_messages_in_order(clients: Clients) -> None:
    """
    1,000 QoS 1 messages from one publisher, sent without waiting for each
    PUBACK, all reach the subscriber once and in the order sent
    [MQTT-4.6.0-6].
    """
    sub = clients("sub")
    sub.subscribe("many/t", 1)
    pub = clients("pub")
    count = 1000
    infos = [pub.paho.publish("many/t", str(i).encode(), 1) for i in range(count)]
    received = sub.wait_for(count, timeout=30.0)
    assert [int(m.payload) for m in received] == list(range(count))
    assert all(m.qos == 1 for m in received)
    for info in infos:
        info.wait_for_publish(5.0)
        assert info.is_published()
    assert sub.pending() == []
