"""
MQTT-SN end to end: the gateway on a real UDP socket of 127.0.0.1 beside a broker on TCP, with
the MQTT-SN client from PyPI (mqtt-sn-12: its client class and its mqtt_sn_pub tool), the codec's
own test client (L{tests.sn_udp}) and paho-mqtt, exchanging messages both ways.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mqttsn12.client.MqttSnClient import (  # type: ignore[import-untyped]
    MqttSnClient,
    MqttSnListener,
    MqttSnMessage,
)

from mqttd.service import ListenerError, ListenerService
from mqttd.sn import packets as sn
from mqttd.sn.delivery import MAX_DATAGRAM
from mqttd.sn.endpoint import UDPServerEndpoint
from mqttd.sn.gateway import MQTTSNGateway
from mqttd.sn.packets import ReturnCode

from . import e2e
from .conftest import Clients
from .sn_udp import SN_E2E, RunningGateway, UDPClient, start_gateway


@pytest.fixture
def gateway(e2e_broker: e2e.RunningBroker, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An MQTT-SN listener on the e2e broker; C{sn_listener} marker keys change its settings."""
    marker = request.node.get_closest_marker("sn_listener")
    listener = replace(SN_E2E, **marker.kwargs) if marker is not None else SN_E2E
    running = start_gateway(e2e_broker.broker, listener)
    yield running
    running.stop()


@pytest.fixture
def udp(gateway: RunningGateway) -> Iterator[Any]:
    """Makes L{UDPClient}s of the gateway and closes them at teardown."""
    made: list[UDPClient] = []

    def make() -> UDPClient:
        client = UDPClient(gateway.port)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class _Collected(MqttSnListener):
    def __init__(self) -> None:
        self.messages: list[MqttSnMessage] = []

    def message_arrived(self, msg: MqttSnMessage) -> None:
        self.messages.append(msg)


@pytest.fixture
def pypiClient(gateway: RunningGateway) -> Iterator[Any]:
    """Makes connected mqtt-sn-12 clients; each is disconnected and closed at teardown."""
    made: list[MqttSnClient] = []

    def make(clientId: str) -> MqttSnClient:
        client = MqttSnClient()
        client.set_client_id(clientId)
        client.set_timeout(int(e2e.TIMEOUT))
        client.set_keep_alive(60)
        client.open(e2e.HOST, gateway.port)
        client.send_connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _poll(client: MqttSnClient, collected: _Collected, n: int) -> list[MqttSnMessage]:
    deadline = time.monotonic() + e2e.TIMEOUT
    while len(collected.messages) < n:
        assert time.monotonic() < deadline, f"{len(collected.messages)} of {n} messages"
        client.polling()
        time.sleep(0.01)
    return collected.messages


def test_pypi_client_publishes_to_mqtt(clients: Clients, pypiClient: Any) -> None:
    """mqtt-sn-12 publishes at QoS 0, 1 and 2 (REGISTER first); paho receives each at its QoS."""
    subscriber = clients("paho-sub")
    assert subscriber.subscribe("sn/#", 2) == 2
    client = pypiClient("pypi-pub")
    for qos in (0, 1, 2):
        client.send_publish("sn/temperature", b"qos %d" % qos, qos)
    got = subscriber.wait_for(3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("sn/temperature", b"qos 0", 0),
        ("sn/temperature", b"qos 1", 1),
        ("sn/temperature", b"qos 2", 2),
    ]
    client.send_disconnect()


def test_mqtt_publishes_to_pypi_client(clients: Clients, pypiClient: Any) -> None:
    """paho publishes at QoS 0 and 1; mqtt-sn-12, subscribed with a wildcard, gets both."""
    client = pypiClient("pypi-sub")
    collected = _Collected()
    client.send_subscribe("from/mqtt/#", 1, collected)
    publisher = clients("paho-pub")
    publisher.publish("from/mqtt/a", b"zero", 0)
    publisher.publish("from/mqtt/a", b"one", 1)
    got = _poll(client, collected, 2)
    assert [(m.get_topic_name(), m.get_payload(), m.get_qos()) for m in got] == [
        ("from/mqtt/a", b"zero", 0),
        ("from/mqtt/a", b"one", 1),
    ]


def test_mqtt_publishes_qos2_to_sn(clients: Clients, udp: Any) -> None:
    """A QoS 2 message from paho reaches an SN client through PUBREC, PUBREL and PUBCOMP."""
    client = udp()
    client.connect("q2")
    suback = client.subscribe("q2/topic", 2)
    clients("paho").publish("q2/topic", b"exactly once", 2)
    publish = client.expect(sn.Publish)
    assert (publish.topic_id, publish.payload, publish.qos) == (suback.topic_id, b"exactly once", 2)
    client.send(sn.Pubrec(publish.msg_id))
    assert client.expect(sn.Pubrel) == sn.Pubrel(publish.msg_id)
    client.send(sn.Pubcomp(publish.msg_id))
    client.send(sn.Pingreq())
    assert client.expect(sn.Pingresp) == sn.Pingresp()


