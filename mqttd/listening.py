"""
One listener as a Twisted service: bound when privileged start-up runs, so a port that cannot be
opened stops start-up with one line naming the listener, endpoint and OS error (L{ListenerError}),
paused until the broker has restored its store, then accepting; and the layers (WebSocket, TLS)
put around its protocol factory, each imported only for a listener that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqttd.config import ListenerConfig

if TYPE_CHECKING:
    from mqttd.transports.tls import ServerTLS


def _describe(address: IAddress) -> str:
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    return str(address)


def _layers(listener: ListenerConfig) -> str:
    layers = ""
    if listener.certificate is not None:
        layers += f", TLS {listener.tls_version_min}+"
        if listener.require_certificate:
            layers += " with client certificates"
    if listener.protocol == "websocket":
        layers += f", WebSocket at {listener.path}"
    if listener.protocol == "mqtt-sn":
        layers += ", MQTT-SN 1.2 over UDP"
    elif listener.protocol == "http":
        layers += ", HTTP API and dashboard"
    return layers


class ListenerError(Exception):
    """
    A listener could not be opened: its port is taken, its interface does not exist, ...

    Its text is the one line an operator needs: the listener, its endpoint and the OS error.
    """

    def __init__(self, listener: ListenerConfig, why: str) -> None:
        super().__init__(f"listener {listener.name} cannot listen on {listener.endpoint}: {why}")
        self.listener = listener
        self.why = why


def _osError(failure: Failure) -> str:
    # CannotListenError's own text repeats the address and ends in a full stop; the socket
    # error underneath is what the operator acts on.
    error = failure.value
    if isinstance(error, CannotListenError) and error.socketError is not None:
        error = error.socketError
    return str(error) or type(error).__name__


class ListenerService(Service):
    """
    One listener: bound when privileged start-up runs, so that a port that cannot be opened
    stops start-up, but accepting connections only once L{accept} is called, after the broker
    has restored its store.  Meanwhile the kernel queues connecting clients in the backlog.

    @ivar port: the bound port, once bound.
    """

    log = Logger()

    def __init__(
        self,
        listener: ListenerConfig,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        failed: Callable[[ListenerError], None],
    ) -> None:
        self.listener = listener
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._failed = failed
        self._accepting = False
        self._listening: Deferred[IListeningPort] | None = None
        self.setName(listener.name)

    def bind(self) -> None:
        """
        Open the listener, paused.

        @raise ListenerError: the endpoint failed at once, as every shipped endpoint type
            (tcp, ssl, unix, systemd) does; a later failure goes to C{failed} instead.
        """
        if self._listening is not None:
            return
        raisedNow: list[ListenerError] = []

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            error = ListenerError(self.listener, _osError(failure))
            if self._listening is None:
                raisedNow.append(error)
            else:
                self._failed(error)

        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._bound, failed)
        if raisedNow:
            raise raisedNow[0]
        self._listening = d

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if not self._accepting:
            producer = IPushProducer(port, None)
            if producer is not None:
                producer.pauseProducing()
        listener = self.listener
        self.log.info(
            "mqttd listener {name} on {address} ({endpoint}{layers}),"
            " anonymous clients {anonymous}",
            name=listener.name,
            address=_describe(port.getHost()),
            endpoint=listener.endpoint,
            layers=_layers(listener),
            anonymous="allowed" if listener.allow_anonymous else "refused",
        )
        return port

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.bind()

    def startService(self) -> None:
        Service.startService(self)
        self.bind()

    def accept(self) -> None:
        """Start accepting connections."""
        self._accepting = True
        producer = IPushProducer(self.port, None)
        if producer is not None:
            producer.resumeProducing()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        listening, self._listening = self._listening, None
        self.port = None
        if listening is None:
            return succeed(None)
        listening.cancel()
        return listening.addCallback(self._stopListening)

    def _stopListening(self, port: IListeningPort | None) -> Deferred[None] | None:
        # None: a failed or cancelled listen, already reported, left no port.
        return None if port is None else port.stopListening()


def serverEndpoint(reactor: object, listener: ListenerConfig) -> IStreamServerEndpoint:
    """
    The endpoint a stream listener listens on: its C{endpoint} string read by Twisted, whose
    C{tcp:} and C{tcp6:} endpoints listen with mqttd's lean TCP transport
    (L{mqttd.transports.tcp}) for MQTT, plain or under TLS or WebSocket, on a reactor of
    Twisted's POSIX family.  The HTTP listener and the other endpoint types (C{unix:},
    C{ssl:}, C{haproxy:}, ...) keep Twisted's transports.
    """
    endpoint = serverFromString(reactor, listener.listenEndpoint())
    if listener.protocol == "http" or type(endpoint) not in (
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    ):
        return endpoint
    from mqttd.transports.tcp import TCPServerEndpoint, leanReactor

    if not leanReactor(reactor):
        # A test's memory reactor, say, which records listenTCP instead of listening.
        return endpoint

    # What Twisted's endpoint parser read from the string: one parser for every kind.
    tcpEndpoint: Any = endpoint
    return TCPServerEndpoint(
        reactor,
        tcpEndpoint._port,
        tcpEndpoint._backlog,
        tcpEndpoint._interface,
        noDelay=listener.tcp_nodelay,
    )


def listenerFactory(
    factory: IProtocolFactory, listener: ListenerConfig, reactor: IReactorTime, timeout: float
) -> tuple[IProtocolFactory, ServerTLS | None]:
    """
    Put the listener's layers around its MQTT C{factory}: WebSocket if C{protocol = websocket},
    then TLS if it has a C{certificate}, outermost since it is nearest the socket.

    @param timeout: seconds a WebSocket client has to complete its HTTP upgrade.
    @return: the factory to listen with, and the TLS to reload, if any.
    @raise TLSFileError: a TLS file cannot be used.
    """
    # Each layer's code is imported only for listeners that use it (see mqttd.footprint).
    if listener.protocol == "websocket":
        from mqttd.transports.websocket import WebSocketFactory

        factory = WebSocketFactory(factory, listener.path, reactor, timeout)
    settings = listener.tlsSettings()
    if settings is None:
        return factory, None
    from mqttd.transports.tls import ServerTLS, TLSServerFactory

    tls = ServerTLS(settings)
    return TLSServerFactory(tls, False, factory), tls
