"""
In-memory clients for protocol and broker tests: a real
L{MQTTServerProtocol} on a L{StringTransport}, driven by a
L{MemoryReactorClock}, with no sockets and no sleeps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mqttd.broker import Broker
from mqttd.codec import NO_PROPERTIES, Decoder, Properties, encode
from mqttd.codec.packets import Connack, Connect, Packet, Publish, Subscribe, Will
from mqttd.config import BrokerConfig, ListenerConfig
from mqttd.protocol import MQTTServerFactory, MQTTServerProtocol
from mqttd.store import MemoryStore

LISTENER = ListenerConfig(name="test", endpoint="tcp:0", allow_anonymous=True)


class Client:
    """
    One client connection to the broker under test: writes raw bytes or
    packets in, reads decoded packets out.
    """

    _port = 40000

    def __init__(self, world: World, level: int = 4) -> None:
        """
        @param level: the protocol level the client speaks; packets are
            written and read in that level's format.
        """
        Client._port += 1
        self.level = level
        self.world = world
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", Client._port))
        protocol = world.factory.buildProtocol(self.transport.getPeer())
        assert protocol is not None
        self.protocol: MQTTServerProtocol = protocol
        self.protocol.makeConnection(self.transport)
        self._decoder = Decoder(server=False, protocol_level=5 if level == 5 else None)
        self._unread: list[Packet] = []

    def send(self, *packets: Packet) -> None:
        for packet in packets:
            self.sendBytes(encode(packet, self.level))

    def sendBytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def read(self) -> list[Packet]:
        """Every packet the broker wrote since the last read."""
        data = self.transport.value()
        self.transport.clear()
        packets = self._unread + self._decoder.feed(data)
        self._unread = []
        return packets

    def publishes(self) -> list[Publish]:
        return [p for p in self.read() if isinstance(p, Publish)]

    @property
    def closed(self) -> bool:
        """Whether the broker closed (or aborted) this connection."""
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def drop(self) -> None:
        """The network fails under this client: no DISCONNECT is sent."""
        self.protocol.connectionLost()

    def finish(self) -> None:
        """Deliver the close the broker asked for, as the reactor would."""
        if self.closed:
            self.protocol.connectionLost()


class World:
    """A broker, a fake clock, and a factory for clients of one listener."""

    def __init__(
        self,
        store: MemoryStore | None = None,
        listener: ListenerConfig = LISTENER,
        now: float = 0.0,
        **brokerOptions: Any,
    ) -> None:
        """
        @param now: the clock's time when the broker starts, for a restart on a store that kept
            deadlines on an earlier broker's clock.
        @param brokerOptions: L{BrokerConfig} fields; C{sys_interval} is 0 (no C{$SYS} timer or
            messages) unless given.
        """
        self.clock = MemoryReactorClock()
        self.clock.advance(now)
        self.store = store if store is not None else MemoryStore()
        config = replace(BrokerConfig(), **{"sys_interval": 0, **brokerOptions})
        self.broker = Broker(config, self.clock, self.store)
        self.broker.start()
        self.factory = MQTTServerFactory(self.broker, listener, self.clock)

    def client(self, level: int = 4) -> Client:
        return Client(self, level)

    def connect(
        self,
        clientId: str,
        clean: bool = True,
        will: Will | None = None,
        keepalive: int = 0,
        level: int = 4,
        properties: Properties = NO_PROPERTIES,
    ) -> Client:
        """
        A client that sent CONNECT and got CONNACK 0.

        @param properties: at level 5, the CONNECT's properties.
        """
        client = self.client(level)
        client.send(Connect(level, clientId, clean, keepalive, will, properties=properties))
        connack, *client._unread = client.read()
        assert isinstance(connack, Connack) and connack.return_code == 0, connack
        client.connack = connack  # type: ignore[attr-defined]
        return client

    def subscriber(self, clientId: str, *filters: tuple[str, int], clean: bool = True) -> Client:
        """A connected client holding the given subscriptions."""
        client = self.connect(clientId, clean)
        client.send(Subscribe(1, list(filters)))
        client.read()
        return client