def test_qos_minus_one_with_mqtt_sn_pub(clients: Clients, gateway: RunningGateway) -> None:
    """
    mqtt_sn_pub -q -1 -T 1 publishes to pre-defined topic 1 without connecting; paho gets it on
    the topic the listener's configuration names (docs/mqtt-sn.md's command line).
    """
    subscriber = clients("paho")
    subscriber.subscribe("sensors/#", 1)
    tool = Path(sys.executable).parent / "mqtt_sn_pub"
    command = [str(tool), "-h", e2e.HOST, "-p", str(gateway.port), "-q", "-1", "-T", "1"]
    subprocess.run([*command, "-m", "21.5"], check=True, timeout=30)
    (message,) = subscriber.wait_for(1)
    assert (message.topic, message.payload, message.qos) == ("sensors/temperature", b"21.5", 0)
    assert gateway.gateway.clients == {}


def test_mqtt_sn_pub_with_connection(clients: Clients, gateway: RunningGateway) -> None:
    """mqtt_sn_pub at QoS 1 to a topic name: CONNECT, REGISTER, PUBLISH, DISCONNECT."""
    subscriber = clients("paho")
    subscriber.subscribe("greetings/#", 1)
    tool = Path(sys.executable).parent / "mqtt_sn_pub"
    command = [str(tool), "-h", e2e.HOST, "-p", str(gateway.port), "-q", "1", "-i", "tool"]
    subprocess.run([*command, "-t", "greetings/sn", "-m", "hello"], check=True, timeout=30)
    (message,) = subscriber.wait_for(1)
    assert (message.topic, message.payload, message.qos) == ("greetings/sn", b"hello", 1)


def test_retained_both_ways(clients: Clients, udp: Any) -> None:
    """Retained messages published on either side reach later subscribers on the other."""
    clients("paho-pub").publish("state/door", b"open", 1, retain=True)
    client = udp()
    client.connect("retainer")
    suback = client.subscribe("state/door", 1)
    publish = client.expect(sn.Publish)
    assert (publish.topic_id, publish.payload, publish.retain) == (suback.topic_id, b"open", True)
    client.send(sn.Puback(publish.topic_id, publish.msg_id, ReturnCode.ACCEPTED))
    topicId = client.register("state/window")
    client.send(sn.Publish(topicId, 7, b"shut", qos=1, retain=True))
    assert client.expect(sn.Puback).return_code == 0
    later = clients("paho-late")
    later.subscribe("state/window", 1)
    (message,) = later.wait_for(1)
    assert (message.payload, message.retain) == (b"shut", True)


def test_sleeping_client_gets_what_was_sent_while_asleep(clients: Clients, udp: Any) -> None:
    """
    An SN client asleep (DISCONNECT with a duration) is sent nothing; its wake-up PINGREQ gets
    what paho published meanwhile, then PINGRESP.
    """
    client = udp()
    client.connect("sleeper")
    suback = client.subscribe("wake/#", 1)
    client.send(sn.Disconnect(60))
    assert client.expect(sn.Disconnect) == sn.Disconnect()
    publisher = clients("paho")
    publisher.publish("wake/a", b"first", 1)
    publisher.publish("wake/a", b"second", 0)
    client.send(sn.Pingreq("sleeper"))
    first = client.publishAfterRegister()
    assert (first.payload, first.qos) == (b"first", 1)
    client.send(sn.Puback(first.topic_id, first.msg_id, ReturnCode.ACCEPTED))
    second = client.expect(sn.Publish)
    assert (second.payload, second.qos) == (b"second", 0)
    assert client.expect(sn.Pingresp) == sn.Pingresp()
    assert suback.return_code == 0


@pytest.mark.sn_listener(retry_interval=0.2, retry_count=2)
def test_lost_datagram_is_retransmitted(clients: Clients, udp: Any) -> None:
    """A PUBLISH whose PUBACK never came (the datagram was dropped) is sent again with DUP."""
    client = udp()
    client.connect("lossy")
    client.subscribe("lossy/t", 1)
    clients("paho").publish("lossy/t", b"again", 1)
    dropped = client.expect(sn.Publish)
    assert not dropped.dup
    # The test drops that datagram: no PUBACK; the gateway's Tretry runs out.
    again = client.expect(sn.Publish)
    assert again == replace(dropped, dup=True)
    client.send(sn.Puback(again.topic_id, again.msg_id, ReturnCode.ACCEPTED))
    client.send(sn.Pingreq())
    answer = client.receive()
    while answer == again:
        # Sent again before our PUBACK arrived, on a slow machine.
        answer = client.receive()
    assert answer == sn.Pingresp()


