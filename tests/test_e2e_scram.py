"""
End to end, SCRAM-SHA-256 enhanced authentication (section 4.12) against the real broker over
a socket, with the shipped C{scram} plugin.  paho-mqtt's client cannot answer AUTH packets, so
the client here is a raw socket speaking through mqttd.codec, with the SCRAM client side of
tests/scram_client.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqttd.cli import main as cli
from mqttd.codec import Decoder, Properties, ReasonCode, encode
from mqttd.codec.packets import Auth, Connack, Connect, Packet, Publish, Suback, Subscribe
from mqttd.config import BrokerConfig
from mqttd.interfaces import PluginContext
from mqttd.plugin_loader import pluginPackage
from tests import e2e
from tests.scram_client import ScramClient

pluginPackage()
scram = importlib.import_module("mqttd.plugins.scram")
METHOD = "SCRAM-SHA-256"


class Client5:
    """A 5.0 client on a raw socket, its packets encoded and decoded by mqttd.codec."""

    def __init__(self, port: int) -> None:
        self.raw = e2e.RawClient(port)
        self.decoder = Decoder(server=False, protocol_level=5)
        self.unread: list[Packet] = []

    def send(self, packet: Packet) -> None:
        self.raw.send(encode(packet, 5))

    def receive(self) -> Packet:
        while not self.unread:
            data = self.raw.sock.recv(65536)
            if not data:
                raise AssertionError("the broker closed the connection")
            self.unread.extend(self.decoder.feed(data))
        return self.unread.pop(0)

    def login(self, clientId: str, user: str, password: str) -> tuple[Connack, ScramClient]:
        """Run the SCRAM exchange; return the CONNACK it ended with."""
        scramClient = ScramClient(user, password)
        self.send(
            Connect(
                5,
                clientId,
                properties=Properties(
                    authentication_method=METHOD, authentication_data=scramClient.first()
                ),
            )
        )
        challenge = self.receive()
        assert isinstance(challenge, Auth)
        assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
        assert challenge.properties.authentication_method == METHOD
        assert challenge.properties.authentication_data is not None
        final = scramClient.final(challenge.properties.authentication_data)
        self.send(
            Auth(
                ReasonCode.CONTINUE_AUTHENTICATION,
                Properties(authentication_method=METHOD, authentication_data=final),
            )
        )
        connack = self.receive()
        assert isinstance(connack, Connack)
        return connack, scramClient


@pytest.fixture
def scramBroker(twisted_reactor: None, tmp_path: Path) -> Iterator[e2e.RunningBroker]:
    """A broker whose authenticator chain is the shipped scram plugin, with user alice."""
    path = str(tmp_path / "scram")
    assert cli(["scram", "add", path, "alice", "pencil"]) == 0
    context = PluginContext(
        reactor=None, configDirectory=str(tmp_path), brokerConfig=BrokerConfig()
    )
    e2e.REACTOR.takeErrors()
    running = e2e.start_broker(
        plugins=lambda: {"authenticators": [scram.scram.build({"file": path}, context)]}
    )
    yield running
    running.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


def test_scram_login_then_publish(scramBroker: e2e.RunningBroker) -> None:
    """
    SCRAM-SHA-256 completes over AUTH 0x18 [MQTT-4.12.0-2, MQTT-4.12.0-3]; CONNACK 0x00 carries
    the method and the server signature [MQTT-4.12.0-5], which the client verifies; the client
    then subscribes and receives its own message.
    """
    client = Client5(scramBroker.port)
    try:
        connack, login = client.login("c", "alice", "pencil")
        assert connack.return_code == 0
        assert connack.properties.authentication_method == METHOD
        assert login.verified(connack.properties.authentication_data)
        client.send(Subscribe(1, [("t/#", 1)]))
        assert isinstance(client.receive(), Suback)
        client.send(Publish("t/x", b"hello", 0))
        delivered = client.receive()
        assert isinstance(delivered, Publish) and delivered.payload == b"hello"
    finally:
        client.raw.close()


def test_scram_wrong_password(scramBroker: e2e.RunningBroker) -> None:
    """A wrong password gets CONNACK 0x86 and the close [MQTT-4.12.0-4]."""
    client = Client5(scramBroker.port)
    try:
        connack, _ = client.login("c", "alice", "crayon")
        assert connack.return_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        assert client.raw.wait_closed() == b""
        assert not scramBroker.is_connected("c")
    finally:
        client.raw.close()
