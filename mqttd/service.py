"""
The running broker as a Twisted service: the broker core first, then one listening service per
configured listener.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from mqttd.broker import Broker
from mqttd.config import Config, ListenerConfig
from mqttd.protocol import MQTTServerFactory
from mqttd.store import MemoryStore


def _describe(address: IAddress) -> str:
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    return str(address)


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """
    An endpoint that logs the address it actually bound, which with C{tcp:0} or a systemd socket
    is the only place an operator can learn it.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, listener: ListenerConfig) -> None:
        self._endpoint = endpoint
        self._listener = listener

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        d = self._endpoint.listen(protocolFactory)
        d.addCallback(self._announce)
        return d

    def _announce(self, port: IListeningPort) -> IListeningPort:
        self.log.info(
            "mqttd listener {name} on {address} ({endpoint}), anonymous clients {anonymous}",
            name=self._listener.name,
            address=_describe(port.getHost()),
            endpoint=self._listener.endpoint,
            anonymous="allowed" if self._listener.allow_anonymous else "refused",
        )
        return port


class BrokerService(MultiService):
    """
    Owns the broker and the listeners feeding it.

    The broker starts before the listeners and stops only once every listener has stopped, so no
    connection ever reaches a broker that is not running.  (Under twistd the ports are bound by
    C{privilegedStartService}, before the broker starts, but nothing is accepted until the reactor
    runs, which is after C{startService}.)
    """

    log = Logger()

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    def startService(self) -> None:
        # With the memory store this fires at once; a store that fails to restore leaves a broker
        # without its retained messages and sessions, which the operator must hear about.
        self.broker.start().addErrback(
            lambda failure: self.log.failure("mqttd could not restore its state", failure)
        )
        super().startService()

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = super().stopService()
        d.addCallback(lambda _: self.broker.stop())
        return d


def makeBrokerService(config: Config, reactor: IReactorTime) -> BrokerService:
    """
    Build the broker and its listeners from C{config}.

    @param reactor: the reactor the broker keeps time with and the listeners listen on, so it must
        also provide whatever the endpoint strings need (L{IReactorTCP}, L{IReactorSSL}, ...).
    """
    broker = Broker(config.broker, reactor, MemoryStore())
    service = BrokerService(broker)
    for listener in config.listeners:
        endpoint = _AnnouncingEndpoint(serverFromString(reactor, listener.endpoint), listener)
        listening = StreamServerEndpointService(
            endpoint, MQTTServerFactory(broker, listener, reactor)
        )
        # As twisted.application.strports.service does: a port that cannot be bound fails the
        # start-up instead of being logged while the broker runs without that listener.
        listening._raiseSynchronously = True
        listening.setName(listener.name)
        listening.setServiceParent(service)
    return service
