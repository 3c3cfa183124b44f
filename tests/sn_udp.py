"""
End-to-end MQTT-SN: the gateway behind a real L{ListenerService} on a UDP port of 127.0.0.1, in
the e2e reactor thread beside the e2e broker, and a small blocking MQTT-SN client built on
L{mqttd.sn.codec} for what the PyPI client (mqtt-sn-12) does not do (receiving QoS 2, sleeping,
acknowledging late on purpose).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from mqttd.broker import Broker
from mqttd.config import ListenerConfig
from mqttd.service import ListenerError, ListenerService
from mqttd.sn import packets as sn
from mqttd.sn.codec import decode, encode
from mqttd.sn.delivery import MAX_DATAGRAM
from mqttd.sn.endpoint import UDPServerEndpoint
from mqttd.sn.gateway import MQTTSNGateway

from . import e2e

SN_E2E = ListenerConfig(
    name="sn",
    endpoint=f"udp:0:interface={e2e.HOST}",
    protocol="mqtt-sn",
    allow_anonymous=True,
    predefined_topics=((1, "sensors/temperature"),),
    # Long enough that a loaded machine's slow answer is not taken for a lost datagram.
    retry_interval=3.0,
    retry_count=3,
)


@dataclass
class RunningGateway:
    service: ListenerService
    gateway: MQTTSNGateway
    port: int

    def stop(self) -> None:
        e2e.in_reactor(self.service.stopService)


def start_gateway(broker: Broker, listener: ListenerConfig = SN_E2E) -> RunningGateway:
    """An MQTT-SN listener for C{broker}, built, bound and started as L{mqttd.service} does."""

    def failed(error: ListenerError) -> None:
        raise error

    def start() -> RunningGateway:
        gateway: Any = MQTTSNGateway(broker, listener, e2e.reactor)
        endpoint: Any = UDPServerEndpoint(e2e.reactor, listener.endpoint, MAX_DATAGRAM)
        service = ListenerService(listener, endpoint, gateway, failed)
        service.startService()
        service.accept()
        assert service.port is not None
        address: Any = service.port.getHost()
        return RunningGateway(service, gateway, address.port)

    running: RunningGateway = e2e.in_reactor(start)
    return running


class UDPClient:
    """A blocking MQTT-SN client on one UDP socket; every wait is bounded by e2e.TIMEOUT."""

    def __init__(self, port: int) -> None:
        self.gateway = (e2e.HOST, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((e2e.HOST, 0))
        self.nextMsgId = 1

    def close(self) -> None:
        self.sock.close()

    def send(self, *packets: Any) -> None:
        for packet in packets:
            self.sendBytes(encode(packet))

    def sendBytes(self, data: bytes) -> None:
        self.sock.sendto(data, self.gateway)

    def receive(self, timeout: float = e2e.TIMEOUT) -> Any:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            raise AssertionError(f"no datagram from the gateway within {timeout} s") from None
        return decode(data)

    def expect(self, kind: type, timeout: float = e2e.TIMEOUT) -> Any:
        packet = self.receive(timeout)
        assert isinstance(packet, kind), packet
        return packet

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
            self.expect(sn.WillTopicReq)
            self.send(sn.WillTopic(topic, qos, retain))
            self.expect(sn.WillMsgReq)
            self.send(sn.WillMsg(payload))
        assert self.expect(sn.Connack) == sn.Connack(0)

    def register(self, topic: str) -> int:
        msgId = self.msgId()
        self.send(sn.Register(0, msgId, topic))
        regack = self.expect(sn.Regack)
        assert regack.msg_id == msgId and regack.return_code == 0, regack
        return int(regack.topic_id)

    def subscribe(self, topic: str, qos: int = 0) -> sn.Suback:
        msgId = self.msgId()
        self.send(sn.Subscribe(msgId, qos, topic_name=topic))
        suback: sn.Suback = self.expect(sn.Suback)
        assert suback.msg_id == msgId and suback.return_code == 0, suback
        return suback

    def publishAfterRegister(self) -> sn.Publish:
        """The next PUBLISH, acknowledging the REGISTER the gateway sends before it, if any."""
        packet = self.receive()
        if isinstance(packet, sn.Register):
            self.send(sn.Regack(packet.topic_id, packet.msg_id, 0))
            packet = self.receive()
        assert isinstance(packet, sn.Publish), packet
        return packet
