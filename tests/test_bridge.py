"""
mqttd as a bridge: C{[bridge:NAME]} links from a broker in this process to real mosquitto
processes and to a second mqttd, all on ephemeral ports of 127.0.0.1.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mqttd.bridge.bridge import Bridge
from mqttd.bridge.config import BridgeConfig, bridgeConfig
from mqttd.bridge.local import BridgeConnection
from mqttd.bridge.remote import nextDelay
from mqttd.config import ConfigError, load_config
from mqttd.interfaces import Action, ClientInfo, IAuthorizer, IClientConnection, ILinkOwner
from tests import e2e, listeners
from tests.conftest import Clients
from tests.mosquitto import Mosquitto, Start, freePort, mosquittos
from tests.test_monitoring import httpSite, scrape
from tests.test_store import sqliteStore

__all__ = ["mosquittos"]

StartBridge = Callable[..., Bridge]
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "mosquitto_passwd"


@pytest.fixture
def bridges(twisted_reactor: None) -> Iterator[StartBridge]:
    """
    C{bridges(broker, addresses=..., topic=..., **keys)} starts a bridge of C{broker} from
    C{[bridge:test]} keys given as ini text (fast reconnection unless given); all are stopped
    at teardown.
    """
    started: list[Bridge] = []

    def start(broker: e2e.RunningBroker, name: str = "test", **keys: str) -> Bridge:
        values = {"reconnect_delay_min": "0.05", "reconnect_delay_max": "0.2", **keys}
        config = bridgeConfig("test.ini", f"bridge:{name}", values)
        bridge: Bridge = broker.call(lambda: Bridge(config, broker.broker, e2e.reactor))
        started.append(bridge)
        broker.call(bridge.start)
        return bridge

    yield start
    for bridge in started:
        e2e.in_reactor(bridge.stop)


def address(port: int) -> str:
    return f"{e2e.HOST}:{port}"


def waitLinked(bridge: Bridge, port: int | None = None) -> None:
    """Wait until the bridge's link is up (to C{port}, if given)."""

    def linked() -> bool:
        return bridge.connected and (port is None or bridge.address[1] == port)

    e2e.wait_until(lambda: e2e.in_reactor(linked), f"bridge {bridge.config.name} linked")


def waitSubscribed(broker: Mosquitto, clientId: str, count: int = 1) -> None:
    """Wait until mosquitto logged C{count} SUBSCRIBEs from C{clientId}, e.g. a bridge."""
    e2e.wait_until(
        lambda: broker.logText().count(f"Received SUBSCRIBE from {clientId}") >= count,
        f"{clientId} subscribed on mosquitto",
    )


def topics(received: list[e2e.Received]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in received]


