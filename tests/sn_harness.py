"""
In-memory MQTT-SN: a real L{MQTTSNGateway} on a fake UDP transport, on the same broker and clock
as L{tests.harness.World}'s MQTT clients, so SN and MQTT clients meet with no sockets and no
sleeps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mqttd.config import ListenerConfig
from mqttd.sn import packets as sn
from mqttd.sn.codec import decode, encode
from mqttd.sn.gateway import MQTTSNGateway

from .harness import World

SN_LISTENER = ListenerConfig(
    name="sn",
    endpoint="udp:0",
    protocol="mqtt-sn",
    allow_anonymous=True,
    predefined_topics=((1, "sensors/temperature"), (7, "alarms")),
    retry_interval=10.0,
    retry_count=3,
)


class FakeUDP:
    """Records what the gateway sends, per address."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.broadcast = False

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast = enabled

    def take(self, addr: tuple[str, int], node: bytes = b"") -> list[bytes]:
        """What was sent to C{addr} (to its radio node C{node}, unwrapped), in order."""
        mine, others = [], []
        for data, a in self.sent:
            if a == addr and node:
                packet = decode(data)
                if isinstance(packet, sn.Encapsulated) and packet.node_id == node:
                    mine.append(packet.message)
                    continue
            elif a == addr:
                mine.append(data)
                continue
            others.append((data, a))
        self.sent = others
        return mine


class SNWorld(World):
    """L{World} with an MQTT-SN gateway listening on it."""

    def __init__(self, listener: ListenerConfig = SN_LISTENER, **brokerOptions: Any) -> None:
        super().__init__(**brokerOptions)
        self.snListener = listener
        self.udp = FakeUDP()
        self.gateway = MQTTSNGateway(self.broker, listener, self.clock)
        self.gateway.makeConnection(self.udp)  # type: ignore[arg-type]
        self._port = 50000

    def sn(self, host: str = "10.0.0.1") -> SNClient:
        self._port += 1
        return SNClient(self, (host, self._port))

    def forwarded(self, forwarder: SNClient, node: bytes) -> SNClient:
        """A client behind C{forwarder}'s address, as radio node C{node}."""
        return SNClient(self, forwarder.address, node)

    def snConnect(
        self,
        clientId: str,
        clean: bool = True,
        duration: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> SNClient:
        """An SN client that went through CONNECT (and the will exchange) to CONNACK 0."""
        client = self.sn()
        client.connect(clientId, clean, duration, will)
        return client


class SNClient:
    """One MQTT-SN client address: sends messages in, reads what the gateway sent it."""

    def __init__(self, world: SNWorld, address: tuple[str, int], node: bytes = b"") -> None:
        """@param node: behind a forwarder at C{address}, the client's Wireless Node Id."""
        self.world = world
        self.address = address
        self.node = node
        self._unread: list[Any] = []
        self.nextMsgId = 1

    @property
    def key(self) -> tuple[str, int, bytes]:
        """The gateway's key for this client."""
        return (*self.address, self.node)

    def send(self, *packets: Any) -> None:
        for packet in packets:
            self.sendBytes(encode(packet))

    def sendBytes(self, data: bytes) -> None:
        if self.node:
            data = encode(sn.Encapsulated(1, self.node, data))
        self.world.gateway.datagramReceived(data, self.address)

    def read(self) -> list[Any]:
        packets = self._unread + [decode(d) for d in self.world.udp.take(self.address, self.node)]
        self._unread = []
        return packets

    def one(self, kind: type) -> Any:
        """The one message read, which must be of C{kind}."""
        packets = self.read()
        assert len(packets) == 1 and isinstance(packets[0], kind), packets
        return packets[0]

    def msgId(self) -> int:
        self.nextMsgId += 1
        return self.nextMsgId - 1

    def connect(
        self,
        clientId: str,
        clean: bool = True,
        duration: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.send(sn.Connect(clientId, duration, clean, will is not None))
        if will is not None:
            topic, payload, qos, retain = will
            self.one(sn.WillTopicReq)
            self.send(sn.WillTopic(topic, qos, retain))
            self.one(sn.WillMsgReq)
            self.send(sn.WillMsg(payload))
        connack, *self._unread = self.read()
        assert connack == sn.Connack(0), connack

    def register(self, topic: str) -> int:
        msgId = self.msgId()
        self.send(sn.Register(0, msgId, topic))
        regack = self.one(sn.Regack)
        assert regack.msg_id == msgId and regack.return_code == 0, regack
        return int(regack.topic_id)

    def subscribe(self, topic: str, qos: int = 0, **fields: Any) -> sn.Suback:
        msgId = self.msgId()
        self.send(sn.Subscribe(msgId, qos, topic_name=topic, **fields))
        packets = self.read()
        suback = packets[0]
        assert isinstance(suback, sn.Suback) and suback.msg_id == msgId, packets
        self._unread = packets[1:]
        return suback

    def publishAfterRegister(self) -> sn.Publish:
        """The next PUBLISH, acknowledging the REGISTER the gateway sends before it."""
        register = self.one(sn.Register)
        self.send(sn.Regack(register.topic_id, register.msg_id, 0))
        publish: sn.Publish = self.one(sn.Publish)
        assert publish.topic_id == register.topic_id, (register, publish)
        return publish

    def publishes(self) -> list[sn.Publish]:
        return [p for p in self.read() if isinstance(p, sn.Publish)]


__all__ = ["SN_LISTENER", "SNClient", "SNWorld", "replace"]