def test_will_of_client_that_stops_answering(clients: Clients, udp: Any) -> None:
    """An SN client silent past 1.5 times its keepalive is lost; paho receives its will."""
    watcher = clients("paho")
    watcher.subscribe("wills/#", 1)
    client = udp()
    client.connect("quiet", duration=1, will=("wills/quiet", b"gone", 1, False))
    (will,) = watcher.wait_for(1)
    assert (will.topic, will.payload, will.qos) == ("wills/quiet", b"gone", 1)


def test_bad_datagrams_leave_others_working(
    clients: Clients, udp: Any, gateway: RunningGateway
) -> None:
    """Garbage datagrams are counted and dropped; a connected SN client carries on."""
    subscriber = clients("paho")
    subscriber.subscribe("ok/#", 0)
    good = udp()
    good.connect("good")
    topicId = good.register("ok/t")
    bad = udp()
    for data in (b"", b"\x05", b"\x09\x0c\x00", b"\x02\x03", b"\x01\xff\xff\x0c", b"\xff" * 300):
        bad.sendBytes(data)
    good.send(sn.Publish(topicId, 2, b"fine", qos=1))
    assert good.expect(sn.Puback).return_code == 0
    (message,) = subscriber.wait_for(1)
    assert message.payload == b"fine"
    dropped = e2e.in_reactor(lambda: dict(gateway.gateway.dropped))
    assert dropped["short"] == 2 and dropped["length"] == 3 and dropped["type"] == 1, dropped


def test_udp_port_taken(e2e_broker: e2e.RunningBroker) -> None:
    """A UDP port already in use stops the listener's start with the one-line ListenerError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((e2e.HOST, 0))
        port = taken.getsockname()[1]
        listener = replace(SN_E2E, endpoint=f"udp:{port}:interface={e2e.HOST}")
        with pytest.raises(ListenerError) as caught:
            start_gateway(e2e_broker.broker, listener)
    assert str(caught.value).startswith(f"listener sn cannot listen on udp:{port}:"), caught.value


def test_paused_until_accepting(e2e_broker: e2e.RunningBroker) -> None:
    """
    Bound but not yet accepting (the broker still restoring its store), the listener reads
    nothing; datagrams wait in the kernel and are answered once it accepts.
    """

    def bind() -> Any:
        gateway: Any = MQTTSNGateway(e2e_broker.broker, SN_E2E, e2e.reactor)
        endpoint: Any = UDPServerEndpoint(e2e.reactor, SN_E2E.endpoint, MAX_DATAGRAM)
        service = ListenerService(SN_E2E, endpoint, gateway, lambda error: None)
        service.startService()
        return service

    service = e2e.in_reactor(bind)
    client = UDPClient(service.port.getHost().port)
    try:
        client.send(sn.SearchGw(0))
        with pytest.raises(AssertionError, match="no datagram"):
            client.receive(timeout=0.3)
        e2e.in_reactor(service.accept)
        assert client.expect(sn.GwInfo) == sn.GwInfo(1)
    finally:
        client.close()
        e2e.in_reactor(service.stopService)


def test_metrics(e2e_broker: e2e.RunningBroker, gateway: RunningGateway, udp: Any) -> None:
    """
    /metrics reports the MQTT-SN listener's clients by state and its drops by reason, scraped
    over HTTP and parsed with prometheus_client's parser.
    """
    from twisted.internet.endpoints import serverFromString

    from .test_monitoring import httpSite, scrape

    client = udp()
    client.connect("metered")
    client.sendBytes(b"\x02\x03")
    client.send(sn.Pingreq())
    assert client.expect(sn.Pingresp) == sn.Pingresp()

    def listen() -> Any:
        site = httpSite(e2e_broker.broker)
        return serverFromString(e2e.reactor, f"tcp:0:interface={e2e.HOST}").listen(site)

    port = e2e.in_reactor(listen)
    try:
        samples = scrape(port.getHost().port)
    finally:
        e2e.in_reactor(port.stopListening)
    clients = samples["mqttd_sn_clients"]
    assert clients[(("listener", "sn"), ("state", "connected"))] == 1
    assert clients[(("listener", "sn"), ("state", "asleep"))] == 0
    dropped = samples["mqttd_sn_dropped_total"]
    assert dropped[(("listener", "sn"), ("reason", "type"))] == 1