def test_outToMosquittoWithPrefixes(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    C{topic sensors/# out 1 site/ plant/}: a QoS 1 message on site/sensors/t here arrives at
    mosquitto as plant/sensors/t at QoS 1; a QoS 2 one is capped to the rule's QoS 1; topics no
    rule names stay here; and the retained flag of a retained message is kept.
    """
    remote = mosquittos("remote")
    far = e2e.client(remote.port, "far")
    try:
        far.subscribe("#", 2)
        bridge = bridges(
            e2e_broker, addresses=address(remote.port), topic="sensors/# out 1 site/ plant/"
        )
        waitLinked(bridge)
        local = clients("local")
        local.publish("site/sensors/t", b"21", qos=1)
        local.publish("site/sensors/h", b"40", qos=2)
        local.publish("elsewhere/x", b"no", qos=1)
        local.publish("site/sensors/r", b"kept", qos=1, retain=True)
        got = far.wait_for(3)
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            ("plant/sensors/t", b"21", 1),
            ("plant/sensors/h", b"40", 1),
            ("plant/sensors/r", b"kept", 1),
        ]
        late = e2e.client(remote.port, "late")
        try:
            late.subscribe("plant/#", 1)
            assert [(m.topic, m.retain) for m in late.wait_for(1)] == [("plant/sensors/r", True)]
        finally:
            late.close()
        assert far.pending() == []
    finally:
        far.close()


def test_inFromMosquitto(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    C{topic cmd/+ in 1 local/ remote/}: mosquitto's remote/cmd/a arrives here as local/cmd/a
    at QoS 1, with the bridge subscribed on mosquitto to remote/cmd/+ only.
    """
    remote = mosquittos("remote")
    local = clients("local")
    local.subscribe("#", 1)
    bridge = bridges(
        e2e_broker,
        addresses=address(remote.port),
        topic="cmd/+ in 1 local/ remote/",
        client_id="b1",
    )
    waitLinked(bridge)
    waitSubscribed(remote, "b1")
    far = e2e.client(remote.port, "far")
    try:
        far.publish("remote/cmd/a", b"go", qos=1)
        far.publish("remote/other", b"not bridged", qos=1)
        far.publish("remote/cmd/b", b"stop", qos=1)
        got = local.wait_for(2)
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            ("local/cmd/a", b"go", 1),
            ("local/cmd/b", b"stop", 1),
        ]
        assert "remote/cmd/+ (QoS 1)" in remote.logText()
    finally:
        far.close()


def test_bothWithoutLoops(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    C{topic chat/# both 1}: a message published on either side reaches the other side's
    subscriber once and its own side's once, never coming back over the bridge (the bridge's
    local subscription has No Local; mosquitto is told it is a bridge by the 0x84 level).
    """
    remote = mosquittos("remote")
    local = clients("local")
    local.subscribe("chat/#", 1)
    bridge = bridges(
        e2e_broker, addresses=address(remote.port), topic="chat/# both 1", client_id="b2"
    )
    waitLinked(bridge)
    waitSubscribed(remote, "b2")
    far = e2e.client(remote.port, "far")
    try:
        far.subscribe("chat/#", 1)
        local.publish("chat/here", b"1", qos=1)
        far.publish("chat/there", b"2", qos=1)
        # Sentinels behind any echo on each path.
        local.publish("chat/end-here", b"", qos=1)
        far.publish("chat/end-there", b"", qos=1)
        localGot = sorted(m.topic for m in local.wait_for(4))
        farGot = sorted(m.topic for m in far.wait_for(4))
        expected = ["chat/end-here", "chat/end-there", "chat/here", "chat/there"]
        assert localGot == expected
        assert farGot == expected
        # An echo would come after both sentinels of its path; one more round trip shows none.
        local.publish("chat/last", b"", qos=1)
        assert [m.topic for m in far.wait_for(1)] == ["chat/last"]
        assert [m.topic for m in local.wait_for(1)] == ["chat/last"]
        assert local.pending() == [] and far.pending() == []
    finally:
        far.close()


def test_remoteDownThenUpLosesNoQos1(
    e2e_broker: e2e.RunningBroker,
    clients: Clients,
    mosquittos: Start,
    bridges: StartBridge,
    tmp_path: Path,
) -> None:
    """
    mosquitto is stopped; 50 QoS 1 messages published here meanwhile wait in the bridge's
    local session (the state topic says 0); mosquitto is started again on the same port and
    every message arrives, in order, at its persistent subscriber; the state topic says 1.
    """
    # Persistent, so that the subscriber's session and queue survive mosquitto's restart.
    remote = mosquittos("remote", f"persistence true\npersistence_location {tmp_path}/\n")
    far = e2e.client(remote.port, "far", clean=False)
    far.subscribe("q/#", 1)
    far.disconnect()
    local = clients("local")
    local.subscribe("$SYS/broker/connection/test/state", 1)
    bridge = bridges(e2e_broker, addresses=address(remote.port), topic="q/# out 1")
    waitLinked(bridge)
    assert [m.payload for m in local.wait_for(2)][-1] == b"1"

    remote.stop()
    e2e.wait_until(lambda: not e2e.in_reactor(lambda: bridge.connected), "the link to drop")
    assert [(m.payload, m.retain) for m in local.wait_for(1)] == [(b"0", False)]
    for i in range(50):
        local.publish(f"q/{i}", str(i).encode(), qos=1)
    counters = e2e.in_reactor(bridge.counters)
    assert counters["queue/messages"] == 50
    remote.start()
    waitLinked(bridge)
    assert [m.payload for m in local.wait_for(1)] == [b"1"]
    e2e.wait_until(lambda: e2e.in_reactor(bridge.counters)["queue/messages"] == 0, "queue drained")
    far = e2e.client(remote.port, "far", clean=False)
    try:
        got = far.wait_for(50)
        assert [m.payload for m in got] == [str(i).encode() for i in range(50)]
        assert {m.qos for m in got} == {1}
    finally:
        far.close()
    assert e2e.in_reactor(bridge.counters)["reconnects"] == 1


def test_failoverAndBackToPrimary(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    Two addresses, primary first (round_robin false): the bridge links to the primary; with
    the primary stopped it fails over to the secondary and messages flow there; once the
    primary is back, the bridge notices (primary_retry_interval) and moves the link back.
    """
    primary = mosquittos("primary")
    secondary = mosquittos("secondary")
    bridge = bridges(
        e2e_broker,
        addresses=f"{address(primary.port)} {address(secondary.port)}",
        topic="f/# out 1",
        primary_retry_interval="0.2",
    )
    waitLinked(bridge, primary.port)
    local = clients("local")

    def deliveredAt(broker: Mosquitto, payload: bytes) -> None:
        far = e2e.client(broker.port, f"far-{broker.port}")
        try:
            far.subscribe("f/#", 1)
            local.publish("f/x", payload, qos=1)
            assert [m.payload for m in far.wait_for(1)] == [payload]
        finally:
            far.close()

    deliveredAt(primary, b"to primary")
    primary.stop()
    waitLinked(bridge, secondary.port)
    deliveredAt(secondary, b"to secondary")
    primary.start()
    waitLinked(bridge, primary.port)
    deliveredAt(primary, b"back on primary")


def test_roundRobinMovesOn(
    e2e_broker: e2e.RunningBroker, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    round_robin true: a lost link is retried at the next address, and the bridge stays there
    even when the first one is back (no return to a primary).
    """
    first = mosquittos("first")
    second = mosquittos("second")
    bridge = bridges(
        e2e_broker,
        addresses=f"{address(first.port)},{address(second.port)}",
        topic="r/# out 0",
        round_robin="true",
        primary_retry_interval="0.1",
    )
    waitLinked(bridge, first.port)
    first.stop()
    waitLinked(bridge, second.port)
    first.start()
    # Five primary_retry_intervals: a primary-mode bridge would have moved back meanwhile.
    time.sleep(0.5)
    assert e2e.in_reactor(lambda: bridge.address[1]) == second.port
    second.stop()
    waitLinked(bridge, first.port)


def test_tlsWithClientCertificate(
    e2e_broker: e2e.RunningBroker,
    clients: Clients,
    mosquittos: Start,
    bridges: StartBridge,
    pki: listeners.PKI,
) -> None:
    """
    mosquitto with a TLS listener that requires a client certificate from the test CA: the
    bridge verifies the server (CA and host name 127.0.0.1) and presents its own certificate,
    and messages flow.  Never accepted: a bridge without the client certificate, and one
    expecting another host name; one expecting another host name but told not to check it
    (verify_hostname false) is.
    """
    tls = (
        f"cafile {pki.ca.path}\ncertfile {pki.server.certificate}\nkeyfile {pki.server.key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )
    remote = mosquittos("remote", tls)
    local = clients("local")
    bridge = bridges(
        e2e_broker,
        addresses=address(remote.port),
        topic="secure/# out 1",
        ca_certificates=str(pki.ca.path),
        certificate=str(pki.client.certificate),
        private_key=str(pki.client.key),
    )
    waitLinked(bridge)
    refused = [
        bridges(
            e2e_broker,
            name=name,
            addresses=address(remote.port),
            topic="secure/# out 1",
            ca_certificates=str(pki.ca.path),
            local_client_id=f"{name}-local",
            client_id=name,
            **keys,
        )
        for name, keys in [
            ("nocert", {}),
            (
                "othername",
                {
                    "certificate": str(pki.client.certificate),
                    "private_key": str(pki.client.key),
                    "tls_server_name": "elsewhere.example",
                },
            ),
        ]
    ]
    unchecked = bridges(
        e2e_broker,
        name="unchecked",
        addresses=address(remote.port),
        topic="secure/# out 1",
        ca_certificates=str(pki.ca.path),
        certificate=str(pki.client.certificate),
        private_key=str(pki.client.key),
        tls_server_name="elsewhere.example",
        verify_hostname="false",
        local_client_id="unchecked-local",
        client_id="unchecked",
    )
    waitLinked(unchecked)

    def setup(c: Any) -> None:
        c.tls_set(
            ca_certs=str(pki.ca.path),
            certfile=str(pki.client.certificate),
            keyfile=str(pki.client.key),
        )

    far = e2e.Client(remote.port, "far", setup=setup)
    try:
        far.subscribe("secure/#", 1)
        local.publish("secure/1", b"over TLS", qos=1)
        assert [m.payload for m in far.wait_for(1)] == [b"over TLS"]
    finally:
        far.close()
    for bridge in refused:
        e2e.wait_until(
            lambda b=bridge: e2e.in_reactor(lambda: b.stats.connectFailures) >= 2,  # type: ignore[misc]
            f"refusals of {bridge.config.name}",
        )
        assert e2e.in_reactor(lambda b=bridge: b.stats.links) == 0


def test_mqtt5PropertiesBothWays(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    protocol = 5.0 to mosquitto: User Properties and Content Type pass through the bridge
    both ways, and C{both} topics do not loop (No Local and Retain As Published asked of
    mosquitto in the SUBSCRIBE options).
    """
    remote = mosquittos("remote")
    got: list[Any] = []
    localGot: list[Any] = []
    watch = e2e.Client(e2e_broker.port, "watch", protocol=e2e.MQTTv5, setup=onMessage(localGot))
    watch.subscribe("p/#", 1)
    local = clients("local", protocol=e2e.MQTTv5)
    bridge = bridges(
        e2e_broker,
        addresses=address(remote.port),
        topic="p/# both 1",
        protocol="5.0",
        client_id="b5",
    )
    waitLinked(bridge)
    waitSubscribed(remote, "b5")
    far = e2e.Client(remote.port, "far", protocol=e2e.MQTTv5, setup=onMessage(got))
    try:
        far.subscribe("p/#", 1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        props.ContentType = "text/plain"
        local.paho.publish("p/out", b"x", 1, properties=props).wait_for_publish(e2e.TIMEOUT)
        e2e.wait_until(lambda: len(got) >= 1, "the message at mosquitto")
        message = got[0]
        assert message.topic == "p/out"
        assert message.properties.UserProperty == [("k", "v")]
        assert message.properties.ContentType == "text/plain"

        # paho's UserProperty setter appends: a fresh set for this message.
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("from", "mosquitto")]
        props.ContentType = "text/plain"
        far.paho.publish("p/in", b"y", 1, properties=props).wait_for_publish(e2e.TIMEOUT)
        e2e.wait_until(lambda: len(localGot) >= 2, "the message here")
        assert localGot[1].topic == "p/in"
        assert localGot[1].properties.UserProperty == [("from", "mosquitto")]
        assert localGot[1].properties.ContentType == "text/plain"
        # No loops: one more message each way and nothing else arrives.
        local.paho.publish("p/end", b"", 1).wait_for_publish(e2e.TIMEOUT)
        e2e.wait_until(lambda: len(got) >= 3, "p/in and p/end at mosquitto")
        assert [m.topic for m in got] == ["p/out", "p/in", "p/end"]
        e2e.wait_until(lambda: len(localGot) >= 3, "p/end here")
        assert [m.topic for m in localGot] == ["p/out", "p/in", "p/end"]
    finally:
        far.close()
        watch.close()


def onMessage(into: list[Any]) -> Callable[[Any], None]:
    """A paho set-up that collects whole messages (with their MQTT 5 properties) into C{into}."""

    def setup(c: Any) -> None:
        c.on_message = lambda client, userdata, message: into.append(message)

    return setup


@pytest.mark.parametrize("protocol", ["3.1.1", "5.0"])
def test_mqttdToMqttd(clients: Clients, bridges: StartBridge, protocol: str) -> None:
    """
    Two mqttd brokers: a bridge from one to the other with C{both} (at 3.1.1 with level 0x84,
    which the other accepts as a bridge; at 5.0 with No Local and Retain As Published asked in
    SUBSCRIBE), QoS 1 both ways, no loops, retained flags kept.
    """
    here = clients.broker
    there = e2e.start_broker()
    try:
        bridge = bridges(
            here,
            addresses=address(there.port),
            topic="m/# both 1",
            client_id="mm",
            protocol=protocol,
        )
        waitLinked(bridge)
        e2e.wait_until(lambda: there.is_connected("mm"), "the bridge at the other mqttd")
        conn = there.call(lambda: there.broker.sessions["mm"].connection)
        assert conn is not None
        assert conn.bridge == (protocol == "3.1.1")  # type: ignore[attr-defined]
        e2e.wait_until(
            lambda: there.call(lambda: "m/#" in there.broker.sessions["mm"].subscriptions),
            "the bridge's subscription",
        )
        a = clients("a")
        a.subscribe("m/#", 1)
        b = e2e.client(there.port, "b")
        try:
            b.subscribe("m/#", 1)
            a.publish("m/1", b"from here", qos=1)
            b.publish("m/2", b"from there", qos=1, retain=True)
            a.publish("m/end", b"", qos=1)
            assert sorted(topics(a.wait_for(3))) == [
                ("m/1", b"from here"),
                ("m/2", b"from there"),
                ("m/end", b""),
            ]
            assert sorted(topics(b.wait_for(3))) == [
                ("m/1", b"from here"),
                ("m/2", b"from there"),
                ("m/end", b""),
            ]
            # The retained message crossed as retained: a new subscriber here gets it.
            late = clients("late")
            late.subscribe("m/2", 1)
            assert [(m.topic, m.retain) for m in late.wait_for(1)] == [("m/2", True)]
            b.publish("m/last", b"", qos=1)
            assert [m.topic for m in a.wait_for(1)] == ["m/last"]
            assert [m.topic for m in b.wait_for(1)] == ["m/last"]
            assert a.pending() == [] and b.pending() == []
        finally:
            b.close()
    finally:
        there.stop()


def test_configExample(tmp_path: Path) -> None:
    """The docs' example section parses to the values docs/bridge.md describes."""
    config: BridgeConfig = bridgeConfig(
        "mqttd.ini",
        "bridge:cloud",
        {
            "addresses": "broker1:1883, [::1]:8883",
            "topic": 'sensors/# out 1 site/ plant/\n"" in 2 local/cmd remote/cmd\ndebug/#',
        },
    )
    assert config.addresses == (("broker1", 1883), ("::1", 8883))
    assert [(r.localFilter, r.remoteFilter, r.direction, r.qos) for r in config.topics] == [
        ("site/sensors/#", "plant/sensors/#", "out", 1),
        ("local/cmd", "remote/cmd", "in", 2),
        ("debug/#", "debug/#", "out", 0),
    ]


@pytest.mark.parametrize(
    ("keys", "key", "why"),
    [
        ({"topic": "a/# out 1"}, "addresses", "required"),
        ({"addresses": "h:1883"}, "topic", "required"),
        ({"addresses": "h", "topic": "a"}, "addresses", "host:port"),
        ({"addresses": "h:0", "topic": "a"}, "addresses", "host:port"),
        ({"addresses": "h:1", "topic": "a sideways"}, "topic", "direction"),
        ({"addresses": "h:1", "topic": "a in 3"}, "topic", "QoS"),
        ({"addresses": "h:1", "topic": "a in 1 x/"}, "topic", "expected PATTERN"),
        ({"addresses": "h:1", "topic": "a/#/b"}, "topic", "no topic filter"),
        ({"addresses": "h:1", "topic": '"" in 1 "" ""'}, "topic", "needs a prefix"),
        ({"addresses": "h:1", "topic": "a in 1 + x/"}, "topic", "wildcards"),
        ({"addresses": "h:1", "topic": "a", "protocol": "4"}, "protocol", "3.1.1"),
        ({"addresses": "h:1", "topic": "a", "keepalive": "70000"}, "keepalive", "65535"),
        ({"addresses": "h:1", "topic": "a", "colour": "red"}, "colour", "unknown key"),
        ({"addresses": "h:1", "topic": "a", "verify_hostname": "false"}, "verify_hostname", "TLS"),
        ({"addresses": "h:1", "topic": "a", "certificate": "c.pem"}, "private_key", "both"),
        ({"addresses": "h:1", "topic": "a", "ca_certificates": "nope.pem"}, "ca_certificates", ""),
        ({"addresses": "h:1", "topic": "a", "password": "p"}, "password", "username"),
        (
            {
                "addresses": "h:1",
                "topic": "a",
                "reconnect_delay_min": "5",
                "reconnect_delay_max": "1",
            },
            "reconnect_delay_max",
            "reconnect_delay_min",
        ),
        (
            {"addresses": "h:1", "topic": "a", "session_expiry_interval": "5"},
            "session_expiry_interval",
            "5.0",
        ),
    ],
)
def test_configErrorsNameTheKey(keys: dict[str, str], key: str, why: str, tmp_path: Path) -> None:
    """A bad [bridge:NAME] key stops start-up with a ConfigError naming file, section and key."""
    with pytest.raises(ConfigError) as raised:
        bridgeConfig(str(tmp_path / "mqttd.ini"), "bridge:b", keys)
    assert (raised.value.section, raised.value.key) == ("bridge:b", key)
    assert why in raised.value.why


def test_bridgeSectionsInTheFile(tmp_path: Path) -> None:
    """
    load_config collects [bridge:NAME] sections with multi-line topic keys, and a bad bridge
    name is refused like a bad listener name.
    """
    path = tmp_path / "mqttd.ini"
    path.write_text(
        "[listener:l]\nendpoint = tcp:1883\n[bridge:a]\naddresses = h:1\ntopic =\n  x/# out\n"
        "  y/# in 2\n[bridge:b]\naddresses = h:2\ntopic = z\nround_robin = true\n"
    )
    config = load_config(str(path))
    assert [(b.name, len(b.topics), b.round_robin) for b in config.bridges] == [
        ("a", 2, False),
        ("b", 1, True),
    ]
    assert config.bridges[0].client_id.endswith(".a")
    assert config.bridges[0].local_client_id == "local." + config.bridges[0].client_id
    path.write_text("[listener:l]\nendpoint = tcp:1883\n[bridge:a b]\naddresses = h:1\ntopic = z\n")
    with pytest.raises(ConfigError, match=r"\[bridge:a b\]"):
        load_config(str(path))


def test_backoffGrowsWithJitterAndIsCapped() -> None:
    """
    Reconnection delays start at the minimum, grow roughly threefold per failure, never pass
    the maximum, and differ between bridges (jitter), so bridges do not return in step.
    """
    low, high = 1.0, 60.0
    runs = []
    for seed in range(20):
        rng = random.Random(seed)
        delays = []
        delay = 0.0
        for _ in range(12):
            delay = nextDelay(delay, low, high, rng)
            delays.append(delay)
        runs.append(delays)
        assert delays[0] == low
        assert all(low <= d <= high for d in delays)
    assert max(max(run) for run in runs) > 30
    assert len({round(run[3], 6) for run in runs}) > 10
    # Growth: the median fifth delay is well above the first.
    assert sorted(run[4] for run in runs)[10] > 4 * low


def test_queueBoundedByCountAndBytes(
    e2e_broker: e2e.RunningBroker, clients: Clients, bridges: StartBridge
) -> None:
    """
    While the remote broker is unreachable, QoS 1 messages for it queue up to
    max_queued_messages, or max_queued_bytes of payload; the newest beyond are dropped and
    counted; QoS 0 messages are not queued.
    """
    nowhere = address(freePort())
    count = bridges(e2e_broker, addresses=nowhere, topic="c/# out 1", max_queued_messages="5")
    size = bridges(
        e2e_broker,
        name="bytes",
        addresses=nowhere,
        topic="b/# out 1",
        max_queued_bytes="10",
        local_client_id="bytes-local",
    )
    local = clients("local")
    for i in range(8):
        local.publish(f"c/{i}", b"x", qos=1)
    local.publish("c/qos0", b"x", qos=0)
    for i in range(4):
        local.publish(f"b/{i}", b"1234", qos=1)
    counters = e2e.in_reactor(count.counters)
    assert (counters["queue/messages"], counters["queue/dropped"]) == (5, 3)
    counters = e2e.in_reactor(size.counters)
    assert (counters["queue/messages"], counters["queue/dropped"]) == (2, 2)
    e2e.wait_until(
        lambda: e2e.in_reactor(lambda: count.stats.connectFailures) >= 2, "refused attempts"
    )


def test_queueSurvivesBrokerRestart(
    tmp_path: Path, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    QoS 1 messages queued for an unreachable remote broker are in mqttd's store (SQLite): after
    mqttd restarts on the same store, the bridge links up and sends every one, in order.
    """
    port = freePort()
    first = e2e.start_broker(plugins=lambda: {"store": sqliteStore(tmp_path)})
    try:
        bridge = bridges(first, addresses=address(port), topic="d/# out 1")
        publisher = e2e.client(first.port, "pub")
        for i in range(10):
            publisher.publish(f"d/{i}", str(i).encode(), qos=1)
        publisher.close()
        assert e2e.in_reactor(bridge.counters)["queue/messages"] == 10
        e2e.in_reactor(bridge.stop)
    finally:
        first.stop()
    remote = mosquittos("remote", port=port)
    far = e2e.client(remote.port, "far")
    second = e2e.start_broker(plugins=lambda: {"store": sqliteStore(tmp_path)})
    try:
        far.subscribe("d/#", 1)
        bridge = bridges(second, addresses=address(port), topic="d/# out 1")
        waitLinked(bridge)
        assert [m.payload for m in far.wait_for(10)] == [str(i).encode() for i in range(10)]
        e2e.in_reactor(bridge.stop)
    finally:
        far.close()
        second.stop()


class _NoBridgeBit(Protocol):
    """A broker that does not know the bridge bit: CONNACK 1 for level 0x84, 0 for 4."""

    accepted = False

    def dataReceived(self, data: bytes) -> None:
        if self.accepted:
            return
        # Fixed header (2 bytes for a small CONNECT), then "\x00\x04MQTT", then the level.
        level = data[8]
        self.factory.levels.append(level)
        self.accepted = not level & 0x80
        self.transport.write(b"\x20\x02\x00" + (b"\x00" if self.accepted else b"\x01"))  # type: ignore[union-attr]


def test_tryPrivateFallsBack(e2e_broker: e2e.RunningBroker, bridges: StartBridge) -> None:
    """
    A remote broker that refuses the bridge level (0x84) with CONNACK 1 is asked again at once
    with the plain level 4, and the link comes up.
    """
    factory = Factory.forProtocol(_NoBridgeBit)
    factory.levels = []  # type: ignore[attr-defined]
    port = e2e.in_reactor(
        lambda: serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(factory)
    )
    try:
        bridge = bridges(e2e_broker, addresses=address(port.getHost().port), topic="x out")
        waitLinked(bridge)
        assert factory.levels == [0x84, 0x04]  # type: ignore[attr-defined]
        e2e.in_reactor(bridge.stop)
    finally:
        e2e.in_reactor(port.stopListening)


@pytest.mark.broker_config(sys_interval=1)
def test_sysCounters(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    The bridge's counters are published under $SYS/broker/connection/NAME/ (retained) every
    [broker] sys_interval: messages sent and received, queue length, reconnects; and the
    metrics endpoint reports the same numbers, labelled with the bridge's name.
    """
    remote = mosquittos("remote")
    bridge = bridges(
        e2e_broker,
        addresses=address(remote.port),
        topic="s/# out 1\nr/# in 1",
        client_id="bs",
    )
    waitLinked(bridge)
    waitSubscribed(remote, "bs")
    local = clients("local")
    for i in range(3):
        local.publish(f"s/{i}", b"", qos=1)
    far = e2e.client(remote.port, "far")
    try:
        far.publish("r/1", b"", qos=1)
    finally:
        far.close()
    watch = clients("watch")
    watch.subscribe("$SYS/broker/connection/test/#", 0)
    seen: dict[str, bytes] = {}

    def settled() -> bool:
        for m in watch.pending():
            seen[m.topic.rsplit("test/", 1)[1]] = m.payload
        return seen.get("messages/sent") == b"3" and seen.get("messages/received") == b"1"

    e2e.wait_until(settled, "the counters in $SYS")
    assert seen["state"] == b"1"
    assert seen["queue/messages"] == b"0"
    assert seen["reconnects"] == b"0"

    http: IListeningPort = e2e.in_reactor(
        lambda: serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(
            httpSite(e2e_broker.broker)
        )
    )
    try:
        m = scrape(http.getHost().port)  # type: ignore[attr-defined]
    finally:
        e2e.in_reactor(http.stopListening)
    label = (("bridge", "test"),)
    assert m["mqttd_bridge_up"][label] == 1
    assert m["mqttd_bridge_messages_sent_total"][label] == 3
    assert m["mqttd_bridge_messages_received_total"][label] == 1
    assert m["mqttd_bridge_queued_messages"][label] == 0
    assert m["mqttd_bridge_dropped_messages_total"][label] == 0
    assert m["mqttd_bridge_reconnects_total"][label] == 0
    e2e.in_reactor(bridge.stop)
    assert "test" not in e2e.in_reactor(lambda: dict(e2e_broker.broker.bridges))


def test_remoteTakeoverLoggedAndLinkRestored(
    clients: Clients, bridges: StartBridge, twisted_reactor: None
) -> None:
    """
    A 5.0 remote broker that ends the link with DISCONNECT (0x8E: another client took the
    bridge's client identifier there) has its reason logged, and the bridge links up again.
    """
    events: list[str] = []

    def collect(event: dict[str, Any]) -> None:
        events.append(formatEvent(event))

    observe = cast(ILogObserver, collect)

    there = e2e.start_broker()
    globalLogPublisher.addObserver(observe)
    try:
        bridge = bridges(
            clients.broker,
            addresses=address(there.port),
            topic="t out",
            client_id="tk",
            protocol="5.0",
        )
        waitLinked(bridge)
        links = e2e.in_reactor(lambda: bridge.stats.links)
        intruder = e2e.client(there.port, "tk")
        e2e.wait_until(
            lambda: any("sent DISCONNECT 0x8e" in e for e in events), "the reason in the log"
        )
        intruder.close()
        e2e.wait_until(
            lambda: e2e.in_reactor(lambda: bridge.connected and bridge.stats.links > links),
            "the link back",
        )
    finally:
        globalLogPublisher.removeObserver(observe)
        there.stop()


class _Silent(Protocol):
    """
    A broker that hangs: CONNACK 0 to the first CONNECT only if C{factory.answer}, and never
    a PINGRESP; it records every byte after the CONNECT.
    """

    # Not "connected": Protocol sets that when the connection is made.
    heard = False

    def dataReceived(self, data: bytes) -> None:
        factory: Any = self.factory
        if self.heard:
            factory.after.append(data)
            return
        self.heard = True
        factory.connects += 1
        if factory.answer:
            self.transport.write(b"\x20\x02\x00\x00")  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost += 1


def _silentBroker(answer: bool) -> tuple[Any, Any]:
    factory: Any = Factory.forProtocol(_Silent)
    factory.answer, factory.after, factory.connects, factory.lost = answer, [], 0, 0
    port = e2e.in_reactor(
        lambda: serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(factory)
    )
    return factory, port


def test_keepaliveDropsASilentRemote(e2e_broker: e2e.RunningBroker, bridges: StartBridge) -> None:
    """
    keepalive = 1: the bridge sends PINGREQ every second once linked, and a remote broker that
    answers nothing for two keepalives is dropped and connected to again [MQTT-3.1.2-24].
    """
    factory, port = _silentBroker(answer=True)
    try:
        bridge = bridges(
            e2e_broker, addresses=address(port.getHost().port), topic="x out", keepalive="1"
        )
        waitLinked(bridge)
        e2e.wait_until(lambda: e2e.in_reactor(lambda: factory.connects) >= 2, "a new link", 10)
        assert b"\xc0\x00" in b"".join(factory.after)
        assert e2e.in_reactor(lambda: factory.lost) >= 1
        e2e.in_reactor(bridge.stop)
    finally:
        e2e.in_reactor(port.stopListening)


def test_connectTimeoutWithoutConnack(e2e_broker: e2e.RunningBroker, bridges: StartBridge) -> None:
    """
    A remote that accepts the TCP connection but never answers CONNECT is given up after
    connect_timeout and tried again, counted as a failed attempt.
    """
    factory, port = _silentBroker(answer=False)
    try:
        bridge = bridges(
            e2e_broker,
            addresses=address(port.getHost().port),
            topic="x out",
            connect_timeout="0.2",
        )
        e2e.wait_until(lambda: e2e.in_reactor(lambda: factory.connects) >= 2, "another attempt")
        assert e2e.in_reactor(lambda: bridge.stats.connectFailures) >= 1
        assert not e2e.in_reactor(lambda: bridge.connected)
        e2e.in_reactor(bridge.stop)
    finally:
        e2e.in_reactor(port.stopListening)


def test_credentials(
    e2e_broker: e2e.RunningBroker,
    clients: Clients,
    mosquittos: Start,
    bridges: StartBridge,
    tmp_path: Path,
) -> None:
    """
    A mosquitto that refuses anonymous clients and checks a password file: the bridge with the
    right user name and password links up and messages cross; one with a wrong password is
    refused (CONNACK 5) and never linked.
    """
    passwd = tmp_path / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-c", "-b", str(passwd), "site", "s3cret"],
        check=True,
        capture_output=True,
    )
    remote = mosquittos(
        "remote", f"per_listener_settings false\npassword_file {passwd}\nallow_anonymous false\n"
    )
    good = bridges(
        e2e_broker,
        addresses=address(remote.port),
        topic="cred/# out 1",
        username="site",
        password="s3cret",
        client_id="good",
    )
    bad = bridges(
        e2e_broker,
        name="bad",
        addresses=address(remote.port),
        topic="cred/# out 1",
        username="site",
        password="wrong",
        client_id="bad",
        local_client_id="bad-local",
    )
    waitLinked(good)
    e2e.wait_until(lambda: e2e.in_reactor(lambda: bad.stats.connectFailures) >= 2, "refusals")
    assert e2e.in_reactor(lambda: bad.stats.links) == 0
    assert "Sending CONNACK to 127.0.0.1 (0, 5)" in remote.logText()


def test_interfaces(e2e_broker: e2e.RunningBroker) -> None:
    """
    The bridge keeps the seams it documents: it is an ILinkOwner for its MQTT client, and its
    local side an IClientConnection of the broker.
    """
    config = bridgeConfig("t.ini", "bridge:v", {"addresses": "h:1", "topic": "a"})
    bridge = Bridge(config, e2e_broker.broker, e2e.reactor)
    assert verifyObject(ILinkOwner, bridge)
    assert verifyObject(IClientConnection, BridgeConnection(bridge, 4))


def test_localClientIdReserved(
    e2e_broker: e2e.RunningBroker, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    While a bridge runs, a client connecting with the bridge's local client identifier is
    refused (CONNACK 2, identifier rejected) and the bridge's link and session stay as they
    were; once the bridge is stopped the identifier is an ordinary one again.
    """
    remote = mosquittos("remote")
    bridge = bridges(e2e_broker, addresses=address(remote.port), topic="x out", client_id="rid")
    waitLinked(bridge)
    # paho reports the 3.1.1 code 2 as its 5.0 equivalent, 133 (0x85).
    for protocol in (e2e.MQTTv311, e2e.MQTTv5):
        with pytest.raises(AssertionError, match="return code 133"):
            e2e.client(e2e_broker.port, "local.rid", protocol=protocol)
    assert e2e.in_reactor(lambda: bridge.connected and bridge.stats.links == 1)
    e2e.in_reactor(bridge.stop)
    e2e.client(e2e_broker.port, "local.rid").close()


@implementer(IAuthorizer)
class _BridgeRules:
    """An ACL for the bridge's identity "site": it may read out/ok/#, publish in/ok/#."""

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> bool:
        if client.username != "site":
            return True
        if action == Action.PUBLISH:
            return topic.startswith("in/ok/")
        return topic in ("out/#",) or topic.startswith("out/ok/")


def test_localUsernameUnderTheAcl(mosquittos: Start, bridges: StartBridge) -> None:
    """
    local_username is who the ACL sees: with "site" allowed to read out/ok/# only, out/secret/x
    stays here; allowed to publish in/ok/# only, mosquitto's in/secret/x is dropped here.
    """
    here = e2e.start_broker(plugins=lambda: {"authorizers": [_BridgeRules()]})
    remote = mosquittos("remote")
    try:
        bridge = bridges(
            here,
            addresses=address(remote.port),
            topic="out/# out 1\nin/# in 1",
            local_username="site",
            client_id="acl",
        )
        waitLinked(bridge)
        waitSubscribed(remote, "acl")
        far = e2e.client(remote.port, "far")
        local = e2e.client(here.port, "local")
        try:
            far.subscribe("out/#", 1)
            local.subscribe("in/#", 1)
            local.publish("out/secret/x", b"no", qos=1)
            local.publish("out/ok/x", b"yes", qos=1)
            assert topics(far.wait_for(1)) == [("out/ok/x", b"yes")]
            far.publish("in/secret/x", b"no", qos=1)
            far.publish("in/ok/x", b"yes", qos=1)
            assert topics(local.wait_for(1)) == [("in/ok/x", b"yes")]
            assert far.pending() == [] and local.pending() == []
        finally:
            far.close()
            local.close()
    finally:
        e2e.in_reactor(bridge.stop)
        here.stop()


def test_remoteNotifications(
    e2e_broker: e2e.RunningBroker, mosquittos: Start, bridges: StartBridge
) -> None:
    """
    As mosquitto's bridges do, the remote broker learns the link's state on
    $SYS/broker/connection/CLIENT_ID/state: 1 (retained) once linked, with a will of 0 for a
    failed link, and 0 when the bridge stops; notifications_local_only keeps it here.
    """
    remote = mosquittos("remote")
    watch = e2e.client(remote.port, "watch")
    try:
        watch.subscribe("$SYS/broker/connection/+/state", 1)
        bridge = bridges(e2e_broker, addresses=address(remote.port), topic="x out", client_id="rn")
        quiet = bridges(
            e2e_broker,
            name="quiet",
            addresses=address(remote.port),
            topic="x out",
            client_id="qn",
            local_client_id="qn-local",
            notifications_local_only="true",
        )
        waitLinked(bridge)
        waitLinked(quiet)
        assert [(m.topic, m.payload) for m in watch.wait_for(1)] == [
            ("$SYS/broker/connection/rn/state", b"1")
        ]
        e2e.in_reactor(bridge.stop)
        assert [(m.topic, m.payload) for m in watch.wait_for(1)] == [
            ("$SYS/broker/connection/rn/state", b"0")
        ]
        e2e.in_reactor(quiet.stop)
        late = e2e.client(remote.port, "late")
        try:
            late.subscribe("$SYS/broker/connection/+/state", 1)
            assert [(m.topic, m.payload, m.retain) for m in late.wait_for(1)] == [
                ("$SYS/broker/connection/rn/state", b"0", True)
            ]
        finally:
            late.close()
        assert watch.pending() == []
        assert "Will message specified (1 bytes) (r1, q1)." in remote.logText()
    finally:
        watch.close()
