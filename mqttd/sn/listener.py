"""
The service of a C{protocol = mqtt-sn} listener: binds its UDP port when the broker service
starts its listeners, and closes it when they stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.logger import Logger

from ..broker import Broker
from ..config import ListenerConfig
from .client import MAX_DATAGRAM
from .endpoint import parseUDPEndpoint
from .gateway import MQTTSNGateway


class SNListenerService(Service):
    """
    Listens with an L{MQTTSNGateway} on the listener's C{udp:} endpoint.  A port that cannot be
    bound raises from L{startService}, so the start-up fails as for any other listener.
    """

    log = Logger()

    def __init__(self, broker: Broker, listener: ListenerConfig, reactor: Any) -> None:
        self.listener = listener
        self.reactor = reactor
        self.gateway = MQTTSNGateway(broker, listener, IReactorTime(reactor))
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        endpoint = parseUDPEndpoint(self.listener.endpoint)
        self.port = IReactorUDP(self.reactor).listenUDP(
            endpoint.port, self.gateway, interface=endpoint.interface, maxPacketSize=MAX_DATAGRAM
        )
        Service.startService(self)
        host = self.port.getHost()
        self.log.info(
            "mqttd listener {name} on {host}:{port} (MQTT-SN 1.2 over UDP), anonymous clients"
            " {anonymous}",
            name=self.listener.name,
            host=getattr(host, "host", "?"),
            port=getattr(host, "port", "?"),
            anonymous="allowed" if self.listener.allow_anonymous else "refused",
        )

    def stopService(self) -> Any:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
